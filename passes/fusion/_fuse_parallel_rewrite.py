"""The rewrite behind FuseParallelPass: stack the weights, one merged op, shared tail, Split.

Kept apart from the matching (`fuse_parallel`) so that `fuse_parallel_decide` can build the
fused form of a candidate's subgraph with exactly the code the pass applies.
"""

from __future__ import annotations

__all__ = ["PROVENANCE_KEY", "apply_candidate", "bias_vector", "constant_array", "is_graph_input"]

from collections.abc import Callable

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import TopologicalSortPass

from graphopt.core.patterns import attr_int, is_default_domain, opset_version, remove_node_keep_value

PROVENANCE_KEY = "pkg.graphopt.pass"


def is_graph_input(value: ir.Value) -> bool:
    """`value.is_graph_input()`, checked against the graph: onnx-ir 1.1 leaves the flag set after
    `del graph.inputs[i]` or `graph.inputs.pop()` (a pass that lists initializers as inputs for a
    while and removes them that way leaves weights that claim to be inputs)."""
    if not value.is_graph_input():
        return False
    graph = value.graph
    return graph is None or any(v is value for v in graph.inputs)


def constant_array(value: ir.Value | None) -> np.ndarray | None:
    """The value's constant data (an initializer or Constant the caller cannot feed), else None."""
    if value is None or is_graph_input(value):
        return None
    tensor = ir.convenience.get_const_tensor(value)
    if tensor is None:
        return None
    try:
        return tensor.numpy()
    except Exception:  # noqa: BLE001 - unreadable data (string tensors) is simply "not constant"
        return None


def bias_vector(value: ir.Value, width: int) -> np.ndarray | None:
    """A constant that broadcasts along the last axis as a [width] vector."""
    array = constant_array(value)
    if array is None or array.size not in (1, width) or any(d != 1 for d in array.shape[:-1]):
        return None
    return np.broadcast_to(array.reshape(-1), (width,)).copy()


def _stack(graph: ir.Graph, values: list[ir.Value | np.ndarray], axis: int, name: str, new_nodes: list) -> ir.Value:
    """One value holding `values` concatenated on `axis`: an initializer if all are arrays,
    else a Concat node over constant values (ORT folds it at load)."""
    arrays = [v if isinstance(v, np.ndarray) else constant_array(v) for v in values]
    if all(a is not None for a in arrays):
        stacked = np.concatenate(arrays, axis=axis)
        out = ir.Value(name=name, const_value=ir.tensor(stacked, name=name),
                       shape=ir.Shape(stacked.shape), type=ir.TensorType(ir.DataType.from_numpy(stacked.dtype)))
        graph.register_initializer(out)
        return out
    inputs = []
    for i, (v, a) in enumerate(zip(values, arrays)):
        if isinstance(v, ir.Value):
            inputs.append(v)
        else:
            piece = ir.Value(name=f"{name}_part{i}", const_value=ir.tensor(a, name=f"{name}_part{i}"),
                             shape=ir.Shape(a.shape), type=ir.TensorType(ir.DataType.from_numpy(a.dtype)))
            graph.register_initializer(piece)
            inputs.append(piece)
    node = ir.Node("", "Concat", inputs, [ir.AttrInt64("axis", axis)], name=name)
    node.outputs[0].name = name
    new_nodes.append(node)
    return node.outputs[0]


