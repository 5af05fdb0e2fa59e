"""Random valid ONNX graphs for differential testing, in the spirit of NNSmith (a generator of our own).

`generate(seed)` builds one model from a seeded numpy generator: graph inputs (some dims
symbolic), then a random sequence of emitters, each adding one op or one idiom exporters
write (Conv-BatchNormalization-Relu, decomposed LayerNorm/Gelu/HardSwish, Shape->Gather->
Unsqueeze->Concat->Reshape, parallel 1x1 Convs from one tensor, Transpose sandwiches, If on a
constant, duplicated subexpressions...). Every value carries the sizes it has at run time and
which of its dims are symbolic in the model, so each op is built to type-check: attributes and
constants only use static dims, and a dynamic dim is copied (Reshape 0, Shape arithmetic),
never frozen. Values stay of order one (weights scaled by 1/sqrt(fan-in), logs and roots of
|x| + 1) so that float rounding cannot pass for a wrong rewrite.

The same seed gives the same model and feeds on every machine.
"""

from __future__ import annotations

__all__ = ["Generated", "generate", "OPSETS"]

import collections
import dataclasses
import math

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh

F32, F64, F16, I64, BOOL = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
                            onnx.TensorProto.INT64, onnx.TensorProto.BOOL)
OPSETS = (11, 12, 13, 17, 18, 21)
INT64_MAX = np.iinfo(np.int64).max


@dataclasses.dataclass(frozen=True)
class Val:
    name: str
    shape: tuple[int, ...]  # sizes at run time
    dyn: tuple[bool, ...]  # symbolic in the model
    dtype: int = F32
    is_input: bool = False

    @property
    def rank(self) -> int:
        return len(self.shape)

    def static(self, axis: int) -> bool:
        return not self.dyn[axis]


@dataclasses.dataclass
class Generated:
    seed: int
    model: onnx.ModelProto
    feeds: dict[str, np.ndarray]
    features: collections.Counter  # emitters used


class Builder:
    def __init__(self, seed: int):
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.opset = int(self.rng.choice(OPSETS))
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.feeds: dict[str, np.ndarray] = {}
        self.pool: list[Val] = []
        self.features: collections.Counter = collections.Counter()
        self.pure: list[tuple[onnx.NodeProto, Val]] = []  # single-output nodes CSE may duplicate
        self.weights: list[tuple[tuple, str, np.ndarray]] = []  # main-graph float constants, to share
        self.taps: list[Val] = []  # values inside idioms (a Conv before its BN), output candidates
        self.in_body = False
        self.in_function = False  # constants become Constant nodes, outer values are out of reach
        self.functions: list[onnx.FunctionProto] = []
        self.casts: set[str] = set()  # values cast to float from double or float16
        self._n = 0

    # --- naming, randomness -------------------------------------------------------------------
    def name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}_{self._n}"

    def p(self, probability: float) -> bool:
        return bool(self.rng.random() < probability)

    def choice(self, options):
        return options[int(self.rng.integers(len(options)))]

    def pick(self, pred=lambda v: True, float_only: bool = True) -> Val | None:
        """A pool value satisfying pred, recent ones likelier (graphs grow deep, not only wide)."""
        found = [(i, v) for i, v in enumerate(self.pool) if (v.dtype == F32 or not float_only) and pred(v)]
        if not found:
            return None
        weights = np.array([1.0 + i for i, _ in found]) ** 2
        return found[int(self.rng.choice(len(found), p=weights / weights.sum()))][1]

    # --- building ------------------------------------------------------------------------------
    def node(self, op: str, inputs: list[str], n_out: int = 1, domain: str = "", **attrs) -> list[str]:
        outs = [self.name(op.lower()) for _ in range(n_out)]
        self.nodes.append(oh.make_node(op, inputs, outs, name=self.name(f"n_{op}"), domain=domain, **attrs))
        return outs

    def op(self, op: str, inputs: list[str], shape, dyn, dtype=F32, pure=True, **attrs) -> Val:
        """A single-output node; its value (not pushed to the pool)."""
        out = Val(self.node(op, inputs, **attrs)[0], tuple(shape), tuple(dyn), dtype)
        if pure:
            self.pure.append((self.nodes[-1], out))
        return out

    def same(self, op: str, x: Val, *others: str, **attrs) -> Val:
        """An op whose output has x's shape and type."""
        return self.op(op, [x.name, *others], x.shape, x.dyn, x.dtype, **attrs)

    def const(self, array: np.ndarray, hint: str = "c") -> str:
        """An initializer, or (one time in five) a Constant node."""
        name = self.name(hint)
        tensor = onh.from_array(np.asarray(array), name)
        if self.in_function or self.p(0.2):
            self.nodes.append(oh.make_node("Constant", [], [name], name=self.name("n_Constant"), value=tensor))
        else:
            self.initializers.append(tensor)
        return name

    def ints(self, values) -> str:
        return self.const(np.array(values, np.int64), "i")

    def floats(self, shape, scale=1.0, low=None) -> str:
        """A float constant; sometimes an earlier one of the same shape and kind (a shared weight),
        or a copy of one under a new name (for dedupe)."""
        key = (tuple(shape), scale, low)
        earlier = [(name, array) for k, name, array in self.weights if k == key and not self.in_function]
        if earlier and self.p(0.12):
            self.features["shared_weight"] += 1
            return self.choice(earlier)[0]
        if earlier and self.p(0.05):
            self.features["duplicate_weight"] += 1
            array = self.choice(earlier)[1]
        elif low is not None:
            array = self.rng.uniform(low, scale, size=shape).astype(np.float32)
        else:
            array = (self.rng.standard_normal(shape) * scale).astype(np.float32)
        name = self.const(array, "w")
        if not self.in_body:
            self.weights.append((key, name, array))
        return name

    def tap(self, v: Val) -> Val:
        """Sometimes let later ops read, or the graph output, a value inside an idiom."""
        if self.p(0.15):
            self.pool.append(v)
            self.features["tap:consumed"] += 1
        if self.p(0.1):
            self.taps.append(v)
        return v

    def mark(self) -> tuple:
        return len(self.nodes), len(self.initializers), len(self.inputs), len(self.pure), len(self.weights), \
            len(self.pool), len(self.taps)

    def rollback(self, mark: tuple) -> None:
        for vi in self.inputs[mark[2]:]:
            self.feeds.pop(vi.name, None)
        del (self.nodes[mark[0]:], self.initializers[mark[1]:], self.inputs[mark[2]:], self.pure[mark[3]:],
             self.weights[mark[4]:], self.pool[mark[5]:], self.taps[mark[6]:])

    def enter_body(self) -> tuple:
        """Build an If branch: new nodes and initializers go to the body; pool, taps, CSE stay main-graph."""
        saved = (self.nodes, self.initializers, len(self.pure), len(self.pool), len(self.taps), self.in_body)
        self.nodes, self.initializers, self.in_body = [], [], True
        return saved

    def leave_body(self, saved: tuple) -> tuple[list, list]:
        body = self.nodes, self.initializers
        self.nodes, self.initializers, pure, pool, taps, self.in_body = saved
        del self.pure[pure:], self.pool[pool:], self.taps[taps:]
        return body

    def weight(self, shape, scale=1.0, low=None) -> str:
        """A layer parameter: mostly a constant, sometimes a constant expression (ConstantOfShape
        fill, Transpose/Reshape/Mul of a constant, as light models and TorchScript write them)
        or, rarely, a graph input (a weight the caller may feed)."""
        r = self.rng.random()
        if r < 0.05 and not self.in_body and low is None:  # a fed variance could be negative
            self.features["weight:input"] += 1
            return self.input(shape, [None] * len(shape)).name
        if r < 0.10 and len(shape) == 1:  # a filled matrix makes rows equal: LayerNorm of them is noise
            self.features["weight:fill"] += 1
            value = float(self.rng.uniform(low, scale)) if low is not None else float(self.rng.standard_normal() * scale)
            fill = onh.from_array(np.array([value], np.float32))
            return self.op("ConstantOfShape", [self.ints(list(shape))], shape, (False,) * len(shape),
                           value=fill).name
        if r < 0.16 and len(shape) >= 2:
            self.features["weight:transposed"] += 1
            t = self.floats((shape[1], shape[0]) + tuple(shape[2:]), scale, low)
            perm = [1, 0] + list(range(2, len(shape)))
            return self.op("Transpose", [t], shape, (False,) * len(shape), perm=perm).name
        if r < 0.20:
            self.features["weight:scaled"] += 1
            return self.op("Mul", [self.floats(shape, scale, low), self.scalar(1.0)], shape, (False,) * len(shape)).name
        return self.floats(shape, scale, low)

    def scalar(self, value: float) -> str:
        return self.const(np.array(value, np.float32), "s")

    def input(self, shape, dyn_names, dtype=F32) -> Val:
        name = self.name("in")
        dims = [n if n else d for d, n in zip(shape, dyn_names)]
        self.inputs.append(oh.make_tensor_value_info(name, dtype, dims))
        if dtype == F32:
            self.feeds[name] = self.rng.standard_normal(shape).astype(np.float32)
        elif dtype == BOOL:
            self.feeds[name] = np.asarray(self.rng.random(shape) < 0.5)
        return Val(name, tuple(shape), tuple(bool(n) for n in dyn_names), dtype, is_input=True)

    def push(self, *values: Val) -> None:
        self.pool.extend(values)

    def axes(self, x: Val, axes: list[int], op: str) -> tuple[list[str], dict]:
        """Reduce axes as an input (opset >= 18, ReduceSum >= 13) or an attribute."""
        if self.opset >= 18 or (op == "ReduceSum" and self.opset >= 13):
            return [self.ints(axes)], {}
        return [], {"axes": axes}

    def squeeze_op(self, op: str, x: str, axes: list[int] | None, shape, dyn, dtype=F32) -> Val:
        """Squeeze/Unsqueeze with axes as an input (opset >= 13) or an attribute."""
        if axes is None:
            return self.op(op, [x], shape, dyn, dtype)
        if self.opset >= 13:
            return self.op(op, [x, self.ints(axes)], shape, dyn, dtype)
        return self.op(op, [x], shape, dyn, dtype, axes=axes)


# --- helpers for shapes ----------------------------------------------------------------------------
def _bshape(b: Builder, x: Val, kind: str | None = None) -> tuple[int, ...]:
    """A constant shape that broadcasts to x without changing x's shape."""
    kinds = ["scalar", "ones", "full"] if x.rank else ["scalar"]
    if x.rank >= 1 and x.static(x.rank - 1):
        kinds.append("last")
    if x.rank >= 3 and x.static(1):
        kinds.append("channel")
    kind = kind or b.choice(kinds)
    if kind == "scalar":
        return ()
    if kind == "ones":
        return (1,) * int(b.rng.integers(1, x.rank + 1))
    if kind == "last":
        return (x.shape[-1],)
    if kind == "channel":
        return (x.shape[1],) + (1,) * (x.rank - 2)
    return tuple(1 if d or b.p(0.3) else s for s, d in zip(x.shape, x.dyn))


def _broadcast(x: Val, y: Val) -> tuple[tuple, tuple] | None:
    """Shape and dyn flags of x op y, if they broadcast without relying on a dynamic dim's size."""
    rank = max(x.rank, y.rank)
    xs, xd = (1,) * (rank - x.rank) + x.shape, (False,) * (rank - x.rank) + x.dyn
    ys, yd = (1,) * (rank - y.rank) + y.shape, (False,) * (rank - y.rank) + y.dyn
    shape, dyn = [], []
    for a, ad, c, cd in zip(xs, xd, ys, yd):
        if a == c and ad == cd:
            shape.append(a), dyn.append(ad)
        elif a == 1 and not ad:
            shape.append(c), dyn.append(cd)
        elif c == 1 and not cd:
            shape.append(a), dyn.append(ad)
        else:
            return None
    return tuple(shape), tuple(dyn)


# --- emitters: each takes the builder and an operand (picked when None), returns the new value ------
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
        return b.same("PRelu", x, b.floats(_bshape(b, x), 0.3))
    if op == "LeakyRelu":
        return b.same(op, x, alpha=float(b.choice([0.01, 0.1, 0.2])))
    if op == "Gelu":
        return b.same(op, x, approximate=b.choice(["none", "tanh"]))
    return b.same(op, x)


def binary_const(b: Builder, x: Val) -> Val:
    op = b.choice(["Add", "Sub", "Mul", "Div", "Max", "Min", "Pow"])
    b.features[f"binary_const:{op}"] += 1
    shape = _bshape(b, x)
    if op == "Pow":
        return b.same("Pow", b.same("Add", b.same("Abs", x), b.scalar(1.0)), b.scalar(b.choice([2.0, 0.5, 3.0])))
    c = b.floats(shape, 1.5, low=0.5) if op in ("Div", "Mul") else b.floats(shape, 0.5)
    if op == "Div" or b.p(0.5):
        return b.same(op, x, c)
    return b.op(op, [c, x.name], x.shape, x.dyn)


def binary_pair(b: Builder, x: Val) -> Val | None:
    candidates = [v for v in b.pool if v.dtype == F32 and v.name != x.name and _broadcast(x, v)]
    y = b.choice(candidates) if candidates and b.p(0.8) else x
    shape, dyn = _broadcast(x, y)
    op = b.choice(["Add", "Sub", "Mul", "Max", "Min", "Div", "Mean", "Sum"])
    b.features[f"binary_pair:{op}"] += 1
    if op == "Div":
        den = b.same("Add", b.same("Abs", y), b.scalar(1.0))
        return b.op("Div", [x.name, den.name], shape, dyn)
    return b.op(op, [x.name, y.name], shape, dyn)


def _conv_out(size, k, s, d, pb, pe):
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
            out.append(-(-size // s) if attrs["auto_pad"] != "VALID" else _conv_out(size, k, s, d, 0, 0))
        if attrs["auto_pad"] != "VALID" and d != 1:
            return None  # SAME with dilation: ORT and onnx disagree on shapes; not what we test
    else:
        pads = [int(b.rng.integers(0, k)) for _ in range(2 * spatial)] if k > 1 and b.p(0.7) else [0] * (2 * spatial)
        if any(pads) or b.p(0.2):
            attrs["pads"] = pads
        out = [_conv_out(size, k, s, d, pads[i], pads[i + spatial]) for i, size in enumerate(x.shape[2:])]
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


def conv_block(b: Builder, x: Val) -> Val | None:
    y = conv_transpose(b, x) if x.rank == 4 and _small(x) and b.p(0.2) else conv(b, x)
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


def _i64(b: Builder, value: int) -> str:
    return b.const(np.array(value, np.int64), "k")


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
        d = b.op("Gather", [shp.name, _i64(b, axis if b.p(0.7) else axis - x.rank)], (), (), I64, axis=0)
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
            diff = b.op("Sub", [name, _i64(b, c)], (), (), I64)
            name = b.op("Mod", [diff.name, _i64(b, k)], (), (), I64, **({"fmod": 1} if fmod else {})).name
            n = int(np.fmod(n - c, k)) if fmod else (n - c) % k
        elif kind == "div":
            c, k = int(b.rng.integers(0, 2 * size + 2)), int(b.rng.integers(2, 4))
            diff = b.op("Sub", [name, _i64(b, c)], (), (), I64)
            name = b.op("Div", [diff.name, _i64(b, k)], (), (), I64).name
            n = int((n - c) / k)  # truncation, as ORT
        elif kind == "minmax":
            lo, hi = sorted(int(v) for v in b.rng.integers(0, size + 2, size=2))
            name = b.op("Max", [b.op("Min", [name, _i64(b, hi)], (), (), I64).name, _i64(b, lo)], (), (), I64).name
            n = max(min(n, hi), lo)
        elif kind == "where":
            c, other = int(b.rng.integers(0, size + 2)), int(b.rng.integers(1, size + 1))
            eq = b.op("Equal", [name, _i64(b, c)], (), (), BOOL)
            name = b.op("Where", [eq.name, _i64(b, other), name], (), (), I64).name
            n = other if n == c else n
        else:  # Size(x) // (the other dims)
            total = b.op("Size", [x.name], (), (), I64)
            rest = int(np.prod(x.shape)) // size
            name = b.op("Div", [total.name, _i64(b, rest)], (), (), I64).name
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
    other = b.floats(_bshape(b, x), 1.0) if b.p(0.5) else b.same("Neg", x).name
    b.features["Where"] += 1
    return b.op("Where", [cond, x.name, other] if b.p(0.5) else [cond, other, x.name], x.shape, x.dyn)


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


def _body_chain(b: Builder, x: Val, steps: int) -> Val:
    """Shape-preserving idioms for an If branch (fusions inside bodies, outer weights read inside)."""
    v = x
    for _ in range(steps):
        kind = b.choice(["unary", "const", "act", "gelu", "conv", "bn", "layernorm", "matmul"])
        if kind == "conv" and _chan(v) and v.rank in (3, 4):
            y = conv(b, v, pointwise=True, group=1, out_ch=v.shape[1])
            v = batchnorm(b, y) if b.p(0.5) else y
        elif kind == "bn" and v.rank >= 2 and v.static(1):
            v = batchnorm(b, v)
        elif kind == "layernorm" and _last_static(v) and v.shape[-1] >= 2:
            v = layernorm_decomposed(b, v)
        elif kind == "matmul" and _last_static(v):
            k = v.shape[-1]
            v = b.same("MatMul", v, b.floats((k, k), 1 / math.sqrt(k)))
            v = b.same("Add", v, b.floats((k,), 0.3)) if b.p(0.5) else v
        elif kind == "gelu":
            v = gelu_decomposed(b, v)
        elif kind == "act":
            v = activation(b, v)
        else:
            v = binary_const(b, v) if kind == "const" else b.same(b.choice(SAFE_UNARY[:-1]), v)
    return v


def if_(b: Builder, x: Val) -> Val:
    """If with small bodies; a constant condition half the time (inlined by fold_constants)."""
    kind = b.choice(["const", "input", "shape"])
    if kind == "const":
        cond = b.const(np.array(b.p(0.5)), "cond")
    elif kind == "input":
        cond = b.input((), [], BOOL).name
    else:  # a test on x's shape (AffineGrid's expansion): constant once shapes fold, if static
        axis = int(b.rng.integers(x.rank)) if x.rank else None
        probe = b.op("Size", [x.name], (), (), I64) if axis is None or b.p(0.3) else b.op(
            "Gather", [b.op("Shape", [x.name], (x.rank,), (False,), I64).name, _i64(b, axis)], (), (), I64, axis=0)
        ref = int(np.prod(x.shape)) if probe.name.startswith("size") else x.shape[axis]
        cond = b.op(b.choice(["Equal", "Greater"]), [probe.name, _i64(b, ref + int(b.choice([0, -1, 1])))], (), (),
                    BOOL).name
    b.features[f"If:{kind}"] += 1
    branches = []
    for tag in ("then", "else"):
        saved = b.enter_body()
        v = _body_chain(b, x, int(b.rng.integers(0 if tag == "else" else 1, 4)))
        if v.name == x.name:  # a body may not return an outer value directly
            v = b.same("Identity", x)
        nodes, inits = b.leave_body(saved)
        dims = [None if d else s for s, d in zip(x.shape, x.dyn)]
        branches.append(oh.make_graph(nodes, b.name(tag), [], [oh.make_tensor_value_info(v.name, F32, dims)], inits))
    out = b.node("If", [cond], then_branch=branches[0], else_branch=branches[1])[0]
    return Val(out, x.shape, x.dyn)


def function_call(b: Builder, x: Val) -> Val | None:
    """A call of a model-local function whose body is a short idiom chain (its constants are
    Constant nodes: a function holds no initializers and sees no outer value)."""
    if len(b.functions) >= 3:
        return None
    saved = b.enter_body()
    b.in_function = True
    param = Val(b.name("fx"), x.shape, x.dyn)
    v = _body_chain(b, param, int(b.rng.integers(1, 4)))
    if v.name == param.name:
        v = b.same("Identity", v)
    nodes, inits = b.leave_body(saved)
    b.in_function = False
    assert not inits
    name = b.name("f")
    b.functions.append(oh.make_function("local", name, [param.name], [v.name], nodes,
                                        opset_imports=[oh.make_opsetid("", b.opset)]))
    b.features["function"] += 1
    out = b.node(name, [x.name], domain="local")[0]
    return Val(out, x.shape, x.dyn)


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


def cse_duplicate(b: Builder, x: Val) -> Val | None:
    """Re-emit an earlier node with the same inputs and attributes (common subexpression)."""
    if not b.pure:
        return None
    proto, val = b.choice(b.pure)
    dup = onnx.NodeProto()
    dup.CopyFrom(proto)
    dup.name = b.name(f"n_dup_{proto.op_type}")
    del dup.output[:]
    dup.output.append(b.name(f"dup_{proto.op_type.lower()}"))
    b.nodes.append(dup)
    b.features["cse_duplicate"] += 1
    return Val(dup.output[0], val.shape, val.dyn, val.dtype)


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


def _is4d(v: Val) -> bool:
    return v.rank == 4 and v.static(1)


def _chan(v: Val) -> bool:
    return v.rank >= 3 and v.static(1)


def _last_static(v: Val) -> bool:
    return v.rank >= 2 and v.static(v.rank - 1)


def _small(v: Val) -> bool:
    return int(np.prod(v.shape)) <= 4096


# (name, weight, operand predicate, emitter)
EMITTERS = [
    ("unary", 10, lambda v: True, unary),
    ("binary_const", 8, lambda v: True, binary_const),
    ("binary_pair", 6, lambda v: True, binary_pair),
    ("conv_block", 10, lambda v: _chan(v) and v.rank in (3, 4) and v.shape[1] <= 16, conv_block),
    ("bn_then_conv", 2, lambda v: _chan(v) and v.rank in (3, 4), bn_then_conv),
    ("conv_transpose", 3, lambda v: _is4d(v) and _small(v), conv_transpose),
    ("batchnorm", 3, lambda v: v.rank >= 2 and v.static(1), batchnorm),
    ("matmul", 8, _last_static, matmul),
    ("gemm", 4, lambda v: v.rank == 2, gemm),
    ("parallel", 5, lambda v: (_is4d(v) or _last_static(v)), parallel),
    ("layernorm_decomposed", 4, lambda v: _last_static(v) and v.shape[-1] >= 2, layernorm_decomposed),
    ("layernorm", 3, lambda v: v.rank >= 2 and v.shape[-1] >= 2, layernorm),
    ("gelu_decomposed", 3, lambda v: True, gelu_decomposed),
    ("hardswish_decomposed", 2, lambda v: True, hardswish_decomposed),
    ("softplus_mish", 2, lambda v: True, softplus_mish),
    ("reshape", 6, lambda v: v.rank >= 1, reshape),
    ("shape_reshape", 4, lambda v: v.rank >= 3, shape_reshape),
    ("positional_range", 2, lambda v: v.rank >= 1, positional_range),
    ("shape_math", 4, lambda v: v.rank >= 1, shape_math),
    ("transpose", 4, lambda v: v.rank >= 2, transpose),
    ("transpose_sandwich", 4, lambda v: v.rank >= 2, transpose_sandwich),
    ("flatten", 3, lambda v: v.rank >= 1, flatten),
    ("unsqueeze_squeeze", 4, lambda v: True, unsqueeze_squeeze),
    ("concat", 4, lambda v: v.rank >= 1, concat),
    ("split", 4, lambda v: v.rank >= 1, split),
    ("slice", 4, lambda v: v.rank >= 1, slice_),
    ("gather", 3, lambda v: v.rank >= 1, gather),
    ("reduce", 5, lambda v: v.rank >= 1, reduce),
    ("softmax", 3, lambda v: v.rank >= 1, softmax),
    ("pad", 3, lambda v: v.rank >= 1, pad),
    ("pool", 4, lambda v: _is4d(v), pool),
    ("pad_then", 3, lambda v: _is4d(v), pad_then),
    ("resize", 2, lambda v: v.rank in (3, 4) and _small(v), resize),
    ("cast", 3, lambda v: True, cast),
    ("where", 3, lambda v: True, where),
    ("expand_tile", 2, lambda v: _small(v), expand_tile),
    ("if", 3, lambda v: True, if_),
    ("batch_dot", 2, lambda v: v.rank >= 3, batch_dot),
    ("function", 2, lambda v: True, function_call),
    ("cse_duplicate", 4, lambda v: True, cse_duplicate),
    ("attention", 2, lambda v: v.rank == 3, attention),
    ("unflatten_dense", 2, lambda v: v.rank == 3, unflatten_dense),
    ("instance_norm", 1, lambda v: _chan(v), instance_norm),
    ("depth_space", 1, lambda v: _is4d(v), depth_space),
]
_WEIGHTS = np.array([w for _, w, _, _ in EMITTERS], float)


def _start(b: Builder) -> None:
    kind = b.choice(["image", "image", "seq", "flat", "vol1d"])
    batch = int(b.choice([1, 2, 3]))
    if kind == "image":
        c, h, w = int(b.rng.integers(1, 9)), int(b.rng.integers(4, 11)), int(b.rng.integers(4, 11))
        names = ["N" if b.p(0.5) else None, None, "H" if b.p(0.25) else None, "W" if b.p(0.25) else None]
        shape = (batch, c, h, w)
    elif kind == "seq":
        shape = (batch, int(b.rng.integers(2, 9)), int(b.rng.integers(2, 17)))
        names = ["B" if b.p(0.5) else None, "T" if b.p(0.4) else None, None]
    elif kind == "vol1d":
        shape = (batch, int(b.rng.integers(1, 9)), int(b.rng.integers(4, 17)))
        names = ["N" if b.p(0.5) else None, None, "L" if b.p(0.3) else None]
    else:
        shape = (batch, int(b.rng.integers(2, 33)))
        names = ["B" if b.p(0.5) else None, None]
    b.features[f"start:{kind}"] += 1
    x = b.input(shape, names)
    b.push(x)
    if b.p(0.3):  # a second input of the same shape
        b.push(b.input(shape, names))


def generate(seed: int, steps: int | None = None) -> Generated:
    b = Builder(seed)
    _start(b)
    steps = steps if steps is not None else int(b.rng.integers(3, 16))
    done = attempts = 0
    while done < steps and attempts < steps * 8:
        attempts += 1
        name, _, pred, fn = EMITTERS[int(b.rng.choice(len(EMITTERS), p=_WEIGHTS / _WEIGHTS.sum()))]
        x = b.pick(pred)
        if x is None:
            continue
        mark = b.mark()
        result = fn(b, x)
        if result is None:  # declined: roll back whatever it started
            b.rollback(mark)
            continue
        b.push(*(result if isinstance(result, list) else [result]))
        done += 1
    return _finish(b)


def _finish(b: Builder) -> Generated:
    computed = [v for v in b.pool if not v.is_input]
    if not computed:
        computed = [b.same("Identity", b.pool[0])]
    read = {name for node in b.nodes for name in node.input}
    outputs = [computed[-1]]
    for v in computed[:-1] + b.taps:
        if v in outputs or len(outputs) >= 6:
            continue
        if v.name not in read and b.p(0.6):
            outputs.append(v)  # a leaf: fewer dead branches (some stay)
        elif v.name in read and b.p(0.12):
            outputs.append(v)  # an intermediate value that is also a graph output
            b.features["intermediate_output"] += 1
    if b.p(0.08):  # an Identity of another output, as exporters write
        outputs.append(b.same("Identity", b.choice(outputs)))
        b.features["output:identity_of_output"] += 1
    if b.p(0.06):  # a graph input passed through
        outputs.append(b.choice([v for v in b.pool if v.is_input]))
        b.features["output:input"] += 1
    if b.p(0.08):  # a value computed from constants only: folding makes it an initializer output
        v = b.choice(b.pool)
        if not any(v.dyn) and b.p(0.5):
            outputs.append(b.op("Shape", [v.name], (v.rank,), (False,), I64))
        else:
            c = b.floats((3,), 1.0)
            outputs.append(b.op("Add", [c, b.floats((3,), 1.0)], (3,), (False,)))
        b.features["output:constant"] += 1
    if b.p(0.3):
        b.initializers.append(onh.from_array(b.rng.standard_normal((3,)).astype(np.float32), b.name("unused")))
        b.features["unused_initializer"] += 1
    def info(v: Val) -> onnx.ValueInfoProto:
        return oh.make_tensor_value_info(v.name, v.dtype, [None if d else s for s, d in zip(v.shape, v.dyn)])

    outs = [info(v) for v in outputs]
    inputs = list(b.inputs)
    floats = [t for t in b.initializers if t.data_type == F32 and t.name not in {o.name for o in outs}]
    if floats and b.p(0.1):  # initializers also listed as inputs (overridable; IR v3 exporters)
        for t in floats[:2]:
            inputs.append(oh.make_tensor_value_info(t.name, F32, list(t.dims)))
        b.features["initializer_inputs"] += 1
    graph = oh.make_graph(b.nodes, f"fuzz_{b.seed}", inputs, outs, b.initializers)
    if b.p(0.3):  # exporters' annotations of intermediate values (correct ones)
        graph.value_info.extend(info(v) for v in computed if v not in outputs and b.p(0.3))
        b.features["value_info"] += 1
    if b.p(0.2):  # exporters that name no node
        for node in graph.node:
            node.name = ""
        b.features["unnamed_nodes"] += 1
    opsets = [oh.make_opsetid("", b.opset)] + ([oh.make_opsetid("local", 1)] if b.functions else [])
    model = oh.make_model(graph, opset_imports=opsets, ir_version=oh.find_min_ir_version_for(opsets[:1]),
                          producer_name="graphgen", functions=b.functions)
    feeds = dict(b.feeds)
    if b.p(0.15):  # TensorFlow-style names: "model/.../x:0"
        model, feeds = _tf_names(model, feeds)
        b.features["tf_names"] += 1
    return Generated(b.seed, model, feeds, b.features)


def _tf_names(model: onnx.ModelProto, feeds: dict) -> tuple[onnx.ModelProto, dict]:
    """Every main-graph and body value renamed "model/<name>:0" (functions keep their own scope)."""
    def new(name: str) -> str:
        return f"model/{name}:0" if name else name

    def graph_(g: onnx.GraphProto) -> None:
        for vi in [*g.input, *g.output, *g.value_info]:
            vi.name = new(vi.name)
        for t in g.initializer:
            t.name = new(t.name)
        for node in g.node:
            node.input[:] = [new(n) for n in node.input]
            node.output[:] = [new(n) for n in node.output]
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    graph_(attr.g)
                elif attr.type == onnx.AttributeProto.TENSOR and node.op_type == "Constant":
                    attr.t.name = new(attr.t.name)

    graph_(model.graph)
    return model, {new(k): v for k, v in feeds.items()}
