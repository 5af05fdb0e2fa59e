"""Fold inference BatchNormalization into the layer before it, or into the Conv after it.

Math: in inference, BN(y) = scale * (y - mean) / sqrt(var + eps) + B = s * y + t per channel
(axis 1), with s = scale / sqrt(var + eps) and t = B - mean * s.

- Layer, then BN: y = W x + b, so BN(y) = (W s) x + (b s + t): the weight is scaled along
  its output channels (Conv [M, C/g, k..] axis 0 whatever the group; ConvTranspose
  [C_in, C_out/g, k..] axis 1 within each group; Gemm the columns of op(B), with
  C' = beta*C*s + t and beta = 1; MatMul the columns of W), the bias becomes b s + t and is
  created when the layer had none (MatMul + bias becomes Gemm). The arithmetic is
  `graphopt.passes.fusion._channel_fold.fold_output_channel_affine`, shared with fold_affine.
- BN, then Conv: Conv(BN(x))[m] = sum_{c,k} W[m,c,k] (s_c x_c + t_c) + b_m, so
  W'[m,c,k] = W[m,c,k] s_c and b'_m = b_m + sum_{c,k} W[m,c,k] t_c. Only exact when the Conv
  pads nothing (a padded zero would stand for BN(0) = t, not 0) and has group 1.

Cases:
1. Conv/ConvTranspose/Gemm/MatMul -> BN, the layer's output used only by the BN: folded.
   The BN output keeps its name when it is a graph output.
2. MatMul -> BN only when the MatMul output is known to be 2-D (its input is annotated 2-D):
   BN normalizes axis 1, which is then W's column axis; for rank > 2 axis 1 is not.
3. Weight or bias that is a constant expression rather than an initializer (the onnx
   package's light models compute weights with ConstantOfShape): no big array is
   materialized; a Mul (and Reshape) node scales it and ORT folds it when the session
   starts. BN parameters that are 1-D ConstantOfShape fills count as scalars, so s and t
   are scalars, and a uniform new bias is written as a ConstantOfShape too: on
   light_resnet50 (46 of its 53 BNs are such fills) the file shrinks from 79.8 to 54.7 KB.
   Other constant-expression parameters become a few nodes (Add, Sqrt, Div, Mul, Sub)
   computing s and t. Either way the BN is gone.
4. BN -> Conv (no Conv layer before it), the BN output used only as that Conv's input,
   group 1, pads all zero or auto_pad VALID, weight, bias and BN parameters initializers or
   Constants: folded into the Conv.
Declined: training_mode = 1 (or an attribute reference), BN opset < 7 (is_test semantics),
spatial = 0, a second BN output in use, the layer output used by anything else or a graph
output, weights or parameters that are not constant (graph inputs, initializers that are
graph inputs, computed from inputs, behind DequantizeLinear: QDQ stays intact), parameters
that are not 1-D [C], MatMul of unknown or higher rank, grouped ConvTranspose with parameter
expressions, BN -> Conv with padding, group > 1 or a constant-expression weight.

Weights are never modified in place: the folded weight is a new initializer (fresh name),
so a weight shared with another layer stays exact; originals nothing uses any more are
removed. Scope: the main graph and If/Loop/Scan bodies (never across a graph boundary);
functions are left intact (they cannot hold initializers). Counter `batchnorm_folded`.
"""

from __future__ import annotations

__all__ = ["FoldBatchNormPass"]

import logging

import numpy as np
import onnx_ir as ir

from graphopt.passes.fusion import _channel_fold as channel_fold
from graphopt.core import patterns
from graphopt.core.pipeline import CountedPassResult

logger = logging.getLogger(__name__)

TAG = "fold_batchnorm"


