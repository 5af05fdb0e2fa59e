"""Remove nodes that return their input unchanged, and pairs of nodes that cancel.

Cases (default domain only), in every graph: main graph, If/Loop/Scan bodies, functions.

1. `Identity(x)`.
2. `Dropout(x)` in inference: opset 7-11, opset < 7 with `is_test=1`, or opset >= 12 with
   no `training_mode` input or a constant false one (`ratio` does not matter). Its mask
   output must be unused.
3. `Cast(x, to=T)` / `CastLike(x, like)` when x is already of type T (dtype must be known).
4. `Reshape(x, shape)` with a constant shape that resolves to x's shape: per axis, an
   equal static dim, a 0 that copies the dim (allowzero=0), or a single -1 (declined if
   x has a static 0 dim, since -1 is then ambiguous). Symbolic dims are fine when copied.
5. `Transpose(x)` whose perm is the identity (no perm: rank <= 1).
6. `Pad(x, pads)` with constant all-zero pads, any mode.
7. `Transpose(Transpose(x, p1), p2)`: the composition p1[p2[i]] is the identity -> x; else
   the pair becomes one Transpose when the first has no other consumer.
8. `Reshape(Reshape(x, s1), s2)` -> `Reshape(x, s2)` when the first has a single consumer and
   s2 cannot copy a dim from the intermediate (no 0 in s2 unless allowzero=1).
9. `Squeeze(Unsqueeze(x, a), a)` and `Unsqueeze(Squeeze(x, a), a)` -> x, axes known and equal
   after normalizing negative ones (needs the rank only when an axis is negative).
10. `x + 0`, `0 + x`, `x - 0`, `x * 1`, `1 * x`, `x / 1` with a constant one-element neutral
   operand that cannot broadcast x to a larger rank (a scalar, or rank <= x's known rank);
   Paddle's `scale` op writes them (x * s + 0).

Refused: anything whose proof needs unknown dtypes, shapes or non-constant attributes;
custom domains; pairs whose first node lives in another graph; a removal that would give a
training-mode BatchNormalization one value in two inputs (ORT 1.32 computes that wrongly).
Graph input/output names stay stable (`graphopt.core.patterns.remove_node_keep_value`): a no-op
between a graph input (or initializer) and a graph output is kept, and so is a body's no-op
that forwards an outer-scope value to a body output (renaming it would break the outer graph).
"""

from __future__ import annotations

__all__ = ["EliminateNoOpsPass"]

import collections
import logging

import onnx_ir as ir

from graphopt.core.patterns import (aliases_training_batchnorm, attr_int, attr_ints, constant_array, graphs_of,
                               is_default_domain, remove_node_keep_value, single_consumer)
from graphopt.core.pipeline import CountedPassResult

logger = logging.getLogger(__name__)


def _const_ints(value: ir.Value | None) -> list[int] | None:
    try:
        array = constant_array(value)
    except ValueError:  # malformed Constant node (e.g. sparse_value): not a constant we read
        return None
    if array is None or array.dtype.kind not in "iu":
        return None
    return [int(v) for v in array.reshape(-1)]


def _rank(value: ir.Value | None) -> int | None:
    return None if value is None or value.shape is None else len(value.shape)


def _producer(node: ir.Node, op_type: str) -> ir.Node | None:
    """The producer of node's first input if it is `op_type` in the same graph."""
    producer = node.inputs[0].producer() if node.inputs and node.inputs[0] is not None else None
    if producer is None or producer.op_type != op_type or not is_default_domain(producer):
        return None
    return producer if producer.graph is node.graph else None


