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
    "make_names_unique",
    "aliases_training_batchnorm",
    "is_training_batchnorm",
    "FILL_MIN_BYTES",
    "fill_value",
    "is_fill",
    "drop_if_unused",
    "is_constant_expression",
    "const_tensor",
    "static_dtype",
    "static_shape",
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


def add_initializer(graph: ir.Graph, base_name: str, array: np.ndarray, *, name_is_fresh: bool = False) -> ir.Value:
    """Register `array` as a new initializer under a fresh name (never overwrites one).

    `name_is_fresh`: the caller took `base_name` from `fresh_name(model_names(...))`, so the
    graph need not be scanned again (that scan made folding N layers cost N^2)."""
    name = base_name if name_is_fresh else unique_name(graph, base_name)
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
    """Every value name and node name in the model: all graphs (subgraph inputs and
    initializers included) and all functions. Use with `fresh_name` for new values (a
    subgraph must not shadow an outer name) and new nodes (ORT rejects two nodes of one name)."""
    names: set[str] = set()
    for graph in graphs_of(model):
        names.update(v.name for v in graph.inputs if v.name)
        if isinstance(graph, ir.Graph):
            names.update(graph.initializers)
        for node in graph:
            names.update(v.name for v in node.outputs if v.name)
            if node.name:
                names.add(node.name)
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


def make_names_unique(model: ir.Model) -> int:
    """Rename every value and node whose name an earlier one in the model has; the count renamed.

    onnxscript's rewriter names new values and nodes per graph (`val_0`, `node_Div_1`), so a
    rewrite in an If body and one in the main graph collide, and the checker then rejects the
    model; onnx-ir's NameFixPass only looks at enclosing scopes, not at values that come later.
    Main-graph inputs and outputs keep their names (users bind to them), then the main graph's
    values keep theirs before any body's.
    """
    graphs = [model.graph, *model.graph.subgraphs()]
    fixed = [*model.graph.inputs, *model.graph.outputs]
    taken = {v.name for v in fixed if v.name}
    seen = {id(v) for v in fixed}
    node_names: set[str] = set()
    renamed = 0
    for graph in graphs:
        values = [*graph.inputs, *graph.initializers.values(), *(v for n in graph for v in n.outputs)]
        for value in values:
            if id(value) in seen or not value.name:
                continue
            seen.add(id(value))
            if value.name in taken:
                value.name = fresh_name(taken, value.name)
                renamed += 1
            else:
                taken.add(value.name)
        for node in graph:
            if node.name:
                if node.name in node_names:
                    node.name = fresh_name(node_names, node.name)
                    renamed += 1
                else:
                    node_names.add(node.name)
    return renamed


def aliases_training_batchnorm(old: ir.Value, new: ir.Value) -> bool:
    """True when reading `new` wherever `old` is read would give a training-mode
    BatchNormalization one value in two input slots. ORT 1.32 then computes wrong outputs
    (it writes the running statistics over the shared buffer); fresh training exports have a
    zero bias and a zero running mean, which deduplication would merge."""
    for use in old.uses():
        node = use.node
        if is_training_batchnorm(node) and any(v is new for i, v in enumerate(node.inputs) if i != use.idx):
            return True
    return False


def is_training_batchnorm(node: ir.Node) -> bool:
    """A BatchNormalization in training mode (training_mode=1, or running statistics as outputs)."""
    if node.op_type != "BatchNormalization" or not is_default_domain(node):
        return False
    return attr_int(node, "training_mode", 0) == 1 or sum(1 for o in node.outputs if o.name) > 1


# --- Constants, fills and constant expressions -------------------------------------------------

