"""graphopt: an ONNX graph optimizer and deployment compiler, verified in ONNX Runtime."""

from graphopt.api import OptimizeResult, inspect, optimize
from graphopt.build import build  # the function shadows the submodule name: use `from graphopt.build import ...`
from graphopt.errors import GraphoptError, InputError, UsageError, VerificationError
from graphopt.io import load, save

__all__ = ["optimize", "inspect", "build", "OptimizeResult", "load", "save", "GraphoptError", "InputError",
           "UsageError", "VerificationError", "__version__"]
__version__ = "0.1.0"
