"""The docs site, built offline from the notebooks and checked in a real browser (headless Debian Chromium + Playwright).

Two sites are built into temporary folders with `docs/build.py`, one per test, so that pytest-xdist builds them
on its two workers at once (and never builds one twice):

* the project's site from nbs/ as it stands. To stay within a few minutes on two shared cores it executes only
  `index` and `00_core` (override with LOSSVIZ_DOCS_EXECUTE, a comma-separated list of globs, or `*` for all);
  every other notebook still goes through nbdev's processing and is rendered with its API reference, without
  outputs. A notebook that fails to execute or to process fails the build, and so this test, with its name.
* a one-page site from a notebook written here, with a plotly figure, a matplotlib figure, an ipywidget, a hidden
  cell and an `eval: false` cell, so the figure pipeline is checked even while no module notebook displays a figure.

Every page is opened from a localhost server; the browser may not reach any other host (such requests are recorded
and aborted), must log no console error, and must have drawn every plotly figure on the page.
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
REPO = __import__("tomllib").loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"].rstrip("/")

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                                "(apt-get install chromium chromium-driver) for the browser checks")


def build(out, *args):
    "Run docs/build.py into `out`; the build's own output is shown when it fails"
    res = subprocess.run([sys.executable, str(ROOT / "docs" / "build.py"), "--out", str(out), "--jobs", "2", *args],
                         capture_output=True, text=True, cwd=ROOT)
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


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args): pass


@pytest.fixture(scope="module")
def serve():
    "serve(folder) -> base URL of a localhost server (free port, own thread) for `folder`"
    servers = []
    def _serve(folder):
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
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
    "One page opened in its own browser context: console errors and off-localhost requests recorded"
    def __init__(self, browser, url):
        self.errors, self.external = [], []
        self.context = browser.new_context()
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("console", lambda m: self.errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        self.page.on("requestfailed", lambda r: self.errors.append(f"request failed: {r.url} {r.failure}")
                     if urllib.parse.urlsplit(r.url).hostname in LOCAL_HOSTS else None)
        self.page.goto(url, wait_until="load")
        self.page.wait_for_load_state("networkidle")

    def _route(self, route):
        u = urllib.parse.urlsplit(route.request.url)
        if u.scheme in ("http", "https", "ws", "wss") and u.hostname not in LOCAL_HOSTS:
            self.external.append(route.request.url)
            return route.abort()
        return route.continue_()

    def plotly_figures(self):
        "For each plotly figure on the page: (has its svg.main-svg, number of data traces drawn)"
        self.page.wait_for_function("""() => [...document.querySelectorAll('.plotly-graph-div')]
            .every(d => d.querySelector('svg.main-svg') && d._fullData)""", timeout=20_000)
        return self.page.evaluate("""() => [...document.querySelectorAll('.plotly-graph-div')].map(d =>
            [!!d.querySelector('svg.main-svg'), d.querySelectorAll('svg.main-svg g.trace').length])""")

    def close(self): self.context.close()


def check_page(browser, url):
    "Open `url`; assert no console error, no request off localhost, every plotly figure drawn. Returns the Visit"
    v = Visit(browser, url)
    assert not v.external, f"{url} requested other hosts: {v.external}"
    assert not v.errors, f"{url}: {v.errors}"
    for has_svg, traces in v.plotly_figures():
        assert has_svg and traces > 0, f"{url}: a plotly figure was not drawn (svg: {has_svg}, traces: {traces})"
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
    for page in summary["pages"]:
        check_page(browser, base + page).close()
    check_search(browser, base)
    check_api_reference(browser, base, summary)


def check_api_reference(browser, base, summary):
    "Every name in every lossviz module's `__all__` has an entry (signature; a source link for functions and classes) on its module's page"
    for module, names in public_modules().items():
        assert module in summary["modules"], f"lossviz.{module} has no page in the docs site"
        v = Visit(browser, base + summary["modules"][module]["page"])
        documented = set(v.page.evaluate("() => [...document.querySelectorAll('[data-api]')].map(e => e.dataset.api)"))
        missing = [n for n in names if n not in documented]
        assert not missing, f"lossviz.{module}: not in the API reference: {missing}"
        for n in names:
            entry = v.page.locator(f'[data-api="{n}"]').first
            assert n in entry.locator("pre.lossviz-sig").first.inner_text(), f"{module}.{n}: no signature"
            obj = getattr(importlib.import_module(f"lossviz.{module}"), n)
            try: inspect.getsourcelines(obj)
            except (TypeError, OSError): continue   # constants and generated classes (e.g. `as_module` losses) have no source lines to link to
            href = entry.locator("a.lossviz-source").first.get_attribute("href")
            assert href.startswith(REPO + "/blob/"), f"{module}.{n}: source link {href}"
        v.close()


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
    v = check_page(browser, serve(out) + "figures.html")
    figs = v.plotly_figures()
    assert len(figs) == 1 and figs[0] == [True, 1], figs
    assert v.page.locator('img[src^="data:image/png"]').count() == 1            # matplotlib, as an image
    assert "live when you run this notebook in JupyterLab" in v.page.inner_text(".lossviz-note")  # widget fallback
    v.page.wait_for_function("() => document.querySelectorAll('.MathJax, .MathJax_Display').length >= 2", timeout=20_000)
    text = v.page.inner_text("article")
    assert "import plotly.graph_objects" not in text and "must not run" in text  # hidden cell gone, eval: false shown
    html = (out / "figures.html").read_text()
    assert 'src="./assets/plotly.min.js"' in html and "plotly.js v" not in html  # plotly.js referenced, not inlined
    v.close()
