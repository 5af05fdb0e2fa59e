"""Where INT8 goes: which nodes run quantized, which tensors carry a Q/DQ pair, what shares
a scale, and which Relu/Clip disappear into a quantization range. Pure analysis: the graph is
only read. `QuantizeInt8Pass` (quantize_int8.py) applies the plan.

Cases, in topological order over the main graph (subgraphs and functions are not entered;
their nodes stay float):

1. Layers: Conv, ConvTranspose, Gemm (transA=0, alpha=beta=1, bias absent or 1-D constant)
   and MatMul with a constant float32 weight, and MatMul of two float activations. Their
   activation inputs are quantized wherever they come from (graph input, float op).
2. Data movement that ORT runs on int8 by dropping the Q/DQ around it (MaxPool, Reshape,
   Transpose, Flatten, Squeeze, Unsqueeze, Resize, Slice, Gather, Expand, Tile): quantized
   when its data input comes from a quantized node; the output shares the input's scale
   and zero point, as ORT requires.
3. Ops with int8 kernels and their own output scale: GlobalAveragePool, AveragePool,
   LeakyRelu, Sigmoid (one quantized input), Add and Mul of two quantized tensors
   (QLinearAdd/QLinearMul) and Concat of quantized tensors (QLinearConcat).
4. A Relu, or a Clip with constant bounds min <= 0 <= max, that is the only consumer of a
   quantized layer/Add/Concat output is absorbed: the output is quantized with the
   activation's range (a range starting at 0 clamps like Relu) and the node goes.

Declined: nodes in `exclude` (kept float by the user or the accuracy budget), custom
domains, non-float32 tensors, graph outputs (they stay float, so callers get the float
result: a Gemm/MatMul making one still runs int8 with a float output, a Conv making one
stays float entirely, since its int8 kernel can only write int8), MaxPool with an indices
output, and ops whose int8 form ORT lacks.
"""

from __future__ import annotations

__all__ = ["Int8Plan", "LayerPlan", "plan_int8", "LAYER_OPS"]

import dataclasses

import numpy as np
import onnx_ir as ir

from graphopt.core.patterns import attr_int, constant_array, is_constant, is_default_domain

LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_SHARED = {"MaxPool", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Resize", "Slice", "Gather",
           "Expand", "Tile"}
_OWN_UNARY = {"GlobalAveragePool", "AveragePool", "LeakyRelu", "Sigmoid"}
_BINARY = {"Add", "Mul"}
_ABSORBING = {"layer", "binary", "concat"}


@dataclasses.dataclass
class LayerPlan:
    """A quantized layer: its weight (input index, per-channel axis or None) and bias index."""

    node: ir.Node
    weight_index: int | None  # None: MatMul of two activations
    axis: int | None
    bias_index: int | None
    activations: list[int]  # input indices that are activations
    depthwise: bool = False  # Conv with one input and one output channel per group


@dataclasses.dataclass
class Int8Plan:
    layers: dict[str, LayerPlan]  # node name -> plan, in graph order
    kinds: dict[str, str]  # every quantized node name -> "layer" | "shared" | "own" | "binary" | "concat"
    tensors: dict[str, str]  # quantized value name -> range key (the float model's tensor to measure)
    shares: dict[str, str]  # value name -> value name whose scale/zero point it uses
    absorbed: dict[str, str]  # absorbed Relu/Clip node name -> value name that takes its range
    candidates: list[str]  # layers that could be quantized (before `exclude`)

    def range_keys(self) -> set[str]:
        return {self.tensors[self.root(v)] for v in self.tensors}

    def root(self, name: str) -> str:
        while name in self.shares:
            name = self.shares[name]
        return name


def _is_float(value: ir.Value | None) -> bool:
    return value is not None and (value.dtype is None or value.dtype == ir.DataType.FLOAT)


def _const_float(value: ir.Value | None) -> np.ndarray | None:
    array = constant_array(value)
    if array is None or array.dtype != np.float32:
        return None
    return array


def _layer(node: ir.Node) -> LayerPlan | None:
    """The layer plan if `node` is a quantizable Conv/ConvTranspose/Gemm/MatMul (case 1)."""
    op, inputs = node.op_type, list(node.inputs)
    if not is_default_domain(node) or op not in LAYER_OPS or len(node.outputs) != 1:
        return None
    if len(inputs) < 2 or not _is_float(inputs[0]) or not _is_float(node.outputs[0]):
        return None
    bias = inputs[2] if len(inputs) > 2 and inputs[2] is not None else None
    if op in ("Conv", "ConvTranspose"):
        weight = _const_float(inputs[1])
        if weight is None or weight.ndim < 3 or (bias is not None and not _bias_ok(bias, weight, op)):
            return None
        group = attr_int(node, "group", 1)
        axis = 0 if op == "Conv" else (1 if group == 1 else None)
        depthwise = op == "Conv" and group > 1 and weight.shape[1] == 1 and weight.shape[0] == group
        return LayerPlan(node, 1, axis, 2 if bias is not None else None, [0], depthwise)
    if op == "Gemm":
        weight = _const_float(inputs[1])
        if weight is None or weight.ndim != 2 or attr_int(node, "transA", 0):
            return None
        for name in ("alpha", "beta"):
            attr = node.attributes.get(name)
            if attr is not None and not attr.is_ref() and attr.as_float() != 1.0:
                return None
        axis = 0 if attr_int(node, "transB", 0) else 1
        if bias is not None:
            c = _const_float(bias)
            if c is None or c.ndim != 1 or c.shape[0] != weight.shape[axis]:
                return None
        return LayerPlan(node, 1, axis, 2 if bias is not None else None, [0])
    # MatMul
    weight = _const_float(inputs[1])
    if weight is not None:
        return LayerPlan(node, 1, weight.ndim - 1 if weight.ndim == 2 else None, None, [0])
    if _is_float(inputs[1]) and not is_constant(inputs[1]) and not is_constant(inputs[0]):
        return LayerPlan(node, None, None, None, [0, 1])
    return None


