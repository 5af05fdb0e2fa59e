"""Fix the dims of graph inputs that the user names with `--shape NAME=1x3x224x224`.

A model exported with dynamic batch/sequence dims keeps them symbolic through every
graphopt pass; fixing them is the user's decision, never ours. When the user gives shapes:

1. Each named graph input gets exactly those dims. A symbolic dim becomes the number; a
   static dim must already equal it.
2. A named symbolic dim (`batch`) fixed on one input is fixed wherever it appears: other
   inputs, graph outputs and intermediate annotations. Shape annotations of intermediate
   values that mention an unnamed dynamic dim are dropped (shape inference recomputes them).
   After this, `fold_shapes` folds everything that depends only on shapes.

Refused with a `UsageError` (nothing is changed): a name that is not a graph input (or is
an initializer), a rank that differs from the model's, a dim that contradicts a static
dim, one symbol fixed to two values, and non-positive dims.
"""

from __future__ import annotations

__all__ = ["SetInputShapesPass"]

import logging

import onnx_ir as ir

from graphopt.core.errors import UsageError
from graphopt.core.patterns import graphs_of
from graphopt.core.pipeline import CountedPassResult

logger = logging.getLogger(__name__)


class SetInputShapesPass(ir.passes.InPlacePass):
    """Set the dims of named graph inputs; propagate named symbols to outputs and annotations."""

    def __init__(self, shapes: dict[str, list[int]] | None = None):
        super().__init__()
        self.shapes = dict(shapes or {})

    def call(self, model: ir.Model) -> CountedPassResult:
        if not self.shapes:
            return CountedPassResult(model, False, {})
        graph = model.graph
        inputs = {v.name: v for v in graph.inputs if v.name not in graph.initializers}
        symbols: dict[str, int] = {}
        plan: list[tuple[ir.Value, list[int]]] = []
        for name, dims in self.shapes.items():
            value = inputs.get(name)
            if value is None:
                raise UsageError(f"--shape {name}=...: {name!r} is not a graph input; inputs are "
                                 f"{', '.join(sorted(inputs)) or '(none)'}")
            if any(d <= 0 for d in dims):
                raise UsageError(f"--shape {name}: dims must be positive, got {dims}")
            old = list(value.shape) if value.shape is not None else None
            if old is not None and len(old) != len(dims):
                raise UsageError(f"--shape {name}: rank {len(dims)} given, the model's input has rank {len(old)} "
                                 f"({_show(old)})")
            for i, d in enumerate(dims):
                if old is None:
                    continue
                if isinstance(old[i], int) and old[i] != d:
                    raise UsageError(f"--shape {name}: dim {i} is {old[i]} in the model, {d} given")
                sym = None if isinstance(old[i], int) else old[i].value
                if sym:
                    if symbols.setdefault(sym, d) != d:
                        raise UsageError(f"--shape: dim {sym!r} given as {symbols[sym]} and as {d}")
            plan.append((value, dims))
        fixed = 0
        for value, dims in plan:
            old = list(value.shape) if value.shape is not None else [None] * len(dims)
            fixed += sum(1 for o, d in zip(old, dims) if not isinstance(o, int))
            value.shape = ir.Shape(dims)
            logger.debug("input %s: %s -> %s", value.name, _show(old), dims)
        if fixed:
            self._propagate(model, symbols, {id(v) for v, _ in plan})
        logger.info("fixed %d dynamic dims from --shape", fixed)
        return CountedPassResult(model, bool(fixed), {"dims_fixed": fixed} if fixed else {})

    @staticmethod
    def _propagate(model: ir.Model, symbols: dict[str, int], done: set[int]) -> None:
        """Replace fixed symbols in every other value's shape; drop annotations with unnamed dims."""
        for graph in graphs_of(model):
            values = [*graph.inputs, *graph.outputs, *(o for n in graph for o in n.outputs)]
            for value in values:
                if id(value) in done or value.shape is None:
                    continue
                done.add(id(value))
                dims = list(value.shape)
                if not any(not isinstance(d, int) for d in dims):
                    continue
                is_interface = value.is_graph_input() or value.is_graph_output()
                if not is_interface and any(not isinstance(d, int) and not d.value for d in dims):
                    value.shape = None  # unknown dim: let shape inference recompute it
                    continue
                new = [symbols.get(d.value, d) if not isinstance(d, int) else d for d in dims]
                if new != dims:
                    value.shape = ir.Shape(new)


def _show(dims) -> str:
    return "x".join(str(d) if isinstance(d, int) else str(getattr(d, "value", d) or "?") for d in dims)
