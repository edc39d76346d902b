"""The Quarto side of the docs (nbdev-docs on GitHub Pages) stays consistent with the notebooks, without Quarto."""
import contextlib, io, os
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_sidebar_matches_nbdev():
    "nbs/sidebar.yml (pyproject has custom_sidebar = true) lists exactly what nbdev's generator lists for nbs/ now"
    from nbdev.quarto import nbdev_sidebar
    buf, cwd = io.StringIO(), os.getcwd()
    try:
        os.chdir(ROOT)
        with contextlib.redirect_stdout(buf): nbdev_sidebar.__wrapped__(printit=True, force=True)
    finally: os.chdir(cwd)
    committed = (ROOT / "nbs" / "sidebar.yml").read_text()
    assert committed.strip() == buf.getvalue().strip(), "nbs/sidebar.yml is stale: run `python docs/build.py --sidebar`"


def test_quarto_config():
    "_quarto.yml is a website using nbdev's metadata files and the local plotly.js, loading nothing from a CDN"
    q = yaml.safe_load((ROOT / "nbs" / "_quarto.yml").read_text())
    assert q["project"]["type"] == "website"
    assert q["metadata-files"] == ["nbdev.yml", "sidebar.yml"]
    assert (ROOT / "nbs" / q["format"]["html"]["css"]).exists()
    from nbdev.config import get_config
    base = get_config(ROOT).doc_baseurl.rstrip("/")  # where GitHub Pages serves the site (/lossviz)
    assert q["format"]["html"]["include-in-header"]["text"] == f'<script src="{base}/plotly.min.js"></script>'
    assert "plotly.min.js" in q["project"]["resources"]


def test_workflows_parse():
    "The GitHub workflows are valid YAML with jobs; the Pages workflow installs Quarto and runs nbdev-docs"
    wf = {p.name: yaml.safe_load(p.read_text()) for p in (ROOT / ".github" / "workflows").glob("*.y*ml")}
    assert wf and all(w.get("jobs") for w in wf.values())
    pages = (ROOT / ".github" / "workflows" / "deploy.yaml").read_text()
    assert "quarto-dev/quarto-actions/setup" in pages and "nbdev-docs" in pages and "--write-executed" in pages


def _docs_build():
    import importlib.util
    spec = importlib.util.spec_from_file_location("docs_build", ROOT / "docs" / "build.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_no_cell_breaks_nbdev_docs_processing():
    """nbdev's docs processing (nbdev-docs, nbdev-proc-nbs, docs/build.py) re-executes, in a fresh namespace, every
    exported cell and every cell containing an import: none of those may use a name only a skipped cell defines"""
    b = _docs_build()
    nbs = ROOT / "nbs"
    problems = [m for r in b.discover(nbs) for m in b.lint(nbs / r)]
    assert not problems, "\n".join(problems)


def test_the_lint_finds_what_nbdev_would_fail_on(tmp_path):
    import nbformat as nbf
    nb = nbf.v4.new_notebook()
    nb.cells = [nbf.v4.new_code_cell("#| export\nimport math\ndef f(x): return helper(x) + math.pi"),  # helper: later
                nbf.v4.new_code_cell("#| export\ndef helper(x): return [y for y in range(x)]"),
                nbf.v4.new_code_cell("data = [1, 2]"),                                      # skipped by nbdev
                nbf.v4.new_code_cell("import statistics\nstatistics.mean(data)"),          # run by nbdev: fails
                nbf.v4.new_code_cell("import os\nos.path.join('a', 'b')")]                 # run by nbdev: fine
    nbf.write(nb, tmp_path / "t.ipynb")
    problems = _docs_build().lint(tmp_path / "t.ipynb")
    assert len(problems) == 1 and "cell 3" in problems[0] and "but data would be undefined" in problems[0], problems


def test_a_page_that_draws_must_show_a_figure(tmp_path):
    """The docs build fails, naming the notebook, when an executed page's code draws (`.plot(`) but the page shows no
    figure (the figure assigned and never displayed); figures are counted per page, `output: false` cells left out"""
    import nbformat as nbf, pytest
    b = _docs_build()
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    nb = nbf.v4.new_notebook()
    nb.cells = [nbf.v4.new_markdown_cell("# Draws"),
                nbf.v4.new_code_cell("import plotly.graph_objects as go"),
                nbf.v4.new_code_cell("class Result:\n    def plot(self): return go.Figure(go.Scatter(y=[1, 2]))"),
                nbf.v4.new_code_cell("fig = Result().plot()")]                               # never displayed
    nbf.write(nb, nbs / "draws.ipynb")
    with pytest.raises(b.BuildError, match=r"draws\.ipynb: its code draws \(`\.plot\(`\) but the executed page shows no figure"):
        b.build(tmp_path / "site", nbs=nbs, log=lambda *a: None)
    png = {"output_type": "display_data", "metadata": {}, "data": {"image/png": "iVBOR", "text/plain": "<Figure>"}}
    plotly = {"output_type": "execute_result", "metadata": {}, "data": {"text/html": '<div></div><script>Plotly.newPlot("a", [])</script>'}}
    page = {"cells": [{"cell_type": "code", "metadata": {}, "source": "r.plot()", "outputs": [plotly, png]},
                      {"cell_type": "code", "metadata": {"tags": ["remove_output"]}, "source": "r.plot()", "outputs": [png]},
                      {"cell_type": "code", "metadata": {"tags": ["skip-execution"]}, "source": "r.plot()", "outputs": []}]}
    assert b.figure_count(page) == 2 and b.calls_plot(page)
    assert not b.calls_plot({"cells": page["cells"][2:]})   # a cell that did not run draws nothing
