"""Sink Transposes through layout-agnostic ops until they cancel; collapse Reshape-Transpose-Reshape.

ONNX Runtime's transpose optimizer (level 1, at every session start) already pushes
Transposes through element-wise, reduce, Pad, Concat, Resize and more, with a cost model;
what it does not see through is a Reshape. So this pass keeps two things:

1. Cancellation through a chain (in the file, for every runtime): `Transpose(p)` followed,
   through single-consumer element-wise unary ops, binary element-wise ops whose other
   operand is a constant (transposed to match, or broadcast-safe scalar), Reduce* with
   keepdims=1 and constant axes, Pad with constant pads, Concat whose other inputs are
   constants, and Resize with constant scales, by a `Transpose(q)` with q o p = identity ->
   both Transposes go, the ops in between get remapped axes/constants. Nothing is moved
   unless the pair cancels: the number of Transposes never grows.
2. MXNet's batch_dot: `Reshape(x, [-1, *x.shape[k:]]) -> Transpose(0, ...) ->
   Reshape(back to x.shape[:k] + permuted tail)` is `Transpose(x)` on the tail axes;
   proven with symbolic shapes (dynamic dims stay dynamic). ORT misses this one.

Declined: unknown ranks, non-constant operands/axes/pads, opsets before Pad/Reduce took
inputs where the pass would need to rewrite attributes it does not know, multiple
consumers along a chain, custom domains. Scope: the main graph and If/Loop/Scan bodies
(a chain never leaves its graph). Graph outputs keep their producers and names: a chain
ending in a graph output is left alone.
"""

from __future__ import annotations

__all__ = ["SinkTransposesPass"]

import collections
import logging

import numpy as np
import onnx_ir as ir

from graphopt.core.patterns import (attr_int, attr_ints, constant_array, fresh_name, graphs_of, is_default_domain,
                               model_names, opset_version, remove_node_keep_value, single_consumer)
from graphopt.core.pipeline import CountedPassResult
from graphopt.passes.shape._shapes import evaluate_model, infer_dims

logger = logging.getLogger(__name__)

_UNARY = {"Relu", "LeakyRelu", "Sigmoid", "Tanh", "Exp", "Log", "Abs", "Neg", "Sqrt", "Reciprocal", "Erf",
          "Clip", "Cast", "Elu", "Selu", "HardSigmoid", "HardSwish", "Softplus", "Softsign", "Mish", "Gelu",
          "Floor", "Ceil", "Round", "Sign", "Not", "Identity", "Sin", "Cos", "IsNaN", "IsInf"}
_BINARY = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Equal", "Less", "Greater", "And", "Or", "PRelu",
           "Where"}
_REDUCE = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
           "ReduceLogSumExp", "ReduceSumSquare"}
# Opset from which a Reduce op takes its axes as an input.
_AXES_INPUT = {"ReduceSum": 13}


def _perm(node: ir.Node, rank: int | None) -> list[int] | None:
    p = attr_ints(node, "perm")
    if p is None:
        return list(range(rank))[::-1] if rank is not None else None
    return p


def _rank(value: ir.Value) -> int | None:
    return len(value.shape) if value.shape is not None else None


class SinkTransposesPass(ir.passes.InPlacePass):
    """Cancel Transpose pairs through layout-agnostic chains; collapse MXNet's batch_dot reshapes."""

    def call(self, model: ir.Model) -> CountedPassResult:
        counters: collections.Counter = collections.Counter()
        opset = opset_version(model)
        taken = model_names(model)
        for graph in list(graphs_of(model)):
            if isinstance(graph, ir.Function):
                continue
            for node in list(graph):
                if node.graph is graph and node.op_type == "Transpose" and is_default_domain(node):
                    if _cancel_chain(node, opset, taken):
                        counters["transpose_pairs_cancelled"] += 1
        if any(n.op_type == "Reshape" for n in model.graph.all_nodes()):
            counters["reshape_transpose_reshape_collapsed"] += _collapse_batch_reshapes(model, opset, taken)
        counters = +counters
        if counters:
            logger.info("sink_transposes: %s", dict(counters))
        return CountedPassResult(model, bool(counters), dict(counters))


# ---------------------------------------------------------------- 1. cancellation through a chain

