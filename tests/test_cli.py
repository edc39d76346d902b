"""The `lossviz` command line, run as a user runs it: a subprocess of the installed console script."""
import subprocess, sys
from pathlib import Path

import pytest

LOSSVIZ = Path(sys.executable).with_name("lossviz")


def run(*args, timeout=300):
    return subprocess.run([str(LOSSVIZ), *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args", [("--help",), ("demo", "--help")])
def test_help(args):
    r = run(*args)
    assert r.returncode == 0 and "usage: lossviz" in r.stdout


def test_version():
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("lossviz ")


def test_demo_runs_and_reports():
    r = run("demo", "--epochs", "2", "--quiet")
    assert r.returncode == 0, r.stderr
    for section in ("== model ==", "== training ==", "accuracy"):
        assert section in r.stdout


def test_no_command_prints_help_and_fails():
    r = run()
    assert r.returncode == 2 and "usage: lossviz" in r.stdout


@pytest.mark.parametrize("args,msg", [(("demo", "--epochs", "0"), "must be >= 1"),
                                      (("demo", "--epochs", "x"), "invalid _positive value"),
                                      (("nonsense",), "invalid choice")])
def test_bad_arguments_fail_with_a_message(args, msg):
    r = run(*args)
    assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr
