"""FP16: float32 weights and compute become float16, except where float16 is unsafe.

Each main-graph node that touches float tensors runs in float16 unless (the first reason
found is recorded):

1. its op is unsafe or has no float16 meaning: Resize/Upsample (float32 scales), Range,
   CumSum, TopK, NonMaxSuppression, RoiAlign, random ops, Q/DQ, ops whose output type is an
   attribute (ConstantOfShape, EyeLike), custom domains;
2. it reduces over a long axis (ReduceSum/Mean/..., GlobalAveragePool, Softmax,
   LogSoftmax over more than `reduce_limit` elements, or an unknown count): float16
   accumulation loses the small terms;
3. it reads an initializer float16 cannot hold: a finite value beyond +-65504, or a small
   constant (<= 16 values: epsilons, scales) with a non-zero value that would flush to 0.
   Such initializers are never clipped; they stay float32 and so does their consumer;
4. it produces or reads a tensor the calibration data showed beyond `overflow` (when the
   caller passes `unsafe_values`);
5. it is in `exclude` (user or accuracy budget), holds a subgraph, feeds one, or touches a
   tensor of unknown type;
6. it only moves data (Reshape, Transpose, Concat, ...) and everything around it is float32:
   it stays float32 so no Cast pair surrounds it.

Casts: one per (tensor, direction), shared by all consumers; a float32 Cast whose users all
run in float16 is retargeted instead of followed by a second Cast. Initializers read in
float16 are converted (a float16 copy when float32 nodes read them too). With
`keep_io_types` (default) graph inputs and outputs stay float32 and keep their names: a
float16 output is produced under a new name and cast back under the original one.
Subgraphs and functions are not converted.
"""

from __future__ import annotations

__all__ = ["ConvertFp16Pass", "Fp16PassResult", "plan_fp16", "unsafe_initializer", "FP16_MAX", "MOVES"]

import dataclasses
import logging
import math

import numpy as np
import onnx_ir as ir

from graphopt.core.patterns import attr_ints, constant_array, fresh_name, is_default_domain, model_names
from graphopt.core.pipeline import CountedPassResult

logger = logging.getLogger(__name__)

PROVENANCE = ("pkg.graphopt.pass", "quantize_fp16")  # on every Cast the pass creates
FP16_MAX = 65504.0
FP16_TINY = 2.0 ** -24  # smallest float16 subnormal: anything below rounds to 0
_F32, _F16 = ir.DataType.FLOAT, ir.DataType.FLOAT16
_UNSAFE = {"Resize", "Upsample", "Range", "CumSum", "TopK", "NonMaxSuppression", "RoiAlign", "RandomNormal",
           "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli", "QuantizeLinear",
           "DequantizeLinear", "DynamicQuantizeLinear", "ConstantOfShape", "EyeLike", "Constant", "Cast",
           "CastLike", "Einsum", "STFT", "DFT"}
_REDUCE = {"ReduceSum", "ReduceMean", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSum",
           "ReduceLogSumExp", "ReduceProd"}
_TYPE_AGNOSTIC_INPUTS = {"Shape", "Size", "Cast"}  # read any type: never cast their inputs
MOVES = {"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Concat", "Slice", "Gather", "Split",
          "Identity", "Expand", "Tile", "Pad", "MaxPool", "DepthToSpace", "SpaceToDepth"}
_FIXED_F32_OUTPUTS = {("LayerNormalization", 1), ("LayerNormalization", 2)}


@dataclasses.dataclass
class Fp16PassResult(CountedPassResult):
    kept_fp32: dict[str, str] = dataclasses.field(default_factory=dict)  # node name -> reason
    fp16_nodes: list[str] = dataclasses.field(default_factory=list)
    unsafe_initializers: list[str] = dataclasses.field(default_factory=list)


