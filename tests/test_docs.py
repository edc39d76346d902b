"""The docs site, built offline from the notebooks and checked in a real browser (headless Debian Chromium + Playwright).

Three sites are built into temporary folders with `docs/build.py`, one per test, so that pytest-xdist builds them
on its two workers at once (and never builds one twice):

* the project's site from nbs/ as it stands. To stay within a few minutes on two shared cores it executes only
  `index` and `00_core` (override with LOSSVIZ_DOCS_EXECUTE, a comma-separated list of globs, or `*` for all);
  every other notebook still goes through nbdev's processing and is rendered with its API reference, without
  outputs. A notebook that fails to execute or to process fails the build, and so this test, with its name; so does
  an executed page whose code draws (`.plot(`) but that shows no figure. Its 404 page is opened at a missing URL.
* the gallery (nbs/gallery.ipynb) alone, executed: every kind of figure lossviz draws, plotly and matplotlib.
* a one-page site from a notebook written here, with a plotly figure, a matplotlib figure, an ipywidget, a hidden
  cell and an `eval: false` cell, so the output pipeline is checked apart from any notebook of the project.

Every page is opened from a localhost server that, like GitHub Pages, answers a missing path with the site's
404.html; the browser may not reach any other host (such requests are recorded and aborted), must log no console
error, must have drawn every plotly figure on the page (an `svg.main-svg` with the traces' paths, or the WebGL canvas
of a 3D scene) and loaded every image, and must show at least as many figures as the build counted on the page.
"""
import functools, http.server, importlib, inspect, json, os, pkgutil, subprocess, sys, threading, urllib.parse
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
EXECUTE = os.environ.get("LOSSVIZ_DOCS_EXECUTE", "index,00_core")
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
DRAWN_JS = """() => [...document.querySelectorAll('.plotly-graph-div')].map(d => [
    d.classList.contains('js-plotly-plot') && !!d.querySelector('svg.main-svg'),
    [...d.querySelectorAll('svg.main-svg g.trace, svg.main-svg g.hm')].filter(g => [...g.querySelectorAll('path, image')]
        .some(e => (e.getAttribute('d') || e.getAttribute('href') || e.getAttribute('xlink:href') || '').length > 1)).length,
    [...d.querySelectorAll('.gl-container canvas')].filter(c => c.width > 0 && c.height > 0).length,
    (d._fullData || []).map(t => t.type)])"""
API_ENTRIES_JS = """() => Object.fromEntries([...document.querySelectorAll('[data-api]')].reverse().map(e => [e.dataset.api, [
    e.querySelector('pre.lossviz-sig')?.innerText || '', e.querySelector('a.lossviz-source')?.getAttribute('href') || null]]))"""
REPO = __import__("tomllib").loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"].rstrip("/")

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                                "(apt-get install chromium chromium-driver) for the browser checks")


def build(out, *args):
    "Run docs/build.py into `out`; the build's own output is shown when it fails"
    env = dict(os.environ)
    if os.environ.get("PYTEST_XDIST_WORKER"): env.setdefault("OMP_NUM_THREADS", "1")  # as tests/test_notebooks.py: the workers use every core
    res = subprocess.run([sys.executable, str(ROOT / "docs" / "build.py"), "--out", str(out), "--jobs", "2", *args],
                         capture_output=True, text=True, cwd=ROOT, env=env)
    assert res.returncode == 0, f"docs build failed:\n{res.stdout[-4000:]}\n{res.stderr[-8000:]}"
    return json.loads((out / "build-summary.json").read_text())


def figures_site(tmp):
    "A site built from one notebook written here, with every kind of output"
    import nbformat as nbf
    nbs = tmp / "fixture_nbs"
    nbs.mkdir()
    nb = nbf.v4.new_notebook()
    nb.cells = [
        nbf.v4.new_markdown_cell("# Figures\n\n> Every kind of output the docs site renders."),
        nbf.v4.new_markdown_cell("TeX is typeset locally: $\\lambda_{\\max}(H)$ and $$\\sum_i p_i = 1$$"),
        nbf.v4.new_code_cell("#| hide\nimport plotly.graph_objects as go, matplotlib.pyplot as plt, ipywidgets as w"),
        nbf.v4.new_code_cell("go.Figure(go.Scatter(x=[0, 1, 2], y=[1, 3, 2], name='fixture-trace'))"),
        nbf.v4.new_code_cell("fig, ax = plt.subplots(figsize=(3, 2)); ax.plot([0, 1], [1, 0]); plt.show()"),
        nbf.v4.new_code_cell("w.IntSlider(value=3)"),
        nbf.v4.new_code_cell("#| eval: false\nraise RuntimeError('cells marked eval: false must not run')"),
    ]
    nbf.write(nb, nbs / "figures.ipynb")
    out = tmp / "figures_site"
    return out, build(out, "--nbs", str(nbs))