class FoldBatchNormPass(ir.passes.InPlacePass):
    """Fold inference BatchNormalization into the Conv/ConvTranspose/Gemm/MatMul around it."""

    def call(self, model: ir.Model) -> CountedPassResult:
        self._taken = patterns.model_names(model)
        if patterns.opset_version(model) < 7:
            return CountedPassResult(model, False, counters={"batchnorm_folded": 0})
        folded = 0
        for graph in [model.graph, *model.graph.subgraphs()]:
            for node in list(graph):
                if node.graph is graph and node.op_type == "BatchNormalization" and patterns.is_default_domain(node):
                    folded += self._fold(node)
        if folded and model.ir_version < 4:
            model.ir_version = 4  # IR 3 wants every initializer listed as a graph input
        if folded:
            model.graph.sort()  # parameter expressions may be produced after the layer they now feed
            logger.info("folded %d BatchNormalization nodes", folded)
        return CountedPassResult(model, folded > 0, counters={"batchnorm_folded": folded})

    def _fold(self, bn: ir.Node) -> bool:
        params = _inference_params(bn)
        if params is None:
            return False
        x, y = bn.inputs[0], bn.outputs[0]
        layer = x.producer()
        if layer is not None and layer.graph is bn.graph and layer.op_type in channel_fold.CHANNEL_LAYERS \
                and patterns.single_consumer(x) is bn and self._fold_after(bn, layer, params):
            return True
        consumer = patterns.single_consumer(y)
        return consumer is not None and self._fold_before(bn, consumer, params)

    def _fold_after(self, bn: ir.Node, layer: ir.Node, params: list) -> bool:
        if layer.op_type == "MatMul" and not _is_2d(layer):
            logger.debug("%s: MatMul %s output not known to be 2-D", bn.name, layer.name)
            return False
        dtype = patterns.static_dtype(layer.inputs[1]) if len(layer.inputs) > 1 and layer.inputs[1] else None
        if dtype is None or any(isinstance(p, ir.Value) and patterns.static_dtype(p) not in (None, dtype)
                                for p in params):
            return False
        alg = channel_fold.ConstantAlgebra(layer.graph, self._taken, dtype, TAG, defer=True)
        scale, bias, mean, var = params
        s = alg.div(scale, alg.sqrt(alg.add(var, np.float64(_epsilon(bn)))))
        t = alg.sub(bias, alg.mul(mean, s))
        result = channel_fold.fold_output_channel_affine(layer, s, t, self._taken, TAG)
        if result is None:
            logger.debug("%s: cannot fold into %s %s", bn.name, layer.op_type, layer.name)
            return False
        alg.commit(result.producer())
        self._remove_bn(bn, result)
        logger.debug("folded %s into %s %s", bn.name, layer.op_type, layer.name)
        return True

    def _fold_before(self, bn: ir.Node, conv: ir.Node, params: list) -> bool:
        if conv.op_type != "Conv" or not patterns.is_default_domain(conv) or conv.graph is not bn.graph:
            return False
        y = bn.outputs[0]
        if [i for i, v in enumerate(conv.inputs) if v is y] != [0] or patterns.attr_int(conv, "group", 1) != 1:
            return False
        auto_pad = conv.attributes["auto_pad"].as_string() if "auto_pad" in conv.attributes else "NOTSET"
        if auto_pad not in ("NOTSET", "VALID") or any(patterns.attr_ints(conv, "pads", [0])):
            logger.debug("%s: %s pads its input", bn.name, conv.name)
            return False
        w = patterns.constant_array(conv.inputs[1])
        b_value = conv.inputs[2] if len(conv.inputs) > 2 else None
        b = patterns.constant_array(b_value)
        if (w is None or w.dtype.kind != "f" or w.ndim < 3 or (b_value is not None and b is None)
                or any(not isinstance(p, np.ndarray) or p.size not in (1, w.shape[1]) for p in params)):
            return False
        scale, bias, mean, var = (np.broadcast_to(p, (w.shape[1],)) for p in params)
        s = scale / np.sqrt(var + _epsilon(bn))
        t = bias - mean * s
        spatial = (1,) * (w.ndim - 2)
        w64 = w.astype(np.float64)
        new_b = (0 if b is None else b.astype(np.float64)) + (w64 * t.reshape(1, -1, *spatial)).sum(axis=tuple(range(1, w.ndim)))
        new_w = w64 * s.reshape(1, -1, *spatial)
        graph, old_w = conv.graph, conv.inputs[1]
        conv.replace_input_with(0, bn.inputs[0])
        conv.replace_input_with(1, self._initializer(graph, new_w.astype(w.dtype), old_w.name))
        if len(conv.inputs) < 3:
            conv.resize_inputs(3)
        conv.replace_input_with(2, self._initializer(graph, new_b.astype(w.dtype), f"{old_w.name}_bias"))
        for value in (old_w, b_value):
            patterns.drop_if_unused(value)
        self._remove_bn(bn, None)
        logger.debug("folded %s into the following Conv %s", bn.name, conv.name)
        return True

    def _initializer(self, graph: ir.Graph, array: np.ndarray, base: str) -> ir.Value:
        return patterns.add_initializer(graph, patterns.fresh_name(self._taken, f"{base}_{TAG}"), array)

    @staticmethod
    def _remove_bn(bn: ir.Node, replacement: ir.Value | None) -> None:
        params = list(bn.inputs[1:])
        y = bn.outputs[0]
        if replacement is not None and y.is_graph_output():  # it takes over y's name, type and shape
            replacement.type = replacement.type or y.type
            replacement.shape = replacement.shape or y.shape
        if replacement is None:
            bn.graph.remove(bn, safe=True)
        elif not patterns.remove_node_keep_value(bn, replacement):
            raise ir.passes.PostconditionError(f"{TAG}: cannot remove {bn.name} after folding it")
        for value in params:
            patterns.drop_if_unused(value)


