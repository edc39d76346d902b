"""Write README.md from nbs/index.ipynb (nbdev-readme needs Quarto, which these machines cannot install).

Markdown cells are copied as they are; code cells become ```python blocks; cells marked `#| hide` are left out.
`python tools/make_readme.py --check` exits 1 if README.md is out of date.
"""
import json, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _src(cell):
    s = cell["source"]
    return "".join(s) if isinstance(s, list) else s


def render(nb_path=ROOT / "nbs" / "index.ipynb"):
    "README.md text for the notebook at `nb_path`"
    nb = json.loads(Path(nb_path).read_text())
    parts = []
    for cell in nb["cells"]:
        src = _src(cell).strip()
        if not src: continue
        lines = src.splitlines()
        directives = [l for l in lines if l.startswith("#|")]
        if any(d.replace(" ", "") in ("#|hide", "#|exporti") for d in directives): continue
        body = "\n".join(l for l in lines if not l.startswith("#|")).strip()
        if cell["cell_type"] == "markdown": parts.append(body)
        elif cell["cell_type"] == "code" and body: parts.append(f"```python\n{body}\n```")
    header = "<!-- Generated from nbs/index.ipynb by tools/make_readme.py: edit the notebook, not this file. -->"
    return header + "\n\n" + "\n\n".join(parts) + "\n"


def main(argv=sys.argv[1:]):
    text, out = render(), ROOT / "README.md"
    if "--check" in argv:
        if not out.exists() or out.read_text() != text:
            print("README.md is out of date: run `python tools/make_readme.py`", file=sys.stderr)
            return 1
        return 0
    out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