class _Site(http.server.SimpleHTTPRequestHandler):
    "A static host: files from the folder, and its 404.html (status 404) for a missing path, as GitHub Pages does"
    def log_message(self, *args): pass

    def send_error(self, code, message=None, explain=None):
        page = Path(self.directory) / "404.html"
        if code != 404 or not page.exists(): return super().send_error(code, message, explain)
        body = page.read_bytes()
        self.send_response(404)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD": self.wfile.write(body)


@pytest.fixture(scope="module")
def serve():
    "serve(folder) -> base URL of a localhost server (free port, own thread) for `folder`"
    servers = []
    def _serve(folder):
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Site, directory=str(folder)))
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}/"
    yield _serve
    for s in servers: s.shutdown(); s.server_close()


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (never `playwright install`)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Visit:
    """One page opened in its own browser context: console errors and off-localhost requests recorded. `status` is the
    HTTP status the page is served with: Chromium reports a document served with an error status (the 404 page) as a
    console error of the document itself, which is then expected and not recorded"""
    def __init__(self, browser, url, status=200):
        self.errors, self.external, self.url, self.status = [], [], url, status
        self.context = browser.new_context()
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        self.page.on("requestfailed", lambda r: self.errors.append(f"request failed: {r.url} {r.failure}")
                     if urllib.parse.urlsplit(r.url).hostname in LOCAL_HOSTS else None)
        self.response = self.page.goto(url, wait_until="load")
        self.page.wait_for_load_state("networkidle")

    def _console(self, m):
        own_status = self.status >= 400 and m.location.get("url") == self.url and m.location.get("lineNumber") == 0 and str(self.status) in m.text
        if m.type == "error" and not own_status: self.errors.append(f"console {m.type}: {m.text} ({m.location.get('url')})")

    def _route(self, route):
        u = urllib.parse.urlsplit(route.request.url)
        if u.scheme in ("http", "https", "ws", "wss") and u.hostname not in LOCAL_HOSTS:
            self.external.append(route.request.url)
            return route.abort()
        return route.continue_()

    def plotly_figures(self):
        """For each plotly figure on the page: [plotted (a .js-plotly-plot with its svg.main-svg), traces and heatmaps
        drawn in the svg (with a non-empty path or image), WebGL canvases drawn (3D scenes), trace types]"""
        from playwright.sync_api import TimeoutError as Timeout   # installed: the browser fixture needs it
        try: self.page.wait_for_function(f"() => ({DRAWN_JS})().every(([svg, marks, gl]) => svg && marks + gl > 0)", timeout=20_000)
        except Timeout: pass   # the caller's assertion names the figure that was not drawn
        return self.page.evaluate(DRAWN_JS)

    def images(self):
        "naturalWidth of every image in the cells' outputs (0: not loaded)"
        return self.page.evaluate("() => [...document.querySelectorAll('.jp-OutputArea img')].map(i => i.complete ? i.naturalWidth : 0)")

    def close(self): self.context.close()


def check_page(browser, url, figures=0, status=200):
    """Open `url`; assert it is served with `status`, no console error, no request off localhost, every plotly figure
    drawn, every image loaded, and at least `figures` of them (what the build counted on the page). Returns the Visit"""
    v = Visit(browser, url, status)
    assert v.response.status == status, f"{url}: HTTP status {v.response.status}, not {status}"
    assert not v.external, f"{url} requested other hosts: {v.external}"
    assert not v.errors, f"{url}: {v.errors}"
    plotly = v.plotly_figures()
    for i, (plotted, marks, gl, types) in enumerate(plotly):
        assert plotted and marks + gl > 0, f"{url}: plotly figure {i} ({types}) was not drawn (svg: {plotted}, traces: {marks}, WebGL: {gl})"
    images = v.images()
    assert all(w > 0 for w in images), f"{url}: an image did not load (naturalWidth {images})"
    assert len(plotly) + len(images) >= figures, f"{url}: the build counted {figures} figures, the browser shows {len(plotly)} + {len(images)}"
    return v


def public_modules():
    "{module name: __all__} for every public module of lossviz, those of subpackages (`integrations.lightning`) included"
    import lossviz
    out = {}
    for m in pkgutil.walk_packages(lossviz.__path__, prefix="lossviz.", onerror=lambda name: pytest.fail(f"{name} cannot be imported")):
        name = m.name.removeprefix("lossviz.")
        if any(part.startswith("_") for part in name.split(".")) or m.ispkg: continue
        try: mod = importlib.import_module(m.name)
        except Exception as e: pytest.fail(f"{m.name} cannot be imported, so its API cannot be checked: {e!r}")
        out[name] = list(getattr(mod, "__all__", []))
    return out


