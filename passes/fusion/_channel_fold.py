"""Folding a per-output-channel affine map y = scale * layer(x) + shift into the layer's weights.

Shared by passes/fusion/fold_batchnorm.py and passes/fusion/fold_affine.py. `ConstantAlgebra` does the
arithmetic on constants: numpy while the operands are plain arrays, ONNX nodes (folded by ORT
at session start) while they are constant expressions such as ConstantOfShape fills, so big
weights are never materialized here. `fold_output_channel_affine` rewrites Conv,
ConvTranspose, Gemm and MatMul weights and biases, or declines (returns None) and leaves the
graph untouched.
"""

from __future__ import annotations

__all__ = ["CHANNEL_LAYERS", "ConstantAlgebra", "fold_output_channel_affine"]

import numpy as np
import onnx_ir as ir

from graphopt.core.patterns import add_initializer, attr_int, attr_ints, constant_array, drop_if_unused, fill_value, fresh_name, is_constant_expression, is_default_domain, is_fill, static_dtype, static_shape

CHANNEL_LAYERS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


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
