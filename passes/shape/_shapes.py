"""Shapes for passes that reason about dims: inference from the graph inputs, and a small
element-wise evaluator for shape vectors whose elements may be symbolic.

`infer_dims(model)` runs onnx shape inference (with data propagation) on a serialized copy
whose intermediate annotations (`value_info`, output shapes) are dropped and whose large
initializers are replaced by typed inputs: shapes then follow from the graph inputs alone,
so a stale exporter annotation cannot turn a dynamic dim into a number, and data
propagation never touches a large tensor. The model is not modified.

A dim is an `int`, a `str` (a named symbolic dim: equal names are equal dims) or `None`
(unknown). `evaluate(node, env, dims, opset)` computes a node's outputs as `Vec`s: rank-0
or rank-1 int/float vectors whose elements are numbers, symbols or unknown. Numbers follow
ONNX Runtime: float results are rounded to the vector's dtype after every op (float32
`dim * 0.7` is 7.0 for dim 10, not 6.99999988), integer Div truncates, integer Mod takes
the divisor's sign unless fmod=1.
"""

from __future__ import annotations

__all__ = ["Dims", "Vec", "infer_dims", "evaluate", "evaluate_model", "UNNAMED_PREFIX"]

import dataclasses
import logging
import math
from collections.abc import Sequence

import numpy as np
import onnx
import onnx_ir as ir

from graphopt.core.patterns import attr_int, attr_ints, constant_array

logger = logging.getLogger(__name__)

Dim = int | str | None
_BIG_BYTES = 1024
UNNAMED_PREFIX = "__graphopt_dim:"  # private names of unnamed input dims, only inside infer_dims
_MAX_VEC = 1024


class Dims:
    """Inferred dims by value name; initializers and constants answer from their data."""

    def __init__(self, by_name: dict[str, tuple[Dim, ...]]):
        self.by_name = by_name

    def of(self, value: ir.Value | None) -> tuple[Dim, ...] | None:
        if value is None:
            return None
        if value.const_value is not None and not value.is_graph_input():
            return tuple(int(d) for d in value.const_value.shape)
        return self.by_name.get(value.name) if value.name else None


def _dims_of_type(tp: onnx.TypeProto) -> tuple[Dim, ...] | None:
    if not tp.HasField("tensor_type") or not tp.tensor_type.HasField("shape"):
        return None
    out: list[Dim] = []
    for d in tp.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            out.append(d.dim_param)
        else:
            out.append(None)
    return tuple(out)


def _declared(model: ir.Model) -> dict[str, tuple[Dim, ...]]:
    found = {}
    for v in model.graph.inputs:
        if v.shape is not None and v.name and not v.is_initializer():
            found[v.name] = tuple(d if isinstance(d, int) else (d.value or f"{UNNAMED_PREFIX}{v.name}:{i}")
                                  for i, d in enumerate(v.shape))
    return found


def infer_dims(model: ir.Model) -> Dims:
    """Dims of every value onnx shape inference can reach from the graph inputs."""
    graph = model.graph
    stripped = []
    n_inputs = len(graph.inputs)
    try:
        for init in list(graph.initializers.values()):
            tensor = init.const_value
            if tensor is None or tensor.nbytes <= _BIG_BYTES or init.is_graph_input():
                continue
            if init.shape is None:
                init.shape = ir.Shape(tensor.shape)
            if init.dtype is None:
                init.dtype = tensor.dtype
            stripped.append((init, tensor))
            graph.initializers.pop(init.name)
            init.const_value = None
            graph.inputs.append(init)
        proto = ir.serde.serialize_model(model)
    finally:
        kept = list(graph.inputs[:n_inputs])
        graph.inputs.clear()  # clear + extend: `del inputs[i:]` leaves values flagged as graph inputs
        graph.inputs.extend(kept)
        for init, tensor in stripped:
            init.const_value = tensor
            graph.register_initializer(init)
    _strip_annotations(proto.graph)
    _name_unnamed_input_dims(proto.graph)
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=True)
    except Exception as e:  # noqa: BLE001 - onnx raises several types; shapes are then only what inputs declare
        logger.debug("shape inference failed (%s); using declared input shapes only", e)
        return Dims(_declared(model))
    by_name: dict[str, tuple[Dim, ...]] = {}
    ambiguous: set[str] = set()
    for g in _graphs(inferred.graph):
        for vi in [*g.input, *g.value_info, *g.output]:
            dims = _dims_of_type(vi.type)
            if dims is None:
                continue
            if vi.name in by_name and by_name[vi.name] != dims:
                ambiguous.add(vi.name)
            by_name[vi.name] = dims
    for name in ambiguous:
        by_name.pop(name, None)
    by_name.update(_declared(model))
    return Dims(by_name)


