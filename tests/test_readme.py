"""README.md is generated from nbs/index.ipynb, and its two commands are exactly what .ci/run runs."""
import re, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bash_blocks(text):
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_readme_is_generated_from_index():
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "make_readme.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_readme_gives_two_commands_that_ci_runs():
    blocks = bash_blocks((ROOT / "README.md").read_text())
    setup = [b for b in blocks if "lossviz demo" in b]
    tests = [b for b in blocks if b.startswith(("pytest", "python -m pytest"))]
    assert len(setup) == 1 and len(tests) == 1, blocks
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    for cmd in setup + tests:
        assert "\n" not in cmd and cmd in ci, f"README command not run verbatim by .ci/run: {cmd}"