def _cancel_chain(first: ir.Node, opset: int, taken: set[str]) -> bool:
    x = first.inputs[0]
    rank = _rank(x) if x is not None else None
    p = _perm(first, rank)
    if p is None:
        return False
    rank = len(p)
    chain: list[ir.Node] = []
    value = first.outputs[0]
    while True:
        user = single_consumer(value)
        if user is None or user.graph is not first.graph or not is_default_domain(user):
            return False
        if user.op_type == "Transpose":
            q = _perm(user, rank)
            if q is None or [p[i] for i in q] != list(range(rank)):
                return False
            last = user
            break
        if not _movable(user, value, rank, opset) or len(user.outputs) != 1:
            return False
        chain.append(user)
        value = user.outputs[0]
    tail_value = chain[-1].outputs[0] if chain else x
    if last.outputs[0].is_graph_output() and (tail_value.is_graph_input() or tail_value.is_graph_output()
                                              or tail_value.is_initializer() or tail_value.graph is not last.graph):
        return False  # the graph output would have to change its name: checked before anything moves
    # Rewrite: every op in the chain now sees x (layout before `first`): remap with p.
    for node in chain:
        _remap(node, p, rank, opset, taken)
    head = chain[0] if chain else None
    if head is not None:
        head.replace_input_with(_index_of(head, first.outputs[0]), x)
    for node in chain:  # intermediate annotations describe the old layout
        node.outputs[0].shape = None
    final = last.outputs[0]
    if chain and final.type is not None:  # the chain's end now has the layout the pair produced
        tail_value.type, tail_value.shape = final.type, final.shape
    removed = remove_node_keep_value(last, tail_value)
    assert removed, "checked above"
    if not first.outputs[0].uses() and not first.outputs[0].is_graph_output():
        first.graph.remove(first, safe=True)
    logger.debug("Transpose %s cancelled through %d ops", first.name, len(chain))
    return True


def _index_of(node: ir.Node, value: ir.Value) -> int:
    return next(i for i, v in enumerate(node.inputs) if v is value)


def _movable(node: ir.Node, value: ir.Value, rank: int, opset: int) -> bool:
    op = node.op_type
    if op in _UNARY:
        return all(i is value or constant_array(i) is not None for i in node.inputs[1:] if i is not None) \
            and node.inputs[0] is value
    if op in _BINARY:
        others = [i for i in node.inputs if i is not value]
        if len(others) != len(node.inputs) - 1:
            return False  # the moving value appears twice
        for other in others:
            a = constant_array(other)
            if a is None or a.ndim > rank or (a.ndim not in (0, rank) and a.size != 1):
                return False
        return op != "PRelu" or node.inputs[0] is value
    if op in _REDUCE:
        if node.inputs[0] is not value or attr_int(node, "keepdims", 1) != 1:
            return False
        if opset >= _AXES_INPUT.get(op, 18):
            return len(node.inputs) > 1 and constant_array(node.inputs[1]) is not None
        return attr_ints(node, "axes") is not None
    if op == "Pad":
        return opset >= 11 and node.inputs[0] is value and constant_array(node.inputs[1]) is not None \
            and (len(node.inputs) < 4 or node.inputs[3] is None)
    if op == "Concat":
        return all(i is value or constant_array(i) is not None for i in node.inputs) \
            and sum(i is value for i in node.inputs) == 1
    if op == "Resize":
        scales = node.inputs[2] if len(node.inputs) > 2 else None
        sizes = node.inputs[3] if len(node.inputs) > 3 else None
        roi = node.inputs[1] if len(node.inputs) > 1 else None
        return opset >= 13 and node.inputs[0] is value and not node.attributes.get("axes") \
            and (roi is None or constant_array(roi) is not None and constant_array(roi).size == 0) \
            and any(v is not None and constant_array(v) is not None and constant_array(v).size == rank
                    for v in (scales, sizes))
    return False


