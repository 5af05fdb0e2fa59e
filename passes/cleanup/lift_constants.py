"""Lift Constant nodes to initializers, so every pass finds weights in one place.

Paddle (and some TorchScript and tf2onnx) exports keep weights in `Constant` nodes; a pass
that looks only at `graph.initializers` (fusion, quantization, pruning, deduplication)
misses them. After this pass a constant is an initializer wherever ONNX allows one.

Cases:

1. A default-domain `Constant` with one tensor attribute (`value`, `value_float(s)`,
   `value_int(s)`, `value_string(s)`) becomes an initializer of the same graph under the
   same value name, whatever its size. Uses in nested bodies follow the value.
2. If/Loop/Scan bodies are visited too: a Constant in a body becomes an initializer of that
   body (ONNX and ONNX Runtime accept subgraph initializers), never of an outer graph, so no
   name crosses a graph boundary.

Kept as Constant nodes (the attribute-style form that some places require):

3. Constants inside functions: a function body has no initializers.
4. Constants in a model with IR version < 4: there every initializer must also be a graph
   input, which would make the weight overridable by the caller and stop ONNX Runtime from
   folding it. (`drop_initializer_inputs` upgrades such models first at level 1/2.)
5. A Constant whose output is a graph output (a graph output that is an initializer is
   legal but some consumers reject it; the node costs nothing), one whose attribute is a
   reference to a function attribute, and `sparse_value` constants.

Graph input/output names and value names are unchanged.
"""

from __future__ import annotations

__all__ = ["LiftConstantsPass"]

import logging

import numpy as np
import onnx_ir as ir

from graphopt.core.patterns import is_default_domain
from graphopt.core.pipeline import CountedPassResult

logger = logging.getLogger(__name__)

_MIN_IR_VERSION = 4


def _tensor_of(node: ir.Node) -> ir.TensorProtocol | None:
    """The tensor a Constant node holds, or None when it must stay a node (case 5)."""
    if len(node.attributes) != 1 or len(node.outputs) != 1:
        return None
    name, attr = next(iter(node.attributes.items()))
    if attr.is_ref():
        return None
    out_name = node.outputs[0].name
    if name == "value":
        return attr.as_tensor()
    if name == "value_float":
        return ir.tensor(np.array(attr.as_float(), dtype=np.float32), name=out_name)
    if name == "value_floats":
        return ir.tensor(np.array(list(attr.as_floats()), dtype=np.float32), name=out_name)
    if name == "value_int":
        return ir.tensor(np.array(attr.as_int(), dtype=np.int64), name=out_name)
    if name == "value_ints":
        return ir.tensor(np.array(list(attr.as_ints()), dtype=np.int64), name=out_name)
    if name == "value_string":
        return ir.StringTensor(np.array(attr.value, dtype=np.bytes_), name=out_name)
    if name == "value_strings":
        return ir.StringTensor(np.array(list(attr.value), dtype=np.bytes_), name=out_name)
    return None  # sparse_value: no dense initializer without densifying it


class LiftConstantsPass(ir.passes.InPlacePass):
    """Turn Constant nodes of the main graph and of If/Loop/Scan bodies into initializers."""

    def call(self, model: ir.Model) -> CountedPassResult:
        counters: dict[str, int] = {}
        if (model.ir_version or 0) < _MIN_IR_VERSION:
            if any(n.op_type == "Constant" for n in model.graph.all_nodes()):
                logger.debug("IR version %s < 4: Constant nodes kept (initializers would be inputs)",
                             model.ir_version)
                counters["kept_ir_version_below_4"] = 1
            return CountedPassResult(model, False, counters)
        for node in list(ir.traversal.RecursiveGraphIterator(model.graph)):
            if node.op_type != "Constant" or not is_default_domain(node):
                continue
            graph = node.graph
            out = node.outputs[0]
            if out.is_graph_output():
                logger.debug("Constant %s feeds a graph output: kept", out.name)
                continue
            tensor = _tensor_of(node)
            if tensor is None:
                logger.debug("Constant %s has no liftable tensor attribute: kept", out.name)
                continue
            if out.name in graph.initializers:  # malformed input; never overwrite an initializer
                continue
            init = ir.Value(name=out.name, shape=ir.Shape(tensor.shape), type=ir.TensorType(tensor.dtype),
                            const_value=tensor, metadata_props=out.metadata_props.copy())
            init.meta.update(out.meta)
            graph.register_initializer(init)
            out.replace_all_uses_with(init)
            graph.remove(node, safe=True)
            counters["constants_lifted"] = counters.get("constants_lifted", 0) + 1
            logger.debug("lifted Constant %s (%s %s) to an initializer", init.name, tensor.dtype, tensor.shape)
        if counters.get("constants_lifted"):
            logger.info("lifted %d Constant nodes to initializers", counters["constants_lifted"])
        return CountedPassResult(model, bool(counters.get("constants_lifted")), counters)
