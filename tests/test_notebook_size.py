"""Notebook outputs stay small in git: the docs build executes the notebooks itself, so nothing needs saved outputs.

Every notebook under nbs/ (committed or about to be: untracked ones are checked too) may carry at most 1 MB of
outputs (code-cell outputs plus markdown attachments, measured as the JSON they take in the file). `nbdev-clean`
does not strip outputs, so a notebook saved after running it in JupyterLab would otherwise bring plotly.js or
base64 images into the repository.
"""
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 1_000_000  # bytes


def output_bytes(nb: dict) -> list[tuple[int, int]]:
    "(cell index, bytes of outputs/attachments) for each cell of `nb` that has any"
    sizes = []
    for i, c in enumerate(nb.get("cells", [])):
        n = sum(len(json.dumps(c.get(k), separators=(",", ":"))) for k in ("outputs", "attachments") if c.get(k))
        if n: sizes.append((i, n))
    return sizes


def notebooks():
    return sorted(p for p in (ROOT / "nbs").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def too_big(path: Path, root: Path = ROOT) -> str | None:
    "Why `path` carries too much output, or None"
    sizes = output_bytes(json.loads(path.read_text()))
    total = sum(n for _, n in sizes)
    if total <= LIMIT: return None
    worst = ", ".join(f"cell {i}: {n / 1e6:.2f} MB" for i, n in sorted(sizes, key=lambda x: -x[1])[:3])
    return (f"{path.relative_to(root)} carries {total / 1e6:.2f} MB of outputs (limit {LIMIT / 1e6:g} MB; largest "
            f"{worst}); clear them (JupyterLab: Edit > Clear Outputs of All Cells), the docs build executes it")


@pytest.mark.parametrize("path", notebooks(), ids=lambda p: p.relative_to(ROOT / "nbs").as_posix())
def test_notebook_outputs_small(path):
    assert too_big(path) is None, too_big(path)


def test_the_check_catches_big_outputs(tmp_path):
    cell = lambda text: {"cell_type": "code", "source": "x", "metadata": {}, "execution_count": 1,
                         "outputs": [{"output_type": "stream", "name": "stdout", "text": text}]}
    small, big = tmp_path / "small.ipynb", tmp_path / "big.ipynb"
    small.write_text(json.dumps({"cells": [cell("a" * 1000)] * 3}))
    big.write_text(json.dumps({"cells": [cell("a" * 600_000), cell("b" * 500_000)]}))
    assert output_bytes(json.loads(small.read_text()))[0][1] > 1000
    assert too_big(small, tmp_path) is None
    assert "big.ipynb carries 1.10 MB of outputs" in too_big(big, tmp_path)
