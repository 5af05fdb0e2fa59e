"""Static INT8 in QDQ form: QuantizeLinear/DequantizeLinear pairs that ONNX Runtime fuses into
int8 kernels (QLinearConv, QGemm, QLinearMatMul, QLinearAdd, QLinearConcat, ...).

What it writes, following the plan of `quantize_plan.plan_int8`:

1. Every quantized tensor gets one QuantizeLinear right after its producer (or at the top
   for a graph input) and one DequantizeLinear per consumer, the form ORT's QDQ selectors
   match. Scale and zero point come from the calibrated range (asymmetric, uint8 or int8 per
   the scheme); data-movement outputs reuse their input's initializers.
2. Weights become int8 (or uint8, per scheme) initializers, symmetric per output channel
   (Conv axis 0, ConvTranspose axis 1, Gemm/MatMul the output column), behind a
   DequantizeLinear; depthwise Conv weights use the full int8 range whatever the scheme
   (their kernel cannot saturate). Biases become int32 with scale = input scale x weight scale.
3. Absorbed Relu/Clip nodes are removed; the quantization range clamps instead.
4. Float weights no node uses any more are dropped.

Declines (as a PreconditionError naming the tensor): a planned tensor with no calibrated
range. A model below opset 13 gets per-tensor weights (per-axis Q/DQ needs opset 13);
below opset 10 there is no Q/DQ and the pass refuses. Graph input and output names never
change. Subgraphs and functions are left alone.
"""

from __future__ import annotations

__all__ = ["QuantizeInt8Pass", "Int8PassResult"]

import dataclasses
import logging
from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from graphopt.core.patterns import attr_int, constant_array, fresh_name, model_names, opset_version
from graphopt.core.pipeline import CountedPassResult
from graphopt.passes.quantize.quantize_plan import Int8Plan, plan_int8
from graphopt.passes.quantize.quantize_scheme import SCHEMES, Int8Scheme, activation_params, quantize_bias, quantize_weight

logger = logging.getLogger(__name__)

PROVENANCE = ("pkg.graphopt.pass", "quantize_int8")  # on every node the pass creates


@dataclasses.dataclass
class Int8PassResult(CountedPassResult):
    plan: Int8Plan | None = None
    bias_clamped: list[str] = dataclasses.field(default_factory=list)


class QuantizeInt8Pass(ir.passes.InPlacePass):
    """Insert QDQ for static INT8 using calibrated `ranges` ({tensor name: (lo, hi)})."""

    def __init__(self, ranges: Mapping[str, tuple[float, float]], scheme: Int8Scheme | str = "u8s8-reduced",
                 exclude: set[str] | frozenset[str] = frozenset(), plan: Int8Plan | None = None,
                 input_means: Mapping[str, np.ndarray] | None = None):
        super().__init__()
        self.ranges = ranges
        self.input_means = input_means or {}
        self.scheme = SCHEMES[scheme] if isinstance(scheme, str) else scheme
        self.exclude = frozenset(exclude)
        self.plan = plan

    def call(self, model: ir.Model) -> Int8PassResult:
        opset = opset_version(model)
        if opset < 10:
            raise ir.passes.PreconditionError(
                f"QuantizeInt8Pass: model opset {opset} has no QuantizeLinear/DequantizeLinear (needs >= 10); "
                "convert it with onnx.version_converter first")
        plan = self.plan or plan_int8(model, self.exclude)
        missing = sorted(k for k in plan.range_keys() if k not in self.ranges)
        if missing:
            raise ir.passes.PreconditionError(
                f"QuantizeInt8Pass: no calibrated range for tensor {missing[0]!r} ({len(missing)} missing)")
        writer = _Writer(model, self.scheme, per_channel=opset >= 13)
        graph = model.graph
        means = {name: self.input_means.get(layer.node.inputs[0].name) for name, layer in plan.layers.items()}
        by_name = {n.name: n for n in graph}
        for name, value_name in plan.absorbed.items():
            act = by_name[name]
            act.outputs[0].replace_all_uses_with(act.inputs[0])
            graph.remove(act, safe=True)
            logger.debug("absorbed %s %s into the range of %s", act.op_type, name, value_name)
        values = {v.name: v for v in _main_values(graph)}
        params: dict[str, tuple[ir.Value, ir.Value]] = {}
        order = [n for n in plan.tensors if plan.root(n) == n] + [n for n in plan.tensors if plan.root(n) != n]
        for name in order:
            root = plan.root(name)
            if root not in params:
                lo, hi = self.ranges[plan.tensors[root]]
                params[root] = writer.activation_params(root, lo, hi)
            params[name] = params[root]
        for name in plan.tensors:
            writer.quantize_value(values[name], *params[name])
        clamped = []
        for name, layer in plan.layers.items():
            node = layer.node
            if layer.weight_index is None:
                continue
            x_scale = node.inputs[0].producer().inputs[1] if _is_dq(node.inputs[0]) else None
            if not writer.quantize_weights(node, layer, x_scale, means.get(name)):
                clamped.append(name)
        dropped = _drop_unused_initializers(graph, writer.replaced)
        logger.info("int8: %d layers, %d other nodes, %d tensors quantized, %d Relu/Clip absorbed",
                    len(plan.layers), len(plan.kinds) - len(plan.layers), len(plan.tensors), len(plan.absorbed))
        counters = {"layers_quantized": len(plan.layers), "nodes_quantized": len(plan.kinds),
                    "tensors_quantized": len(plan.tensors), "activations_absorbed": len(plan.absorbed),
                    "float_weights_dropped": dropped}
        return Int8PassResult(model, modified=bool(plan.kinds), counters=counters, plan=plan,
                              bias_clamped=clamped)


