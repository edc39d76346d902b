"""Build the lossviz docs site offline, from the notebooks in nbs/, with PyPI packages only.

    python docs/build.py --out site                      # the whole site, every notebook executed
    python docs/build.py --out site --execute 'index,00_core'  # execute only these, render the others unexecuted
    python docs/build.py --sidebar                       # regenerate nbs/sidebar.yml with nbdev (for Quarto/nbdev-docs)
    python docs/build.py --out site --execute ''         # quick: nbdev's processing of every notebook, no outputs
    python docs/build.py --lint                          # list every cell nbdev's docs processing would fail on
    python docs/build.py --write-executed                # CI only: execute nbs/ in place, for nbdev-docs (Quarto)
    python docs/build.py --out site --site-url https://example.org/docs/   # a site served under /docs/, not a host's root

Why this pipeline. nbdev publishes with Quarto (`nbdev-docs`), which cannot be installed here (its PyPI package
downloads a binary at install time), and `nbdev-proc-nbs` cannot be used as a command either: it first calls
`_ensure_quarto`, which tries to download Quarto. So this script runs the same steps without Quarto:

1. discover every notebook under nbs/ (folders starting with `_` or `.` skipped), ordered by path;
2. EXECUTE each one in a fresh Jupyter kernel (nbclient) in its own folder, with a per-notebook time limit, skipping
   the cells nbdev-test skips (`#| eval: false`, and the flags in `tst_flags`: slow, gpu, notest). A hidden first
   cell makes plotly emit figures as a <div> plus a `Plotly.newPlot` call with no plotly.js inside
   (`include_plotlyjs=False`), matplotlib draw inline PNGs, and tqdm stay silent. A failing notebook fails the build with
   its name. Executing has to come before nbdev's processing, because the processing drops `#| hide` cells
   (imports, setup) that the visible cells need;
3. process the executed notebook with nbdev's own processors (`nbdev.processors.FilterDefaults`, exactly what
   `nbdev-proc-nbs` applies): front matter, hidden cells and directives removed, `show_doc` cells added after every
   exported definition and executed, backticked names linked;
4. adapt the result for the static site: the front matter back to a title, every `show_doc` output replaced by an
   API entry rendered from the object itself (signature, docstring, parameter table from docments, source link to
   the repository of pyproject's `[project.urls] Repository`), an "API reference" section at the end of each module
   page covering everything in the module's `__all__`, widget outputs replaced by a note that they are live in
   JupyterLab (their saved state would need the widget manager from a CDN), nbdev's links to the published site made
   relative;
5. count the figures each page shows (plotly figures and images, in build-summary.json for the browser test): an
   executed page whose code draws (`.plot(`) but shows no figure fails the build with its name (a figure assigned
   and never displayed, `fig = res.plot()` without `fig` after it, is the usual cause);
6. render with MkDocs + Material for MkDocs + mkdocs-jupyter, and copy ONE plotly.min.js (from the installed plotly
   package) into the site's assets; pages with figures load it in <head> (docs/overrides/main.html). The 404 page,
   which a host serves at any missing URL, links its assets absolute from the host's root (`--site-url` for a site
   served under another path).

Why MkDocs-Material + mkdocs-jupyter rather than Sphinx + myst-nb: mkdocs-jupyter renders .ipynb files with their
outputs (HTML, PNG) as pages directly, Material's built-in search is a lunr index built at build time and searched
in the browser (offline, no server), `font: false` removes its only default external request (Google fonts), and
the whole configuration is one small YAML file (docs/mkdocs.yml). Sphinx + myst-nb would also work, but needs more
configuration and pulls MathJax and the widget manager from CDNs by default. TeX is typeset by a local MathJax 2
(copied from the jupyter-server-mathjax package), never from a CDN.
"""
from __future__ import annotations

import argparse, ast, asyncio, copy, fnmatch, html, importlib, inspect, json, os, re, shutil, subprocess, sys
import tempfile, time, tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
WIDGET_NOTE = ('<div class="lossviz-note">Interactive widget: it is live when you run this notebook in JupyterLab '
               '(the static docs do not run a Python kernel).</div>')
FIGURE_MIMES = ("image/png", "image/svg+xml", "image/jpeg")   # matplotlib's inline figures, and any other image output
PLOT_CALL = re.compile(r"\.plot(_\w+)?\(")                      # `res.plot(`, `ax.plot(`, `cal.plot_reliability(`
NOT_EXECUTED_NOTE = ('<div class="lossviz-note">This page was built without executing its notebook (see '
                     '<code>docs/build.py --execute</code>): it shows the code and the API reference, not the outputs.</div>')

