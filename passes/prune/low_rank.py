"""Low-rank factorization: a Gemm/MatMul or Conv becomes two thinner layers where that cuts MACs.

Math. A weight matrix M (float64 SVD) M = U S V^T is cut to rank r: M ~ (U_r S_r^1/2)(S_r^1/2 V_r^T),
exact when r is M's rank. r is the smallest rank keeping `energy` of sum(s_i^2) (an
"energy" spec), or ceil(ratio * min(M's dims)) (a "rank" spec); singular values under
1e-7 * s_0 never count, so a rank-deficient weight factors exactly.

1. MatMul(x, W[K, N]) -> MatMul(MatMul(x, A[K, r]), B[r, N]).
2. Gemm(x, B, C) with transA = 0: W = op(B) -> MatMul(x, A) then Gemm(., B', C) with the
   original alpha, beta.
3. Conv (2-D, group 1) W[O, I, kh, kw], spatial SVD: M[(i, y), (o, x)] = W[o, i, y, x] gives
   a kh x 1 Conv with r outputs (the original vertical strides, dilations and pads, no
   bias) followed by a 1 x kw Conv with O outputs (horizontal strides, dilations, pads and
   the bias): zero padding commutes because the first Conv has no bias. A 1x1 Conv is the
   same with M = W[:, :, 0, 0]^T: two 1x1 Convs through an r-channel bottleneck, every
   attribute on the first.
4. It pays when the two layers' MACs are at most (1 - min_saving) of the original's
   (output shapes from shape annotations; unknown dims count as 1). Layers where it does
   not pay are left alone and listed with the figures.

The second node keeps the original node's name and output value (graph outputs keep
their names); the first gets a fresh name with `_lowrank`. Declines (listed with the
reason): transA = 1, auto_pad, grouped or non-2-D Conv, weights that are not constant
float 2-D (MatMul/Gemm) tensors, custom domains; subgraphs and functions are not visited.
"""

from __future__ import annotations

__all__ = ["FactorizeLowRankPass", "LowRankResult", "RankSpec", "parse_rank_spec", "plan_low_rank", "choose_rank"]

import collections
import dataclasses
import hashlib
import logging
import math

import numpy as np
import onnx_ir as ir

from graphopt.core.errors import UsageError
from graphopt.core.patterns import attr_int, attr_ints, drop_if_unused, fresh_name, model_names
from graphopt.core.pipeline import CountedPassResult
from graphopt.passes.prune.prune_magnitude import layer_weight

logger = logging.getLogger(__name__)

TAG = "low_rank"
_RANK_EPS = 1e-7


@dataclasses.dataclass(frozen=True)
class RankSpec:
    kind: str  # "energy" or "rank"
    value: float

    def describe(self) -> str:
        return f"energy {self.value:g}" if self.kind == "energy" else f"rank ratio {self.value:g}"


def parse_rank_spec(spec) -> RankSpec:
    """0.95 or "energy:0.95" -> energy fraction; "rank:0.25" -> rank ratio; a RankSpec passes through."""
    if isinstance(spec, RankSpec):
        return spec
    text = str(spec).strip()
    kind, _, number = text.rpartition(":")
    kind = kind or "energy"
    try:
        value = float(number)
    except ValueError:
        value = math.nan
    if kind not in ("energy", "rank") or not 0 < value <= 1:
        raise UsageError(f"--low-rank {text!r}: give an energy fraction in (0, 1] such as 0.95, "
                         "'energy:0.95' or a rank ratio such as 'rank:0.25'")
    return RankSpec(kind, value)


def choose_rank(singular: np.ndarray, spec: RankSpec) -> int:
    """The rank `spec` keeps of a matrix with these singular values (descending)."""
    if singular.size == 0 or singular[0] == 0:
        return 1
    numerical = int(np.count_nonzero(singular > singular[0] * _RANK_EPS))
    if spec.kind == "rank":
        return max(1, min(numerical, math.ceil(spec.value * singular.size)))
    energy = np.cumsum(singular.astype(np.float64) ** 2)
    energy /= energy[-1]
    return max(1, min(numerical, int(np.searchsorted(energy, spec.value - 1e-12) + 1)))


@dataclasses.dataclass
class LowRankResult(CountedPassResult):
    layers: dict[str, dict] = dataclasses.field(default_factory=dict)  # factored: rank, macs
    declined: dict[str, str] = dataclasses.field(default_factory=dict)


def _dims(value: ir.Value | None) -> list[int] | None:
    if value is None or value.shape is None:
        return None
    return [d if isinstance(d, int) else 1 for d in value.shape]


@dataclasses.dataclass
class _Plan:
    node: ir.Node
    matrix: np.ndarray  # what is factored
    shape: tuple[int, ...]  # the weight's shape
    rank: int
    full_rank: int
    energy: float
    macs_before: int
    macs_after: int


