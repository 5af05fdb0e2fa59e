"""Emitters: reshapes, shape arithmetic (Shape -> Gather -> ... -> Reshape/Slice), Transposes."""

from __future__ import annotations

__all__ = [
    "reshape", "shape_reshape", "shape_math", "positional_range", "transpose", "transpose_sandwich",
    "flatten", "unsqueeze_squeeze", "expand_tile", "batch_dot",
]

import numpy as np

from tests.graphgen.builder import F32, I64, BOOL, Val, Builder, i64
from tests.graphgen.elementwise import binary_const
from tests.graphgen.tensors import concat, reduce, pad


def reshape(b: Builder, x: Val) -> Val | None:
    """Reshape with a constant shape; a dynamic dim is copied with 0 or left to -1."""
    static = [i for i in range(x.rank) if x.static(i)]
    kind = b.choice(["merge", "split", "same", "flat", "chain"])
    shape, dyn = list(x.shape), list(x.dyn)
    if kind == "merge" and x.rank >= 2:
        i = int(b.rng.integers(x.rank - 1))
        if x.dyn[i] or x.dyn[i + 1]:
            return None
        shape[i:i + 2], dyn[i:i + 2] = [x.shape[i] * x.shape[i + 1]], [False]
    elif kind == "split" and static:
        i = b.choice(static)
        f = [f for f in range(2, x.shape[i]) if x.shape[i] % f == 0]
        if not f:
            return None
        f = b.choice(f)
        shape[i:i + 1], dyn[i:i + 1] = [f, x.shape[i] // f], [False, False]
    elif kind == "flat" and x.rank >= 2 and not any(x.dyn[1:]):
        shape, dyn = [x.shape[0], int(np.prod(x.shape[1:]))], [x.dyn[0], False]
    elif kind == "chain":
        b.features["reshape:chain"] += 1
        y = reshape(b, x)
        return None if y is None else reshape(b, y)
    elif kind != "same":
        return None
    # Spell it: a dynamic dim at its own position is 0; one dim (dynamic or not) may be -1.
    spec = []
    for i, (s, d) in enumerate(zip(shape, dyn)):
        if d:
            if i < x.rank and x.dyn[i] and x.shape[i] == s:
                spec.append(0)
            else:
                spec.append(-1)
        else:
            spec.append(s)
    if spec.count(-1) > 1:
        return None
    if -1 not in spec and b.p(0.3):
        cands = [i for i, s in enumerate(spec) if s > 0]
        if cands:
            spec[b.choice(cands)] = -1
    b.features[f"Reshape:{kind}"] += 1
    return b.op("Reshape", [x.name, b.ints(spec)], shape, dyn)


def shape_reshape(b: Builder, x: Val) -> Val | None:
    """Shape -> Gather -> Unsqueeze -> Concat -> Reshape: keep the leading dims, flatten the rest."""
    if x.rank < 3:
        return None
    keep = int(b.rng.integers(1, x.rank - 1))
    if any(x.dyn[keep:]):
        return None
    b.features["shape_reshape"] += 1
    shp = b.op("Shape", [x.name], (x.rank,), (False,), I64)
    parts = []
    for i in range(keep):
        if b.opset >= 15 and b.p(0.3):
            parts.append(b.op("Shape", [x.name], (1,), (False,), I64, start=i, end=i + 1).name)
        elif b.p(0.3):
            parts.append(b.op("Slice", [shp.name, b.ints([i]), b.ints([i + 1])], (1,), (False,), I64).name)
        else:
            g = b.op("Gather", [shp.name, b.const(np.array(i, np.int64), "idx")], (), (), I64, axis=0)
            parts.append(b.squeeze_op("Unsqueeze", g.name, [0], (1,), (False,), I64).name)
    tail = int(np.prod(x.shape[keep:]))
    parts.append(b.ints([-1] if b.p(0.5) else [tail]))
    cat = b.op("Concat", parts, (keep + 1,), (False,), I64, axis=0)
    return b.op("Reshape", [x.name, cat.name], x.shape[:keep] + (tail,), x.dyn[:keep] + (False,))


def shape_math(b: Builder, x: Val) -> Val | None:
    """A dim read with Shape/Gather, put through integer or float arithmetic (as TorchScript's
    interpolate and view write it), then used as a Slice end: x[..., :n] on that axis. The
    generator computes n as ORT does (float32, truncating casts, Mod by fmod)."""
    axis = int(b.rng.integers(x.rank))
    size = x.shape[axis]
    shp = b.op("Shape", [x.name], (x.rank,), (False,), I64)
    if b.p(0.3) and b.opset >= 15:
        d = b.squeeze_op("Squeeze", b.op("Shape", [x.name], (1,), (False,), I64, start=axis, end=axis + 1).name,
                         [0], (), (), I64)
    else:
        d = b.op("Gather", [shp.name, i64(b, axis if b.p(0.7) else axis - x.rank)], (), (), I64, axis=0)
    n, name = size, d.name
    for _ in range(int(b.rng.integers(1, 3))):
        kind = b.choice(["float_scale", "sub_mod", "div", "minmax" if b.opset >= 12 else "where", "where", "size"])
        b.features[f"shape_math:{kind}"] += 1
        if kind == "float_scale":
            scale = np.float32(b.choice([0.7, 0.3, 1.1, 0.9, 0.35, 2.5, 1 / 3]))
            f = b.op("Cast", [name], (), (), F32, to=F32)
            op = "Mul" if b.p(0.7) else "Div"
            m = b.op(op, [f.name, b.scalar(float(scale) if op == "Mul" else float(np.float32(1) / scale))], (), (),
                     F32)
            value = np.float32(n) * scale if op == "Mul" else np.float32(n) / np.float32(np.float32(1) / scale)
            n, name = int(np.trunc(value)), b.op("Cast", [m.name], (), (), I64, to=I64).name
        elif kind == "sub_mod":
            c, k, fmod = int(b.rng.integers(0, 2 * size + 2)), int(b.rng.integers(2, 6)), int(b.p(0.4))
            diff = b.op("Sub", [name, i64(b, c)], (), (), I64)
            name = b.op("Mod", [diff.name, i64(b, k)], (), (), I64, **({"fmod": 1} if fmod else {})).name
            n = int(np.fmod(n - c, k)) if fmod else (n - c) % k
        elif kind == "div":
            c, k = int(b.rng.integers(0, 2 * size + 2)), int(b.rng.integers(2, 4))
            diff = b.op("Sub", [name, i64(b, c)], (), (), I64)
            name = b.op("Div", [diff.name, i64(b, k)], (), (), I64).name
            n = int((n - c) / k)  # truncation, as ORT
        elif kind == "minmax":
            lo, hi = sorted(int(v) for v in b.rng.integers(0, size + 2, size=2))
            name = b.op("Max", [b.op("Min", [name, i64(b, hi)], (), (), I64).name, i64(b, lo)], (), (), I64).name
            n = max(min(n, hi), lo)
        elif kind == "where":
            c, other = int(b.rng.integers(0, size + 2)), int(b.rng.integers(1, size + 1))
            eq = b.op("Equal", [name, i64(b, c)], (), (), BOOL)
            name = b.op("Where", [eq.name, i64(b, other), name], (), (), I64).name
            n = other if n == c else n
        else:  # Size(x) // (the other dims)
            total = b.op("Size", [x.name], (), (), I64)
            rest = int(np.prod(x.shape)) // size
            name = b.op("Div", [total.name, i64(b, rest)], (), (), I64).name
            n = size
    stop = n + size if n < 0 else n
    if min(max(stop, 0), size) < 1:
        return None  # an empty slice: nothing left to compute with
    end = b.squeeze_op("Unsqueeze", name, [0], (1,), (False,), I64)
    shape = list(x.shape)
    shape[axis] = min(max(stop, 0), size)
    dyn = list(x.dyn)
    dyn[axis] = True  # computed: the model cannot state it
    return b.op("Slice", [x.name, b.ints([0]), end.name, b.ints([axis])], shape, dyn)


def positional_range(b: Builder, x: Val) -> Val | None:
    """x + 0.1 * Range(0, dim, 1) along the last axis, the dim read with Shape (Range, Cast)."""
    b.features["Range"] += 1
    axis = x.rank - 1
    shp = b.op("Shape", [x.name], (x.rank,), (False,), I64)
    n = b.op("Gather", [shp.name, b.const(np.array(axis, np.int64), "idx")], (), (), I64, axis=0)
    r = b.op("Range", [b.const(np.array(0, np.int64), "zero"), n.name, b.const(np.array(1, np.int64), "one")],
             (x.shape[axis],), (x.dyn[axis],), I64)
    rf = b.op("Cast", [r.name], r.shape, r.dyn, F32, to=F32)
    return b.op("Add", [x.name, b.same("Mul", rf, b.scalar(0.1)).name], x.shape, x.dyn)


def transpose(b: Builder, x: Val, perm=None) -> Val:
    perm = list(perm if perm is not None else b.rng.permutation(x.rank))
    b.features["Transpose"] += 1
    attrs = {} if b.p(0.1) and perm == list(range(x.rank))[::-1] else {"perm": perm}
    return b.op("Transpose", [x.name], [x.shape[p] for p in perm], [x.dyn[p] for p in perm], **attrs)


def transpose_sandwich(b: Builder, x: Val) -> Val | None:
    """Transpose, layout-agnostic ops, the inverse Transpose (what sink_transposes cancels)."""
    if x.rank < 2:
        return None
    b.features["transpose_sandwich"] += 1
    perm = [int(p) for p in b.rng.permutation(x.rank)]
    y = transpose(b, x, perm)
    for _ in range(int(b.rng.integers(1, 3))):
        kind = b.choice(["unary", "const", "reduce", "pad", "concat"])
        if kind == "unary":
            y = b.same(b.choice(["Relu", "Sigmoid", "Neg", "Tanh"]), y)
        elif kind == "const":
            y = binary_const(b, y)
        elif kind == "reduce":
            y = reduce(b, y, keepdims=1) or y
        elif kind == "pad":
            y = pad(b, y, mode="constant") or y
        elif kind == "concat":
            y = concat(b, y) or y
    inverse = [int(i) for i in np.argsort(perm)]
    return transpose(b, y, inverse)


def flatten(b: Builder, x: Val) -> Val:
    axis = int(b.rng.integers(0, x.rank + 1))
    a, c = x.shape[:axis], x.shape[axis:]
    b.features["Flatten"] += 1
    return b.op("Flatten", [x.name], (int(np.prod(a)), int(np.prod(c))), (any(x.dyn[:axis]), any(x.dyn[axis:])),
                axis=axis if axis != 1 or b.p(0.5) else 1)


def unsqueeze_squeeze(b: Builder, x: Val) -> Val | None:
    ones = [i for i in range(x.rank) if x.shape[i] == 1 and x.static(i)]
    if ones and b.p(0.4):
        axes = sorted(b.rng.choice(ones, size=int(b.rng.integers(1, len(ones) + 1)), replace=False).tolist())
        keep = [i for i in range(x.rank) if i not in axes]
        b.features["Squeeze"] += 1
        spec = [a - x.rank if b.p(0.3) else a for a in axes]
        if not any(x.dyn) and b.p(0.2) and len(axes) == len(ones):
            spec = None  # every 1 goes
        return b.squeeze_op("Squeeze", x.name, spec, [x.shape[i] for i in keep], [x.dyn[i] for i in keep])
    if x.rank >= 5:
        return None
    axis = int(b.rng.integers(0, x.rank + 1))
    shape, dyn = list(x.shape), list(x.dyn)
    shape.insert(axis, 1), dyn.insert(axis, False)
    b.features["Unsqueeze"] += 1
    y = b.squeeze_op("Unsqueeze", x.name, [axis if b.p(0.7) else axis - x.rank - 1], shape, dyn)
    if b.p(0.3):  # and back (noops case 9)
        b.features["Unsqueeze+Squeeze"] += 1
        return b.squeeze_op("Squeeze", y.name, [axis], x.shape, x.dyn)
    return y


def expand_tile(b: Builder, x: Val) -> Val | None:
    if x.rank >= 5:
        return None
    if b.p(0.5):
        y = b.squeeze_op("Unsqueeze", x.name, [0], (1,) + x.shape, (False,) + x.dyn)
        n = int(b.rng.integers(2, 4))
        spec = [n] + [1] * x.rank
        b.features["Expand"] += 1
        if b.p(0.2):  # a shorter shape of ones: Expand returns its input
            return b.op("Expand", [y.name, b.ints([1] * int(b.rng.integers(1, x.rank + 2)))], y.shape, y.dyn)
        return b.op("Expand", [y.name, b.ints(spec)], (n,) + x.shape, (False,) + x.dyn)
    reps = [int(b.choice([1, 1, 2])) for _ in x.shape]
    b.features["Tile"] += 1
    shape = [s * r for s, r in zip(x.shape, reps)]
    return b.op("Tile", [x.name, b.ints(reps)], shape, x.dyn)


def batch_dot(b: Builder, x: Val) -> Val | None:
    """MXNet batch_dot: Reshape(x, [-1, tail]) -> Transpose(0, perm of tail) -> Reshape back (one Transpose)."""
    if x.rank < 3:
        return None
    k = int(b.rng.integers(1, x.rank - 1))
    head, tail = x.shape[:k], x.shape[k:]
    if any(x.dyn[k:]) or sum(x.dyn[:k]) > 1:
        return None
    b.features["batch_dot"] += 1
    flat = b.op("Reshape", [x.name, b.ints([-1, *tail])], (int(np.prod(head)),) + tail, (any(x.dyn[:k]),) + x.dyn[k:])
    perm = [0] + [1 + int(i) for i in b.rng.permutation(len(tail))]
    t = transpose(b, flat, perm)
    back = head + tuple(t.shape[1:])
    spec = [-1 if d else s for s, d in zip(head, x.dyn[:k])] + list(t.shape[1:])
    return b.op("Reshape", [t.name, b.ints(spec)], back, x.dyn[:k] + (False,) * len(tail))