def _main_values(graph: ir.Graph):
    yield from graph.inputs
    for node in graph:
        yield from node.outputs


def _copy_shape(shape: ir.Shape | None) -> ir.Shape | None:
    return None if shape is None else ir.Shape(list(shape))  # never share: clones share Shape objects


def _is_dq(value: ir.Value) -> bool:
    producer = value.producer()
    return producer is not None and producer.op_type == "DequantizeLinear"


class _Writer:
    """Creates initializers and Q/DQ nodes with names unique across the model."""

    def __init__(self, model: ir.Model, scheme: Int8Scheme, per_channel: bool):
        self.model = model
        self.graph = model.graph
        self.scheme = scheme
        self.per_channel = per_channel
        self.taken = model_names(model) | {n.name for n in model.graph.all_nodes() if n.name}
        self.replaced: set[ir.Value] = set()
        self._weights: dict[tuple, tuple[ir.Value, ir.Value, ir.Value, np.ndarray]] = {}

    def initializer(self, base: str, array: np.ndarray) -> ir.Value:
        name = fresh_name(self.taken, base)
        value = ir.Value(name=name, const_value=ir.tensor(array, name=name))
        value.shape = ir.Shape(array.shape)
        value.dtype = ir.DataType.from_numpy(array.dtype)
        self.graph.register_initializer(value)
        return value

    def node(self, op: str, inputs, base: str, **attrs) -> ir.Node:
        out = ir.Value(name=fresh_name(self.taken, base))
        node = ir.Node("", op, inputs, attributes=[ir.AttrInt64(k, v) for k, v in attrs.items()],
                       outputs=[out], name=fresh_name(self.taken, base + "_" + op))
        node.metadata_props[PROVENANCE[0]] = PROVENANCE[1]
        return node

    def activation_params(self, name: str, lo: float, hi: float) -> tuple[ir.Value, ir.Value]:
        scale, zp = activation_params(lo, hi, self.scheme)
        return (self.initializer(f"{name}_scale", np.array(scale, dtype=np.float32)),
                self.initializer(f"{name}_zero_point", np.array(zp, dtype=self.scheme.activation)))

    def quantize_value(self, value: ir.Value, scale: ir.Value, zp: ir.Value) -> None:
        uses = [u for u in value.uses()]
        q = self.node("QuantizeLinear", [value, scale, zp], f"{value.name}_quantized")
        q.outputs[0].dtype = ir.DataType.from_numpy(np.dtype(self.scheme.activation))
        q.outputs[0].shape = _copy_shape(value.shape)
        producer = value.producer()
        if producer is None:
            self.graph.insert_before(next(iter(self.graph)), q)
        else:
            self.graph.insert_after(producer, q)
        shared_dq = None
        for use in uses:
            consumer, index = use.node, use.idx
            dq = self.node("DequantizeLinear", [q.outputs[0], scale, zp], f"{value.name}_dequantized")
            dq.outputs[0].dtype = ir.DataType.FLOAT
            dq.outputs[0].shape = _copy_shape(value.shape)
            if consumer.graph is self.graph:
                self.graph.insert_before(consumer, dq)
            else:  # a subgraph reads it from the outer scope: one DQ right after the Q
                if shared_dq is None:
                    shared_dq = dq
                    self.graph.insert_after(q, dq)
                dq = shared_dq
            consumer.replace_input_with(index, dq.outputs[0])
        logger.debug("quantized %s (%d consumers)", value.name, len(uses))

    def quantize_weights(self, node: ir.Node, layer, x_scale: ir.Value | None, x_mean: np.ndarray | None) -> bool:
        """Weight (and bias) of one layer; returns False if the int32 bias had to be clamped.

        With `x_mean` (the layer input's mean per channel), the bias absorbs the mean output
        shift that rounding the weights causes (bias correction): E[(W_q - W) x] = (W_q - W) E[x].
        """
        axis = layer.axis if self.per_channel else None
        weight_value = node.inputs[layer.weight_index]
        key = (id(weight_value), axis, layer.depthwise)
        w = constant_array(weight_value)
        if key not in self._weights:
            q, scale, zp = quantize_weight(w, axis, self.scheme, depthwise=layer.depthwise)
            base = weight_value.name or node.name + "_weight"
            self._weights[key] = (self.initializer(base + "_quantized", q),
                                  self.initializer(base + "_scale", scale),
                                  self.initializer(base + "_zero_point", zp), scale)
        wq, ws, wzp, scale = self._weights[key]
        attrs = {"axis": axis} if axis is not None else {}
        dq = self.node("DequantizeLinear", [wq, ws, wzp], f"{weight_value.name or node.name}_dequantized", **attrs)
        dq.outputs[0].dtype = ir.DataType.FLOAT
        dq.outputs[0].shape = _copy_shape(weight_value.shape)
        self.graph.insert_before(node, dq)
        node.replace_input_with(layer.weight_index, dq.outputs[0])
        self.replaced.add(weight_value)
        if x_scale is None or node.op_type not in ("Conv", "Gemm"):
            return True
        bias_value = node.inputs[layer.bias_index] if layer.bias_index is not None else None
        bias = constant_array(bias_value) if bias_value is not None else None
        shift = _output_shift(node, w, wq.const_value.numpy(), scale, self.scheme, axis, x_mean)
        if bias is None and shift is None:
            return True
        channels = w.shape[0] if node.op_type == "Conv" else w.shape[axis if axis is not None else 1]
        bias = (bias if bias is not None else np.zeros(channels, np.float32)) - (0 if shift is None else shift)
        bq, bscale, clamped = quantize_bias(bias.astype(np.float32), float(constant_array(x_scale)), scale)
        if clamped:
            logger.warning("bias of %s exceeds int32 at its scale and was clamped", node.name)
        base = bias_value.name if bias_value is not None and bias_value.name else node.name + "_bias"
        bq_value = self.initializer(base + "_quantized", bq)
        bs_value = self.initializer(base + "_scale", bscale)
        bz_value = self.initializer(base + "_zero_point", np.zeros(bscale.shape, dtype=np.int32))
        dqb = self.node("DequantizeLinear", [bq_value, bs_value, bz_value], f"{base}_dequantized",
                        **({"axis": 0} if bscale.ndim else {}))
        dqb.outputs[0].dtype = ir.DataType.FLOAT
        dqb.outputs[0].shape = ir.Shape([channels])
        self.graph.insert_before(node, dqb)
        if bias_value is not None:
            node.replace_input_with(layer.bias_index, dqb.outputs[0])
            self.replaced.add(bias_value)
        else:
            node.resize_inputs(3)
            node.replace_input_with(2, dqb.outputs[0])
        return not clamped


