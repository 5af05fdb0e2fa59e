"""Emitters: element-wise ops, activations, per-channel affine ops and the decomposed idioms
(LayerNorm, Gelu, HardSwish, Softplus/Mish) exporters write."""

from __future__ import annotations

__all__ = [
    "SAFE_UNARY", "unary", "binary_const", "binary_pair", "affine", "ACTIVATIONS", "activation",
    "layernorm_decomposed", "layernorm", "gelu_decomposed", "hardswish_decomposed", "softplus_mish",
]

import numpy as np

from tests.graphgen.builder import F32, Val, Builder, bshape, broadcast


SAFE_UNARY = ["Relu", "Sigmoid", "Tanh", "Abs", "Neg", "Erf", "Softsign", "Elu", "Selu", "LeakyRelu",
              "HardSigmoid", "Softplus", "Sin", "Cos", "Identity", "Celu"]


def unary(b: Builder, x: Val) -> Val:
    ops = SAFE_UNARY + ["Clip", "Dropout", "Exp", "Sqrt", "Log", "Reciprocal", "PRelu"]
    if b.opset >= 14:
        ops.append("HardSwish")
    if b.opset >= 18:
        ops.append("Mish")
    if b.opset >= 20:
        ops.append("Gelu")
    op = b.choice(ops)
    if op == "Celu" and b.opset < 12:
        op = "Elu"
    b.features[f"unary:{op}"] += 1
    if op in ("Exp",):
        return b.same("Exp", b.same("Tanh", x))
    if op in ("Sqrt", "Log", "Reciprocal"):
        return b.same(op, b.same("Add", b.same("Abs", x), b.scalar(1.0)))
    if op == "Clip":
        lo, hi = b.choice([(0.0, 6.0), (-1.0, 1.0), (None, 0.5), (-0.5, None)])
        return b.same("Clip", x, "" if lo is None else b.scalar(lo), *([] if hi is None else [b.scalar(hi)]))
    if op == "Dropout":
        if b.opset < 12:
            return b.same("Dropout", x, **({"ratio": 0.3} if b.p(0.5) else {}))
        extra = b.choice([[], [b.scalar(0.3)], [b.scalar(0.5), b.const(np.array(False), "t")]])
        return b.same("Dropout", x, *extra)
    if op == "PRelu":
        return b.same("PRelu", x, b.floats(bshape(b, x), 0.3))
    if op == "LeakyRelu":
        return b.same(op, x, alpha=float(b.choice([0.01, 0.1, 0.2])))
    if op == "Gelu":
        return b.same(op, x, approximate=b.choice(["none", "tanh"]))
    return b.same(op, x)


def binary_const(b: Builder, x: Val) -> Val:
    op = b.choice(["Add", "Sub", "Mul", "Div", "Max", "Min", "Pow"])
    b.features[f"binary_const:{op}"] += 1
    shape = bshape(b, x)
    if op == "Pow":
        return b.same("Pow", b.same("Add", b.same("Abs", x), b.scalar(1.0)), b.scalar(b.choice([2.0, 0.5, 3.0])))
    c = b.floats(shape, 1.5, low=0.5) if op in ("Div", "Mul") else b.floats(shape, 0.5)
    if op == "Div" or b.p(0.5):
        return b.same(op, x, c)
    return b.op(op, [c, x.name], x.shape, x.dyn)


def binary_pair(b: Builder, x: Val) -> Val | None:
    candidates = [v for v in b.pool if v.dtype == F32 and v.name != x.name and broadcast(x, v)]
    y = b.choice(candidates) if candidates and b.p(0.8) else x
    shape, dyn = broadcast(x, y)
    op = b.choice(["Add", "Sub", "Mul", "Max", "Min", "Div", "Mean", "Sum"])
    b.features[f"binary_pair:{op}"] += 1
    if op == "Div":
        den = b.same("Add", b.same("Abs", y), b.scalar(1.0))
        return b.op("Div", [x.name, den.name], shape, dyn)
    return b.op(op, [x.name, y.name], shape, dyn)


