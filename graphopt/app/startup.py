"""Start-up cost of the command line: defer sympy until something uses it.

onnx-ir imports sympy at load (0.45 s, half of the command's import time) but uses it only
for arithmetic on symbolic dims, which a plain `graphopt optimize` never does. The command
line puts a stand-in module in its place; the first attribute anyone reads from it imports
the real package and forwards to it. (importlib's LazyLoader cannot do this on Python 3.11:
the `import sympy` statement itself reads `__spec__`, which loads the package.) A package
that has moved on leaves the stand-in unused, never wrong. Library
users' processes are left as they are.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types


class _Deferred(types.ModuleType):
    def __getattr__(self, attr: str):
        real = _load_real(self)
        return getattr(real, attr)


def _load_real(stub: _Deferred) -> types.ModuleType:
    if sys.modules.get(stub.__name__) is stub:
        del sys.modules[stub.__name__]
    real = importlib.import_module(stub.__name__)
    # Later reads through the stand-in (modules that imported it keep it) find the real names.
    stub.__dict__.update({k: v for k, v in real.__dict__.items() if k not in ("__spec__", "__loader__")})
    stub.__spec__ = real.__spec__
    return real


def defer(name: str) -> None:
    """Put a stand-in for module `name` in sys.modules unless it is already imported."""
    if name in sys.modules:
        return
    stub = _Deferred(name)
    stub.__spec__ = importlib.machinery.ModuleSpec(name, None)  # no loader: nothing runs on `import name`
    sys.modules[name] = stub


def defer_sympy() -> None:
    # onnx-ir's expression parser reads sympy names at import; nothing calls it until a
    # symbolic dim is parsed, so it waits too.
    if "onnx_ir" not in sys.modules and importlib.util.find_spec("sympy") is not None:
        defer("sympy")
        defer("onnx_ir._symbolic_shapes")
