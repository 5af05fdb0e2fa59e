"""What each dynamic dim of a graph input stands for, and a size that exercises the model.

A dim the model leaves open (a symbol such as `batch`, an unnamed dim, or `-1` as Paddle
writes it) gets a role, from its name first and from where it sits otherwise:

1. By name: `batch`/`N` is the batch; `past...`/`cache` a key/value cache length;
   `total...` or a sum such as `past_sequence + sequence` the two added; `seq`, `len`,
   `token`, `time`, `frames` a sequence; `height`/`width`/`h`/`w` a spatial dim.
2. By place, for names that say nothing (`unk__3`, `DynamicDimension.0`, `s0`, none):
   axis 0 of a tensor of rank >= 2 is the batch; axes 2.. of a float rank-4/5 tensor are
   spatial (axes 1-2 when the last axis is a small channel count: NHWC); axis 1 of an
   integer [batch, n] tensor or a float [batch, n, features] tensor is a sequence; what is
   left is a feature or signal length.

Sizes: batch 1; a sequence 128 tokens, except the new tokens of a decoder that takes a
key/value cache (1 token after a 128-token past); spatial 224 pixels, 640 for detectors
and dense predictors (`detector_like`), rounded up to a multiple of the
stride the model divides the image by (a U-Net whose skip connections Concat after four
stride-2 levels needs a multiple of 16); other dims 256. `alternatives(role)` gives the
sizes the fallback search tries next.
"""

from __future__ import annotations

__all__ = ["DimRole", "ROLE_SIZES", "alternatives", "classify", "detector_like", "downsampling", "evaluate_expression"]

import ast
import enum
import re

import numpy as np
import onnx_ir as ir

from graphopt.core.patterns import attr_ints, is_default_domain


class DimRole(str, enum.Enum):
    BATCH = "batch"
    SEQUENCE = "sequence"
    NEW_TOKENS = "new tokens"
    PAST = "past length"
    TOTAL = "past + new length"
    SPATIAL = "spatial"
    CHANNELS = "channels"
    FEATURES = "features"


ROLE_SIZES = {
    DimRole.BATCH: 1,
    DimRole.SEQUENCE: 128,
    DimRole.NEW_TOKENS: 1,
    DimRole.PAST: 128,
    DimRole.SPATIAL: 224,
    DimRole.CHANNELS: 3,
    DimRole.FEATURES: 256,
}
DETECTOR_SIZE = 640
_DETECTOR_OPS = {"NonMaxSuppression", "TopK", "RoiAlign"}
_ALTERNATIVES = {
    DimRole.SEQUENCE: (64, 16, 256, 512, 8, 1),
    DimRole.PAST: (16, 1),
    DimRole.SPATIAL: (256, 320, 512, 640, 64, 32),
    DimRole.FEATURES: (512, 1024, 64, 16, 4),
    DimRole.BATCH: (2,),
    DimRole.CHANNELS: (1, 4),
}

_BATCH = re.compile(r"^(n|b|bs|batch.*|.*_batch|num_batch.*|batch_size|nbatch)$")
_PAST = re.compile(r"past|cache|prev|history|memory")
_TOTAL = re.compile(r"total|all_seq|full_seq")
_SEQUENCE = re.compile(r"seq|len|token|time|frame|step|word|char|text|^t$|^l$|^s$|^k$|^q$")
_SPATIAL = re.compile(r"height|width|^h$|^w$|^y$|^x$|^img_?[hw]|image_?[hw]|^rows$|^cols$")
# Names exporters invent that carry no meaning.
_ANONYMOUS = re.compile(r"^(unk__\d+|dynamicdimension\.\d+|s\d+|\?|-1|dim_?\d*|.*_d\d+|.*_dim_\d+)$")


def _by_name(symbol: str | None) -> DimRole | None:
    if not symbol:
        return None
    name = symbol.strip().lower()
    if any(op in name for op in "+-*/"):
        return DimRole.TOTAL
    if _ANONYMOUS.match(name):
        return None
    if _BATCH.match(name):
        return DimRole.BATCH
    if _TOTAL.search(name):
        return DimRole.TOTAL
    if _PAST.search(name):
        return DimRole.PAST
    if _SPATIAL.search(name):
        return DimRole.SPATIAL
    if _SEQUENCE.search(name):
        return DimRole.SEQUENCE
    return None


