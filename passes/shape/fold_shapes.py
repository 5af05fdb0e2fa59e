"""Fold shape arithmetic wherever the dims it reads are static; keep symbolic dims symbolic.

The TorchScript exporter writes `Shape -> Gather -> Unsqueeze -> Concat -> Reshape` (and
Slice/Squeeze/Div/Cast) chains for every `view`; tf2onnx and others do the same on a
smaller scale. The pass evaluates such int64 vectors element by element, where an element
is a number, a named symbolic dim (`batch`) or unknown, then:

1. A vector whose elements are all numbers becomes an initializer (`Shape(x)` of a static
   `x`, `Size(x)`, and everything computed from them): the chain goes dead.
2. `Reshape(x, shape)` with a partly symbolic shape gets a constant shape when every
   symbolic element is the dim of `x` at the same position (written `0`, "copy", with
   `allowzero=0`), and at most one element is otherwise unknown, written `-1` only when all
   the other elements are positive numbers (so an empty tensor cannot make -1 ambiguous).
3. `Expand(x, shape)` whose shape is 1 or x's own dim at every (right-aligned) position,
   and no longer than x's rank, is removed: it returns x unchanged.
4. `Flatten(x, axis=1)` of a rank-2 x (MXNet's Flatten before a Dense after a Flatten) is
   removed: it returns x unchanged.

A vector read by a training-mode BatchNormalization is not materialized (ORT 1.32 may share
it with an equal parameter and then computes the BN wrongly; see constant_folding case 9).

A symbolic dim is never replaced by a number: dims the model leaves dynamic stay dynamic
unless the user fixes them (`--shape`, `SetInputShapesPass`), after which everything that
depends only on shapes folds. Shapes come from onnx shape inference run on a copy whose
intermediate shape annotations are dropped, so a stale exporter annotation cannot freeze a
dynamic dim. Elements are tracked through Shape (start/end), Size, Gather, Slice,
Unsqueeze/Squeeze, Concat, Cast, Identity, Reshape of vectors, Add/Sub/Mul/Div/Mod/Max/Min,
Equal and Where.

Scope: the main graph and If/Loop/Scan bodies (outer values are seen inside bodies; a new
initializer lives in the graph of the node that uses it). Functions are skipped (their
shapes are not inferred). Custom-domain nodes are opaque. Graph outputs keep their
producers and names.
"""

from __future__ import annotations

__all__ = ["FoldShapesPass"]

import collections
import logging

import numpy as np
import onnx_ir as ir

from graphopt.core.patterns import (attr_int, constant_array, fresh_name, is_default_domain, is_training_batchnorm,
                                    model_names, opset_version, remove_node_keep_value)
from graphopt.core.pipeline import CountedPassResult
from graphopt.passes.shape._shapes import Vec, evaluate, infer_dims

logger = logging.getLogger(__name__)

_MAX_ROUNDS = 4
_MAX_ELEMENTS = 1024


