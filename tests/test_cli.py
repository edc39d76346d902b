"""The `lossviz` command line, run as a user runs it: a subprocess of the installed console script."""
import subprocess, sys
from pathlib import Path

import pytest

LOSSVIZ = Path(sys.executable).with_name("lossviz")


def run(*args, timeout=300, cwd=None):
    return subprocess.run([str(LOSSVIZ), *args], capture_output=True, text=True, timeout=timeout, cwd=cwd)


@pytest.mark.parametrize("args", [("--help",), ("demo", "--help"), ("report", "--help")])
def test_help(args):
    r = run(*args)
    assert r.returncode == 0 and "usage: lossviz" in r.stdout


def test_version():
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("lossviz ")


def test_demo_runs_and_reports(tmp_path):
    r = run("demo", "--epochs", "2", "--quiet", "--out", str(tmp_path / "demo.html"))
    assert r.returncode == 0, r.stderr
    for section in ("== model ==", "== training ==", "accuracy", "top_eigenvalues", "ECE", "NC1"):
        assert section in r.stdout
    assert (tmp_path / "demo.html").read_text().count("Plotly.newPlot(") == 4


def test_no_command_prints_help_and_fails():
    r = run()
    assert r.returncode == 2 and "usage: lossviz" in r.stdout


@pytest.mark.parametrize("args,msg", [(("demo", "--epochs", "0"), "must be >= 1"),
                                      (("demo", "--epochs", "x"), "invalid _positive value"),
                                      (("nonsense",), "invalid choice")])
def test_bad_arguments_fail_with_a_message(args, msg):
    r = run(*args)
    assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr


# `lossviz report` on a user's project: a module in the working directory that builds the model and returns the data.
PROJECT = """
import torch
from lossviz.demo import MLP, digits

def build():
    torch.manual_seed(0)
    return MLP((64, 32, 10))

def wider():
    return MLP((64, 48, 10))

def data():
    d = digits(flatten=True)
    return d.x_test[:150], d.y_test[:150]

def batches():
    x, y = data()
    return [(x[:100], y[:100]), (x[100:], y[100:])]

def not_a_model():
    return 3

LABEL = "not callable"
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    import torch
    d = tmp_path_factory.mktemp("project")
    (d / "toy_project.py").write_text(PROJECT)
    sys.path.insert(0, str(d))
    try:
        import toy_project
        model = toy_project.build()
        torch.save(model.state_dict(), d / "model.pt")
    finally:
        sys.path.remove(str(d))
    (d / "notes.pt").write_text("not a checkpoint")
    (d / "broken_project.py").write_text("raise RuntimeError('boom')\n")
    return d


def report(project, *args):
    return run("report", "--model", "toy_project:build", "--data", "toy_project:data", "--quiet", *args, cwd=project)


def test_report_writes_the_html(project):
    r = report(project, "--checkpoint", "model.pt", "--out", "r.html", "--feature-layer", "1", "--classifier", "2",
               "--landscape-steps", "5")
    assert r.returncode == 0, r.stderr
    page = (project / "r.html").read_text()
    for key in ("summary", "hessian", "landscape", "calibration", "geometry"):
        assert f'<section id="{key}" class="section ok">' in page
    assert page.count("* plotly.js v") == 1
    assert "Hessian spectrum" in r.stdout


def test_report_with_batches_and_a_loss_class(project):
    r = run("report", "--model", "toy_project:build", "--data", "toy_project:batches", "--loss", "torch.nn:CrossEntropyLoss",
            "--sections", "summary,calibration", "--out", "b.html", "--quiet", cwd=project)
    assert r.returncode == 0, r.stderr
    assert 'id="calibration" class="section ok"' in (project / "b.html").read_text()


@pytest.mark.parametrize("args,msg", [
    (("--checkpoint", "missing.pt"), "--checkpoint: no such file: missing.pt"),
    (("--checkpoint", "notes.pt"), "is not a loadable weights-only checkpoint"),
    (("--model", "toy_project:wider", "--checkpoint", "model.pt"), "does not fit the model: shape mismatch"),
    (("--model", "toy_project.build"), "--model must be MODULE:FUNCTION"),
    (("--model", "no_such_module:build"), "--model: cannot import module 'no_such_module'"),
    (("--model", "toy_project:nope"), "--model: module 'toy_project' has no attribute 'nope'"),
    (("--model", "broken_project:build"), "--model: importing module 'broken_project' failed: RuntimeError: boom"),
    (("--data", "toy_project:LABEL"), "--data: toy_project:LABEL is a str, not a function"),
    (("--model", "toy_project:not_a_model"), "returned a int, not an nn.Module"),
    (("--loss", "toy_project:missing_loss"), "--loss: module 'toy_project' has no attribute"),
    (("--sections", "summary,speed"), "--sections: unknown ['speed']"),
])
def test_report_errors_are_one_line(project, args, msg):
    base = {"--model": "toy_project:build", "--data": "toy_project:data"}
    rest = []
    for k, v in zip(args[::2], args[1::2]):
        if k in base: base[k] = v
        else: rest += [k, v]
    r = run("report", *[x for kv in base.items() for x in kv], *rest, "--quiet", "--out", "never.html", cwd=project)
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert msg in r.stderr, r.stderr
    assert r.stderr.startswith("lossviz report: error: ") and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert not (project / "never.html").exists()


def test_report_requires_model_and_data():
    r = run("report", "--model", "x:y")
    assert r.returncode == 2 and "--data" in r.stderr
