"""Keep only the graph outputs the user asked for (`--outputs`).

Cases:

1. `outputs=None`: nothing to do (the default; every output is kept).
2. `outputs=[names]`: the main graph's outputs become exactly those values, in the given
   order. The dropped outputs stay in the graph as plain values; what only fed them is
   now dead, and `EliminateDeadCodePass` removes it.

Refused (`graphopt.core.errors.UsageError`, one line): a name that is not a graph output (the
message lists the existing ones), a name given twice, and an empty list (a model must
have an output). Subgraph and function outputs are positional and never touched.
"""

from __future__ import annotations

__all__ = ["KeepOutputsPass"]

import logging

import onnx_ir as ir

from graphopt.core.errors import UsageError
from graphopt.core.pipeline import CountedPassResult

logger = logging.getLogger(__name__)


class KeepOutputsPass(ir.passes.InPlacePass):
    """Keep only the named graph outputs, in the given order."""

    def __init__(self, outputs: list[str] | None = None):
        super().__init__()
        self.outputs = None if outputs is None else list(outputs)

    def call(self, model: ir.Model) -> CountedPassResult:
        if self.outputs is None:
            return CountedPassResult(model, False)
        graph = model.graph
        existing = {v.name: v for v in graph.outputs}
        listing = ", ".join(repr(name) for name in existing)
        if not self.outputs:
            raise UsageError(f"--outputs is empty; name at least one of the model's outputs: {listing}")
        seen: set[str] = set()
        for name in self.outputs:
            if name not in existing:
                raise UsageError(f"unknown output {name!r}; the model's outputs are: {listing}")
            if name in seen:
                raise UsageError(f"output {name!r} is listed twice in --outputs")
            seen.add(name)

        kept = [existing[name] for name in self.outputs]
        if kept == list(graph.outputs):
            return CountedPassResult(model, False)
        dropped = [v for v in graph.outputs if v.name not in seen]
        for value in dropped:
            logger.debug("dropping graph output %s", value.name)
        graph.outputs.clear()
        graph.outputs.extend(kept)
        logger.info("kept %d graph outputs, dropped %d", len(kept), len(dropped))
        return CountedPassResult(model, True, counters={"outputs_dropped": len(dropped)} if dropped else {})