# Hidden first cell of every executed notebook: nbdev's processing drops it (`#| hide`) from the page.
SETUP_CELL = '''#| hide
import plotly.io as _pio
class _DocsRenderer(_pio.base_renderers.MimetypeRenderer):
    "Plotly figure as a div + `Plotly.newPlot` script; the docs site loads its single local plotly.js once per page"
    def to_mimebundle(self, fig_dict):
        return {"text/html": _pio.to_html(fig_dict, include_plotlyjs=False, full_html=False, validate=False,
                                          default_width="100%", default_height=480)}
_pio.renderers["lossviz_docs"] = _DocsRenderer()
_pio.renderers.default = "lossviz_docs"
%matplotlib inline
%config InlineBackend.figure_formats = ["png"]
del _DocsRenderer'''


class BuildError(RuntimeError):
    "A docs build failure, with the notebook or module it concerns in the message"


# ----------------------------------------------------------------------------------------------------------- config
def project_config(root=ROOT) -> dict:
    "Title, description, URLs and nbdev settings from pyproject.toml"
    pp = tomllib.loads((root / "pyproject.toml").read_text())
    proj, nbd = pp.get("project", {}), pp.get("tool", {}).get("nbdev", {})
    urls = proj.get("urls", {})
    repo = urls.get("Repository", "").rstrip("/")
    if not repo: raise BuildError("pyproject.toml has no [project.urls] Repository (needed for source links)")
    return dict(name=proj.get("name", root.name), title=nbd.get("title", proj.get("name", root.name)),
                description=proj.get("description", ""), repo=repo, branch=nbd.get("branch", "main"),
                site_url=urls.get("Documentation", ""), nbs=root / nbd.get("nbs_path", "nbs"),
                lib=nbd.get("lib_path", proj.get("name", root.name)),
                tst_flags=nbd.get("tst_flags", "notest").split())


def discover(nbs: Path) -> list[Path]:
    "Every notebook under `nbs`, relative to it, folders starting with `_` or `.` skipped, index first then by path"
    found = [p.relative_to(nbs) for p in nbs.rglob("*.ipynb")
             if not any(part.startswith(("_", ".")) for part in p.relative_to(nbs).parts)]
    return sorted(found, key=lambda p: (len(p.parts) > 1, p.name != "index.ipynb", p.as_posix()))


def _matches(rel: Path, patterns: list[str]) -> bool:
    "Does the notebook `rel` match any of `patterns` (globs on its path or its stem)?"
    return any(fnmatch.fnmatch(rel.as_posix(), p) or fnmatch.fnmatch(rel.stem, p) for p in patterns)


def _patterns(s: str | None) -> list[str] | None:
    if s is None: return None
    return [p.strip() for p in s.split(",") if p.strip()]


# -------------------------------------------------------------------------------------------------------- execution
def _skipped_cells(path: Path, tst_flags: list[str]) -> set[int]:
    "Indices of the code cells nbdev-test would not run in the notebook at `path`"
    from nbdev.process import NBProcessor
    from nbdev.test import _skip_cell
    nb = NBProcessor(path, rm_directives=False, process=True).nb
    skip = _skip_cell(nb, tst_flags)
    return {i for i, c in enumerate(nb.cells) if c.cell_type == "code" and skip(c)}


def execute(path: Path, timeout: float, tst_flags: list[str]) -> dict:
    "The notebook at `path` executed in a fresh kernel in its own folder (nbformat dict); raises `BuildError` on failure"
    import nbformat
    from nbclient import NotebookClient
    nb = nbformat.read(path, as_version=4)
    skipped = _skipped_cells(path, tst_flags)
    if skipped and max(skipped) >= len(nb.cells): raise BuildError(f"{path.name}: nbdev's cell list does not match")
    for i in skipped:
        tags = nb.cells[i].metadata.setdefault("tags", [])
        if "skip-execution" not in tags: tags.append("skip-execution")
    nb.cells.insert(0, nbformat.v4.new_code_cell(SETUP_CELL))
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}},
                            skip_cells_with_tag="skip-execution", allow_errors=False)
    try: asyncio.run(asyncio.wait_for(client.async_execute(), timeout))
    except (asyncio.TimeoutError, TimeoutError) as e:
        raise BuildError(f"{path.name}: did not finish executing within {timeout:g} s") from e
    except Exception as e:
        raise BuildError(f"{path.name}: failed to execute:\n{e}") from e
    return nb