class FoldShapesPass(ir.passes.InPlacePass):
    """Fold static shape arithmetic; make Reshape shapes constant with 0/-1 where dims are symbolic."""

    def __init__(self):
        super().__init__()
        self._unchanged_signature = None  # the graph as this pass last left it unchanged

    def call(self, model: ir.Model) -> CountedPassResult:
        counters: collections.Counter = collections.Counter()
        signature = _signature(model)
        if signature == self._unchanged_signature:
            return CountedPassResult(model, False, {})  # same nodes, same wiring: nothing new to fold
        for _ in range(_MAX_ROUNDS):
            if not self._round(model, counters):
                break
        self._unchanged_signature = None if counters else signature
        total = sum(counters.values())
        if total:
            logger.info("fold_shapes: %s", dict(counters))
        return CountedPassResult(model, bool(total), dict(counters))

    def _round(self, model: ir.Model, counters: collections.Counter) -> bool:
        if not any(_is_trigger(n) for n in model.graph.all_nodes()):
            return False
        dims = infer_dims(model)
        opset = opset_version(model)
        env: dict[int, Vec] = {}
        nodes = list(ir.traversal.RecursiveGraphIterator(model.graph))
        for node in nodes:
            if is_default_domain(node):
                for out, vec in zip(node.outputs, evaluate(node, env, dims, opset)):
                    if vec is not None:
                        env[id(out)] = vec
        taken = model_names(model)
        changed = False
        for node in nodes:
            if node.graph is None or not is_default_domain(node):
                continue
            if node.op_type == "Reshape":
                changed |= self._constant_reshape(node, env, dims, taken, counters)
            elif node.op_type == "Expand":
                changed |= self._drop_expand(node, env, dims, counters)
            elif node.op_type == "Flatten":
                changed |= self._drop_flatten(node, dims, counters)
        _sweep_shape_nodes(nodes, env)
        for node in nodes:
            if node.graph is not None and is_default_domain(node):
                changed |= self._materialize(node, env, taken, counters)
        return changed

    @staticmethod
    def _materialize(node: ir.Node, env, taken: set[str], counters) -> bool:
        """Case 1: replace each fully-known output that something unknown still reads."""
        if node.op_type == "Constant":
            return False
        changed = False
        for out in node.outputs:
            vec = env.get(id(out))
            if vec is None or not vec.concrete or vec.size > _MAX_ELEMENTS or out.is_graph_output():
                continue
            readers = [use.node for use in out.uses()]
            if not readers or all(_all_concrete(r, env) for r in readers):
                continue  # its readers fold too; materializing there is enough
            if any(is_training_batchnorm(r) for r in readers):
                continue  # see FoldConstantsPass case 9: ORT may share it with an equal parameter
            init = _new_initializer(node.graph, taken, f"{out.name or 'shape'}_folded", vec.array())
            out.replace_all_uses_with(init)
            counters["values_folded"] += 1
            logger.debug("folded %s (%s) to %s", out.name, node.op_type, vec.array().tolist())
            changed = True
        return changed

    @staticmethod
    def _constant_reshape(node: ir.Node, env, dims, taken: set[str], counters) -> bool:
        """Case 2."""
        if len(node.inputs) < 2 or node.inputs[1] is None or constant_array(node.inputs[1]) is not None:
            return False
        vec = env.get(id(node.inputs[1]))
        if vec is None or vec.rank != 1:
            return False
        allowzero = attr_int(node, "allowzero", 0)
        data_dims = dims.of(node.inputs[0])
        target: list[int | None] = []
        for i, e in enumerate(vec.elems):
            if isinstance(e, int):
                target.append(e)
            elif (isinstance(e, str) and not allowzero and data_dims is not None and i < len(data_dims)
                  and data_dims[i] == e):
                target.append(0)  # copy dim i of x: the same symbol
            else:
                target.append(None)
        unknown = [i for i, t in enumerate(target) if t is None]
        if len(unknown) > 1:
            return False
        if unknown:
            others = [t for t in target if t is not None]
            if not all(t > 0 for t in others):
                return False
            target[unknown[0]] = -1
        init = _new_initializer(node.graph, taken, f"{node.inputs[1].name or 'shape'}_folded",
                                np.array(target, dtype=np.int64))
        node.replace_input_with(1, init)
        counters["reshape_shapes_folded"] += 1
        logger.debug("Reshape %s: shape %s", node.name, target)
        return True

    @staticmethod
    def _drop_flatten(node: ir.Node, dims, counters) -> bool:
        """Case 4."""
        x = node.inputs[0]
        if x is None or attr_int(node, "axis", 1) not in (1, -1) or not _rank2(x, dims):
            return False
        if not remove_node_keep_value(node, x):
            return False
        counters["flattens_removed"] += 1
        logger.debug("Flatten %s of a rank-2 value: removed", node.name)
        return True

    @staticmethod
    def _drop_expand(node: ir.Node, env, dims, counters) -> bool:
        """Case 3."""
        if len(node.inputs) < 2 or node.inputs[1] is None:
            return False
        vec = env.get(id(node.inputs[1]))
        x_dims = dims.of(node.inputs[0])
        if vec is None or vec.rank != 1 or x_dims is None or vec.size > len(x_dims):
            return False
        tail = x_dims[len(x_dims) - vec.size:]
        for e, d in zip(vec.elems, tail):
            if not (e == 1 or (e is not None and e == d)):
                return False
        if node.inputs[0].dtype is not None and node.outputs[0].dtype not in (None, node.inputs[0].dtype):
            return False
        if not remove_node_keep_value(node, node.inputs[0]):
            return False
        counters["expands_removed"] += 1
        logger.debug("Expand %s returns its input: removed", node.name)
        return True


def _is_trigger(node: ir.Node) -> bool:
    """Shape arithmetic worth running shape inference for."""
    if not is_default_domain(node):
        return False
    if node.op_type in ("Shape", "Size", "Expand", "Flatten"):
        return True
    return node.op_type == "Reshape" and len(node.inputs) > 1 and constant_array(node.inputs[1]) is None


def _signature(model: ir.Model) -> tuple:
    return tuple((id(n), tuple(id(v) for v in n.inputs)) for n in ir.traversal.RecursiveGraphIterator(model.graph))


def _rank2(value: ir.Value, dims) -> bool:
    d = dims.of(value)
    producer = value.producer()
    return (d is not None and len(d) == 2) or (producer is not None and producer.op_type == "Flatten"
                                                and is_default_domain(producer))


def _sweep_shape_nodes(nodes: list[ir.Node], env) -> None:
    """Remove the shape arithmetic the rewrites above left unused (only nodes we evaluated)."""
    for node in reversed(nodes):
        if node.graph is None or not node.outputs or not all(id(o) in env for o in node.outputs):
            continue
        if any(o.uses() or o.is_graph_output() for o in node.outputs):
            continue
        node.graph.remove(node, safe=True)


def _all_concrete(node: ir.Node, env) -> bool:
    return bool(node.outputs) and all((v := env.get(id(o))) is not None and v.concrete for o in node.outputs)


def _new_initializer(graph: ir.Graph, taken: set[str], base: str, array: np.ndarray) -> ir.Value:
    name = fresh_name(taken, base)
    value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                     const_value=ir.tensor(array, name=name))
    graph.register_initializer(value)
    return value

