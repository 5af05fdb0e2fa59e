"""graphopt: an ONNX graph optimizer and deployment compiler, verified in ONNX Runtime."""

from graphopt.api import OptimizeResult, inspect, optimize
from graphopt.errors import GraphoptError, InputError, UsageError, VerificationError
from graphopt.io import load, save

__all__ = ["optimize", "inspect", "OptimizeResult", "load", "save", "GraphoptError", "InputError",
           "UsageError", "VerificationError", "__version__"]
__version__ = "0.1.0"