def unsafe_initializer(array: np.ndarray) -> str | None:
    """Why float16 cannot hold this float32 constant, or None."""
    finite = array[np.isfinite(array)]
    if finite.size and float(np.abs(finite).max()) > FP16_MAX:
        return f"values up to {float(np.abs(finite).max()):.4g} exceed float16's {FP16_MAX:g}"
    if array.size <= 16:
        nonzero = np.abs(finite[finite != 0])
        if nonzero.size and float(nonzero.min()) < FP16_TINY:
            return f"value {float(nonzero.min()):.3g} would flush to 0 in float16"
    return None


def _reduced_count(node: ir.Node) -> int | None:
    """How many elements one output value sums over; None when a reduced dim is unknown."""
    x = node.inputs[0] if node.inputs else None
    if x is None or x.shape is None:
        return None
    dims = list(x.shape)
    if node.op_type in ("GlobalAveragePool", "GlobalLpPool"):
        reduced = dims[2:]
    elif node.op_type in ("Softmax", "LogSoftmax"):  # opset < 13 reduces over all axes from `axis` on
        reduced = dims[node.attributes.get_int("axis", -1):] if dims else [None]
    else:
        axes = attr_ints(node, "axes")
        if axes is None and len(node.inputs) > 1 and node.inputs[1] is not None:
            const = constant_array(node.inputs[1])
            if const is None:
                return None
            axes = [int(a) for a in const.ravel()]
        if not axes:
            reduced = dims if node.attributes.get_int("noop_with_empty_axes", 0) == 0 else []
        else:
            reduced = [dims[a] for a in axes]
    if any(not isinstance(d, int) for d in reduced):
        return None
    return math.prod(reduced)


def _float_values(node: ir.Node):
    return [v for v in (*node.inputs, *node.outputs) if v is not None]


def plan_fp16(model: ir.Model, exclude=frozenset(), unsafe_values=frozenset(), reduce_limit: int = 4096
              ) -> tuple[dict[str, str | None], dict[str, str]]:
    """({node name: None for float16, or why it stays float32}, {unsafe initializer name: why})."""
    graph = model.graph
    captured = set()
    for node in graph.all_nodes():
        if node.graph is not graph:
            captured.update(v for v in node.inputs if v is not None and v.graph is graph)
    bad_inits = {}
    for value in graph.initializers.values():
        array = constant_array(value)
        if array is not None and array.dtype == np.float32:
            reason = unsafe_initializer(array)
            if reason:
                bad_inits[value.name] = reason
    for node in graph:
        if node.op_type == "Constant" and is_default_domain(node):
            array = constant_array(node.outputs[0])
            if array is not None and array.dtype == np.float32 and unsafe_initializer(array):
                bad_inits[node.outputs[0].name] = unsafe_initializer(array)
    plan: dict[str, str | None] = {}
    for node in graph:
        values = _float_values(node)
        if not any(v.dtype == _F32 for v in values):
            continue
        reason = None
        if not is_default_domain(node):
            reason = f"custom domain {node.domain}"
        elif node.op_type in _UNSAFE:
            reason = f"{node.op_type} is unsafe or fixed-type in float16"
        elif node.op_type in _REDUCE or node.op_type in ("GlobalAveragePool", "GlobalLpPool", "Softmax", "LogSoftmax"):
            count = _reduced_count(node)
            if count is None or count > reduce_limit:
                reason = f"reduces over {'an unknown number of' if count is None else count} elements"
        if reason is None and node.name in exclude:
            reason = "kept float32 on request"
        if reason is None and any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
                                  for a in node.attributes.values() if not a.is_ref()):
            reason = "holds a subgraph"
        if reason is None and any(v.dtype is None for v in values):
            reason = "a tensor of unknown type"
        if reason is None:
            bad = next((v.name for v in node.inputs if v is not None and v.name in bad_inits), None)
            if bad:
                reason = f"reads {bad}: {bad_inits[bad]}"
        if reason is None:
            hot = next((v.name for v in values if v.name in unsafe_values), None)
            if hot:
                reason = f"{hot} exceeds the float16 range on the data"
        if reason is None and any(o in captured for o in node.outputs):
            reason = "feeds a subgraph"
        plan[node.name] = reason
    _settle_moves(graph, plan)
    return plan, bad_inits