def _graphs(graph: onnx.GraphProto):
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _graphs(g)


def _name_unnamed_input_dims(graph: onnx.GraphProto) -> None:
    """Give each unnamed dynamic input dim a private name in the copy, so that inference carries
    it and equal dims can be recognized (`Shape(x)[0]` is x's dim 0). Never written to the model."""
    for value in graph.input:
        if not value.type.HasField("tensor_type"):
            continue
        for i, d in enumerate(value.type.tensor_type.shape.dim):
            if not d.HasField("dim_value") and not d.dim_param:
                d.dim_param = f"{UNNAMED_PREFIX}{value.name}:{i}"


def _strip_annotations(graph: onnx.GraphProto) -> None:
    for g in _graphs(graph):
        del g.value_info[:]
        for out in g.output:
            if out.type.HasField("tensor_type"):
                out.type.tensor_type.ClearField("shape")


@dataclasses.dataclass
class Vec:
    """A rank-0 or rank-1 vector of numbers (int/float), symbols (str) or unknowns (None)."""

    dtype: np.dtype
    rank: int
    elems: list

    @property
    def size(self) -> int:
        return len(self.elems)

    @property
    def concrete(self) -> bool:
        return all(isinstance(e, (int, float)) for e in self.elems)

    def array(self) -> np.ndarray:
        a = np.array(self.elems, dtype=self.dtype)
        return a.reshape(()) if self.rank == 0 else a


def _const_vec(value: ir.Value | None) -> Vec | None:
    try:
        a = constant_array(value)
    except ValueError:
        return None
    if a is None or a.ndim > 1 or a.size > _MAX_VEC or a.dtype.kind not in "iufb":
        return None
    return Vec(a.dtype, a.ndim, a.reshape(-1).tolist())


def _get(value: ir.Value | None, env: dict[int, Vec]) -> Vec | None:
    if value is None:
        return None
    return env.get(id(value)) or _const_vec(value)


def _ints(value: ir.Value | None, env) -> list[int] | None:
    v = _get(value, env)
    if v is None or not v.concrete or v.dtype.kind not in "iu":
        return None
    return [int(e) for e in v.elems]


def _broadcast(a: Vec, b: Vec) -> tuple[list, list, int] | None:
    if a.size == b.size:
        return a.elems, b.elems, max(a.rank, b.rank)
    if a.size == 1:
        return a.elems * b.size, b.elems, max(a.rank, b.rank)
    if b.size == 1:
        return a.elems, b.elems * a.size, max(a.rank, b.rank)
    return None


def _num(e) -> bool:
    return isinstance(e, (int, float)) and not isinstance(e, str)


def _binary(op: str, x, y, kind: str, fmod: int = 0):
    if _num(x) and _num(y):
        if op == "Add":
            return x + y
        if op == "Sub":
            return x - y
        if op == "Mul":
            return x * y
        if op == "Div":
            if kind in "iu":
                if y == 0:
                    return None
                q = abs(x) // abs(y)
                return q if (x >= 0) == (y > 0) else -q  # C truncation, as ONNX Runtime
            return x / y if y != 0 else None
        if op == "Mod":
            if y == 0 or kind not in "iu":
                return None
            return int(math.fmod(x, y)) if fmod else x % y  # fmod=0: the sign of the divisor
        if op == "Max":
            return max(x, y)
        if op == "Min":
            return min(x, y)
        if op == "Equal":
            return x == y
        return None
    # symbolic identities: x*1, x+0, x-0, x/1; a symbolic dim equals itself and is never negative
    if op in ("Mul", "Div") and isinstance(x, str) and y == 1:
        return x
    if op == "Mul" and isinstance(y, str) and x == 1:
        return y
    if op in ("Add", "Sub") and isinstance(x, str) and y == 0:
        return x
    if op == "Add" and isinstance(y, str) and x == 0:
        return y
    if op in ("Max", "Min") and isinstance(x, str) and x == y:
        return x
    if op == "Equal":
        if isinstance(x, str) and x == y:
            return True
        if (isinstance(x, str) and _num(y) and y < 0) or (isinstance(y, str) and _num(x) and x < 0):
            return False
    return None