# ------------------------------------------------------------------------------------------------------- processing
def nbdev_process(nb: dict, path: Path, root: Path = ROOT) -> dict:
    "`nb` (for the notebook at `path`) through nbdev's own docs processors, as `nbdev-proc-nbs` applies them"
    from fastcore.nbio import dict2nb, nb2str
    from nbdev.processors import FilterDefaults
    nb = dict2nb(json.loads(json.dumps(nb)))
    nb.path_ = str(path)
    old, cwd = os.environ.get("IN_TEST"), os.getcwd()
    os.environ["IN_TEST"] = "1"  # as nbdev.serve_drv does
    try:
        os.chdir(root)  # nbdev reads its settings from the project's pyproject.toml
        FilterDefaults()(nb)
    except Exception as e:
        hint = ("\nnbdev re-executes every exported cell and every cell that contains an import, in a fresh namespace, "
                "to render show_doc: a cell that mixes an import with other code must be split (move the import to "
                "the notebook's imports cell)") if isinstance(e.__cause__, NameError) else ""
        raise BuildError(f"{path.name}: nbdev's docs processing failed (nbdev-proc-nbs and nbdev-docs fail the same "
                         f"way): {e}{hint}") from e
    finally:
        os.chdir(cwd)
        if old is None: os.environ.pop("IN_TEST", None)
        else: os.environ["IN_TEST"] = old
    return json.loads(nb2str(nb))


def _src(cell) -> str:
    s = cell.get("source", "")
    return "".join(s) if isinstance(s, list) else s


def _frontmatter(nb: dict) -> dict:
    "nbdev's front matter (title, description, output-file) from the raw cell its processing put first"
    for c in nb["cells"]:
        if c["cell_type"] == "raw" and _src(c).lstrip().startswith("---"):
            return yaml.safe_load(_src(c).strip().strip("-")) or {}
    return {}


def default_exp(path: Path) -> str | None:
    "The module a notebook exports to (its `#| default_exp`), or None"
    for c in json.loads(path.read_text())["cells"]:
        m = re.search(r"^#\|\s*default_exp\s+(\S+)", _src(c), re.M) if c["cell_type"] == "code" else None
        if m: return m.group(1)
    return None


# ---------------------------------------------------------------------------------------------------- API rendering
def _fmt_anno(a) -> str:
    if a is inspect.Parameter.empty: return ""
    if isinstance(a, str): return a
    return getattr(a, "__qualname__", None) or repr(a)


def _source_link(obj, cfg: dict) -> str | None:
    "URL of `obj`'s source lines in the repository, or None when it has none (builtins, attributes)"
    target = obj.fget if isinstance(obj, property) else inspect.unwrap(getattr(obj, "__func__", obj))
    try:
        fn = Path(inspect.getsourcefile(target)).resolve()
        line = inspect.getsourcelines(target)[1]
        rel = fn.relative_to(ROOT)
    except (TypeError, OSError, ValueError): return None
    return f"{cfg['repo']}/blob/{cfg['branch']}/{rel.as_posix()}#L{line}"


def _signature(obj) -> inspect.Signature | None:
    target = obj.fget if isinstance(obj, property) else obj
    try: return inspect.signature(target)
    except (TypeError, ValueError): return None


class _Anno(str):
    "A string annotation (`from __future__ import annotations`) that prints without quotes in a signature"
    def __repr__(self): return str(self)


def _sig_text(sig: inspect.Signature) -> str:
    "`sig` as written in the source: `(x: int | None = None) -> Tensor`, not `(x: 'int | None' = None)`"
    un = lambda a: _Anno(a) if isinstance(a, str) else a
    return str(sig.replace(parameters=[p.replace(annotation=un(p.annotation)) for p in sig.parameters.values()],
                           return_annotation=un(sig.return_annotation)))


def _param_rows(obj) -> list[tuple[str, str, str, str]]:
    "(name, type, default, description) for each parameter of `obj`, descriptions from its docments comments"
    from fastcore.docments import docments
    sig = _signature(obj)
    if sig is None or isinstance(obj, property): return []
    target = obj.__init__ if inspect.isclass(obj) else obj
    try: docs = docments(target, full=True)
    except Exception: docs = {}
    rows = []
    for name, p in sig.parameters.items():
        if name in ("self", "cls"): continue
        star = "*" if p.kind is p.VAR_POSITIONAL else "**" if p.kind is p.VAR_KEYWORD else ""
        dflt = "" if p.default is p.empty else repr(p.default)
        rows.append((star + name, _fmt_anno(p.annotation), dflt, (docs.get(name) or {}).get("docment") or ""))
    ret = sig.return_annotation
    if not inspect.isclass(obj) and ret is not sig.empty:
        rows.append(("", _fmt_anno(ret), "", (docs.get("return") or {}).get("docment") or ""))  # the return value
    return rows


def _md_inline(text: str) -> str:
    "Inline Markdown (backticks, emphasis, links) of a docstring or docment, as HTML"
    import markdown
    out = markdown.markdown(text)
    return out[3:-4] if out.startswith("<p>") and out.endswith("</p>") and out.count("<p>") == 1 else out


def anchor(qualname: str) -> str:
    "The HTML id of an API entry, as nbdev/Quarto names it (`progress`, `hessian.matvec`)"
    return qualname.lower()