def _replace(node: ir.Node, value: ir.Value | None, first: ir.Node | None = None) -> bool:
    """Drop `node` for `value`; then drop `first` (a pair's first node) if nothing uses it."""
    if value is None:
        return False
    out = node.outputs[0]
    if aliases_training_batchnorm(out, value):
        return False  # ORT miscomputes a training BatchNormalization reading one value twice
    # The value may take over a graph output's name, and graph outputs need a type. Equal
    # values, so the output's annotations are the value's.
    if value.type is None:
        value.type = out.type
    if value.shape is None and out.shape is not None:
        value.shape = out.shape.copy()
    if not remove_node_keep_value(node, value):
        return False
    if first is not None and first.graph is not None and not any(
            out.uses() or out.is_graph_output() for out in first.outputs):
        first.graph.remove(first, safe=True)
    return True


def _identity(node, opset):
    return _replace(node, node.inputs[0]) and "identity_removed"


def _dropout(node, opset):
    if len(node.outputs) > 1 and (node.outputs[1].uses() or node.outputs[1].is_graph_output()):
        return None  # the mask is used
    if opset < 7 and attr_int(node, "is_test", 0) != 1:
        return None
    if opset >= 12 and len(node.inputs) > 2 and node.inputs[2] is not None:
        training = constant_array(node.inputs[2])
        if training is None or training.size != 1 or bool(training.reshape(-1)[0]):
            return None
    return _replace(node, node.inputs[0]) and "dropout_removed"


def _cast(node, opset):
    x = node.inputs[0]
    if node.op_type == "CastLike":
        target = node.inputs[1].dtype if len(node.inputs) > 1 and node.inputs[1] is not None else None
    else:
        try:
            target = ir.DataType(attr_int(node, "to", -1))
        except ValueError:
            target = None
    if x is None or x.dtype is None or target is None or x.dtype != target:
        return None
    return _replace(node, x) and "cast_removed"


def _reshape_is_noop(node: ir.Node) -> bool:
    x = node.inputs[0]
    target = _const_ints(node.inputs[1]) if len(node.inputs) > 1 else None
    if target is None or x is None or x.shape is None or len(target) != len(x.shape):
        return False
    allowzero = attr_int(node, "allowzero", 0)
    dims = list(x.shape)
    if target.count(-1) > 1 or (-1 in target and any(d == 0 for d in dims if isinstance(d, int))):
        return False
    # with every other axis equal, the element count forces -1 to the remaining dim
    return all((t == 0 and not allowzero) or t == -1 or (isinstance(d, int) and d == t)
               for t, d in zip(target, dims))


def _reshape(node, opset):
    first = _producer(node, "Reshape")
    merged = None
    if first is not None and single_consumer(first.outputs[0]) is node and len(node.inputs) > 1:
        target = _const_ints(node.inputs[1])
        if attr_int(node, "allowzero", 0) == 1 or (target is not None and 0 not in target):
            node.replace_input_with(0, first.inputs[0])
            first.graph.remove(first, safe=True)
            logger.debug("merged Reshape %s into %s", first.name, node.name)
            merged = "reshapes_merged"
    if _reshape_is_noop(node) and _replace(node, node.inputs[0]):
        return "reshape_removed" if merged is None else [merged, "reshape_removed"]
    return merged


def _perm(node: ir.Node) -> list[int] | None:
    perm = attr_ints(node, "perm")
    if perm is not None:
        return perm
    rank = _rank(node.inputs[0])
    return None if rank is None else list(reversed(range(rank)))


def _transpose(node, opset):
    perm = _perm(node)
    if perm is None:
        return None
    if perm == list(range(len(perm))):
        return _replace(node, node.inputs[0]) and "transpose_removed"
    first = _producer(node, "Transpose")
    first_perm = _perm(first) if first is not None else None
    if first_perm is None or len(first_perm) != len(perm):
        return None
    composed = [first_perm[p] for p in perm]
    x = first.inputs[0]
    if composed == list(range(len(composed))):
        return _replace(node, x, first) and "transposes_cancelled"
    if single_consumer(first.outputs[0]) is not node:
        return None
    node.replace_input_with(0, x)
    node.attributes["perm"] = ir.AttrInt64s("perm", composed)
    first.graph.remove(first, safe=True)
    return "transposes_merged"


