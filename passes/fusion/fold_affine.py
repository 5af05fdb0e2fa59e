"""Fold Mul/Add by per-channel constants after a Conv/ConvTranspose/Gemm/MatMul into its weights.

Math: for a layer y = W x + b and constants m, a that vary only along the layer's output
channel axis, m * y = (W m) x + b m and y + a = W x + (b + a). Some exporters write an
unfused BatchNormalization as Conv -> Mul -> Add (Caffe2's affine, Keras' scale layers); this
pass turns Conv-Mul-Add-Relu into Conv-Relu. Div(y, d) is folded as Mul by 1/d and
Sub(y, a) as Add of -a. The weight/bias arithmetic is
`graphopt.passes.fusion._channel_fold.fold_output_channel_affine` (shared with fold_batchnorm): new weights and
biases are new initializers with fresh names, a weight shared with another layer stays
exact, a weight that is a constant expression gets a Mul node ORT folds at session start.

Cases:
1. Mul/Div/Add/Sub of the layer output and a constant (either operand order for Mul/Add),
   the layer output used by that node only: folded. The constant is an initializer or
   Constant, or a fill: ConstantOfShape seen through Unsqueeze/Reshape/Expand (its shape
   annotated), as the onnx light models and Caffe2 exports write their affine layers; a
   uniform constant folds as a scalar. Counters `mul_folded` (Mul, Div) and `add_folded`
   (Add, Sub).
2. The constant's shape, right-aligned to the layer output's rank, is 1 everywhere except on
   the output channel axis, where it is 1 or the channel count: Conv/ConvTranspose axis 1
   ([C,1,1], [1,C,1,1], scalars); Gemm axis 1 ([C], [1,C]); MatMul the last axis ([N],
   [1,N]; with an unknown output rank only [N] and scalars). The constant may not have more
   dims than the output (broadcasting would change the output shape).
3. MatMul: a Mul goes into W's columns for any input rank; an Add makes the MatMul a Gemm,
   which only a 2-D input allows: otherwise the Add stays.
4. A Mul/Add output that is a graph output keeps its name (the layer output takes it over).
Declined: a constant that broadcasts across spatial or batch dims ([1,1,H,W], [C] after a
Conv), a non-constant or graph-input operand, a layer output with other consumers or that is
a graph output, a non-constant or quantized (DequantizeLinear) weight, Div by a constant
with zeros, non-float types, Gemm of opset < 7.

Scope: the main graph and If/Loop/Scan bodies (never across a graph boundary); functions
are left intact (they cannot hold initializers).
"""

from __future__ import annotations

__all__ = ["FoldAffineIntoWeightsPass"]

import logging

import numpy as np
import onnx_ir as ir

from graphopt.passes.fusion import _channel_fold as channel_fold
from graphopt.core import patterns
from graphopt.core.pipeline import CountedPassResult

logger = logging.getLogger(__name__)

TAG = "fold_affine"
_COUNTER = {"Mul": "mul_folded", "Div": "mul_folded", "Add": "add_folded", "Sub": "add_folded"}