def _remap(node: ir.Node, p: list[int], rank: int, opset: int, taken: set[str]) -> None:
    """Make `node` compute on the untransposed input what it computed on Transpose(x, p)."""
    inv = list(np.argsort(p))
    graph = node.graph
    op = node.op_type

    def replace_const(i: int, array: np.ndarray, base: str):
        name = fresh_name(taken, f"{node.inputs[i].name or base}_sunk")
        value = ir.Value(name=name, shape=ir.Shape(array.shape),
                         type=ir.TensorType(ir.DataType.from_numpy(array.dtype)), const_value=ir.tensor(array, name=name))
        graph.register_initializer(value)
        node.replace_input_with(i, value)

    if op in _BINARY:
        for i, v in enumerate(node.inputs):
            a = constant_array(v) if v is not None else None
            if a is not None and a.ndim == rank and a.size != 1:
                replace_const(i, np.ascontiguousarray(np.transpose(a, inv)), "const")
    elif op in _REDUCE:
        if opset >= _AXES_INPUT.get(op, 18):
            axes = constant_array(node.inputs[1]).reshape(-1)
            replace_const(1, np.array(sorted(p[int(a) % rank] for a in axes), np.int64), "axes")
        else:
            axes = attr_ints(node, "axes")
            node.attributes["axes"] = ir.AttrInt64s("axes", sorted(p[a % rank] for a in axes))
    elif op == "Pad":
        pads = constant_array(node.inputs[1]).reshape(-1)
        begin, end = pads[:rank], pads[rank:]
        new = np.concatenate([begin[inv], end[inv]]).astype(np.int64)
        replace_const(1, new, "pads")
    elif op == "Concat":
        axis = attr_int(node, "axis", 0) % rank
        node.attributes["axis"] = ir.AttrInt64("axis", p[axis])
        for i, v in enumerate(node.inputs):
            a = constant_array(v)
            if a is not None:
                replace_const(i, np.ascontiguousarray(np.transpose(a, inv)), "const")
    elif op == "Resize":
        for i in (2, 3):
            v = node.inputs[i] if len(node.inputs) > i else None
            a = constant_array(v) if v is not None else None
            if a is not None and a.size == rank:
                replace_const(i, a.reshape(-1)[inv].copy(), "resize")


# ---------------------------------------------------------------- 2. Reshape -> Transpose -> Reshape

def _collapse_batch_reshapes(model: ir.Model, opset: int, taken: set[str]) -> int:
    dims = infer_dims(model)
    env = evaluate_model(model, dims, opset)
    count = 0
    for node in list(ir.traversal.RecursiveGraphIterator(model.graph)):
        if node.graph is None or node.op_type != "Reshape" or not is_default_domain(node):
            continue
        if _collapse_one(node, dims, env):
            count += 1
    return count


def _shape_elems(value: ir.Value, env) -> list | None:
    vec = env.get(id(value))
    if vec is not None:
        return list(vec.elems)
    a = constant_array(value)
    return None if a is None else [int(v) for v in a.reshape(-1)]


def _only_reader(value: ir.Value, node: ir.Node) -> bool:
    """`node` is the only reader of `value` apart from Shape nodes (which only feed shape arithmetic
    that goes dead with the rewrite, as MXNet's batch_dot computes its target shape)."""
    if value.is_graph_output():
        return False
    readers = {id(u.node): u.node for u in value.uses()}
    return node in readers.values() and all(r is node or r.op_type == "Shape" for r in readers.values())


def _collapse_one(last: ir.Node, dims, env) -> bool:
    """Reshape(Transpose(Reshape(x, [-1, *tail]), [0, *t]), [*lead, *tail permuted]) -> Transpose(x)."""
    tr = last.inputs[0].producer() if last.inputs[0] is not None else None
    if tr is None or tr.op_type != "Transpose" or not _only_reader(tr.outputs[0], last):
        return False
    first = tr.inputs[0].producer()
    if first is None or first.op_type != "Reshape" or not _only_reader(first.outputs[0], tr):
        return False
    if attr_int(first, "allowzero", 0) or attr_int(last, "allowzero", 0) or first.graph is not last.graph:
        return False
    x = first.inputs[0]
    x_dims = dims.of(x)
    merged = _shape_elems(first.inputs[1], env)
    if x_dims is None or merged is None or len(merged) < 2 or None in x_dims:
        return False
    tail_len = len(merged) - 1
    k = len(x_dims) - tail_len
    if k < 1 or list(merged[1:]) != list(x_dims[k:]) or merged[0] != -1:
        return False
    t = _perm(tr, len(merged))
    if t is None or t[0] != 0:
        return False
    tail = list(x_dims[k:])
    target = _shape_elems(last.inputs[1], env)
    expected = list(x_dims[:k]) + [tail[i - 1] for i in t[1:]]
    if target is None or list(target) != expected:
        return False
    perm = list(range(k)) + [k + i - 1 for i in t[1:]]
    new = ir.Node("", "Transpose", [x], [ir.AttrInt64s("perm", perm)], name=tr.name)
    last.graph.insert_before(last, new)
    out = last.outputs[0]
    if out.type is not None and out.dtype is not None:
        new.outputs[0].type, new.outputs[0].shape = out.type, out.shape
    name = out.name
    out.replace_all_uses_with(new.outputs[0], replace_graph_outputs=True)
    last.graph.remove(last, safe=True)
    new.outputs[0].name = name
    logger.debug("Reshape-Transpose-Reshape %s -> Transpose%s", name, perm)
    return True