_BINARY = {"Add", "Sub", "Mul", "Div", "Mod", "Max", "Min", "Equal"}
_INT_KINDS = "iu"


def _as(dtype: np.dtype, e):
    """A number as ORT holds it in `dtype` (float rounded to it, int truncated); symbols unchanged."""
    if not _num(e) or dtype.kind == "b":
        return e
    if dtype.kind in _INT_KINDS:
        return int(e)
    return float(dtype.type(e))


def evaluate(node: ir.Node, env: dict[int, Vec], dims: Dims, opset: int) -> Sequence[Vec | None]:
    """The node's outputs as Vecs where they are shape-like, else Nones. Never raises on odd input."""
    try:
        out = _evaluate(node, env, dims, opset)
    except (ValueError, TypeError, IndexError, OverflowError) as e:
        logger.debug("shape evaluation of %s (%s) declined: %s", node.name, node.op_type, e)
        out = None
    if out is None or out.size > _MAX_VEC:
        return [None] * len(node.outputs)
    return [out] + [None] * (len(node.outputs) - 1)


def _evaluate(node: ir.Node, env, dims: Dims, opset: int) -> Vec | None:
    op = node.op_type
    ins = node.inputs
    if op == "Shape":
        d = dims.of(ins[0]) or _derived_dims(ins[0], env, dims)
        if d is None:
            return None
        start, end = attr_int(node, "start", 0), node.attributes.get("end")
        sl = d[start:end.as_int()] if end is not None else d[start:]
        return Vec(np.dtype(np.int64), 1, list(sl))
    if op == "Size":
        d = dims.of(ins[0])
        if d is None or not all(isinstance(x, int) for x in d):
            return None
        return Vec(np.dtype(np.int64), 0, [math.prod(d)])
    if op == "Identity":
        return _get(ins[0], env)
    if op == "Cast":
        v = _get(ins[0], env)
        to = ir.DataType(attr_int(node, "to", 0))
        if v is None or to in (ir.DataType.UNDEFINED, ir.DataType.STRING):
            return None
        dt = to.numpy()
        if dt.kind not in "iuf":
            return None
        elems = [_as(dt, e) for e in v.elems]
        if dt.kind == "f" and dt.itemsize < 4:
            elems = [e if _num(e) else None for e in elems]
        return Vec(dt, v.rank, elems)
    if op == "Gather":
        data, idx = _get(ins[0], env), _get(ins[1], env)
        if data is None or idx is None or data.rank != 1 or not idx.concrete or attr_int(node, "axis", 0) != 0:
            return None
        picked = [data.elems[int(i)] for i in idx.elems]
        return Vec(data.dtype, idx.rank, picked)
    if op == "Unsqueeze":
        v = _get(ins[0], env)
        axes = attr_ints(node, "axes") if opset < 13 else _ints(ins[1] if len(ins) > 1 else None, env)
        if v is None or v.rank != 0 or axes not in ([0], [-1]):
            return None
        return Vec(v.dtype, 1, list(v.elems))
    if op == "Squeeze":
        v = _get(ins[0], env)
        if v is None or v.rank != 1 or v.size != 1:
            return None
        return Vec(v.dtype, 0, list(v.elems))
    if op == "Concat":
        vs = [_get(i, env) for i in ins]
        if not vs or any(v is None or v.rank != 1 for v in vs):
            return None
        return Vec(vs[0].dtype, 1, [e for v in vs for e in v.elems])
    if op == "Slice":
        return _slice(node, env, opset)
    if op in ("ReduceProd", "ReduceSum"):
        v = _get(ins[0], env)
        axes = attr_ints(node, "axes") if op == "ReduceProd" and opset < 18 or op == "ReduceSum" and opset < 13 \
            else (_ints(ins[1], env) if len(ins) > 1 and ins[1] is not None else None)
        if v is None or v.rank != 1 or axes not in (None, [0], [-1]):
            return None
        if axes is None and attr_int(node, "noop_with_empty_axes", 0):
            return v  # no axes: the input unchanged
        if all(_num(e) for e in v.elems):
            total = math.prod(v.elems) if op == "ReduceProd" else sum(v.elems)
        else:
            total = None
        return Vec(v.dtype, 1 if attr_int(node, "keepdims", 1) else 0, [total])
    if op == "Reshape":
        v, shape = _get(ins[0], env), _ints(ins[1], env)
        if v is None or shape is None or len(shape) > 1 or (shape and shape[0] not in (-1, v.size)):
            return None
        return Vec(v.dtype, len(shape), list(v.elems))
    if op in _BINARY:
        a, b = _get(ins[0], env), _get(ins[1], env)
        if a is None or b is None:
            return None
        pair = _broadcast(a, b)
        if pair is None:
            return None
        xs, ys, rank = pair
        kind = a.dtype.kind
        fmod = attr_int(node, "fmod", 0)
        elems = [_binary(op, x, y, kind, fmod) for x, y in zip(xs, ys)]
        dtype = np.dtype(np.bool_) if op == "Equal" else a.dtype
        return Vec(dtype, rank, [_as(dtype, e) for e in elems])
    if op == "Where":
        c, a, b = (_get(i, env) for i in ins[:3])
        if c is None or a is None or b is None or None in c.elems or any(isinstance(e, str) for e in c.elems):
            return None
        n = max(c.size, a.size, b.size)
        if any(v.size not in (1, n) for v in (c, a, b)):
            return None
        pick = [(a.elems if a.size == n else a.elems * n)[i] if (c.elems if c.size == n else c.elems * n)[i]
                else (b.elems if b.size == n else b.elems * n)[i] for i in range(n)]
        return Vec(a.dtype, max(c.rank, a.rank, b.rank), pick)
    return None


