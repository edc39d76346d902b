"""The HTML report of `lossviz.report`, opened in a real browser (headless Debian Chromium driven by Playwright).

A small MLP trained for a few epochs on scikit-learn's digits is reported with every section, and the file is opened
from disk (file://). The page must load without a console error or an uncaught exception, request nothing but the
file itself (every non-file request is recorded and aborted: the report is meant to be read offline), and every
plotly figure in it must have been drawn: an `svg.main-svg` with at least one trace layer in it. Playwright's own
browser download is never used; the test skips when /usr/bin/chromium (or `LOSSVIZ_CHROMIUM`) is absent.
"""
import os
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("LOSSVIZ_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"needs Chromium at {CHROMIUM} (apt-get install chromium)")

# For each plotly graph div: is there an svg.main-svg, and how many drawn traces (scatter/bar traces, contour and heatmap layers)?
FIGURES_JS = """() => Array.from(document.querySelectorAll('.plotly-graph-div')).map(gd => ({
    id: gd.id, svg: gd.querySelectorAll('svg.main-svg').length,
    traces: gd.querySelectorAll('g.trace, g.contour, g.hm, g.heatmaplayer image').length,
    data: (gd._fullData || []).length}))"""


@pytest.fixture(scope="module")
def report_file(tmp_path_factory):
    import torch
    import torch.nn.functional as F
    from lossviz.demo import MLP, digits, train
    from lossviz.report import report
    data = digits(flatten=True)
    torch.manual_seed(0)
    model = MLP((64, 64, 64, 10))
    train(model, data, epochs=3, verbose=False)
    out = tmp_path_factory.mktemp("report") / "report.html"
    rep = report(model, F.cross_entropy, (data.x_test, data.y_test), out=out, feature_layer="3", classifier="4",
                 landscape_steps=7, density_iter=20, density_runs=2, n_boot=100, verbose=False)
    assert all(s.status == "ok" for s in rep.sections.values()), rep
    return out


def test_report_renders_offline_without_errors(report_file):
    from playwright.sync_api import sync_playwright
    errors, external = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"page error: {e}"))

            def route(r):
                url = r.request.url
                if url.startswith(("file://", "data:", "about:")): r.continue_()
                else: external.append(url); r.abort()
            page.route("**/*", route)
            page.goto(report_file.as_uri(), wait_until="load")
            page.wait_for_function("() => Array.from(document.querySelectorAll('.plotly-graph-div')).every(gd => gd._fullLayout)",
                                   timeout=60_000)
            figures = page.evaluate(FIGURES_JS)
            sections = page.evaluate("() => Array.from(document.querySelectorAll('section')).map(s => s.id)")
        finally:
            browser.close()
    assert not errors, errors
    assert not external, f"the report requested non-local resources: {external}"
    assert sections == ["summary", "hessian", "landscape", "calibration", "geometry"]
    assert len(figures) == 4, figures
    for f in figures:
        assert f["svg"] >= 1 and f["traces"] >= 1 and f["data"] >= 1, f"figure not rendered: {f}"