def _pad(node, opset):
    if opset < 11:  # pads moved from an attribute ("paddings" in opset 1) to an input
        pads = attr_ints(node, "pads") or attr_ints(node, "paddings")
    else:
        pads = _const_ints(node.inputs[1]) if len(node.inputs) > 1 else None
    if pads is None or any(pads):
        return None
    return _replace(node, node.inputs[0]) and "pad_removed"


def _axes(node: ir.Node) -> list[int] | None:
    axes = attr_ints(node, "axes")
    if axes is None and len(node.inputs) > 1:
        axes = _const_ints(node.inputs[1])
    return axes


def _squeeze_pair(node, opset):
    """Squeeze(Unsqueeze(x, a), a) or Unsqueeze(Squeeze(x, a), a) -> x."""
    first = _producer(node, "Unsqueeze" if node.op_type == "Squeeze" else "Squeeze")
    if first is None:
        return None
    a, b = _axes(first), _axes(node)
    if not a or not b:
        return None  # Squeeze without axes drops every 1-dim, not only the ones added
    x = first.inputs[0]
    if min(a + b) < 0:
        rank = _rank(x)
        if rank is None:
            return None
        # both axes lists index the larger of the two ranks
        rank = rank + len(a) if first.op_type == "Unsqueeze" else rank
        a, b = [v % rank for v in a], [v % rank for v in b]
    if sorted(set(a)) != sorted(set(b)) or len(set(a)) != len(a):
        return None
    return _replace(node, x, first) and "squeeze_pairs_cancelled"


def _neutral(node, opset):
    """Case 10: an Add/Sub of 0 or Mul/Div by 1 that returns x unchanged."""
    if len(node.inputs) != 2 or node.inputs[1] is None:
        return None
    neutral = 0.0 if node.op_type in ("Add", "Sub") else 1.0
    sides = [(0, 1), (1, 0)] if node.op_type in ("Add", "Mul") else [(0, 1)]
    for xi, ci in sides:
        x, c = node.inputs[xi], node.inputs[ci]
        const = constant_array(c)
        if x is None or const is None or const.size != 1 or const.dtype.kind not in "fiu":
            continue
        if float(const.reshape(-1)[0]) != neutral:
            continue
        rank = _rank(x)
        if const.ndim > 0 and (rank is None or const.ndim > rank):
            continue  # could broadcast x up to the constant's rank
        return _replace(node, x) and "neutral_op_removed"
    return None


_RULES = {"Add": _neutral, "Sub": _neutral, "Mul": _neutral, "Div": _neutral, "Identity": _identity, "Dropout": _dropout, "Cast": _cast, "CastLike": _cast,
          "Reshape": _reshape, "Transpose": _transpose, "Pad": _pad,
          "Squeeze": _squeeze_pair, "Unsqueeze": _squeeze_pair}


class EliminateNoOpsPass(ir.passes.InPlacePass):
    """Remove no-op nodes and cancelling pairs in every graph, keeping graph I/O names."""

    def call(self, model: ir.Model) -> CountedPassResult:
        counters: collections.Counter = collections.Counter()
        model_opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
        for graph in list(graphs_of(model)):
            graph_opset = graph.opset_imports.get("", model_opset) if isinstance(graph, ir.Function) \
                else model_opset
            for node in list(graph):
                rule = _RULES.get(node.op_type)
                if rule is None or node.graph is None or not is_default_domain(node) or not node.inputs \
                        or node.inputs[0] is None:
                    continue
                name, op_type = node.name, node.op_type
                changes = rule(node, node.version or graph_opset)
                for change in [changes] if isinstance(changes, str) else changes or []:
                    logger.debug("%s: %s %s", change, op_type, name)
                    counters[change] += 1
        if counters:
            logger.info("no-ops: %s", dict(counters))
        return CountedPassResult(model, bool(counters), counters=dict(counters))