def _output_shift(node: ir.Node, w: np.ndarray, q: np.ndarray, scale: np.ndarray, scheme: Int8Scheme,
                  axis: int | None, x_mean: np.ndarray | None) -> np.ndarray | None:
    """Mean output error per output channel from rounding the weights, (W_q - W) E[x]; None without means."""
    if x_mean is None:
        return None
    shape = [1] * w.ndim
    if axis is not None:
        shape[axis] = w.shape[axis]
    error = (q.astype(np.float32) - scheme.weight_zero_point) * scale.reshape(shape) - w
    if node.op_type == "Conv":
        group = attr_int(node, "group", 1)
        per_in = error.reshape(error.shape[0], error.shape[1], -1).sum(axis=2)  # [M, C/g]
        if x_mean.shape[0] != per_in.shape[1] * group:
            return None
        means = x_mean.reshape(group, per_in.shape[1])[np.arange(w.shape[0]) // (w.shape[0] // group)]
        return (per_in * means).sum(axis=1).astype(np.float32)
    # Gemm: y = x @ op(B); op(B) is [K, N]
    op_b = error.T if attr_int(node, "transB", 0) else error
    if x_mean.shape[0] != op_b.shape[0]:
        return None
    return (x_mean @ op_b).astype(np.float32)


def _drop_unused_initializers(graph: ir.Graph, values: set[ir.Value]) -> int:
    dropped = 0
    for value in values:
        if value.uses() or value.is_graph_input() or value.is_graph_output():
            continue
        if value.name in graph.initializers and graph.initializers[value.name] is value:
            del graph.initializers[value.name]
            dropped += 1
        else:
            producer = value.producer()  # a Constant node
            if producer is not None and producer.graph is graph and not any(o.uses() for o in producer.outputs):
                graph.remove(producer, safe=True)
                dropped += 1
    return dropped