def classify(symbol: str | None, axis: int, rank: int, dtype: np.dtype, dims: tuple) -> DimRole:
    """The role of dynamic dim `axis` of an input with these dims (ints static, else symbols)."""
    named = _by_name(symbol)
    if named is not None:
        return named
    floating = np.issubdtype(dtype, np.floating)
    if axis == 0 and rank >= 2:
        return DimRole.BATCH
    if floating and rank in (4, 5):
        last = dims[-1]
        channels_last = isinstance(last, int) and 0 < last <= 4 and not isinstance(dims[1], int)
        if channels_last:
            return DimRole.SPATIAL if 1 <= axis <= rank - 2 else DimRole.CHANNELS
        return DimRole.CHANNELS if axis == 1 else DimRole.SPATIAL
    if axis == 1 and rank in (2, 3) and (not floating or rank == 3):
        return DimRole.SEQUENCE
    if rank == 1 and not floating:
        return DimRole.SEQUENCE
    return DimRole.FEATURES


def alternatives(role: DimRole) -> tuple[int, ...]:
    return _ALTERNATIVES.get(role, ())


_DENSE_OUTPUT = re.compile(r"box|bbox|det|anchor|mask|seg|heatmap|prob_map")


def detector_like(model: ir.Model) -> bool:
    """Detection or dense prediction: NMS/TopK/RoiAlign, outputs named like boxes or masks, or an
    output that keeps the input's spatial dims (a segmentation or text-detection map)."""
    if any(n.op_type in _DETECTOR_OPS for n in model.graph.all_nodes()):
        return True
    spatial = {d.value for v in model.graph.inputs if v.shape is not None and len(v.shape) == 4
               for d in list(v.shape)[2:] if not isinstance(d, int) and d.value}
    for out in model.graph.outputs:
        if _DENSE_OUTPUT.search(out.name.lower()):
            return True
        dims = list(out.shape) if out.shape is not None else []
        if len(dims) == 4 and spatial and {getattr(d, "value", None) for d in dims[2:]} & spatial:
            return True
    return False


def round_up(size: int, multiple: int) -> int:
    return max(multiple, -(-size // multiple) * multiple)


_STRIDED = {"Conv", "MaxPool", "AveragePool", "LpPool", "ConvInteger", "QLinearConv", "DepthToSpace"}


def downsampling(model: ir.Model, value: ir.Value, limit: int = 128) -> int:
    """The largest product of strides on a path from `value` (an image input) through the graph.

    Concat/Add of a skip connection with an upsampled map needs the input size to be a
    multiple of it. Resize/Upsample and ConvTranspose do not divide, so they end no path.
    """
    best = 1
    factor = {id(value): 1}
    # Graph order is topological: one sweep carries each value's factor to its consumers.
    for node in model.graph:
        incoming = [factor[id(v)] for v in node.inputs if v is not None and id(v) in factor]
        if not incoming:
            continue
        f = max(incoming)
        if node.op_type in _STRIDED and is_default_domain(node):
            strides = attr_ints(node, "strides", None) or [1]
            if node.op_type == "DepthToSpace":
                strides = [1]
            f *= max(strides)
        best = max(best, f)
        if best >= limit:
            return limit
        for out in node.outputs:
            factor[id(out)] = f
    return best


class _Evaluator(ast.NodeVisitor):
    def __init__(self, values: dict[str, int]):
        self.values = values

    def visit_Expression(self, node):
        return self.visit(node.body)

    def visit_BinOp(self, node):
        a, b = self.visit(node.left), self.visit(node.right)
        ops = {ast.Add: a + b, ast.Sub: a - b, ast.Mult: a * b}
        if isinstance(node.op, (ast.FloorDiv, ast.Div)):
            return a // b if b else 0
        if type(node.op) in ops:
            return ops[type(node.op)]
        raise ValueError("unsupported operator")

    def visit_Name(self, node):
        if node.id not in self.values:
            raise KeyError(node.id)
        return self.values[node.id]

    def visit_Constant(self, node):
        if isinstance(node.value, int):
            return node.value
        raise ValueError("not an int")

    def generic_visit(self, node):
        raise ValueError(type(node).__name__)


def evaluate_expression(symbol: str, values: dict[str, int]) -> int | None:
    """`past_sequence_length + 1` with the symbols' values, or None when it is not one."""
    if not symbol or not any(op in symbol for op in "+-*/"):
        return None
    text = re.sub(r"[^\w+\-*/() ]", "_", symbol)
    try:
        result = _Evaluator(values).visit(ast.parse(text, mode="eval"))
    except (SyntaxError, ValueError, KeyError, RecursionError):
        return None
    return result if isinstance(result, int) and result > 0 else None


def spatial_size(model: ir.Model, value: ir.Value) -> tuple[int, str]:
    """(size, why) for the spatial dims of an image input."""
    base = DETECTOR_SIZE if detector_like(model) else ROLE_SIZES[DimRole.SPATIAL]
    stride = downsampling(model, value)
    size = round_up(base, stride)
    why = f"{'detector' if base == DETECTOR_SIZE else 'image'} size {base}"
    if size != base or stride > 1:
        why += f", a multiple of the model's stride {stride}"
    return size, why
