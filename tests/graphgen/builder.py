"""Values, the graph builder and shape helpers of the generator."""

from __future__ import annotations

__all__ = [
    "F32", "F64", "F16", "I64", "BOOL", "OPSETS", "INT64_MAX", "Val", "Builder", "bshape",
    "broadcast", "i64", "is4d", "chan", "last_static", "small",
]

import collections
import dataclasses

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


def bshape(b: Builder, x: Val, kind: str | None = None) -> tuple[int, ...]:
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


def broadcast(x: Val, y: Val) -> tuple[tuple, tuple] | None:
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


def i64(b: Builder, value: int) -> str:
    return b.const(np.array(value, np.int64), "k")


def is4d(v: Val) -> bool:
    return v.rank == 4 and v.static(1)


def chan(v: Val) -> bool:
    return v.rank >= 3 and v.static(1)


def last_static(v: Val) -> bool:
    return v.rank >= 2 and v.static(v.rank - 1)


def small(v: Val) -> bool:
    return int(np.prod(v.shape)) <= 4096