def test_docs_site(tmp_path, serve, browser):
    """The project's site: every page loads offline with no console error and draws its plotly figures, every name
    in the `__all__` of every lossviz module is in the API reference, and search finds a function.
    One test (one build) so that pytest-xdist does not build the site once per worker."""
    out = tmp_path / "site"
    summary = build(out, "--execute", EXECUTE)
    base = serve(out)
    assert summary["pages"][0] == "index.html" and (out / "index.html").exists()
    nbs = {p.name for p in (ROOT / "nbs").glob("*.ipynb")}
    assert set(summary["executed"]) >= {"index.ipynb", "00_core.ipynb"} & nbs
    plotly_copies = [p.relative_to(out).as_posix() for p in out.rglob("plotly*.js")]
    assert plotly_copies == ["assets/plotly.min.js"], plotly_copies
    modules = public_modules()
    unlisted = [m for m in modules if m not in summary["modules"]]
    assert not unlisted, f"no page in the docs site for {', '.join(f'lossviz.{m}' for m in unlisted)}"
    api_pages = {summary["modules"][m]["page"]: m for m in modules}
    for page in summary["pages"]:   # each page visited once: the module pages' API reference checked in the same visit
        v = check_page(browser, base + page, summary["figures"][page])
        if page in api_pages: check_api_reference(v, api_pages[page], modules[api_pages[page]])
        v.close()
    v = check_page(browser, base + "no/such/page.html", status=404)   # the 404 page at a missing URL two folders down
    assert "404" in v.page.inner_text("article"), v.page.inner_text("article")
    v.close()
    check_search(browser, base)


GALLERY_KINDS = {"scatter", "bar", "contour", "surface", "heatmap", "volume", "scatter3d"}


def test_gallery(tmp_path, serve, browser):
    """The gallery page, executed: every plotly figure drawn (3D scenes by WebGL), every matplotlib figure loaded, and
    every kind of plotly trace lossviz draws among them"""
    out = tmp_path / "gallery_site"
    summary = build(out, "--only", "gallery", "--execute", "gallery")
    v = check_page(browser, serve(out) + "gallery.html", summary["figures"]["gallery.html"])
    plotly, images = v.plotly_figures(), v.images()
    kinds = {t for *_, types in plotly for t in types}
    assert kinds >= GALLERY_KINDS, f"the gallery lacks {GALLERY_KINDS - kinds}"
    assert len(plotly) >= 20 and len(images) >= 7, (len(plotly), len(images))   # 21 plotly figures, 7 matplotlib ones
    v.close()


def check_api_reference(v, module, names):
    "Every name of `names` (the module's `__all__`) has an entry on the page of the Visit `v`: a signature, and a source link for functions and classes"
    entries = v.page.evaluate(API_ENTRIES_JS)
    missing = [n for n in names if n not in entries]
    assert not missing, f"lossviz.{module}: not in the API reference: {missing}"
    for n in names:
        signature, href = entries[n]
        assert n in signature, f"{module}.{n}: no signature"
        obj = getattr(importlib.import_module(f"lossviz.{module}"), n)
        try: inspect.getsourcelines(obj)
        except (TypeError, OSError): continue   # constants and generated classes (e.g. `as_module` losses) have no source lines to link to
        assert href and href.startswith(REPO + "/blob/"), f"{module}.{n}: source link {href}"


def check_search(browser, base):
    "Typing a function's name into the search box lists the page that documents it"
    v = Visit(browser, base + "index.html")
    box = v.page.locator("input.md-search__input")
    box.click()
    box.press_sequentially("make_generator", delay=20)  # typed, as a reader would: the search reacts to key events
    v.page.locator(".md-search-result__link").first.wait_for(timeout=20_000)
    hrefs = v.page.eval_on_selector_all(".md-search-result__link", "els => els.map(e => e.getAttribute('href'))")
    assert any("core.html" in h and "make_generator" in h for h in hrefs), hrefs
    assert not v.errors and not v.external, (v.errors, v.external)
    v.close()


def test_figures_widgets_and_hidden_cells(tmp_path, serve, browser):
    """plotly drawn from the single local plotly.js, matplotlib as an image, a widget as a note, TeX typeset by the
    local MathJax, nbdev directives obeyed"""
    out, summary = figures_site(tmp_path)
    assert summary["executed"] == ["figures.ipynb"]
    assert summary["figures"] == {"figures.html": 2}
    v = check_page(browser, serve(out) + "figures.html", summary["figures"]["figures.html"])
    figs = v.plotly_figures()
    assert figs == [[True, 1, 0, ["scatter"]]], figs
    assert v.page.locator('img[src^="data:image/png"]').count() == 1            # matplotlib, as an image
    assert "live when you run this notebook in JupyterLab" in v.page.inner_text(".lossviz-note")  # widget fallback
    v.page.wait_for_function("() => document.querySelectorAll('.MathJax, .MathJax_Display').length >= 2", timeout=20_000)
    text = v.page.inner_text("article")
    assert "import plotly.graph_objects" not in text and "must not run" in text  # hidden cell gone, eval: false shown
    html = (out / "figures.html").read_text()
    assert 'src="./assets/plotly.min.js"' in html and "plotly.js v" not in html  # plotly.js referenced, not inlined
    v.close()
