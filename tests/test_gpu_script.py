"""benchmarks/gpu.py cannot rot: on a machine without CUDA it runs every section's code paths at tiny sizes, checks
their numbers against the references, and this test reads what it wrote."""
import json, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_script_runs_tiny(tmp_path):
    out = tmp_path / "gpu.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--tiny", "--device", "cpu", "--json", str(out)],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["tiny"] and set(figures["sections"]) == {"hvp", "landscape", "lce", "nce"}
    rows = {f"{s}/{label}": variants for s, res in figures["sections"].items() for label, variants in res.items()}
    expected = {"hvp/double_backward": {"double_backward loop", "double_backward vmap"}, "hvp/jvp": {"jvp loop", "jvp vmap"},
                "landscape/slice_2d": {"loop", "vmap"},
                "lce/linear_cross_entropy": {"materialised", "torch linear_cross_entropy", "lossviz (torch backend)"},
                "nce/info_nce_loss": {"dense (losses)", "tiled (kernels)"}}
    for key, names in expected.items():
        assert names <= rows[key].keys(), (key, rows[key].keys())
        for name in names: assert rows[key][name]["seconds"] > 0 and rows[key][name]["peak"] is None
    assert "CHECKS FAILED" not in r.stdout


def test_gpu_script_rejects_unknown_section():
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--only", "hvp,nope"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--only: unknown sections ['nope']" in r.stderr
