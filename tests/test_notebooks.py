"""Run every notebook in nbs/ as a test, each in its own process (nbdev's test runner), so the suite ends with a pytest summary.

Cells flagged with the `tst_flags` of pyproject.toml (`notest slow gpu`) are skipped; set LOSSVIZ_TEST_FLAGS="slow" (or "slow gpu")
to run them too. GPU cells only make sense where CUDA is available.
"""
import os, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NBS = sorted(p for p in (ROOT / "nbs").rglob("*.ipynb")
             if ".ipynb_checkpoints" not in p.parts and not p.name.startswith("_"))
NBDEV_TEST = Path(sys.executable).with_name("nbdev-test")


def test_notebooks_found():
    assert any(p.name == "00_core.ipynb" for p in NBS), f"no notebooks found under {ROOT / 'nbs'}"


@pytest.mark.parametrize("nb", NBS, ids=[str(p.relative_to(ROOT / "nbs")) for p in NBS])
def test_notebook(nb):
    cmd = [str(NBDEV_TEST), str(nb), "--n-workers", "0"]
    if os.environ.get("LOSSVIZ_TEST_FLAGS"): cmd += ["--flags", os.environ["LOSSVIZ_TEST_FLAGS"]]
    env = dict(os.environ)
    if os.environ.get("PYTEST_XDIST_WORKER"): env.setdefault("OMP_NUM_THREADS", "1")  # the xdist workers already use every core
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200, env=env)
    assert r.returncode == 0, f"{nb.name} failed:\n{r.stdout[-4000:]}\n{r.stderr[-8000:]}"