def _methods(cls) -> list[tuple[str, object]]:
    "Public methods and properties defined by `cls` itself, in definition order"
    out = []
    for name, v in vars(cls).items():
        if name.startswith("_"): continue
        if isinstance(v, (staticmethod, classmethod)): v = v.__func__
        if inspect.isfunction(v) or isinstance(v, property): out.append((name, v))
    return out


def api_entry(obj, qualname: str, cfg: dict, level: int = 3) -> str:
    "HTML for one API entry: heading with id, source link, signature, docstring, parameter table, methods"
    e = html.escape
    kind = "class " if inspect.isclass(obj) else "property " if isinstance(obj, property) else ""
    sig = _signature(obj)
    sig_txt = f"{kind}{qualname}{_sig_text(sig) if sig is not None and not isinstance(obj, property) else ''}"
    if isinstance(obj, property) and sig is not None and sig.return_annotation is not sig.empty:
        sig_txt += f" -> {_fmt_anno(sig.return_annotation)}"
    parts = [f'<div class="lossviz-api" data-api="{e(qualname)}">']
    src = _source_link(obj, cfg)
    if src: parts.append(f'<a class="lossviz-source" href="{e(src)}" target="_blank" rel="noopener">source</a>')
    parts.append(f'<h{level} id="{e(anchor(qualname))}">{e(qualname)}</h{level}>')
    parts.append(f'<pre class="lossviz-sig"><code>{e(sig_txt)}</code></pre>')
    doc = inspect.getdoc(obj.fget if isinstance(obj, property) else obj)
    if doc and not (inspect.isclass(obj) and doc == inspect.getdoc(type(obj))):
        parts.append(f"<p><em>{_md_inline(doc)}</em></p>")
    rows = _param_rows(obj)
    if rows:
        parts.append("<table><thead><tr><th>parameter</th><th>type</th><th>default</th><th>description</th></tr></thead><tbody>")
        code = lambda t: f"<code>{e(t)}</code>" if t else ""
        parts += [f"<tr><td>{code(n) if n else '<em>returns</em>'}</td><td>{code(t)}</td><td>{code(d)}</td>"
                  f"<td>{_md_inline(desc) if desc else ''}</td></tr>" for n, t, d, desc in rows]
        parts.append("</tbody></table>")
    if inspect.isclass(obj):
        methods = [api_entry(m, f"{qualname}.{n}", cfg, level=min(level + 1, 6)) for n, m in _methods(obj)]
        if methods: parts.append('<div class="lossviz-methods">' + "".join(methods) + "</div>")
    parts.append("</div>")
    return "".join(parts)


def _show_doc_target(src: str):
    "The expression `show_doc(...)` documents in a cell's source, or None"
    try: tree = ast.parse(src)
    except SyntaxError: return None
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "show_doc" and node.args:
            return ast.unparse(node.args[0])
    return None


def _module_obj(module, expr: str):
    "Evaluate a dotted name like `Hessian.matvec` in `module`, or None"
    obj = module
    for part in expr.split("."):
        if not part.isidentifier() or not hasattr(obj, part): return None
        obj = getattr(obj, part)
    return obj


# ------------------------------------------------------------------------------------------------------- adaptation
def _html_output(text: str) -> dict:
    return {"output_type": "display_data", "metadata": {}, "data": {"text/html": text}}


def _md_cell(text: str) -> dict:
    return {"cell_type": "markdown", "metadata": {}, "source": text}


def _relink(text: str, doc_prefix: str, depth: int) -> str:
    "nbdev's links to the published Quarto site (`{doc_prefix}core.html#x`) as relative links within this site"
    if not doc_prefix: return text
    return text.replace(doc_prefix, "../" * depth)