_NOT_CONSTANT_EXPRESSION = frozenset({
    "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
    "Bernoulli", "Dropout", "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
})
# A uniform tensor bigger than this is kept (or written) as ConstantOfShape, never stored:
# ORT computes a fill at session start for free, the file would carry every element.
FILL_MIN_BYTES = 128
_SHAPE_ONLY = frozenset({"Identity", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Expand"})


def is_fill(array: np.ndarray) -> bool:
    """A uniform array over FILL_MIN_BYTES: better as ConstantOfShape than as stored data."""
    return array.nbytes > FILL_MIN_BYTES and bool(np.all(array == array.flat[0]))


def fill_value(value: ir.Value | None) -> np.ndarray | None:
    """The scalar a value is filled with, if it is a ConstantOfShape (of a constant shape)
    seen through shape-only ops (Reshape, Unsqueeze, Expand, ...); else None."""
    while value is not None and not value.is_graph_input():
        producer = value.producer()
        if producer is None or not is_default_domain(producer):
            return None
        if producer.op_type == "ConstantOfShape":
            attr = producer.attributes.get("value")
            if not is_constant_expression(producer.inputs[0]) or (attr is not None and attr.is_ref()):
                return None
            return np.zeros((), np.float32) if attr is None else attr.as_tensor().numpy().reshape(-1)[0:1].reshape(())
        if producer.op_type not in _SHAPE_ONLY or not all(is_constant_expression(v) for v in producer.inputs[1:]):
            return None
        value = producer.inputs[0]
    return None


def is_constant_expression(value: ir.Value | None, max_nodes: int = 64) -> bool:
    """True if `value` is a constant, or is computed from constants only by deterministic
    default-domain nodes without subgraphs (e.g. ConstantOfShape of a constant shape).
    Q/DQ nodes do not count: a weight behind DequantizeLinear belongs to its QDQ pair."""
    stack, seen = [value], set()
    while stack:
        v = stack.pop()
        if v is None or id(v) in seen:
            continue
        seen.add(id(v))
        if v.is_graph_input():
            return False
        if v.const_value is not None:
            continue
        producer = v.producer()
        if (producer is None or not is_default_domain(producer) or len(seen) > max_nodes
                or producer.op_type in _NOT_CONSTANT_EXPRESSION
                or any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in producer.attributes.values())):
            return False
        stack.extend(producer.inputs)
    return True


def drop_if_unused(value: ir.Value | None) -> None:
    """Remove an initializer, or a constant-expression node chain (Constant, ConstantOfShape of
    a constant shape, ...), that nothing uses any more. Graph inputs and outputs stay."""
    stack = [value]
    while stack:
        v = stack.pop()
        if v is None or v.uses() or v.is_graph_output() or v.is_graph_input():
            continue
        owner, producer = v.graph, v.producer()
        if v.is_initializer() and owner is not None and owner.initializers.get(v.name) is v:
            owner.initializers.pop(v.name)
        elif (producer is not None and is_constant_expression(v)
              and not any(o.uses() or o.is_graph_output() for o in producer.outputs)):
            inputs = list(producer.inputs)
            producer.graph.remove(producer, safe=True)
            stack.extend(inputs)


def const_tensor(value: ir.Value) -> ir.TensorProtocol | None:
    if value.is_graph_input():
        return None
    try:
        return ir.convenience.get_const_tensor(value)
    except ValueError:  # a Constant with a sparse_value or a malformed one
        return None


def static_shape(value: ir.Value) -> tuple[int, ...] | None:
    """The value's shape if every dim is known: from its annotation, its constant, or the
    constant shape input of the ConstantOfShape producing it."""
    if value.shape is not None and all(isinstance(d, int) for d in value.shape):
        return tuple(value.shape)
    tensor = const_tensor(value)
    if tensor is not None:
        return tuple(tensor.shape)
    producer = value.producer()
    if producer is not None and producer.op_type == "ConstantOfShape" and is_default_domain(producer):
        dims = constant_array(producer.inputs[0])
        if dims is not None and dims.ndim == 1:
            return tuple(int(d) for d in dims)
    return None


def static_dtype(value: ir.Value) -> ir.DataType | None:
    """The value's element type: its annotation, its constant, or its ConstantOfShape's value."""
    if value.dtype is not None:
        return value.dtype
    tensor = const_tensor(value)
    if tensor is not None:
        return tensor.dtype
    producer = value.producer()
    if producer is not None and producer.op_type == "ConstantOfShape" and is_default_domain(producer):
        attr = producer.attributes.get("value")
        return ir.DataType.FLOAT if attr is None else attr.as_tensor().dtype
    return None
