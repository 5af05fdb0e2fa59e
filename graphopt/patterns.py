"""Small helpers for matching and rewriting node chains on the onnx-ir IR."""

from __future__ import annotations

__all__ = [
    "constant_array",
    "is_constant",
    "single_consumer",
    "add_initializer",
    "unique_name",
    "graphs_of",
    "is_default_domain",
    "attr_int",
    "attr_ints",
    "opset_version",
    "remove_node_keep_value",
    "model_names",
    "fresh_name",
]

import itertools
from collections.abc import Iterator

import numpy as np
import onnx_ir as ir


def is_default_domain(node: ir.Node) -> bool:
    return node.domain in ("", "ai.onnx")


def constant_array(value: ir.Value | None) -> np.ndarray | None:
    """The value's constant data, or None if it is not a constant the caller cannot override.

    Initializers that are also graph inputs (IR v3 exports) are not constant: the caller may
    feed them.
    """
    if value is None or value.is_graph_input():
        return None
    tensor = ir.convenience.get_const_tensor(value)
    if tensor is None:
        return None
    try:
        return tensor.numpy()
    except Exception:  # noqa: BLE001 - unreadable data (e.g. string tensors) is simply "not constant"
        return None


def is_constant(value: ir.Value | None) -> bool:
    if value is None or value.is_graph_input():
        return False
    if value.const_value is not None:
        return True
    producer = value.producer()
    return producer is not None and producer.op_type == "Constant" and is_default_domain(producer)


def single_consumer(value: ir.Value) -> ir.Node | None:
    """The only node using `value`, if it is used by exactly one node and is not a graph output."""
    if value.is_graph_output():
        return None
    users = {id(use.node): use.node for use in value.uses()}
    if len(users) != 1:
        return None
    return next(iter(users.values()))


def unique_name(graph: ir.Graph, base: str) -> str:
    """A value name not used anywhere in the graph (initializers, inputs, node outputs)."""
    taken = _names(graph)
    if base not in taken:
        return base
    for i in itertools.count(1):
        candidate = f"{base}_{i}"
        if candidate not in taken:
            return candidate
    raise AssertionError("unreachable")


def _names(graph: ir.Graph) -> set[str]:
    root = graph
    names = set(root.initializers)
    names.update(v.name for v in root.inputs if v.name)
    for node in root.all_nodes():
        names.update(v.name for v in node.outputs if v.name)
    return names


def add_initializer(graph: ir.Graph, base_name: str, array: np.ndarray) -> ir.Value:
    """Register `array` as a new initializer under a fresh name (never overwrites one)."""
    name = unique_name(graph, base_name)
    value = ir.Value(name=name, const_value=ir.tensor(array, name=name))
    value.shape = ir.Shape(array.shape)
    value.dtype = ir.DataType.from_numpy(array.dtype)
    graph.register_initializer(value)
    return value


def graphs_of(model: ir.Model) -> Iterator[ir.Graph | ir.Function]:
    """The main graph, every subgraph (If/Loop/Scan bodies) and every function."""
    yield model.graph
    yield from model.graph.subgraphs()
    for function in model.functions.values():
        yield function
        yield from function.subgraphs()


def attr_int(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    if attr is None or attr.is_ref():
        return default
    return attr.as_int()


def attr_ints(node: ir.Node, name: str, default: list[int] | None = None) -> list[int] | None:
    attr = node.attributes.get(name)
    if attr is None or attr.is_ref():
        return default
    return list(attr.as_ints())


def opset_version(model: ir.Model, domain: str = "") -> int:
    return model.opset_imports.get(domain, model.opset_imports.get("ai.onnx", 1))


def remove_node_keep_value(node: ir.Node, replacement: ir.Value) -> bool:
    """Remove a single-output node whose output equals `replacement`; return False if unsafe.

    When the node's output is a graph output, the graph output keeps its name: the
    replacement value takes over the output slot only if it is not a graph input or another
    graph output, otherwise the node is kept (renaming would change the model's interface).
    """
    graph = node.graph
    out = node.outputs[0]
    if out.is_graph_output():
        if replacement.is_graph_input() or replacement.is_graph_output() or replacement.graph is not graph:
            return False
        if replacement.const_value is not None and replacement.name in graph.initializers:
            return False
        name = out.name
        out.replace_all_uses_with(replacement, replace_graph_outputs=True)
        graph.remove(node, safe=True)
        replacement.name = name
        return True
    out.replace_all_uses_with(replacement)
    graph.remove(node, safe=True)
    return True


def model_names(model: ir.Model) -> set[str]:
    """Every value name in the model: all graphs (subgraph inputs and initializers included)
    and all functions. Use with `fresh_name` when a subgraph must not shadow an outer name."""
    names: set[str] = set()
    for graph in graphs_of(model):
        names.update(v.name for v in graph.inputs if v.name)
        if isinstance(graph, ir.Graph):
            names.update(graph.initializers)
        for node in graph:
            names.update(v.name for v in node.outputs if v.name)
    return names


def fresh_name(taken: set[str], base: str) -> str:
    """`base`, or `base_1`, `base_2`... whichever is not in `taken`; the result is added to `taken`."""
    name = base
    for i in itertools.count(1):
        if name not in taken:
            break
        name = f"{base}_{i}"
    taken.add(name)
    return name