def adapt(nb: dict, rel: Path, module: str | None, cfg: dict, executed: bool) -> tuple[dict, str, set[str]]:
    "Make nbdev's processed notebook `nb` a docs page: (notebook, title, API names it documents)"
    nb = copy.deepcopy(nb)
    fm = _frontmatter(nb)
    title = str(fm.get("title") or rel.stem)
    try: mod = importlib.import_module(f"{cfg['lib']}.{module}") if module else None
    except Exception as e: raise BuildError(f"{rel}: cannot import {cfg['lib']}.{module} for its API reference: {e!r}")
    depth = len(rel.parts) - 1
    doc_prefix = cfg["site_url"].rstrip("/") + "/" if cfg["site_url"] else ""
    cells, documented = [], set()
    head = f"# {title}" + (f"\n\n> {fm['description']}" if fm.get("description") else "")
    cells.append(_md_cell(head if executed else head + "\n\n" + NOT_EXECUTED_NOTE))
    for c in nb["cells"]:
        src = _src(c)
        if c["cell_type"] == "raw" and src.lstrip().startswith("---"): continue
        if c["cell_type"] == "markdown":
            if src.strip().startswith("<!-- WARNING: THIS FILE WAS AUTOGENERATED"): continue
            c["source"] = _relink(src, doc_prefix, depth)
        if c["cell_type"] == "code":
            c, src = _apply_directives(c)
            if c is None: continue
            target = _show_doc_target(src)
            obj = _module_obj(mod, target) if (target and mod is not None) else None
            if obj is not None:
                documented.add(target)
                c["outputs"] = [_html_output(api_entry(obj, target, cfg))]
                _tag(c, "remove_input")
            if not src.strip() and not c.get("outputs"): continue
            else:
                c["outputs"] = [_adapt_output(o, doc_prefix, depth) for o in c.get("outputs", [])]
        cells.append(c)
    if mod is not None:
        cells += api_reference(mod, module, documented, cfg)
        documented |= set(getattr(mod, "__all__", []))
    nb["cells"] = [dict(_clean_cell(c), id=f"docs-{i}") for i, c in enumerate(cells)]
    nb["metadata"].pop("widgets", None)  # saved widget state would make mkdocs-jupyter load the widget manager from a CDN
    return nb, title, documented


def _tag(cell: dict, tag: str):
    tags = cell.setdefault("metadata", {}).setdefault("tags", [])
    if tag not in tags: tags.append(tag)


def _apply_directives(c: dict) -> tuple[dict | None, str]:
    """The Quarto directives nbdev leaves in a code cell, applied for mkdocs-jupyter: (cell or None when excluded,
    source without the `#|` lines). `include: false` drops the cell, `echo: false` its input, `output: false` its outputs"""
    lines = _src(c).splitlines()
    n = next((i for i, l in enumerate(lines) if not l.startswith("#|")), len(lines))
    dirs = {}
    for l in lines[:n]:
        k, _, v = l[2:].partition(":")
        dirs[k.strip()] = v.strip().lower()
    if dirs.get("include") == "false": return None, ""
    src = "\n".join(lines[n:])
    c = dict(c, source=src)
    if dirs.get("echo") == "false": _tag(c, "remove_input")
    if dirs.get("output") == "false": _tag(c, "remove_output")
    return c, src


_CELL_KEYS = {"code": ("id", "cell_type", "metadata", "source", "outputs", "execution_count"),
              "markdown": ("id", "cell_type", "metadata", "source", "attachments"),
              "raw": ("id", "cell_type", "metadata", "source", "attachments")}


def _clean_cell(c: dict) -> dict:
    "`c` with only the keys nbformat allows (nbdev's processing adds its own)"
    c = {k: c[k] for k in _CELL_KEYS[c["cell_type"]] if k in c}
    c["metadata"] = {k: v for k, v in c.get("metadata", {}).items() if k != "execution"}  # execnb's float timings
    if c["cell_type"] == "code":
        c.setdefault("outputs", []); c.setdefault("execution_count", None)
    return c


def _adapt_output(o: dict, doc_prefix: str, depth: int) -> dict:
    "One cell output for the static page: widgets become a note, nbdev's markdown is rendered, links made relative"
    data = o.get("data", {})
    if WIDGET_MIME in data: return _html_output(WIDGET_NOTE)
    if "text/markdown" in data and "text/html" not in data:
        import markdown
        md = data["text/markdown"]
        md = _relink("".join(md) if isinstance(md, list) else md, doc_prefix, depth)
        o = dict(o, data={"text/html": markdown.markdown(md, extensions=["tables", "fenced_code", "attr_list"])})
    return o


def api_reference(mod, module: str, documented: set[str], cfg: dict) -> list[dict]:
    "Cells closing a module page: an index of everything in `__all__`, and full entries for those not shown above"
    names = list(getattr(mod, "__all__", []))
    if not names: return []
    e = html.escape
    rows = []
    for n in names:
        obj = getattr(mod, n, None)
        if obj is None: raise BuildError(f"{cfg['lib']}.{module}: `{n}` is in __all__ but not defined")
        doc = (inspect.getdoc(obj) or "").split("\n")[0] if callable(obj) else ""
        rows.append(f'<tr><td><a href="#{e(anchor(n))}"><code>{e(n)}</code></a></td><td>{_md_inline(doc) if doc else ""}</td></tr>')
    index = ('<table class="lossviz-api-index"><thead><tr><th>name</th><th>summary</th></tr></thead><tbody>'
             + "".join(rows) + "</tbody></table>")
    rest = [api_entry(getattr(mod, n), n, cfg) for n in names if n not in documented]
    cell = {"cell_type": "code", "execution_count": None, "metadata": {"tags": ["api-reference"]}, "source": "",
            "outputs": [_html_output(index + "".join(rest))]}
    intro = f"## API reference\n\nEverything `{cfg['lib']}.{module}` exports (its `__all__`)."
    return [_md_cell(intro), cell]