def apply_candidate(model: ir.Model, cand, names: Callable[[str], str]) -> dict[str, int]:
    """Rewrite one candidate in place; `names(base)` returns fresh value names. Returns counters."""
    graph = model.graph
    first = cand.members[0].node
    new_nodes: list[ir.Node] = []
    x = cand.input
    rank = len(x.shape) if x.shape is not None else None
    widths = cand.widths
    base = names(f"{first.name or first.op_type}_fused")

    if cand.kind == "Conv":
        w = _stack(graph, [m.node.inputs[1] for m in cand.members], 0, names(base + "_W"), new_nodes)
        has_bias = any(len(m.node.inputs) > 2 and m.node.inputs[2] is not None for m in cand.members)
        inputs = [x, w]
        if has_bias:
            dtype = x.dtype.numpy()
            pieces = [m.node.inputs[2] if len(m.node.inputs) > 2 and m.node.inputs[2] is not None
                      else np.zeros(m.width, dtype) for m in cand.members]
            inputs.append(_stack(graph, pieces, 0, names(base + "_B"), new_nodes))
    elif cand.kind == "MatMul":
        inputs = [x, _stack(graph, [m.node.inputs[1] for m in cand.members], 1, names(base + "_W"), new_nodes)]
    else:
        trans_b = attr_int(first, "transB", 0)
        inputs = [x, _stack(graph, [m.node.inputs[1] for m in cand.members], 0 if trans_b else 1,
                            names(base + "_W"), new_nodes)]
        cs = [m.node.inputs[2] if len(m.node.inputs) > 2 else None for m in cand.members]
        if any(c is not None for c in cs):
            dtype = x.dtype.numpy()
            inputs.append(_stack(graph, [bias_vector(c, m.width) if c is not None else np.zeros(m.width, dtype)
                                         for c, m in zip(cs, cand.members)], 0, names(base + "_C"), new_nodes))
    merged = ir.Node("", cand.kind, inputs, [a for a in first.attributes.values()], name=base)
    new_nodes.append(merged)
    value = merged.outputs[0]
    value.name = base
    value.dtype = x.dtype
    _set_shape(value, cand.members[0].node.outputs[0], sum(widths), cand.axis)

    if any(m.bias_add is not None for m in cand.members):
        dtype = x.dtype.numpy()
        bias = np.concatenate([m.bias_array if m.bias_array is not None else np.zeros(m.width, dtype)
                               for m in cand.members]).astype(dtype)
        bias_value = _stack(graph, [bias], 0, names(base + "_bias"), new_nodes)
        add = ir.Node("", "Add", [value, bias_value], name=names(base + "_add"))
        add.outputs[0].name = add.name
        add.outputs[0].dtype, add.outputs[0].shape = value.dtype, value.shape
        new_nodes.append(add)
        value = add.outputs[0]

    act = cand.members[0].act
    if act is not None:
        shared = ir.Node(act.domain, act.op_type, [value, *act.inputs[1:]], list(act.attributes.values()),
                         name=names(base + "_" + act.op_type.lower()))
        shared.outputs[0].name = shared.name
        shared.outputs[0].dtype, shared.outputs[0].shape = value.dtype, value.shape
        new_nodes.append(shared)
        value = shared.outputs[0]

    axis = cand.axis if cand.axis >= 0 or rank is None else rank + cand.axis
    split_inputs = [value]
    split_attrs = [ir.AttrInt64("axis", axis)]
    if opset_version(model) >= 13:
        sizes = ir.Value(name=names(base + "_split_sizes"), const_value=ir.tensor(np.array(widths, np.int64)),
                         shape=ir.Shape([len(widths)]), type=ir.TensorType(ir.DataType.INT64))
        graph.register_initializer(sizes)
        split_inputs.append(sizes)
    else:
        split_attrs.append(ir.AttrInt64s("split", widths))
    split = ir.Node("", "Split", split_inputs, split_attrs, num_outputs=len(widths), name=names(base + "_split"))
    new_nodes.append(split)
    for node in new_nodes:
        node.metadata_props[PROVENANCE_KEY] = "fuse_parallel"
    graph.insert_before(first, new_nodes)

    old_names = []
    for member, piece in zip(cand.members, split.outputs):
        final = member.final
        piece.dtype, piece.shape = final.dtype or x.dtype, final.shape  # element-wise tails keep the dtype
        old_names.append(final.name)
        final.replace_all_uses_with(piece, replace_graph_outputs=True)
    old_weights = [v for m in cand.members for v in m.node.inputs[1:] if v is not None]
    for member in cand.members:
        for node in (member.act, member.bias_add, member.node):
            if node is not None:
                graph.remove(node, safe=True)
    for weight in old_weights:  # stacked copies replace them; constant subgraphs feed the Concat
        if weight.name in graph.initializers and not weight.uses() and not weight.is_graph_output():
            del graph.initializers[weight.name]
    for piece, name in zip(split.outputs, old_names):
        piece.name = name
    counters = {"fused_groups": 1, "ops_merged": len(cand.members),
                "activations_shared": len(cand.members) if act is not None else 0}
    counters["splits_dropped"] = _drop_split(graph, split, value, axis)
    if any(n.op_type == "Concat" for n in new_nodes):
        TopologicalSortPass()(model)  # weights from constant subgraphs may come later in the graph
    return counters


def _set_shape(value: ir.Value, like: ir.Value, width: int, axis: int) -> None:
    if like.shape is None:
        return
    dims = list(like.shape)
    dims[axis] = width
    value.shape = ir.Shape(dims)


def _drop_split(graph: ir.Graph, split: ir.Node, whole: ir.Value, axis: int) -> int:
    """Case 5: Concat(..., piece0, ..., pieceN, ...) on the split axis takes `whole` instead."""
    pieces = list(split.outputs)
    n = len(pieces)
    rank = len(whole.shape) if whole.shape is not None else None
    for node in list({id(c): c for p in pieces for c in p.consumers()}.values()):
        if node.op_type != "Concat" or not is_default_domain(node):
            continue
        cat_axis = attr_int(node, "axis", 0)
        if cat_axis < 0 and rank is not None:
            cat_axis += rank
        if cat_axis != axis:
            continue
        inputs = list(node.inputs)
        for start in range(len(inputs) - n + 1):
            if not all(inputs[start + i] is pieces[i] for i in range(n)):
                continue
            if len(inputs) == n and remove_node_keep_value(node, whole):
                break  # the Concat rebuilt exactly the merged tensor
            rebuilt = ir.Node(node.domain, "Concat", inputs[:start] + [whole] + inputs[start + n:],
                              list(node.attributes.values()), name=node.name)
            rebuilt.metadata_props[PROVENANCE_KEY] = "fuse_parallel"
            graph.insert_before(node, rebuilt)
            old = node.outputs[0]
            out = rebuilt.outputs[0]
            out.dtype, out.shape, name = old.dtype or whole.dtype, old.shape, old.name
            old.replace_all_uses_with(out, replace_graph_outputs=True)
            graph.remove(node, safe=True)
            out.name = name
            break
    if all(not p.uses() and not p.is_graph_output() for p in pieces):
        sizes = split.inputs[1] if len(split.inputs) > 1 else None
        graph.remove(split, safe=True)
        if sizes is not None and not sizes.uses() and sizes.name in graph.initializers:
            del graph.initializers[sizes.name]
        return 1
    return 0