def _conv_form(node: ir.Node, weight: np.ndarray) -> str | None:
    """Why a Conv cannot be factored, or None."""
    if weight.ndim != 4:
        return f"{weight.ndim - 2}-D convolution (only 2-D)"
    if attr_int(node, "group", 1) != 1:
        return "grouped convolution"
    auto_pad = node.attributes.get("auto_pad")
    if auto_pad is not None and auto_pad.as_string() not in ("NOTSET", ""):
        return f"auto_pad={auto_pad.as_string()}"
    return None


def _matrix(node: ir.Node, weight: np.ndarray) -> tuple[np.ndarray | None, str | None]:
    op = node.op_type
    if op == "MatMul":
        return (weight, None) if weight.ndim == 2 else (None, "batched (3-D+) weight")
    if op == "Gemm":
        if attr_int(node, "transA", 0):
            return None, "transA=1"
        return (weight.T if attr_int(node, "transB", 0) else weight), None
    if op == "Conv":
        why = _conv_form(node, weight)
        if why:
            return None, why
        o, i, kh, kw = weight.shape
        return weight.transpose(1, 2, 0, 3).reshape(i * kh, o * kw), None
    return None, f"{op} is not factored"


def _macs(node: ir.Node, weight: np.ndarray, rank: int | None) -> int:
    """MACs of the layer (rank None) or of its factored form, per unit of unknown dims."""
    out = _dims(node.outputs[0]) or []
    if node.op_type in ("MatMul", "Gemm"):
        k, n = (weight.shape[::-1] if node.op_type == "Gemm" and attr_int(node, "transB", 0) else weight.shape)
        rows = math.prod(out[:-1]) if out else 1
        return rows * (k * n if rank is None else rank * (k + n))
    o, i, kh, kw = weight.shape
    pixels = math.prod(out[2:]) if len(out) == 4 else 1
    if rank is None:
        return pixels * o * i * kh * kw
    if kh == kw == 1:
        return pixels * rank * (i + o)
    x = _dims(node.inputs[0])
    stride_w = (attr_ints(node, "strides", [1, 1]) or [1, 1])[1]
    width_ratio = (x[3] / out[3]) if x and len(x) == 4 and len(out) == 4 and out[3] else stride_w
    return int(pixels * rank * (i * kh * width_ratio + o * kw))


def plan_low_rank(model: ir.Model, spec: RankSpec, min_saving: float = 0.2,
                  layers: frozenset[str] | None = None) -> tuple[dict[str, _Plan], dict[str, str], dict[str, dict]]:
    """(layers to factor, {declined layer: why}, {layer: figures} for every layer looked at)."""
    plans, declined, figures = {}, {}, {}
    for node in model.graph:
        if node.op_type not in ("MatMul", "Gemm", "Conv") or (layers is not None and node.name not in layers):
            continue
        weight = layer_weight(node)
        if weight is None:
            declined[node.name] = "weight is not a constant float tensor"
            continue
        matrix, why = _matrix(node, weight)
        if matrix is None:
            declined[node.name] = why
            continue
        _, singular, _ = _svd(matrix)
        rank = choose_rank(singular, spec)
        total = float(np.sum(singular ** 2)) or 1.0
        energy = float(np.sum(singular[:rank] ** 2)) / total
        before, after = _macs(node, weight, None), _macs(node, weight, rank)
        figures[node.name] = {"op": node.op_type, "shape": list(matrix.shape), "rank": rank,
                              "full_rank": int(min(matrix.shape)), "energy_kept": round(energy, 4),
                              "macs_ratio": round(after / before, 4) if before else None}
        if after > (1 - min_saving) * before:
            declined[node.name] = (f"does not pay: rank {rank} of {min(matrix.shape)} keeps "
                                   f"{after / before:.0%} of the MACs (needs <= {1 - min_saving:.0%})")
            continue
        plans[node.name] = _Plan(node, matrix, tuple(weight.shape), rank, int(min(matrix.shape)), energy, before, after)
    return plans, declined, figures


_SVD_CACHE: collections.OrderedDict = collections.OrderedDict()
_SVD_CACHE_BYTES = 512 << 20


