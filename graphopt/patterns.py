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
    "CHANNEL_LAYERS",
    "FILL_MIN_BYTES",
    "fill_value",
    "is_fill",
    "ConstantAlgebra",
    "drop_if_unused",
    "fold_output_channel_affine",
    "is_constant_expression",
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


# --- Folding a per-output-channel affine map into a layer's weights -------------------------
# Shared by passes/fold_batchnorm.py and passes/fold_affine.py.

_NOT_CONSTANT_EXPRESSION = frozenset({
    "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
    "Bernoulli", "Dropout", "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
})
CHANNEL_LAYERS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
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


class ConstantAlgebra:
    """Arithmetic on constants that stays numpy while it can and becomes nodes when it must.

    An operand is an np.ndarray (computed now, in float64), an ir.Value (a constant expression
    left for ORT to fold when the session starts, so big weights are never materialized), or
    None (the identity: x*None = x, x+None = x). New initializers and nodes get model-wide fresh
    names. New nodes are collected in `nodes` for the caller to insert; with `defer=True` new
    initializers are held back too, and `commit(before)` registers and inserts everything, so
    an abandoned computation leaves the graph untouched.
    """

    def __init__(self, graph: ir.Graph, taken: set[str], dtype: ir.DataType, tag: str, defer: bool = False):
        self.graph, self.taken, self.dtype, self.tag, self.defer = graph, taken, dtype, tag, defer
        self.nodes: list[ir.Node] = []
        self.pending: list[ir.Value] = []

    def initializer(self, array: np.ndarray, base: str) -> ir.Value:
        name = fresh_name(self.taken, base)
        if not self.defer:
            return add_initializer(self.graph, name, array, name_is_fresh=True)
        value = ir.Value(name=name, const_value=ir.tensor(array, name=name), shape=ir.Shape(array.shape),
                         type=ir.TensorType(ir.DataType.from_numpy(array.dtype)))
        self.pending.append(value)
        return value

    def commit(self, before: ir.Node) -> None:
        for value in self.pending:
            self.graph.register_initializer(value)
        if self.nodes:
            self.graph.insert_before(before, self.nodes)
        self.pending, self.nodes = [], []

    def value(self, x, base: str) -> ir.Value:
        """An ir.Value for x: arrays become new initializers of the target dtype, except that a
        fill (`is_fill`) becomes a ConstantOfShape node (a fill costs no file space)."""
        if isinstance(x, ir.Value):
            return x
        array = np.asarray(x)
        if array.dtype.kind == "f":
            array = array.astype(self.dtype.numpy(), copy=False)
        if is_fill(array):
            shape = self.initializer(np.array(array.shape, np.int64), f"{base}_shape")
            fill = ir.tensor(array.reshape(-1)[:1])
            return self._node("ConstantOfShape", [shape], {"value": fill}, base)
        return self.initializer(array, base)

    def _node(self, op_type: str, inputs: list, attributes=None, base: str | None = None) -> ir.Value:
        out = ir.Value(name=fresh_name(self.taken, base or f"{self.tag}_{op_type.lower()}"))
        inputs = [self.value(x, f"{self.tag}_const") for x in inputs]
        node = ir.node(op_type, inputs, attributes, outputs=[out], name=fresh_name(self.taken, f"{self.tag}_{op_type}"))
        node.metadata_props["pkg.graphopt.pass"] = self.tag
        self.nodes.append(node)
        return out

    def _binary(self, op_type: str, a, b, fn):
        if a is None or b is None:
            return b if a is None else a
        if isinstance(a, ir.Value) or isinstance(b, ir.Value):
            simpler = self._fold_into_producer(op_type, a, b, fn) if op_type in ("Mul", "Add") else None
            return simpler if simpler is not None else self._node(op_type, [a, b])
        return fn(np.asarray(a, np.float64), np.asarray(b, np.float64))

    def _fold_into_producer(self, op_type: str, a, b, fn) -> ir.Value | None:
        """Value op array, without stacking nodes when the Value is itself
        ConstantOfShape(s, v)        -> ConstantOfShape(s, v op c) for a size-1 c, or
        x op2 c1 (op2 == op, c1 an array) -> x op (c1 op c)."""
        value, array = (a, b) if isinstance(a, ir.Value) else (b, a)
        producer = value.producer()
        if isinstance(array, ir.Value) or producer is None or not is_default_domain(producer):
            return None
        array = np.asarray(array, np.float64)
        shape = static_shape(value)
        if producer.op_type == "ConstantOfShape" and array.size == 1 and static_dtype(value) == self.dtype \
                and (array.ndim == 0 or (shape is not None and array.ndim <= len(shape))) \
                and is_constant_expression(producer.inputs[0]):
            new = np.asarray(fn(np.float64(fill_value(value)), array.reshape(()))).astype(self.dtype.numpy())
            return self._node("ConstantOfShape", [producer.inputs[0]], {"value": ir.tensor(new.reshape(1))})
        if producer.op_type == op_type and len(producer.inputs) == 2 and shape is not None:
            for x, c in (producer.inputs, reversed(producer.inputs)):
                inner = constant_array(c)
                if inner is not None and inner.dtype.kind == "f" and x is not None and x.shape is not None:
                    combined = fn(inner.astype(np.float64), array)
                    if combined.ndim <= len(shape):
                        return self._node(op_type, [x, combined])
        return None

    def mul(self, a, b):
        return self._binary("Mul", a, b, np.multiply)

    def add(self, a, b):
        return self._binary("Add", a, b, np.add)

    def sub(self, a, b):
        if b is None:
            return a
        if a is None:
            return self._node("Neg", [b]) if isinstance(b, ir.Value) else -np.asarray(b, np.float64)
        return self._binary("Sub", a, b, np.subtract)

    def div(self, a, b):
        if isinstance(a, ir.Value) or isinstance(b, ir.Value):
            return self._node("Div", [a, b])
        return np.asarray(a, np.float64) / np.asarray(b, np.float64)

    def sqrt(self, a):
        return self._node("Sqrt", [a]) if isinstance(a, ir.Value) else np.sqrt(np.asarray(a, np.float64))

    def reshape(self, a, shape: list[int]):
        if a is None or not isinstance(a, ir.Value):
            return None if a is None else np.reshape(a, shape)
        return self._node("Reshape", [a, self.initializer(np.array(shape, np.int64), f"{self.tag}_shape")])