def figure_count(page: dict) -> int:
    "Figures a docs page shows: plotly figures (a `Plotly.newPlot` call in an HTML output) and images (`output: false` cells left out)"
    n = 0
    for c in page["cells"]:
        if c["cell_type"] != "code" or "remove_output" in c["metadata"].get("tags", []): continue
        for o in c.get("outputs", []):
            data = o.get("data", {})
            text = data.get("text/html", "")
            n += ("".join(text) if isinstance(text, list) else text).count("Plotly.newPlot") + any(m in data for m in FIGURE_MIMES)
    return n


def calls_plot(page: dict) -> bool:
    "Does a code cell that the page shows, and that ran, draw something (`.plot(`, `ax.plot(`, `plot_reliability(`)?"
    return any(c["cell_type"] == "code" and "skip-execution" not in c["metadata"].get("tags", []) and PLOT_CALL.search(_src(c))
               for c in page["cells"])


# ----------------------------------------------------------------------------------------------------------- mkdocs
def page_path(rel: Path, nb: dict) -> Path:
    "Where a notebook's page goes in the docs tree: nbdev's output-file name (core.html -> core.ipynb)"
    out = _frontmatter(nb).get("output-file")
    return rel.with_name(Path(out).stem + ".ipynb") if out else rel


def _section_title(folder: str) -> str:
    return re.sub(r"^\d+_", "", folder).replace("_", " ").capitalize()


def nav(pages: list[tuple[Path, str, str | None]], lib: str, repo: str) -> list:
    "MkDocs nav: the landing page, the module pages in file order, then one section per subfolder"
    top, sections = [], {}
    for path, title, module in pages:
        label = f"{lib}.{module}" if module else ("Home" if path.as_posix() == "index.ipynb" else title)
        entry = {label: path.as_posix()}
        if len(path.parts) == 1: top.append(entry)
        else: sections.setdefault(path.parts[0], []).append(entry)
    out = top + [{_section_title(k): v} for k, v in sections.items()]
    return out + [{"Source on GitHub": repo}]


def mkdocs_config(work: Path, site: Path, nav_: list, cfg: dict, site_url: str | None = None) -> Path:
    """Complete docs/mkdocs.yml for this build and write it into `work`. `site_url` is where this site will be served
    (None: from the root of a host, as `python -m http.server -d site` serves it): MkDocs writes the 404 page, which a
    host serves at any missing URL, with links absolute from that URL's path. pyproject's Documentation URL is not
    used: it is the Quarto site's (nbdev-docs), published under /lossviz/, and links into /lossviz/ break the 404 page
    of this site wherever else it is served"""
    conf = yaml.safe_load((HERE / "mkdocs.yml").read_text())
    conf.update(site_name=cfg["title"], site_description=cfg["description"], docs_dir=str(work / "docs"),
                site_dir=str(site), nav=nav_)
    if site_url: conf["site_url"] = site_url
    conf["theme"]["custom_dir"] = str(HERE / "overrides")
    conf.setdefault("extra", {})["social"] = [{"icon": "fontawesome/brands/github", "link": cfg["repo"], "name": "Source"}]
    path = work / "mkdocs.yml"
    path.write_text(yaml.safe_dump(conf, sort_keys=False))
    return path


def mathjax_dir() -> Path:
    "MathJax 2 (the static files the jupyter-server-mathjax package ships), served from the site instead of a CDN"
    try: import jupyter_server_mathjax
    except ImportError as e: raise BuildError("pip install jupyter-server-mathjax (the site's local MathJax)") from e
    return Path(jupyter_server_mathjax.__file__).parent / "static"


def plotly_js() -> Path:
    "The plotly.min.js bundled with the installed plotly package"
    import plotly
    p = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not p.exists(): raise BuildError(f"plotly.min.js not found in the plotly package ({p})")
    return p


# ------------------------------------------------------------------------------------------------------------ build
def run_all(nbs: Path, to_run: list[Path], timeout: float, jobs: int, cfg: dict) -> tuple[dict, dict]:
    "Execute the notebooks `to_run` under `nbs`, `jobs` at a time: ({rel: notebook}, {rel: failure message})"
    done, failed = {}, {}
    with ThreadPoolExecutor(max(1, jobs)) as ex:  # each notebook runs in its own kernel process
        futures = {r: ex.submit(execute, nbs / r, timeout, cfg["tst_flags"]) for r in to_run}
        for r, f in futures.items():
            try: done[r] = f.result()
            except BuildError as e: failed[r] = str(e)
    return done, failed