def _settle_moves(graph: ir.Graph, plan: dict[str, str | None]) -> None:
    """Case 6: data movement between float32 nodes stays float32 (iterate to a fixed point)."""
    def fp32_side(value: ir.Value, consumers: bool) -> bool:
        if consumers:
            users = [u.node for u in value.uses()]
            return bool(users) and all(plan.get(u.name, "") is not None for u in users) and not value.is_graph_output()
        producer = value.producer()
        return producer is None or plan.get(producer.name, "") is not None

    changed = True
    while changed:
        changed = False
        for node in graph:
            if node.op_type not in MOVES or plan.get(node.name, "x") is not None:
                continue
            floats_in = [v for v in node.inputs if v is not None and v.dtype == _F32 and v.const_value is None]
            floats_out = [v for v in node.outputs if v.dtype == _F32]
            if floats_in and all(fp32_side(v, False) for v in floats_in) and \
                    all(fp32_side(v, True) for v in floats_out):
                plan[node.name] = "moves data between float32 nodes"
                changed = True


class ConvertFp16Pass(ir.passes.InPlacePass):
    """Convert to float16 per `plan_fp16`, with the fewest Casts (see module doc)."""

    def __init__(self, keep_io_types: bool = True, exclude=frozenset(), unsafe_values=frozenset(),
                 reduce_limit: int = 4096):
        super().__init__()
        self.keep_io_types = keep_io_types
        self.exclude = frozenset(exclude)
        self.unsafe_values = frozenset(unsafe_values)
        self.reduce_limit = reduce_limit

    def call(self, model: ir.Model) -> Fp16PassResult:
        graph = model.graph
        plan, bad_inits = plan_fp16(model, self.exclude, self.unsafe_values, self.reduce_limit)
        half = {name for name, reason in plan.items() if reason is None}
        taken = model_names(model) | {n.name for n in graph.all_nodes() if n.name}
        casts: dict[tuple[int, ir.DataType], ir.Value] = {}
        counters = {"casts_inserted": 0, "initializers_converted": 0}

        def cast(value: ir.Value, to: ir.DataType) -> ir.Value:
            key = (id(value), to)
            if key in casts:
                return casts[key]
            array = constant_array(value)
            if array is not None and value.name not in bad_inits and to == _F16:
                converted = self._constant(graph, value, array, taken, counters)
                casts[key] = converted
                return converted
            suffix = "fp16" if to == _F16 else "fp32"
            out = ir.Value(name=fresh_name(taken, f"{value.name}_{suffix}"), type=ir.TensorType(to),
                           shape=_copy_shape(value.shape))
            node = ir.Node("", "Cast", [value], attributes=[ir.AttrInt64("to", to.value)], outputs=[out],
                           name=fresh_name(taken, f"{value.name}_cast_{suffix}"))
            node.metadata_props[PROVENANCE[0]] = PROVENANCE[1]
            producer = value.producer()
            if producer is not None and producer.graph is graph:
                graph.insert_after(producer, node)
            else:
                graph.insert_before(next(iter(graph)), node)
            counters["casts_inserted"] += 1
            casts[key] = out
            return out

        for node in list(graph):
            if node.name not in plan:
                continue
            if node.op_type == "Cast" and node.outputs[0].dtype == _F32 and self._all_half(node.outputs[0], half):
                node.attributes["to"] = ir.AttrInt64("to", _F16.value)  # retarget instead of a second Cast
                node.outputs[0].type = ir.TensorType(_F16)
                continue
            if node.op_type in _TYPE_AGNOSTIC_INPUTS:
                continue
            want = _F16 if node.name in half else _F32
            for index, value in enumerate(node.inputs):
                if value is None or value.dtype not in (_F32, _F16) or value.dtype == want:
                    continue
                node.replace_input_with(index, cast(value, want))
            if want == _F16:
                for index, out in enumerate(node.outputs):
                    if out.dtype == _F32 and (node.op_type, index) not in _FIXED_F32_OUTPUTS:
                        out.type = ir.TensorType(_F16)  # a new type object: clones share the old one
        self._fix_outputs(graph, taken, counters)
        if not self.keep_io_types:
            self._half_inputs(graph, half, taken, counters)
        _drop_unused(graph)
        kept = {n: r for n, r in plan.items() if r is not None}
        counters.update(nodes_fp16=len(half), nodes_kept_fp32=len(kept), unsafe_initializers=len(bad_inits))
        logger.info("fp16: %d nodes in float16, %d kept float32, %d casts", len(half), len(kept),
                    counters["casts_inserted"])
        return Fp16PassResult(model, modified=bool(half), counters=counters, kept_fp32=kept,
                              fp16_nodes=sorted(half), unsafe_initializers=sorted(bad_inits))

    @staticmethod
    def _all_half(value: ir.Value, half: set[str]) -> bool:
        users = [u.node for u in value.uses()]
        return bool(users) and not value.is_graph_output() and all(u.name in half for u in users)

    @staticmethod
    def _constant(graph, value: ir.Value, array: np.ndarray, taken: set[str], counters) -> ir.Value:
        """A float16 initializer with the same values (replacing the original when nothing else reads it)."""
        name = fresh_name(taken, f"{value.name}_fp16")
        half = ir.Value(name=name, const_value=ir.tensor(array.astype(np.float16), name=name))
        half.shape = ir.Shape(array.shape)
        half.type = ir.TensorType(_F16)
        graph.register_initializer(half)
        counters["initializers_converted"] += 1
        return half

    def _fix_outputs(self, graph: ir.Graph, taken: set[str], counters) -> None:
        for i, out in enumerate(list(graph.outputs)):
            if out.dtype != _F16 or not self.keep_io_types:
                continue
            producer = out.producer()
            if producer is None:
                continue
            name = out.name
            out.name = fresh_name(taken, f"{name}_fp16")
            back = ir.Value(name=name, type=ir.TensorType(_F32), shape=_copy_shape(out.shape))
            node = ir.Node("", "Cast", [out], attributes=[ir.AttrInt64("to", _F32.value)], outputs=[back],
                           name=fresh_name(taken, f"{name}_cast_fp32"))
            node.metadata_props[PROVENANCE[0]] = PROVENANCE[1]
            graph.insert_after(producer, node)
            graph.outputs[i] = back
            counters["casts_inserted"] += 1

    @staticmethod
    def _half_inputs(graph: ir.Graph, half: set[str], taken: set[str], counters) -> None:
        """Without keep_io_types: float32 inputs read only by float16 nodes become float16 inputs."""
        for value in graph.inputs:
            if value.dtype != _F32:
                continue
            users = [u.node for u in value.uses()]
            casts = [u for u in users if u.op_type == "Cast" and u.outputs[0].dtype == _F16]
            if users and len(casts) == len(users):
                value.type = ir.TensorType(_F16)
                for c in casts:
                    c.outputs[0].replace_all_uses_with(value)
                    graph.remove(c, safe=True)
                    counters["casts_inserted"] -= 1


def _copy_shape(shape: ir.Shape | None) -> ir.Shape | None:
    return None if shape is None else ir.Shape(list(shape))


def _drop_unused(graph: ir.Graph) -> None:
    """Float32 initializers and Constant nodes that only their float16 copies replaced."""
    for node in reversed(list(graph)):
        if node.op_type == "Constant" and is_default_domain(node) and not node.outputs[0].uses() \
                and not node.outputs[0].is_graph_output():
            graph.remove(node, safe=True)
    for name in [n for n, v in graph.initializers.items() if not v.uses() and not v.is_graph_input()
                 and not v.is_graph_output()]:
        del graph.initializers[name]
