"""The module map of CONTRIBUTING.md holds: imports between lossviz modules run only downwards."""
import ast, re
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "lossviz"
SKIP = {"lossviz", "lossviz._modidx", "lossviz.integrations"}   # the hand-written package inits and nbdev's index


def module_map(text: str) -> dict[str, int]:
    "Layer of each module, from the rows `| layer | `lossviz.x` | notebook | ... |` of CONTRIBUTING.md's table"
    rows = re.findall(r"^\|\s*(\d+)\s*\|\s*`(lossviz(?:\.\w+)+)`\s*\|", text, flags=re.M)
    if not rows: raise ValueError("CONTRIBUTING.md has no module table rows `| layer | `lossviz.x` | ...`")
    layers = {}
    for layer, mod in rows:
        if mod in layers: raise ValueError(f"{mod} appears twice in CONTRIBUTING.md's module map")
        layers[mod] = int(layer)
    return layers


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def lossviz_imports(path: Path) -> set[str]:
    "Every lossviz module that the file imports, at module level or inside functions (relative imports resolved)"
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "lossviz"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else: mod = node.module or ""
            if mod.split(".")[0] != "lossviz": continue
            # `from . import calibration, hessian` imports modules; `from .core import x` imports names of one module
            subs = {f"{mod}.{a.name}" for a in node.names}
            found |= {s for s in subs if (PKG.parent / (s.replace(".", "/") + ".py")).exists()} or {mod}
    return found - {"lossviz"}


def modules():
    return sorted(p for p in PKG.rglob("*.py") if module_name(p) not in SKIP)


def test_module_map_parses():
    text = "| 0 | `lossviz.core` | 00_core | owns |\n| 1 | `lossviz.plots` | 00a_plots | draws |\n"
    assert module_map(text) == {"lossviz.core": 0, "lossviz.plots": 1}
    with pytest.raises(ValueError, match="twice"): module_map(text + text)
    with pytest.raises(ValueError, match="no module table"): module_map("no table here")


def test_imports_resolve():
    "The import reader sees relative, absolute, package-level and function-level imports"
    imports = lossviz_imports(PKG / "monitor.py")
    assert {"lossviz.core", "lossviz.hessian", "lossviz.landscape"} <= imports, imports
    assert lossviz_imports(PKG / "core.py") == set()


def test_every_module_is_mapped():
    layers = module_map((ROOT / "CONTRIBUTING.md").read_text())
    names = {module_name(p) for p in modules()}
    assert not names - layers.keys(), f"modules missing from CONTRIBUTING.md's map: {sorted(names - layers.keys())}"
    assert not layers.keys() - names, f"CONTRIBUTING.md maps modules that do not exist: {sorted(layers.keys() - names)}"


def test_imports_run_downwards():
    layers = module_map((ROOT / "CONTRIBUTING.md").read_text())
    bad = [f"{module_name(p)} (layer {layers[module_name(p)]}) imports {m} (layer {layers[m]})"
           for p in modules() for m in sorted(lossviz_imports(p))
           if m in layers and layers[m] >= layers[module_name(p)]]
    assert not bad, "imports that run upwards or sideways in CONTRIBUTING.md's module map:\n" + "\n".join(bad)


def test_readme_links_contributing():
    assert "CONTRIBUTING.md" in (ROOT / "README.md").read_text()


def test_benchmark_scripts_shadow_no_installed_module():
    "A script run as `python benchmarks/x.py` puts benchmarks/ first on sys.path: a file named like an installed package (`kernels`, which transformers probes for; `calibration`) would be imported in its place"
    import importlib.util, subprocess, sys
    stems = [p.stem for p in sorted((ROOT / "benchmarks").glob("*.py"))]
    code = "import importlib.util, sys; print([s for s in sys.argv[1:] if importlib.util.find_spec(s) is not None])"
    found = subprocess.run([sys.executable, "-c", code, *stems], capture_output=True, text=True, cwd="/", check=True).stdout.strip()
    assert found == "[]", f"benchmark scripts named like installed modules: {found}"
