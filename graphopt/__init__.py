"""graphopt: an ONNX graph optimizer and deployment compiler, verified in ONNX Runtime."""

from __future__ import annotations

import importlib

__all__ = ["optimize", "inspect", "build", "OptimizeResult", "load", "save", "GraphoptError", "InputError",
           "UsageError", "VerificationError", "__version__"]
__version__ = "0.1.0"

# Resolved on first use (PEP 562): `import graphopt` stays cheap, and the command line can set
# up its imports (see graphopt/app/startup.py) before onnx-ir loads.
_EXPORTS = {
    "optimize": "graphopt.app.api", "inspect": "graphopt.app.api", "OptimizeResult": "graphopt.app.api",
    "load": "graphopt.core.io", "save": "graphopt.core.io",
    "GraphoptError": "graphopt.core.errors", "InputError": "graphopt.core.errors", "UsageError": "graphopt.core.errors",
    "VerificationError": "graphopt.core.errors", "build": "graphopt.app.build",
}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'graphopt' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