def _const_tensor(value: ir.Value) -> ir.TensorProtocol | None:
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
    tensor = _const_tensor(value)
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
    tensor = _const_tensor(value)
    if tensor is not None:
        return tensor.dtype
    producer = value.producer()
    if producer is not None and producer.op_type == "ConstantOfShape" and is_default_domain(producer):
        attr = producer.attributes.get("value")
        return ir.DataType.FLOAT if attr is None else attr.as_tensor().dtype
    return None


_FLOATS = (ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16, ir.DataType.BFLOAT16)


def fold_output_channel_affine(node: ir.Node, scale, shift, taken: set[str], tag: str) -> ir.Value | None:
    """Make `node` compute scale * node(x) + shift per output channel, in its weight and bias.

    `node` is a Conv, ConvTranspose, Gemm or MatMul whose weight (input 1) is a constant or a
    constant expression. `scale`/`shift` are arrays of shape [C] or of size 1, ir.Values
    holding a [C] constant expression, or None. Weight: W * scale along the output channels
    (Conv [M, C/g, k..]: axis 0; ConvTranspose [C_in, C_out/g, k..]: axis 1 within each group;
    Gemm: the columns of op(B); MatMul: the columns of W). An array weight gives a new
    initializer; a constant-expression weight, or a Value scale, gives Mul/Reshape nodes that
    ORT folds at session start (nothing big is materialized). Bias: b * scale + shift (Gemm:
    beta * C, then beta becomes 1); a MatMul gaining a bias becomes a Gemm, which needs a 2-D
    input. Returns the value now carrying the result, or None, with nothing changed, if it
    cannot. The caller checks that the node's output has a single consumer and that its
    per-channel axis is the layer's output channel axis. New nodes go before `node`; when a
    Value operand is produced after it, the caller must sort the graph.
    """
    op = node.op_type
    if op not in CHANNEL_LAYERS or not is_default_domain(node) or len(node.outputs) != 1 or len(node.inputs) < 2:
        return None
    if op == "Gemm" and "broadcast" in node.attributes:
        return None  # opset < 7 Gemm: C must have the exact output shape
    w = node.inputs[1]
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    if not is_constant_expression(w) or (bias is not None and not is_constant_expression(bias)):
        return None
    w_array, w_shape, dtype = constant_array(w), static_shape(w), static_dtype(w)
    if dtype not in _FLOATS or any(isinstance(v, ir.Value) and static_dtype(v) not in (None, dtype)
                                   for v in (scale, shift, bias)):
        return None
    group = attr_int(node, "group", 1)
    trans_b = op == "Gemm" and attr_int(node, "transB", 0) == 1
    if op in ("Gemm", "MatMul"):
        rank = 2
    elif w_shape is not None:
        rank = len(w_shape)
    else:
        kernel = attr_ints(node, "kernel_shape")
        rank = None if kernel is None else len(kernel) + 2
    if rank is None or (w_shape is not None and len(w_shape) != rank):
        return None
    if w_shape is None:
        channels = None
    elif op == "ConvTranspose":
        channels = w_shape[1] * group
    else:
        channels = w_shape[0] if op == "Conv" or trans_b else w_shape[1]
    for operand in (scale, shift):
        if isinstance(operand, np.ndarray) and operand.size != 1 and operand.shape != (channels,):
            return None
    if op == "ConvTranspose" and group > 1 and scale is not None:
        if not isinstance(scale, np.ndarray) or w_shape is None:
            return None
        full = np.broadcast_to(scale, (channels,)).reshape(group, 1, w_shape[1])
        w_scale = np.repeat(full, w_shape[0] // group, axis=1).reshape(w_shape[0], w_shape[1], *[1] * (rank - 2))
    elif scale is not None:
        layout = {"Conv": [-1] + [1] * (rank - 1), "ConvTranspose": [1, -1] + [1] * (rank - 2),
                  "Gemm": [-1, 1] if trans_b else [1, -1], "MatMul": [1, -1]}[op]
        w_scale = np.reshape(scale, layout) if isinstance(scale, np.ndarray) else scale
    else:
        w_scale = None
    x = node.inputs[0]
    to_gemm = op == "MatMul" and shift is not None
    if to_gemm and (not any(v is not None and v.shape is not None and len(v.shape) == 2 for v in (x, node.outputs[0]))
                    or dtype == ir.DataType.BFLOAT16):
        return None
    beta = node.attributes["beta"].as_float() if op == "Gemm" and "beta" in node.attributes else 1.0
    symbolic = isinstance(scale, ir.Value) or isinstance(shift, ir.Value)
    b_array = None if symbolic else constant_array(bias)
    b_operand = None if bias is None or beta == 0 else (b_array if b_array is not None else bias)
    alg = ConstantAlgebra(node.graph, taken, dtype, tag)  # arrays only: no graph change yet
    numeric_bias = not symbolic and not isinstance(b_operand, ir.Value)
    if numeric_bias:
        new_b = _new_bias(alg, b_operand, beta, scale, shift)
        if op in ("Conv", "ConvTranspose") and new_b is not None and new_b.shape != (channels,):
            if channels is None:
                return None
            new_b = np.broadcast_to(new_b, (channels,))
    # Checks are done: from here on the graph changes.
    if not numeric_bias:
        new_b = _new_bias(alg, b_operand, beta, scale, shift)
    if w_scale is not None:
        if w_array is not None and isinstance(w_scale, np.ndarray):
            work = np.float32 if dtype in (ir.DataType.FLOAT16, ir.DataType.BFLOAT16) else w_array.dtype
            new_w = (w_array.astype(work, copy=False) * w_scale.astype(work, copy=False)).astype(
                w_array.dtype, copy=False)
        else:
            mult = alg.reshape(w_scale, layout) if isinstance(w_scale, ir.Value) else w_scale
            new_w = alg.mul(w, mult)
        w_value = alg.value(new_w, f"{w.name}_{tag}")
        if w_value.shape is None and w_shape is not None:  # keep the weight's shape known to later folds
            w_value.shape, w_value.dtype = ir.Shape(w_shape), dtype
        node.replace_input_with(1, w_value)
    result = node.outputs[0]
    if new_b is not None:
        b_value = alg.value(new_b, f"{(bias or w).name}_{tag}_bias")
        if to_gemm:
            result = ir.Value(name=fresh_name(taken, f"{node.outputs[0].name}_gemm"),
                              shape=node.outputs[0].shape and node.outputs[0].shape.copy(), type=node.outputs[0].type)
            gemm = ir.node("Gemm", [x, node.inputs[1], b_value], outputs=[result], name=fresh_name(taken, f"{tag}_Gemm"))
            gemm.metadata_props["pkg.graphopt.pass"] = tag
            alg.nodes.append(gemm)
        else:
            if len(node.inputs) < 3:
                node.resize_inputs(3)
            node.replace_input_with(2, b_value)
            if op == "Gemm" and beta != 1.0:
                node.attributes["beta"] = ir.Attr("beta", ir.AttributeType.FLOAT, 1.0)
    if alg.nodes:
        node.graph.insert_before(node, alg.nodes)
    if to_gemm:
        node.outputs[0].replace_all_uses_with(result)
        node.graph.remove(node, safe=True)
    drop_if_unused(w)
    drop_if_unused(bias)
    return result


def _new_bias(alg: ConstantAlgebra, bias, beta: float, scale, shift):
    """beta * bias * scale + shift, where a missing bias is 0 (not the identity)."""
    if bias is None:
        return shift
    return alg.add(alg.mul(alg.mul(bias, np.float64(beta) if beta != 1 else None), scale), shift)
