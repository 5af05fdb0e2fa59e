"""Merge nodes that compute the same thing (common subexpression elimination).

Cases, in every graph (main graph, If/Loop/Scan bodies, functions), each on its own:

1. Two nodes with the same op (domain, type, overload, version), the same input values,
   the same number of outputs and equal attributes: the later one goes and its users read
   the earlier one's outputs. Walking in order, chains of duplicates merge in one run.
2. Attributes compare by value; float attributes bitwise (-0.0 differs from 0.0); tensor
   attributes (Constant) by dtype, shape and bytes.
3. When the removed node's output is a graph output, the kept output takes over its name;
   if the kept output is itself a graph output, an `Identity` gives the second name, so
   output names never change.

Refused:

4. Nondeterministic ops (Random*, Multinomial, Bernoulli) and Dropout (random in training).
5. Ops outside the ONNX domains ("" and ai.onnx.ml): a custom op may be random or have
   side effects. This includes calls to model-local functions.
6. Nodes with graph attributes (If, Loop, Scan): bodies are not compared. Nodes in
   different graphs are never merged with each other.
7. Nodes with no outputs, an `Identity` whose merge would only add another `Identity`, and
   a merge that needs an `Identity` in a function that does not import the ONNX domain.
8. A merge that would give a training-mode BatchNormalization one value in two inputs:
   ORT 1.32 computes that wrongly (`patterns.aliases_training_batchnorm`).

Why not `onnx_ir.passes.common.CommonSubexpressionEliminationPass`: it merges Bernoulli,
training Dropout and custom-domain ops, compares -0.0 equal to 0.0, and covers the main
graph only. The merge itself (graph outputs, Identity) follows it.
"""

from __future__ import annotations

__all__ = ["EliminateCommonSubexpressionsPass"]

import collections
import hashlib
import logging

import numpy as np
import onnx_ir as ir

from graphopt.core.patterns import aliases_training_batchnorm, graphs_of
from graphopt.core.pipeline import CountedPassResult

logger = logging.getLogger(__name__)

_NONDETERMINISTIC = frozenset({"RandomUniform", "RandomNormal", "RandomUniformLike", "RandomNormalLike",
                               "Multinomial", "Bernoulli", "Dropout"})
_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})
_SEQUENCES = (ir.AttributeType.INTS, ir.AttributeType.STRINGS)


def _tensor_key(tensor: ir.TensorProtocol):
    if tensor.dtype == ir.DataType.STRING:
        data = b"".join(len(s).to_bytes(8, "little") + s for s in tensor.string_data())
    else:
        data = tensor.tobytes()
    return tensor.dtype, tuple(tensor.shape.numpy()), hashlib.sha256(data).digest()


def _attr_key(attr: ir.Attr):
    if attr.is_ref():
        return "ref", attr.ref_attr_name
    kind = attr.type
    if kind in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS, ir.AttributeType.SPARSE_TENSOR,
                ir.AttributeType.SPARSE_TENSORS):
        return None
    if kind == ir.AttributeType.FLOAT:
        return np.float32(attr.value).tobytes()
    if kind == ir.AttributeType.FLOATS:
        return np.asarray(attr.value, dtype=np.float32).tobytes()
    if kind == ir.AttributeType.TENSOR:
        return _tensor_key(attr.value)
    if kind == ir.AttributeType.TENSORS:
        return tuple(_tensor_key(t) for t in attr.value)
    if kind in _SEQUENCES:
        return tuple(attr.value)
    if kind in (ir.AttributeType.TYPE_PROTO, ir.AttributeType.TYPE_PROTOS):
        return str(attr.value)
    return attr.value  # INT, STRING


def _node_key(node: ir.Node):
    if (node.domain not in _DOMAINS or node.op_type in _NONDETERMINISTIC or not node.outputs):
        return None
    attrs = []
    for name, attr in sorted(node.attributes.items()):
        key = _attr_key(attr)
        if key is None:
            return None
        attrs.append((name, attr.type, key))
    inputs = tuple(None if v is None else id(v) for v in node.inputs)
    return node.op_identifier(), node.version, len(node.outputs), inputs, tuple(attrs)


def _needs_identity(old: ir.Value, new: ir.Value) -> bool:
    return old.is_graph_output() and (new.is_graph_output() or new.is_graph_input())


def _merge(graph: ir.Graph, dup: ir.Node, keep: ir.Node, counters: collections.Counter) -> None:
    for old, new in zip(dup.outputs, keep.outputs):
        if old.is_graph_output():
            slots = [i for i, v in enumerate(graph.outputs) if v is old]
            if _needs_identity(old, new):
                # a second graph output name for the same value: keep it through an Identity
                shape = old.shape or new.shape
                target = ir.Value(name=old.name, type=old.type or new.type,
                                  shape=None if shape is None else shape.copy())
                graph.insert_before(dup, ir.node("Identity", [new], outputs=[target]))
                counters["identities_added"] += 1
            else:
                new.name = old.name  # the graph output keeps its name, and needs a type
                new.type = new.type or old.type
                if new.shape is None and old.shape is not None:
                    new.shape = old.shape.copy()
                target = new
            for i in slots:
                graph.outputs[i] = target
        old.replace_all_uses_with(new)
    graph.remove(dup, safe=True)


def _cse_graph(graph: ir.Graph | ir.Function, counters: collections.Counter) -> None:
    seen: dict[tuple, ir.Node] = {}
    # a function needs its own import of the ONNX domain; bodies share the model's
    can_add_identity = not isinstance(graph, ir.Function) or "" in graph.opset_imports
    for node in list(graph):
        try:
            key = _node_key(node)
        except (OSError, ValueError) as e:  # unreadable tensor attribute: not comparable
            logger.debug("cse skips %s: %s", node.name, e)
            continue
        if key is None:
            continue
        keep = seen.get(key)
        if keep is None:
            seen[key] = node
            continue
        if any(_needs_identity(o, n) for o, n in zip(node.outputs, keep.outputs)) and (
                node.op_type == "Identity" or not can_add_identity):
            continue  # merging would only trade it for an Identity, or there is no opset for one
        if not _same_tensors(node, keep):
            continue
        if any(aliases_training_batchnorm(o, k) for o, k in zip(node.outputs, keep.outputs)):
            continue  # ORT miscomputes a training BatchNormalization reading one value twice
        logger.debug("merging %s (%s) into %s", node.name, node.op_type, keep.name)
        _merge(graph, node, keep, counters)
        counters["nodes_merged"] += 1


def _same_tensors(a: ir.Node, b: ir.Node) -> bool:
    """Tensor attributes matched by hash; compare the bytes before trusting it."""
    for name, attr in a.attributes.items():
        if not attr.is_ref() and attr.type == ir.AttributeType.TENSOR:
            other = b.attributes[name].value
            if attr.value.dtype == ir.DataType.STRING:
                if list(attr.value.string_data()) != list(other.string_data()):
                    return False
            elif attr.value.tobytes() != other.tobytes():
                return False
    return True


class EliminateCommonSubexpressionsPass(ir.passes.InPlacePass):
    """Merge duplicate deterministic ONNX nodes, graph by graph, keeping output names."""

    def call(self, model: ir.Model) -> CountedPassResult:
        counters: collections.Counter = collections.Counter()
        for graph in list(graphs_of(model)):
            _cse_graph(graph, counters)
        if counters:
            logger.info("cse: %s", dict(counters))
        return CountedPassResult(model, bool(counters), counters=dict(counters))