def affine(b: Builder, x: Val, axis: int) -> Val:
    """Mul and/or Add by per-channel constants (what fold_affine folds into weights), or by
    constants it must not fold (varying along other axes)."""
    shapes = [(x.shape[axis],) + (1,) * (x.rank - 1 - axis)] * 4 + [(), (1,) * x.rank]
    if axis == 1 and x.rank >= 3:
        shapes.append((1, x.shape[1]) + (1,) * (x.rank - 2))
    if x.rank >= 3 and not any(x.dyn[2:]):
        shapes.append(x.shape[2:])  # spatial: declined
    if not any(x.dyn):
        shapes.append(x.shape)  # full: declined
    shape = b.choice(shapes)
    b.features["affine"] += 1
    if b.p(0.7):
        x = b.same("Mul", x, b.floats(shape, 1.5, low=0.5)) if b.p(0.8) else b.same("Div", x, b.floats(shape, 1.5, low=0.5))
    if b.p(0.7):
        x = b.same("Add", x, b.floats(shape, 0.3)) if b.p(0.8) else b.same("Sub", x, b.floats(shape, 0.3))
    return x


ACTIVATIONS = ["Relu", "Relu", "LeakyRelu", "Sigmoid", "Clip6", "HardSwish", "Tanh", "HardSigmoid", "Gelu"]


def activation(b: Builder, x: Val) -> Val:
    op = b.choice(ACTIVATIONS)
    b.features[f"act:{op}"] += 1
    if op == "Clip6":
        return b.same("Clip", x, b.scalar(0.0), b.scalar(6.0))
    if op == "LeakyRelu":
        return b.same(op, x, alpha=0.1)
    if op == "Gelu":
        return gelu_decomposed(b, x) if b.opset < 20 or b.p(0.5) else b.same("Gelu", x)
    if op == "HardSwish" and (b.opset < 14 or b.p(0.5)):
        return hardswish_decomposed(b, x)
    return b.same(op, x)


def layernorm_decomposed(b: Builder, x: Val) -> Val:
    """(x - mean) / sqrt(var + eps) * gamma + beta over the last axis, as exporters spell it."""
    d = x.shape[-1]
    b.features["layernorm_decomposed"] += 1
    kept = x.shape[:-1] + (1,)
    kept_dyn = x.dyn[:-1] + (False,)

    def mean_of(v: Val) -> Val:
        if v.rank == 3 and b.p(0.2):  # tf2onnx: GlobalAveragePool averages the last axis of a rank-3 tensor
            b.features["layernorm:GlobalAveragePool"] += 1
            return b.op("GlobalAveragePool", [v.name], kept, kept_dyn)
        extra, attrs = b.axes(v, [-1 if b.p(0.8) else v.rank - 1], "ReduceMean")
        return b.op("ReduceMean", [v.name, *extra], kept, kept_dyn, **attrs)

    mean = b.tap(mean_of(x))
    gamma = b.floats((d,), 1.5, low=0.5) if b.p(0.9) else None
    beta = b.floats((d,), 0.3) if b.p(0.8) else None
    eps = b.scalar(float(b.choice([1e-5, 1e-6, 1e-3])))
    diff = b.tap(b.same("Sub", x, mean.name))
    # ORT 1.32's LayerNormFusion (Pow form) takes a Cast from double/float16 in and then
    # fails to load; graphopt no longer writes that form there, and neither do we.
    pow_ok = x.name not in b.casts
    sq = b.same("Pow", diff, b.scalar(2.0)) if pow_ok and b.p(0.5) else b.same("Mul", diff, diff.name)
    var = mean_of(sq)
    std = b.same("Sqrt", b.same("Add", var, eps))
    if gamma and b.p(0.15):  # TensorFlow: x * m + (beta - mean * m), m = gamma / std
        b.features["layernorm:tf_form"] += 1
        m = b.op("Div", [gamma, std.name], kept[:-1] + (d,), kept_dyn[:-1] + (False,))
        shift = b.op("Mul", [mean.name, m.name], m.shape, m.dyn)
        if beta:
            shift = b.op("Sub", [beta, shift.name], m.shape, m.dyn)
        else:
            shift = b.same("Neg", shift)
        return b.op("Add", [b.op("Mul", [x.name, m.name], x.shape, x.dyn).name, shift.name], x.shape, x.dyn)
    y = b.op("Div", [diff.name, std.name], x.shape, x.dyn) if b.p(0.7) else \
        b.op("Mul", [diff.name, b.same("Reciprocal", std).name], x.shape, x.dyn)
    if gamma:
        y = b.same("Mul", y, gamma) if b.p(0.8) else b.op("Mul", [gamma, y.name], x.shape, x.dyn)
    if beta:
        y = b.same("Add", y, beta) if b.p(0.85) else b.same("Sub", y, b.floats((d,), 0.3))  # MXNet subtracts
    return y