class FoldAffineIntoWeightsPass(ir.passes.InPlacePass):
    """Fold per-output-channel Mul/Add constants after a layer into its weight and bias."""

    def call(self, model: ir.Model) -> CountedPassResult:
        self._taken = patterns.model_names(model)
        self._opset = patterns.opset_version(model)
        counters = {"mul_folded": 0, "add_folded": 0}
        for graph in [model.graph, *model.graph.subgraphs()]:
            for node in list(graph):
                if node.graph is graph and node.op_type in _COUNTER and patterns.is_default_domain(node) \
                        and self._fold(node):
                    counters[_COUNTER[node.op_type]] += 1
        total = sum(counters.values())
        if total and model.ir_version < 4:
            model.ir_version = 4  # IR 3 wants every initializer listed as a graph input
        if total:
            logger.info("folded %d Mul/Add into weights", total)
        return CountedPassResult(model, total > 0, counters=counters)

    def _fold(self, node: ir.Node) -> bool:
        if len(node.inputs) != 2 or len(node.outputs) != 1:
            return False
        for i in ((0, 1) if node.op_type in ("Mul", "Add") else (0,)):
            y, c = node.inputs[i], node.inputs[1 - i]
            layer = y.producer() if y is not None else None
            if (layer is None or layer.graph is not node.graph or layer.op_type not in channel_fold.CHANNEL_LAYERS
                    or not patterns.is_default_domain(layer) or patterns.single_consumer(y) is not node):
                continue
            constant = patterns.constant_array(c)
            if constant is None and (fill := patterns.fill_value(c)) is not None \
                    and (shape := patterns.static_shape(c)) is not None:
                constant = np.broadcast_to(fill, shape)  # a ConstantOfShape seen through Unsqueeze...
            if constant is None or constant.dtype.kind != "f":
                logger.debug("%s: %s is not a float constant", node.name, c.name if c else None)
                return False
            per_channel = _per_channel(constant, layer)
            if per_channel is None:
                logger.debug("%s: %s %s does not vary along %s's output channels only",
                             node.name, c.name, constant.shape, layer.name)
                return False
            return self._apply(node, layer, c, per_channel)
        return False

    def _apply(self, node: ir.Node, layer: ir.Node, c: ir.Value, vector: np.ndarray) -> bool:
        op = node.op_type
        if op == "Div" and not np.all(vector):
            return False
        vector = vector.astype(np.float64)
        if vector.size > 1 and np.all(vector == vector[0]):
            vector = vector[:1]  # uniform: a scalar keeps the new constants small
        scale = vector if op == "Mul" else 1.0 / vector if op == "Div" else None  # Div: no zeros (above)
        shift = vector if op == "Add" else -vector if op == "Sub" else None
        if shift is not None and layer.op_type == "MatMul" and self._opset < 7:
            return False  # the Gemm it would become needs broadcast=1 there
        result = channel_fold.fold_output_channel_affine(layer, scale, shift, self._taken, TAG)
        if result is None:
            logger.debug("%s: cannot fold into %s %s", node.name, layer.op_type, layer.name)
            return False
        out = node.outputs[0]
        if out.is_graph_output():  # the layer output takes over its name, type and shape
            result.type = result.type or out.type
            result.shape = result.shape or out.shape
        if not patterns.remove_node_keep_value(node, result):
            raise ir.passes.PostconditionError(f"{TAG}: cannot remove {node.name} after folding it")
        patterns.drop_if_unused(c)
        logger.debug("folded %s %s into %s %s", op, node.name, layer.op_type, layer.name)
        return True


def _per_channel(constant: np.ndarray, layer: ir.Node) -> np.ndarray | None:
    """The constant as a [C] vector (or size-1 array) if it only varies along the layer's
    output channel axis and cannot change the output's shape; else None."""
    rank = _output_rank(layer)
    if rank is None:  # MatMul of unknown rank: only shapes that suit every rank >= 1
        if constant.ndim > 1:
            return None
        return constant.reshape(-1)
    if constant.ndim > rank:
        return None
    axis = rank - 1 if layer.op_type == "MatMul" else 1
    shape = (1,) * (rank - constant.ndim) + constant.shape
    if any(d != 1 for i, d in enumerate(shape) if i != axis):
        return None
    return constant.reshape(-1)


def _output_rank(layer: ir.Node) -> int | None:
    out = layer.outputs[0]
    if out.shape is not None:
        return len(out.shape)
    if layer.op_type == "Gemm":
        return 2
    if layer.op_type == "MatMul":
        x = layer.inputs[0]
        return None if x is None or x.shape is None else len(x.shape)  # W is 2-D: same rank as x
    w = layer.inputs[1] if len(layer.inputs) > 1 else None
    shape = patterns.static_shape(w) if w is not None else None
    if shape is not None:
        return len(shape)
    kernel = patterns.attr_ints(layer, "kernel_shape")
    return None if kernel is None else len(kernel) + 2