def _svd(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thin SVD in float64, cached by content: the budget builds a model many times and every
    build plans again (a 1024x1024 SVD takes seconds on a busy CPU)."""
    key = (matrix.shape, matrix.dtype.str, hashlib.blake2b(np.ascontiguousarray(matrix).tobytes(),
                                                           digest_size=16).digest())
    if key in _SVD_CACHE:
        _SVD_CACHE.move_to_end(key)
        return _SVD_CACHE[key]
    result = np.linalg.svd(matrix.astype(np.float64), full_matrices=False)
    _SVD_CACHE[key] = result
    while sum(sum(a.nbytes for a in v) for v in _SVD_CACHE.values()) > _SVD_CACHE_BYTES and len(_SVD_CACHE) > 1:
        _SVD_CACHE.popitem(last=False)
    return result


def _factors(matrix: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    u, s, vt = _svd(matrix)
    root = np.sqrt(s[:rank])
    return u[:, :rank] * root, root[:, None] * vt[:rank]


class FactorizeLowRankPass(ir.passes.InPlacePass):
    """Factor every layer that pays (or only `layers`) at `spec` (see module doc)."""

    def __init__(self, spec, layers: frozenset[str] | None = None, min_saving: float = 0.2):
        super().__init__()
        self.spec = parse_rank_spec(spec)
        self.layers = layers
        self.min_saving = min_saving

    def call(self, model: ir.Model) -> LowRankResult:
        result = LowRankResult(model, False, counters={"layers_factored": 0, "macs_saved": 0})
        plans, result.declined, _ = plan_low_rank(model, self.spec, self.min_saving, self.layers)
        taken = model_names(model)
        for name, plan in plans.items():
            self._rewrite(plan, taken)
            result.modified = True
            result.counters["layers_factored"] += 1
            result.counters["macs_saved"] += plan.macs_before - plan.macs_after
            result.layers[name] = {"op": plan.node.op_type, "rank": plan.rank, "full_rank": plan.full_rank,
                                   "energy_kept": round(plan.energy, 4), "macs_before": plan.macs_before,
                                   "macs_after": plan.macs_after}
            logger.debug("low rank: %s rank %d of %d (energy %.4f)", name, plan.rank, plan.full_rank, plan.energy)
        logger.info("low rank (%s): %d layers factored, %d declined", self.spec.describe(),
                    result.counters["layers_factored"], len(result.declined))
        return result

    @staticmethod
    def _rewrite(plan: _Plan, taken: set[str]) -> None:
        node, graph = plan.node, plan.node.graph
        a, b = _factors(plan.matrix, plan.rank)
        dtype = layer_weight(node).dtype
        old_weight = node.inputs[1]
        x = node.inputs[0]
        mid = ir.Value(name=fresh_name(taken, f"{node.outputs[0].name}_{TAG}"))
        first_name = fresh_name(taken, f"{node.name}_{TAG}")
        if node.op_type in ("MatMul", "Gemm"):
            first_w = _init(graph, taken, f"{old_weight.name}_{TAG}_a", a.astype(dtype))
            second_w = _init(graph, taken, f"{old_weight.name}_{TAG}_b", b.astype(dtype))
            first = ir.node("MatMul", [x, first_w], outputs=[mid], name=first_name)
            if node.op_type == "Gemm":
                node.attributes.pop("transB", None)
            node.replace_input_with(0, mid)
            node.replace_input_with(1, second_w)
        else:
            o, i, kh, kw = plan.shape
            w1 = a.reshape(i, kh, plan.rank).transpose(2, 0, 1)[..., None]  # [r, I, kh, 1]
            w2 = b.reshape(plan.rank, o, kw).transpose(1, 0, 2)[:, :, None, :]  # [O, r, 1, kw]
            first_w = _init(graph, taken, f"{old_weight.name}_{TAG}_a", w1.astype(dtype))
            second_w = _init(graph, taken, f"{old_weight.name}_{TAG}_b", w2.astype(dtype))
            first_attrs, second_attrs = _split_conv_attributes(node, kh, kw)
            first = ir.node("Conv", [x, first_w], attributes=first_attrs, outputs=[mid], name=first_name)
            for key in ("kernel_shape", "strides", "dilations", "pads"):
                node.attributes.pop(key, None)
            for key, ints in second_attrs.items():
                node.attributes[key] = ir.AttrInt64s(key, ints)
            node.replace_input_with(0, mid)
            node.replace_input_with(1, second_w)
        first.metadata_props["pkg.graphopt.pass"] = TAG
        node.metadata_props["pkg.graphopt.pass"] = TAG
        graph.insert_before(node, first)
        drop_if_unused(old_weight)


def _init(graph: ir.Graph, taken: set[str], base: str, array: np.ndarray) -> ir.Value:
    name = fresh_name(taken, base)
    value = ir.Value(name=name, const_value=ir.tensor(array, name=name), shape=ir.Shape(array.shape),
                     type=ir.TensorType(ir.DataType.from_numpy(array.dtype)))
    graph.register_initializer(value)
    return value


def _split_conv_attributes(node: ir.Node, kh: int, kw: int) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """Attributes of the vertical (first) and horizontal (second) Conv (module doc, case 3)."""
    strides = attr_ints(node, "strides", [1, 1]) or [1, 1]
    dilations = attr_ints(node, "dilations", [1, 1]) or [1, 1]
    pads = attr_ints(node, "pads", [0, 0, 0, 0]) or [0, 0, 0, 0]
    if kh == kw == 1:  # two 1x1 convs: everything on the first, the second is a plain channel mix
        return ({"kernel_shape": [1, 1], "strides": strides, "dilations": dilations, "pads": pads},
                {"kernel_shape": [1, 1]})
    return ({"kernel_shape": [kh, 1], "strides": [strides[0], 1], "dilations": [dilations[0], 1],
             "pads": [pads[0], 0, pads[2], 0]},
            {"kernel_shape": [1, kw], "strides": [1, strides[1]], "dilations": [1, dilations[1]],
             "pads": [0, pads[1], 0, pads[3]]})
