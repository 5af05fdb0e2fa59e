"""Emitters: layers with weights (Conv, ConvTranspose, BatchNormalization, MatMul, Gemm), their
fusable neighbours, and parallel layers reading one tensor."""

from __future__ import annotations

__all__ = [
    "conv_out", "conv", "conv_transpose", "batchnorm", "conv_block", "bn_then_conv", "matmul",
    "gemm", "parallel", "attention", "unflatten_dense", "instance_norm",
]

import math

from tests.graphgen.builder import Val, Builder, small
from tests.graphgen.elementwise import affine, activation


def conv_out(size, k, s, d, pb, pe):
    return (size + pb + pe - d * (k - 1) - 1) // s + 1


def conv(b: Builder, x: Val, pointwise: bool = False, group: int | None = None, out_ch: int | None = None) -> Val | None:
    spatial = x.rank - 2
    c = x.shape[1]
    if group is None:
        divisors = [g for g in range(1, c + 1) if c % g == 0]
        group = c if b.p(0.25) else b.choice(divisors)
    m = out_ch or group * int(b.rng.integers(1, max(2, 8 // group) + 1))
    k = 1 if pointwise else int(b.choice([1, 2, 3, 3]))
    s = 1 if pointwise else int(b.choice([1, 1, 2]))
    d = 1 if pointwise or k == 1 else int(b.choice([1, 1, 2]))
    attrs: dict = {"kernel_shape": [k] * spatial}
    if s != 1 or b.p(0.3):
        attrs["strides"] = [s] * spatial
    if d != 1:
        attrs["dilations"] = [d] * spatial
    if group != 1 or b.p(0.2):
        attrs["group"] = group
    out = []
    if not pointwise and b.p(0.15):
        attrs["auto_pad"] = b.choice(["SAME_UPPER", "SAME_LOWER", "VALID"])
        for size in x.shape[2:]:
            out.append(-(-size // s) if attrs["auto_pad"] != "VALID" else conv_out(size, k, s, d, 0, 0))
        if attrs["auto_pad"] != "VALID" and d != 1:
            return None  # SAME with dilation: ORT and onnx disagree on shapes; not what we test
    else:
        pads = [int(b.rng.integers(0, k)) for _ in range(2 * spatial)] if k > 1 and b.p(0.7) else [0] * (2 * spatial)
        if any(pads) or b.p(0.2):
            attrs["pads"] = pads
        out = [conv_out(size, k, s, d, pads[i], pads[i + spatial]) for i, size in enumerate(x.shape[2:])]
    if min(out) < 1:
        return None
    w = b.weight((m, c // group) + (k,) * spatial, 1.0 / math.sqrt(c // group * k ** spatial))
    inputs = [x.name, w] + ([b.weight((m,), 0.2)] if b.p(0.6) else [])
    b.features["Conv"] += 1
    return b.op("Conv", inputs, (x.shape[0], m, *out), (x.dyn[0], False, *x.dyn[2:]), **attrs)


def conv_transpose(b: Builder, x: Val) -> Val | None:
    spatial = x.rank - 2
    c = x.shape[1]
    group = b.choice([g for g in range(1, c + 1) if c % g == 0])
    m = group * int(b.rng.integers(1, 4))
    k, s = int(b.choice([1, 2, 3])), int(b.choice([1, 2]))
    d = int(b.choice([1, 1, 2])) if k > 1 else 1
    pads = [int(b.rng.integers(0, k)) for _ in range(2 * spatial)] if b.p(0.5) else [0] * (2 * spatial)
    op_pad = [int(b.rng.integers(0, s)) for _ in range(spatial)] if b.p(0.3) else [0] * spatial  # ORT: < stride
    out = [s * (size - 1) + op_pad[i] + (k - 1) * d + 1 - pads[i] - pads[i + spatial]
           for i, size in enumerate(x.shape[2:])]
    if min(out) < 1:
        return None
    attrs = {"kernel_shape": [k] * spatial, "strides": [s] * spatial, "pads": pads, "group": group}
    if d != 1:
        attrs["dilations"] = [d] * spatial
    if any(op_pad):
        attrs["output_padding"] = op_pad
    w = b.weight((c, m // group) + (k,) * spatial, 1.0 / math.sqrt(c // group * k ** spatial))
    inputs = [x.name, w] + ([b.weight((m,), 0.2)] if b.p(0.5) else [])
    b.features["ConvTranspose"] += 1
    return b.op("ConvTranspose", inputs, (x.shape[0], m, *out), (x.dyn[0], False, *x.dyn[2:]), **attrs)


def batchnorm(b: Builder, x: Val) -> Val:
    c = (x.shape[1],)
    inputs = [x.name, b.weight(c, 1.5, low=0.5), b.weight(c, 0.3), b.weight(c, 0.3), b.weight(c, 2.0, low=0.5)]
    b.features["BatchNormalization"] += 1
    attrs = {"epsilon": float(b.choice([1e-5, 1e-3]))}
    if b.opset >= 14 and b.p(0.04):  # batch statistics: a training leftover, never folded
        b.features["BatchNormalization:training"] += 1
        outs = b.node("BatchNormalization", [x.name, *inputs[1:]], 3, training_mode=1, **attrs)
        return Val(outs[0], x.shape, x.dyn)
    if b.opset >= 14 and b.p(0.1):
        attrs["training_mode"] = 0
    return b.same("BatchNormalization", x, *inputs[1:], **attrs)


def conv_block(b: Builder, x: Val) -> Val | None:
    y = conv_transpose(b, x) if x.rank == 4 and small(x) and b.p(0.2) else conv(b, x)
    if y is None:
        return None
    if b.p(0.6):
        y = batchnorm(b, b.tap(y))
    if b.p(0.4):
        y = affine(b, b.tap(y), 1)
    if b.p(0.7):
        y = activation(b, y)
    return y


def bn_then_conv(b: Builder, x: Val) -> Val | None:
    b.features["bn_then_conv"] += 1
    return conv(b, batchnorm(b, x))


def matmul(b: Builder, x: Val) -> Val:
    k = x.shape[-1]
    n = int(b.rng.integers(1, 13))
    if b.p(0.2):  # non-constant weight: a graph input
        w = b.input((k, n), [None, None])
        b.features["MatMul:input_weight"] += 1
        y = b.op("MatMul", [x.name, w.name], x.shape[:-1] + (n,), x.dyn[:-1] + (False,))
    elif b.p(0.08):  # 1-D weight: the last dim goes
        b.features["MatMul:vector"] += 1
        return b.op("MatMul", [x.name, b.floats((k,), 1 / math.sqrt(k))], x.shape[:-1], x.dyn[:-1])
    else:
        b.features["MatMul"] += 1
        y = b.op("MatMul", [x.name, b.weight((k, n), 1 / math.sqrt(k))], x.shape[:-1] + (n,), x.dyn[:-1] + (False,))
    if b.p(0.5):
        y = b.tap(y)
        y = b.same("Add", y, b.floats((n,), 0.3)) if b.p(0.8) else b.op("Add", [b.floats((n,), 0.3), y.name], y.shape, y.dyn)
    if b.p(0.3):
        y = affine(b, b.tap(y), y.rank - 1)
    if b.p(0.15) and y.rank >= 2 and y.static(y.rank - 1):
        y = batchnorm(b, b.tap(y)) if y.rank == 2 or b.p(0.3) else y  # BN after a MatMul: axis 1
    if b.p(0.4):
        y = activation(b, y)
    return y


def gemm(b: Builder, x: Val) -> Val | None:
    trans_a = b.p(0.2) and not x.dyn[0]
    m_axis, k_axis = (1, 0) if trans_a else (0, 1)
    if x.dyn[k_axis]:
        return None
    m, k = x.shape[m_axis], x.shape[k_axis]
    n = int(b.rng.integers(1, 10))
    trans_b = b.p(0.5)
    bshape = (n, k) if trans_b else (k, n)
    weight = b.input(bshape, [None, None]).name if b.p(0.15) else b.weight(bshape, 1 / math.sqrt(k))
    inputs = [x.name, weight]
    cshapes = [(n,), (1, n), ()] + ([(m, n)] if not x.dyn[m_axis] else [])
    if b.p(0.6):
        inputs.append(b.floats(b.choice(cshapes), 0.3))
    attrs = {}
    if trans_a:
        attrs["transA"] = 1
    if trans_b:
        attrs["transB"] = 1
    if b.p(0.3):
        attrs["alpha"] = float(b.choice([0.5, 2.0]))
    if b.p(0.3) and len(inputs) == 3:
        attrs["beta"] = float(b.choice([0.5, 2.0]))
    b.features["Gemm"] += 1
    y = b.op("Gemm", inputs, (m, n), (x.dyn[m_axis], False), **attrs)
    if b.p(0.3):
        y = batchnorm(b, b.tap(y))
    if b.p(0.3):
        y = affine(b, b.tap(y), 1)
    if b.p(0.3):
        y = activation(b, y)
    return y


def parallel(b: Builder, x: Val) -> Val | list[Val] | None:
    """Several 1x1 Convs / MatMuls / Gemms reading x (horizontal fusion candidates)."""
    count = int(b.rng.integers(2, 5))
    act = b.choice([None, "Relu", "Sigmoid", "LeakyRelu"])
    outs = []
    if x.rank == 4 and x.static(1):
        b.features["parallel:Conv"] += 1
        same_m = b.p(0.4)
        m = int(b.rng.integers(1, 9))
        for _ in range(count):
            y = conv(b, x, pointwise=True, group=1, out_ch=m if same_m else int(b.rng.integers(1, 9)))
            outs.append(y)
        axis = 1
    elif x.rank == 2 and x.static(1) and b.p(0.5):
        b.features["parallel:Gemm"] += 1
        trans_b = b.p(0.5)
        k = x.shape[1]
        for _ in range(count):
            n = int(b.rng.integers(1, 9))
            w = b.floats((n, k) if trans_b else (k, n), 1 / math.sqrt(k))
            extra = [b.floats((n,), 0.2)] if b.p(0.7) else []
            outs.append(b.op("Gemm", [x.name, w, *extra], (x.shape[0], n), (x.dyn[0], False), transB=int(trans_b)))
        axis = 1
    elif x.rank >= 2 and x.static(x.rank - 1):
        b.features["parallel:MatMul"] += 1
        k = x.shape[-1]
        for _ in range(count):
            n = int(b.rng.integers(1, 9))
            y = b.op("MatMul", [x.name, b.floats((k, n), 1 / math.sqrt(k))], x.shape[:-1] + (n,), x.dyn[:-1] + (False,))
            if b.p(0.6):
                y = b.same("Add", y, b.floats((n,), 0.2))
            outs.append(y)
        axis = x.rank - 1
    else:
        return None
    if act:
        outs = [b.same(act, y) for y in outs]
    if b.p(0.5):
        total = sum(y.shape[axis] for y in outs)
        shape = outs[0].shape[:axis] + (total,) + outs[0].shape[axis + 1:]
        b.features["parallel:concat"] += 1
        return b.op("Concat", [y.name for y in outs], shape, outs[0].dyn, axis=axis)
    return outs


def attention(b: Builder, x: Val) -> Val | None:
    """softmax(q k^T / sqrt(d)) v with q, k, v MatMuls of x: parallel MatMuls, Transpose, Softmax."""
    if x.rank != 3 or x.dyn[2]:
        return None
    d = x.shape[2]
    b.features["attention"] += 1
    q, k, v = (b.op("MatMul", [x.name, b.floats((d, d), 1 / math.sqrt(d))], x.shape, x.dyn) for _ in range(3))
    kt = b.op("Transpose", [k.name], (x.shape[0], d, x.shape[1]), (x.dyn[0], False, x.dyn[1]), perm=[0, 2, 1])
    s = b.op("MatMul", [q.name, kt.name], (x.shape[0], x.shape[1], x.shape[1]), (x.dyn[0], x.dyn[1], x.dyn[1]))
    s = b.same("Softmax", b.same("Div", s, b.scalar(math.sqrt(d))), axis=-1)
    return b.op("MatMul", [s.name, v.name], x.shape, x.dyn)


def unflatten_dense(b: Builder, x: Val) -> Val | None:
    """Reshape [B, T, K] -> [-1, K] -> MatMul/Gemm -> Reshape back to [B, T, N] (tf2onnx Tensordot)."""
    if x.rank != 3 or x.dyn[2] or (x.dyn[0] and x.dyn[1]):
        return None
    k, n = x.shape[2], int(b.rng.integers(1, 9))
    b.features["unflatten_dense"] += 1
    flat = b.op("Reshape", [x.name, b.ints([-1, k])], (x.shape[0] * x.shape[1], k), (any(x.dyn[:2]), False))
    if b.p(0.5):
        y = b.op("MatMul", [flat.name, b.floats((k, n), 1 / math.sqrt(k))], (flat.shape[0], n), (flat.dyn[0], False))
    else:
        y = b.op("Gemm", [flat.name, b.floats((n, k), 1 / math.sqrt(k)), b.floats((n,), 0.2)], (flat.shape[0], n),
                 (flat.dyn[0], False), transB=1)
    spec = [-1 if x.dyn[0] else x.shape[0], -1 if x.dyn[1] else x.shape[1], n]
    return b.op("Reshape", [y.name, b.ints(spec)], x.shape[:2] + (n,), x.dyn[:2] + (False,))


def instance_norm(b: Builder, x: Val) -> Val:
    c = (x.shape[1],)
    b.features["InstanceNormalization"] += 1
    return b.same("InstanceNormalization", x, b.floats(c, 1.5, low=0.5), b.floats(c, 0.3), epsilon=1e-5)
