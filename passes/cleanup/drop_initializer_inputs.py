"""Stop listing initializers as graph inputs (IR version 3 exports).

IR v3 required every initializer to be a graph input too (old Caffe2, MXNet and the onnx
package's `backend/test/data/light` models). Such an initializer is only a default: the
caller may feed the input, so neither ORT nor our passes may fold or fuse it.

Cases:

1. Every main-graph input that is also an initializer is removed from `graph.inputs`; it
   stays an initializer (a constant). Counter `initializer_inputs_dropped`.
2. If that changed anything and the model's `ir_version` is below 4, it becomes 4: IR 3
   does not allow an initializer that is not an input.

Refused:

3. `keep=True` (`--keep-initializer-inputs`): nothing changes; the user feeds weights.
4. Subgraph inputs are positional (Loop/Scan bodies): never touched.
"""

from __future__ import annotations

__all__ = ["DropInitializerInputsPass"]

import logging

import onnx_ir as ir

from graphopt.core.pipeline import CountedPassResult

logger = logging.getLogger(__name__)

MIN_IR_VERSION = 4  # the first IR version where initializers need not be inputs


class DropInitializerInputsPass(ir.passes.InPlacePass):
    """Remove initializers from the main graph's inputs; with keep=True, do nothing."""

    def __init__(self, keep: bool = False):
        super().__init__()
        self.keep = keep

    def call(self, model: ir.Model) -> CountedPassResult:
        if self.keep:
            return CountedPassResult(model, False)
        graph = model.graph
        dropped = [v for v in graph.inputs if v.is_initializer() and graph.initializers.get(v.name) is v]
        if not dropped:
            return CountedPassResult(model, False)
        for value in dropped:
            logger.debug("initializer %s is no longer a graph input", value.name)
            graph.inputs.remove(value)
        if model.ir_version < MIN_IR_VERSION:
            logger.debug("ir_version %d -> %d", model.ir_version, MIN_IR_VERSION)
            model.ir_version = MIN_IR_VERSION
        logger.info("dropped %d initializers from the graph inputs", len(dropped))
        return CountedPassResult(model, True, counters={"initializer_inputs_dropped": len(dropped)})
