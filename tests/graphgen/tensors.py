"""Emitters: data movement, reductions, padding, pooling, resizing, casts and Where."""

from __future__ import annotations

__all__ = [
    "concat", "split", "slice_", "gather", "REDUCE", "reduce", "softmax", "pad", "pool", "pad_then",
    "resize", "cast", "where", "depth_space",
]

import math

import numpy as np

from tests.graphgen.builder import F32, F64, F16, BOOL, INT64_MAX, Val, Builder, bshape
from tests.graphgen.layers import conv


def concat(b: Builder, x: Val) -> Val | None:
    axis = int(b.rng.integers(x.rank)) if x.rank else None
    if axis is None:
        return None
    others = [v for v in b.pool if v.dtype == F32 and v.rank == x.rank and v.name != x.name
              and all(v.shape[i] == x.shape[i] and v.dyn[i] == x.dyn[i] for i in range(x.rank) if i != axis)
              and (v.dyn[axis] == x.dyn[axis] or not x.dyn[axis])]
    parts = [x]
    for _ in range(int(b.rng.integers(1, 3))):
        if others and b.p(0.5):
            parts.append(b.choice(others))
        elif not any(x.dyn[i] for i in range(x.rank) if i != axis):
            shape = list(x.shape)
            shape[axis] = int(b.rng.integers(1, 4))
            parts.append(Val(b.floats(shape, 1.0), tuple(shape), (False,) * x.rank))
        else:
            parts.append(b.same("Neg", x))
    shape = list(x.shape)
    shape[axis] = sum(p.shape[axis] for p in parts)
    dyn = list(x.dyn)
    dyn[axis] = any(p.dyn[axis] for p in parts)
    b.features["Concat"] += 1
    return b.op("Concat", [p.name for p in parts], shape, dyn, axis=axis if b.p(0.7) else axis - x.rank)