def _bias_ok(bias: ir.Value, weight: np.ndarray, op: str) -> bool:
    """A constant 1-D bias; for Conv one value per output channel (ConvTranspose: C_out = W[1] * group)."""
    array = _const_float(bias)
    return array is not None and array.ndim == 1 and (op != "Conv" or array.shape[0] == weight.shape[0])


def _absorbable(node: ir.Node) -> bool:
    """Relu, or Clip with constant bounds that include 0 (case 4)."""
    if not is_default_domain(node) or len(node.outputs) != 1:
        return False
    if node.op_type == "Relu":
        return True
    if node.op_type != "Clip":
        return False
    low, high = -np.inf, np.inf
    if "min" in node.attributes or "max" in node.attributes:  # opset < 11
        low = node.attributes["min"].as_float() if "min" in node.attributes else low
        high = node.attributes["max"].as_float() if "max" in node.attributes else high
    for index in (1, 2):
        if len(node.inputs) > index and node.inputs[index] is not None:
            bound = constant_array(node.inputs[index])
            if bound is None or bound.size != 1:
                return False
            if index == 1:
                low = float(bound)
            else:
                high = float(bound)
    return low <= 0 <= high


def _only_consumer(value: ir.Value) -> ir.Node | None:
    if value.is_graph_output():
        return None
    nodes = {id(u.node): u.node for u in value.uses()}
    return next(iter(nodes.values())) if len(nodes) == 1 else None


def plan_int8(model: ir.Model, exclude: set[str] | frozenset[str] = frozenset(),
              op_types: tuple[str, ...] = LAYER_OPS) -> Int8Plan:
    """Decide what to quantize (see module doc). Node names must be unique and non-empty."""
    graph = model.graph
    layers: dict[str, LayerPlan] = {}
    kinds: dict[str, str] = {}
    candidates: list[str] = []
    available: set[ir.Value] = set()  # values a quantized node produces
    alias: dict[ir.Value, ir.Value] = {}  # absorbed activation output -> quantized value
    absorbed: dict[str, ir.Node] = {}

    def source(value: ir.Value) -> ir.Value:
        return alias.get(value, value)

    for node in graph:
        if not is_default_domain(node):
            continue
        op = node.op_type
        data = [source(v) for v in node.inputs if v is not None]
        out = node.outputs[0] if node.outputs else None
        kind = None
        if op in op_types:
            plan = _layer(node)
            if plan is not None and op in ("Conv", "ConvTranspose") and node.outputs[0].is_graph_output():
                plan = None  # its int8 kernel needs an int8 output; the graph output stays exact instead
            if plan is not None:
                candidates.append(node.name)
                if node.name not in exclude:
                    layers[node.name] = plan
                    kind = "layer"
        elif out is None or out.is_graph_output() or not _is_float(out) or node.name in exclude:
            pass
        elif op in _SHARED and data and data[0] in available and len(node.outputs) == 1:
            kind = "shared"
        elif op in _OWN_UNARY and data and data[0] in available:
            kind = "own"
        elif op in _BINARY and len(data) == 2 and all(v in available for v in data):
            kind = "binary"
        elif op == "Concat" and data and all(v in available for v in data):
            kind = "concat"
        elif _absorbable(node) and data and data[0] in available:
            producer = data[0].producer()
            if producer is not None and kinds.get(producer.name) in _ABSORBING and \
                    _only_consumer(data[0]) is node and not out.is_graph_output():
                alias[out] = data[0]
                absorbed[node.name] = node
                continue
        if kind is None:
            continue
        kinds[node.name] = kind
        if out is not None:
            available.add(out)

    # Which values carry a Q/DQ pair: every activation input of a quantized node, and the
    # outputs of quantized nodes that need an int8 output (all but Gemm/MatMul, which may
    # hand float to float consumers).
    tensors: dict[str, str] = {}
    shares: dict[str, str] = {}
    consumed: set[ir.Value] = set()
    by_name = {n.name: n for n in graph}
    for name, kind in kinds.items():
        node = by_name[name]
        if kind == "layer":
            consumed.update(source(node.inputs[i]) for i in layers[name].activations)
        elif kind == "shared":
            consumed.add(source(node.inputs[0]))
        else:
            consumed.update(source(v) for v in node.inputs if v is not None and constant_array(v) is None)
    produced = {by_name[n].outputs[0] for n, k in kinds.items()
                if k != "layer" or by_name[n].op_type in ("Conv", "ConvTranspose")}
    reverse_alias: dict[ir.Value, ir.Value] = {v: k for k, v in alias.items()}
    for value in [*consumed, *produced]:
        if value.is_graph_output() and value in produced and value not in consumed:
            continue
        key = reverse_alias.get(value, value).name
        tensors[value.name] = key
    # Absorptions whose quantized value ended up float (Gemm/MatMul feeding float ops) are undone.
    kept = {}
    for name, act in absorbed.items():
        target = alias[act.outputs[0]]
        if target.name in tensors:
            kept[name] = target.name
    for name, kind in kinds.items():
        if kind == "shared":
            node = by_name[name]
            shares[node.outputs[0].name] = source(node.inputs[0]).name
    return Int8Plan(layers, kinds, tensors, shares, kept, candidates)