def build(out: Path, execute_patterns: list[str] | None = None, only: list[str] | None = None,
          timeout: float = 600, jobs: int = 1, nbs: Path | None = None, root: Path = ROOT, log=print,
          site_url: str | None = None) -> dict:
    """Build the site into `out` from the notebooks under `nbs` (default: the project's nbs/); returns a summary
    {pages, executed, modules, figures (per page: how many it shows)}, also written to `out`/build-summary.json.
    An executed page whose code draws (`.plot(`) but that shows no figure fails the build"""
    cfg = project_config(root)
    nbs = Path(nbs).resolve() if nbs else cfg["nbs"]
    out = Path(out).resolve()
    os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars are noise on a static page; kernels inherit this
    notebooks = [r for r in discover(nbs) if only is None or _matches(r, only)]
    if not notebooks: raise BuildError(f"no notebooks to build under {nbs}")
    to_run = [r for r in notebooks if execute_patterns is None or _matches(r, execute_patterns)]
    t0 = time.time()
    executed, failures = run_all(nbs, to_run, timeout, jobs, cfg)
    if to_run: log(f"executed {len(to_run)} notebook(s) in {time.time() - t0:.1f} s")
    with tempfile.TemporaryDirectory(prefix="lossviz-docs-") as work:
        work = Path(work)
        (work / "docs" / "assets").mkdir(parents=True)
        pages, modules, figures = [], {}, {}
        for rel in notebooks:
            if rel in failures: continue
            path, run = nbs / rel, rel in executed
            module = default_exp(path)
            try:
                processed = nbdev_process(executed[rel] if run else json.loads(path.read_text()), path, root)
                page, title, names = adapt(processed, rel, module, cfg, executed=run)
            except BuildError as e:
                failures[rel] = str(e)
                continue
            dest, n_figures = page_path(rel, processed), figure_count(page)
            if run and not n_figures and calls_plot(page):
                failures[rel] = (f"{rel}: its code draws (`.plot(`) but the executed page shows no figure: end the cell "
                                 "that makes a figure with the figure itself (`fig = res.plot()`, then `fig` on the last line)")
                continue
            (work / "docs" / dest).parent.mkdir(parents=True, exist_ok=True)
            (work / "docs" / dest).write_text(json.dumps(page))
            pages.append((dest, title, module))
            html_page = dest.with_suffix(".html").as_posix()
            figures[html_page] = n_figures
            if module: modules[module] = {"page": html_page, "names": sorted(names)}
            log(f"{rel} -> {dest}{'' if run else ' (not executed)'}")
        if failures:
            raise BuildError(f"{len(failures)} notebook(s) failed: {', '.join(r.as_posix() for r in failures)}\n\n"
                             + "\n\n".join(failures.values()))
        shutil.copy(plotly_js(), work / "docs" / "assets" / "plotly.min.js")
        shutil.copytree(mathjax_dir(), work / "docs" / "assets" / "mathjax")
        shutil.copy(HERE / "assets" / "lossviz.css", work / "docs" / "assets" / "lossviz.css")
        conf = mkdocs_config(work, out, nav(pages, cfg["lib"], cfg["repo"]), cfg, site_url)
        res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--clean", "-q", "-f", str(conf)],
                             capture_output=True, text=True, cwd=work)
        if res.returncode: raise BuildError(f"mkdocs build failed:\n{res.stdout}\n{res.stderr}")
    summary = {"pages": [p.with_suffix(".html").as_posix() for p, _, _ in pages],
               "executed": [r.as_posix() for r in executed], "modules": modules, "figures": figures}
    (out / "build-summary.json").write_text(json.dumps(summary, indent=1))
    log(f"site written to {out} ({len(pages)} pages, {len(executed)} executed) in {time.time() - t0:.1f} s")
    return summary


def _run_now(trees):
    "The AST nodes of a cell that run when the cell runs: function and lambda bodies are left out (they run later)"
    todo = list(trees)
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            todo += node.decorator_list + node.args.defaults + [d for d in node.args.kw_defaults if d]
        elif isinstance(node, ast.Lambda): todo += node.args.defaults
        else: todo += list(ast.iter_child_nodes(node))


def _names(trees) -> tuple[set[str], set[str]]:
    "(names a cell binds in the notebook's namespace, names it reads when it runs)"
    bound, used, local = set(), set(), set()
    for node in _run_now(trees):
        if isinstance(node, ast.Name): (used if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)): bound.add(node.name)
        elif isinstance(node, ast.alias) and node.name != "*": bound.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.ImportFrom) and any(a.name == "*" for a in node.names) and node.module:
            try: m = importlib.import_module(node.module)
            except Exception: continue
            bound |= set(getattr(m, "__all__", [n for n in dir(m) if not n.startswith("_")]))
        elif isinstance(node, ast.ExceptHandler) and node.name: bound.add(node.name)
        elif isinstance(node, ast.comprehension):
            local |= {n.id for n in ast.walk(node.target) if isinstance(n, ast.Name)}
    return bound - local, used - local