def _inference_params(bn: ir.Node) -> list | None:
    """[scale, B, mean, var] (arrays, or Values holding constant expressions) of an
    inference-mode BN with one used output; None if the BN must stay."""
    training = bn.attributes.get("training_mode")
    spatial = bn.attributes.get("spatial")
    if (training is not None and (training.is_ref() or training.as_int() != 0)) or "is_test" in bn.attributes \
            or (spatial is not None and (spatial.is_ref() or spatial.as_int() == 0)):
        logger.debug("%s: training mode or per-activation statistics", bn.name)
        return None
    if len(bn.inputs) != 5 or any(v is None for v in bn.inputs) or not bn.outputs:
        return None
    if any(v.uses() or v.is_graph_output() for v in bn.outputs[1:]):
        logger.debug("%s: running statistics are used", bn.name)
        return None
    params, sizes = [], set()
    for value in bn.inputs[1:]:
        array, size = _fill(value)
        array = patterns.constant_array(value) if array is None else array
        if array is not None:
            if array.ndim > 1 or array.dtype.kind != "f":
                return None
            params.append(array.astype(np.float64))
            sizes.add(array.size if size is None else size)
        elif patterns.is_constant_expression(value):
            params.append(value)
        else:
            logger.debug("%s: parameter %s is not constant", bn.name, value.name)
            return None
    return params if len(sizes) <= 1 else None


def _fill(value: ir.Value) -> tuple[np.ndarray | None, int | None]:
    """A 1-D ConstantOfShape(constant shape) as its scalar fill value and length, so uniform
    parameters (the light models') fold into scalars instead of materialized vectors."""
    producer = value.producer()
    if producer is None or producer.op_type != "ConstantOfShape" or not patterns.is_default_domain(producer):
        return None, None
    shape = patterns.constant_array(producer.inputs[0])
    attr = producer.attributes.get("value")
    if shape is None or shape.shape != (1,) or (attr is not None and attr.is_ref()):
        return None, None
    fill = np.float32(0) if attr is None else attr.as_tensor().numpy().reshape(-1)[0]
    return np.asarray(fill), int(shape[0])


def _epsilon(bn: ir.Node) -> float:
    attr = bn.attributes.get("epsilon")
    return 1e-5 if attr is None or attr.is_ref() else attr.as_float()


def _is_2d(matmul: ir.Node) -> bool:
    return any(v is not None and v.shape is not None and len(v.shape) == 2
               for v in (matmul.inputs[0], matmul.outputs[0]))