def split(b: Builder, x: Val) -> list[Val] | None:
    axes = [i for i in range(x.rank) if x.static(i) and x.shape[i] >= 2]
    if not axes:
        return None
    axis = b.choice(axes)
    size = x.shape[axis]
    n = int(b.rng.integers(2, min(size, 4) + 1))
    if b.opset >= 18 and b.p(0.4):
        chunk = -(-size // n)
        sizes = [chunk] * (size // chunk) + ([size % chunk] if size % chunk else [])
        extra, attrs = [], {"num_outputs": len(sizes)}
    else:
        cuts = sorted(b.rng.choice(np.arange(1, size), size=n - 1, replace=False).tolist())
        sizes = [e - s for s, e in zip([0] + cuts, cuts + [size])]
        extra, attrs = ([b.ints(sizes)], {}) if b.opset >= 13 else ([], {"split": sizes})
    outs = b.node("Split", [x.name, *extra], len(sizes), axis=axis, **attrs)
    b.features["Split"] += 1
    vals = []
    for name, s in zip(outs, sizes):
        shape = list(x.shape)
        shape[axis] = s
        vals.append(Val(name, tuple(shape), x.dyn))
    return vals


def slice_(b: Builder, x: Val) -> Val | None:
    axes = sorted(b.rng.choice(x.rank, size=int(b.rng.integers(1, min(2, x.rank) + 1)), replace=False).tolist())
    starts, ends, steps, slices = [], [], [], [slice(None)] * x.rank
    for axis in axes:
        size = x.shape[axis]
        step = int(b.choice([1, 1, 1, 2, -1]))
        if step > 0:
            start = int(b.rng.integers(-size, size))
            end = int(b.choice([INT64_MAX, size, int(b.rng.integers(-size, size + 1))]))
        else:
            start = int(b.choice([-1, size - 1, INT64_MAX]))
            end = int(b.choice([-size - 1, np.iinfo(np.int64).min, 0]))
        starts.append(start), ends.append(end), steps.append(step)
        py_end = None if end in (INT64_MAX, np.iinfo(np.int64).min) or (step < 0 and end == -size - 1) else end
        py_start = None if start == INT64_MAX else start
        slices[axis] = slice(py_start, py_end, step)
    shape = np.empty(x.shape, np.int8)[tuple(slices)].shape
    if 0 in shape:
        return None
    inputs = [x.name, b.ints(starts), b.ints(ends)]
    if b.p(0.7) or any(s != 1 for s in steps):
        inputs.append(b.ints([a - x.rank if b.p(0.3) else a for a in axes]))
        if any(s != 1 for s in steps) or b.p(0.5):
            inputs.append(b.ints(steps))
    elif axes != list(range(len(axes))):
        return None  # without axes, starts/ends apply to the first dims
    b.features["Slice"] += 1
    return b.op("Slice", inputs, shape, x.dyn)  # a sliced dynamic dim stays dynamic


def gather(b: Builder, x: Val) -> Val | None:
    axes = [i for i in range(x.rank) if x.static(i)]
    if not axes:
        return None
    axis = b.choice(axes)
    size = x.shape[axis]
    if b.p(0.4):
        idx = np.array(int(b.rng.integers(-size, size)), np.int64)
    else:
        idx = b.rng.integers(-size, size, size=int(b.rng.integers(1, 5))).astype(np.int64)
    shape = x.shape[:axis] + idx.shape + x.shape[axis + 1:]
    dyn = x.dyn[:axis] + (False,) * idx.ndim + x.dyn[axis + 1:]
    b.features["Gather"] += 1
    return b.op("Gather", [x.name, b.const(idx, "idx")], shape, dyn, axis=axis if b.p(0.8) else axis - x.rank)


REDUCE = ["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2", "ReduceLogSumExp", "ReduceSumSquare",
          "ReduceL1"]


def reduce(b: Builder, x: Val, keepdims: int | None = None) -> Val | None:
    op = b.choice(REDUCE)
    if keepdims is None:
        keepdims = int(b.p(0.5))
    if b.p(0.15):
        axes = list(range(x.rank))
        spelled = None
    else:
        axes = sorted(b.rng.choice(x.rank, size=int(b.rng.integers(1, x.rank + 1)), replace=False).tolist())
        spelled = [a - x.rank if b.p(0.3) else a for a in axes]
    shape = [1 if i in axes else s for i, s in enumerate(x.shape)] if keepdims else \
        [s for i, s in enumerate(x.shape) if i not in axes]
    dyn = [False if i in axes else d for i, d in enumerate(x.dyn)] if keepdims else \
        [d for i, d in enumerate(x.dyn) if i not in axes]
    extra, attrs = b.axes(x, spelled, op) if spelled is not None else ([], {})
    if keepdims == 0 or b.p(0.3):
        attrs["keepdims"] = keepdims
    b.features[op] += 1
    return b.op(op, [x.name, *extra], shape, dyn, **attrs)


def softmax(b: Builder, x: Val) -> Val:
    op = b.choice(["Softmax", "Softmax", "LogSoftmax"])
    axis = -1 if b.p(0.6) else int(b.rng.integers(-x.rank, x.rank))
    b.features[op] += 1
    return b.same(op, x, axis=axis)


def pad(b: Builder, x: Val, mode: str | None = None) -> Val | None:
    mode = mode or b.choice(["constant", "constant", "reflect", "edge"])
    first = 2 if x.rank >= 3 and b.p(0.7) else 0
    pads = [0] * (2 * x.rank)
    for i in range(first, x.rank):
        for j in (i, i + x.rank):
            limit = x.shape[i] - 1 if mode == "reflect" else 2
            pads[j] = int(b.rng.integers(0, max(limit, 0) + 1)) if limit > 0 and b.p(0.6) else 0
    if mode == "reflect" and any(x.dyn[i] and (pads[i] or pads[i + x.rank]) for i in range(x.rank)):
        return None
    shape = [s + pads[i] + pads[i + x.rank] for i, s in enumerate(x.shape)]
    inputs = [x.name, b.ints(pads)]
    if mode == "constant" and b.p(0.4):
        inputs.append(b.scalar(float(b.choice([0.0, 1.0, -2.0]))))
    b.features[f"Pad:{mode}"] += 1
    return b.op("Pad", inputs, shape, x.dyn, mode=mode)


def pool(b: Builder, x: Val, op: str | None = None) -> Val | None:
    op = op or b.choice(["MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"])
    spatial = x.rank - 2
    if op.startswith("Global"):
        b.features[op] += 1
        return b.op(op, [x.name], x.shape[:2] + (1,) * spatial, x.dyn[:2] + (False,) * spatial)
    k = int(b.choice([2, 3]))
    s = int(b.choice([1, 2, 2]))
    pads = [int(b.rng.integers(0, k)) for _ in range(2 * spatial)] if b.p(0.4) else [0] * (2 * spatial)
    ceil = int(b.p(0.2))
    out = []
    for i, size in enumerate(x.shape[2:]):
        span = size + pads[i] + pads[i + spatial] - k
        if span < 0:
            return None
        o = (-(-span // s) if ceil else span // s) + 1
        if ceil and (o - 1) * s >= size + pads[i]:
            return None  # onnx and ORT differ on a last window starting in the right pad
        out.append(o)
    attrs = {"kernel_shape": [k] * spatial, "strides": [s] * spatial}
    if any(pads):
        attrs["pads"] = pads
    if ceil:
        attrs["ceil_mode"] = 1
    if op == "AveragePool" and b.p(0.5):
        attrs["count_include_pad"] = 1
    b.features[op] += 1
    return b.op(op, [x.name], x.shape[:2] + tuple(out), x.dyn, **attrs)


def pad_then(b: Builder, x: Val) -> Val | None:
    """Zero Pad then Conv / AveragePool / MaxPool of non-negative values (fuse_pad)."""
    b.features["pad_then"] += 1
    kind = b.choice(["Conv", "AveragePool", "MaxPool"])
    if kind == "MaxPool":
        x = b.same("Relu", x)
    y = pad(b, x, mode="constant")
    if y is None:
        return None
    return conv(b, y) if kind == "Conv" else pool(b, y, kind)


def resize(b: Builder, x: Val) -> Val | None:
    mode = b.choice(["nearest", "linear", "cubic"]) if x.rank == 4 else "nearest"
    scale = float(b.choice([2.0, 2.0, 0.5, 1.5, 3.0]))
    scales = [1.0, 1.0] + [scale] * (x.rank - 2)
    shape = [int(math.floor(s * f)) for s, f in zip(x.shape, scales)]
    if min(shape) < 1:
        return None
    attrs = {"mode": mode}
    ctm = b.choice(["half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel"])
    if mode != "nearest" or ctm != "align_corners":
        attrs["coordinate_transformation_mode"] = ctm
    if mode == "nearest":
        attrs["nearest_mode"] = b.choice(["round_prefer_floor", "floor", "ceil"])
    roi = "" if b.opset >= 13 else b.const(np.zeros((0,), np.float32), "roi")  # required before 13
    if not any(x.dyn) and b.p(0.3):
        inputs = [x.name, roi, "" if b.opset >= 13 else b.const(np.zeros((0,), np.float32), "scales"), b.ints(shape)]
    else:
        inputs = [x.name, roi, b.const(np.array(scales, np.float32), "scales")]
    b.features[f"Resize:{mode}"] += 1
    return b.op("Resize", inputs, shape, x.dyn, **attrs)


def cast(b: Builder, x: Val) -> Val:
    kind = b.choice(["double", "same", "half"] if x.is_input else ["double", "same"])
    b.features[f"Cast:{kind}"] += 1
    if kind == "same":
        return b.same("Cast", x, to=F32)
    to = F64 if kind == "double" else F16
    mid = b.op("Cast", [x.name], x.shape, x.dyn, to, to=to)
    if kind == "double" and b.p(0.5):
        mid = b.op("Relu", [mid.name], x.shape, x.dyn, to)
    out = b.op("Cast", [mid.name], x.shape, x.dyn, F32, to=F32)
    b.casts.add(out.name)
    return out


def where(b: Builder, x: Val) -> Val:
    shape = tuple(1 if d or b.p(0.4) else s for s, d in zip(x.shape, x.dyn))
    if b.p(0.5):
        cond = b.input(shape, [None] * len(shape), BOOL).name
    else:  # a comparison of a graph input (never of computed values: a near-tie could flip)
        src = b.input(shape, [None] * len(shape))
        cond = b.op("Greater", [src.name, b.scalar(0.0)], shape, (False,) * len(shape), BOOL).name
    other = b.floats(bshape(b, x), 1.0) if b.p(0.5) else b.same("Neg", x).name
    b.features["Where"] += 1
    return b.op("Where", [cond, x.name, other] if b.p(0.5) else [cond, other, x.name], x.shape, x.dyn)


def depth_space(b: Builder, x: Val) -> Val | None:
    bs = 2
    if b.p(0.5):
        if x.dyn[2] or x.dyn[3] or x.shape[2] % bs or x.shape[3] % bs:
            return None
        b.features["SpaceToDepth"] += 1
        return b.op("SpaceToDepth", [x.name], (x.shape[0], x.shape[1] * 4, x.shape[2] // 2, x.shape[3] // 2),
                    x.dyn, blocksize=bs)
    if x.shape[1] % 4:
        return None
    b.features["DepthToSpace"] += 1
    return b.op("DepthToSpace", [x.name], (x.shape[0], x.shape[1] // 4, x.shape[2] * 2, x.shape[3] * 2), x.dyn,
                blocksize=bs, mode=b.choice(["DCR", "CRD"]))