def lint(path: Path) -> list[str]:
    """Cells of the notebook at `path` that nbdev's docs processing will fail on: it re-executes, in a fresh
    namespace, every exported cell and every cell containing an import; a cell it runs that uses a name only a
    cell it skips defines raises NameError there. Static check (no execution); returns one message per cell"""
    import builtins
    from nbdev.process import NBProcessor
    from nbdev.processors import _do_eval
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nbdev warns about each such cell while parsing
        nb = NBProcessor(path, rm_directives=False, process=True).nb
        evaluated = [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code" and _do_eval(c)]
    known, problems = set(dir(builtins)) | {"show_doc", "get_ipython", "display"}, []
    for i, c in evaluated:
        bound, used = _names(c.parsed_() or [])
        missing = sorted(used - bound - known)
        if missing:
            first = next((l for l in c.source.splitlines() if not l.startswith("#|")), "")
            problems.append(f"{path.name} cell {i} ({first[:60]!r}): nbdev's docs processing runs it (it has an import) "
                            f"but {', '.join(missing)} would be undefined there; move its import to an imports cell")
        known |= bound
    return problems


def write_executed(execute_patterns: list[str] | None = None, timeout: float = 600, jobs: int = 1, log=print):
    """Execute the notebooks under nbs/ and write them back WITH outputs, for `nbdev-docs` (Quarto) in the GitHub
    Pages workflow; never commit the result (the committed notebooks carry no outputs)"""
    cfg = project_config()
    to_run = [r for r in discover(cfg["nbs"]) if execute_patterns is None or _matches(r, execute_patterns)]
    done, failed = run_all(cfg["nbs"], to_run, timeout, jobs, cfg)
    if failed: raise BuildError(f"{len(failed)} notebook(s) failed:\n\n" + "\n\n".join(failed.values()))
    import nbformat
    for r, nb in done.items():
        del nb.cells[0]  # the setup cell: its settings are in the kernel's state, the outputs already made
        for c in nb.cells:
            tags = c.metadata.get("tags", [])
            if "skip-execution" in tags: tags.remove("skip-execution")
            if not tags: c.metadata.pop("tags", None)
        nbformat.write(nb, cfg["nbs"] / r)
        log(f"{r}: executed, outputs written")


def write_sidebar(root: Path = ROOT):
    "Regenerate nbs/sidebar.yml (Quarto's sidebar for nbdev-docs) with nbdev's own generator"
    from nbdev.quarto import nbdev_sidebar
    cwd = os.getcwd()
    try:
        os.chdir(root)
        nbdev_sidebar.__wrapped__(force=True)
    finally: os.chdir(cwd)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, help="folder to write the site into (replaced)")
    ap.add_argument("--execute", default=None,
                    help="comma-separated globs (notebook path or stem) of the notebooks to execute; default: all; "
                         "'' executes none. The others are rendered without outputs (API reference included)")
    ap.add_argument("--only", default=None, help="comma-separated globs: build only these notebooks (default: all)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds allowed to execute one notebook")
    ap.add_argument("--jobs", type=int, default=1, help="notebooks executed at the same time (one kernel each)")
    ap.add_argument("--nbs", type=Path, default=None, help="notebook folder (default: the project's nbs/)")
    ap.add_argument("--site-url", default=None,
                    help="URL the site will be served at, when not from the root of a host (the 404 page's links start "
                         "with its path); default: served from a host's root, as `python -m http.server -d site` does")
    ap.add_argument("--sidebar", action="store_true", help="regenerate nbs/sidebar.yml with nbdev and exit")
    ap.add_argument("--lint", action="store_true",
                    help="list every cell nbdev's docs processing would fail on (NameError in a re-executed import cell), "
                         "without executing anything, and exit")
    ap.add_argument("--write-executed", action="store_true",
                    help="execute the notebooks and write them back into nbs/ with outputs, for nbdev-docs (Quarto) in "
                         "CI; never commit the result")
    a = ap.parse_args(argv)
    if a.sidebar: return write_sidebar()
    if a.lint:
        cfg = project_config()
        problems = [m for r in discover(cfg["nbs"]) for m in lint(cfg["nbs"] / r)]
        print("\n".join(problems) or "no cell would fail nbdev's docs processing")
        return 1 if problems else 0
    if a.write_executed:
        try: return write_executed(_patterns(a.execute), a.timeout, a.jobs)
        except BuildError as e:
            print(f"docs build failed: {e}", file=sys.stderr)
            return 1
    if a.out is None: ap.error("--out is required")
    try: build(a.out, _patterns(a.execute), _patterns(a.only), a.timeout, a.jobs, a.nbs, site_url=a.site_url)
    except BuildError as e:
        print(f"docs build failed: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