def layernorm(b: Builder, x: Val) -> Val | None:
    if b.opset < 17:
        return layernorm_decomposed(b, x)
    axis = int(b.rng.integers(1, x.rank)) if b.p(0.3) else x.rank - 1
    if any(x.dyn[axis:]):
        return None
    b.features["LayerNormalization"] += 1
    inputs = [x.name, b.floats(x.shape[axis:], 1.5, low=0.5)] + ([b.floats(x.shape[axis:], 0.3)] if b.p(0.8) else [])
    return b.same("LayerNormalization", x, *inputs[1:], axis=axis if axis != x.rank - 1 or b.p(0.5) else -1,
                  epsilon=float(b.choice([1e-5, 1e-12])))


def gelu_decomposed(b: Builder, x: Val) -> Val:
    b.features["gelu_decomposed"] += 1
    if b.p(0.2):  # the tanh approximation
        cube = b.same("Mul", b.same("Mul", x, x.name), x.name)
        inner = b.same("Mul", b.same("Add", x, b.same("Mul", cube, b.scalar(0.044715)).name), b.scalar(0.7978845608))
        return b.same("Mul", b.same("Mul", x, b.scalar(0.5)), b.same("Add", b.same("Tanh", inner), b.scalar(1.0)).name)
    scaled = b.same("Div", x, b.scalar(1.4142135381698608)) if b.p(0.5) else b.same("Mul", x, b.scalar(0.7071067690849304))
    one_plus = b.same("Add", b.same("Erf", scaled), b.scalar(1.0))
    form = int(b.rng.integers(3))
    if form == 0:
        return b.same("Mul", b.same("Mul", x, one_plus.name), b.scalar(0.5))
    if form == 1:
        return b.same("Mul", b.same("Mul", x, b.scalar(0.5)), one_plus.name)
    return b.op("Mul", [x.name, b.same("Mul", one_plus, b.scalar(0.5)).name], x.shape, x.dyn)


def hardswish_decomposed(b: Builder, x: Val) -> Val:
    b.features["hardswish_decomposed"] += 1
    if b.p(0.3):
        return b.same("Mul", x, b.same("HardSigmoid", x, alpha=1 / 6, beta=0.5).name)
    hs = b.same("Div", b.same("Clip", b.same("Add", x, b.scalar(3.0)), b.scalar(0.0), b.scalar(6.0)), b.scalar(6.0))
    return hs if b.p(0.2) else b.same("Mul", x, hs.name)


def softplus_mish(b: Builder, x: Val) -> Val:
    b.features["softplus_decomposed"] += 1
    x = b.same("Clip", x, b.scalar(-10.0), b.scalar(10.0))
    sp = b.same("Log", b.same("Add", b.same("Exp", x), b.scalar(1.0)))
    if b.p(0.5):
        b.features["mish_decomposed"] += 1
        return b.same("Mul", x, b.same("Tanh", sp).name)
    return sp