def evaluate_model(model: ir.Model, dims: Dims, opset: int) -> dict[int, Vec]:
    """Vecs of every shape-like value of the main graph and its bodies (keyed by id(value));
    custom-domain nodes are opaque."""
    env: dict[int, Vec] = {}
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.domain in ("", "ai.onnx"):
            for out, vec in zip(node.outputs, evaluate(node, env, dims, opset)):
                if vec is not None:
                    env[id(out)] = vec
    return env


def _derived_dims(value: ir.Value | None, env, dims: Dims, depth: int = 4) -> tuple[Dim, ...] | None:
    """Dims onnx inference could not give, from the producer: Reshape by an evaluated shape
    (0 copies, -1 unknown), Transpose of known dims, element-wise unary ops."""
    node = value.producer() if value is not None else None
    if node is None or depth == 0 or node.domain not in ("", "ai.onnx"):
        return None
    src = node.inputs[0] if node.inputs else None

    def of(v):
        return dims.of(v) or _derived_dims(v, env, dims, depth - 1)

    if node.op_type == "Reshape" and len(node.inputs) > 1:
        target = _get(node.inputs[1], env)
        if target is None or target.rank != 1:
            return None
        data = of(src)
        out = []
        for i, e in enumerate(target.elems):
            if e == 0 and not attr_int(node, "allowzero", 0):
                out.append(data[i] if data is not None and i < len(data) else None)
            elif isinstance(e, (int, str)) and e != -1:
                out.append(e)
            else:
                out.append(None)
        return tuple(out)
    if node.op_type == "Transpose":
        data = of(src)
        if data is None:
            return None
        perm = attr_ints(node, "perm") or list(range(len(data)))[::-1]
        return tuple(data[p] for p in perm) if len(perm) == len(data) else None
    if node.op_type in ("Relu", "Sigmoid", "Tanh", "Neg", "Abs", "Exp", "Cast", "Identity", "Softmax", "Erf"):
        return of(src)
    return None


def _slice(node: ir.Node, env, opset: int) -> Vec | None:
    ins = node.inputs
    v = _get(ins[0], env)
    if v is None or v.rank != 1:
        return None
    if opset < 10:
        starts, ends = attr_ints(node, "starts"), attr_ints(node, "ends")
        axes, steps = attr_ints(node, "axes", [0]), [1]
    else:
        starts, ends = _ints(ins[1], env), _ints(ins[2], env)
        axes = _ints(ins[3], env) if len(ins) > 3 and ins[3] is not None else [0]
        steps = _ints(ins[4], env) if len(ins) > 4 and ins[4] is not None else [1]
    if None in (starts, ends, axes, steps) or len(starts) != 1 or axes not in ([0], [-1]) or steps[0] == 0:
        return None
    return Vec(v.dtype, 1, v.elems[starts[0]:ends[0]:steps[0]])
