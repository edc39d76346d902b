__version__ = "0.1.0"

import importlib as _importlib

_SUBMODULES = ("core", "plots", "losses", "kernels", "grid", "hessian", "landscape", "calibration", "geometry", "monitor", "widgets", "report",
               "distributed", "demo", "cli", "integrations")


def __getattr__(name):
    "Import submodules on first use, so `import lossviz as lv; lv.hessian` works without importing everything up front"
    if name in _SUBMODULES: return _importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'lossviz' has no attribute {name!r}")


def __dir__(): return sorted([*globals(), *_SUBMODULES])
