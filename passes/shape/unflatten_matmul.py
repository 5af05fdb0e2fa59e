"""Turn flatten -> 2-D matmul -> unflatten round trips into one batched MatMul.

tf2onnx writes every Keras `Dense` on a rank-3 tensor as `Tensordot`:
`Reshape(x, [-1, K]) -> MatMul(W) -> Reshape(Concat(Shape(x)[:-1], [N]))`, with the shape
computed at run time (Shape, Cast, Gather, Concat, Cast); MXNet writes
`Flatten(x, axis=-1) -> Gemm(W, B, transB=1) -> Reshape(Concat(Slice(Shape(x)), [N]))`.
MatMul broadcasts over leading dims, so both are `MatMul(x, W)` (plus `Add(B)`). Besides
dropping the shape arithmetic, the rewrite lets ONNX Runtime fuse what follows (bias,
residual + LayerNorm, Gelu), which the Reshape in between blocks.

1. `Reshape(MatMul(Reshape(x, [-1 or prod, K]), W), s)` where W has rank 2 and `s`
   evaluates (symbolically: dims the model leaves dynamic stay names) to x's leading dims
   followed by N -> `MatMul(x, W)`.
2. `Reshape(Gemm(Flatten(x, axis=rank-1), W, B), s)` with alpha = beta = 1, transA = 0,
   a constant W (transposed into a new initializer when transB = 1; declined if another
   node reads W) and B of shape [N], [1, N] or scalar -> `Add(MatMul(x, W), B)`.

Declined: x of unknown rank or rank < 3, a last dim that is not static and equal to K,
a flattened or matmul value read by another node, an `s` that cannot be proven equal.
Scope: the main graph and If/Loop/Scan bodies; functions are skipped. The final Reshape's
output value is kept (names and graph outputs unchanged); the old nodes go dead.
"""

from __future__ import annotations

__all__ = ["UnflattenMatMulPass"]

import collections
import logging

import numpy as np
import onnx_ir as ir

from graphopt.core.patterns import (attr_int, constant_array, fresh_name, is_default_domain, model_names, opset_version,
                               single_consumer)
from graphopt.core.pipeline import CountedPassResult
from graphopt.passes.shape._shapes import evaluate_model, infer_dims

logger = logging.getLogger(__name__)

_MAX_ROUNDS = 8


def _producer(value: ir.Value | None, op_type: str) -> ir.Node | None:
    node = value.producer() if value is not None else None
    if node is None or node.op_type != op_type or not is_default_domain(node):
        return None
    return node


class UnflattenMatMulPass(ir.passes.InPlacePass):
    """Reshape/Flatten -> MatMul/Gemm -> Reshape becomes one MatMul over x's leading dims."""

    def call(self, model: ir.Model) -> CountedPassResult:
        counters: collections.Counter = collections.Counter()
        for _ in range(_MAX_ROUNDS):  # a rewrite can make the next layer's shapes provable
            outer = [n for n in ir.traversal.RecursiveGraphIterator(model.graph)
                     if n.op_type == "Reshape" and is_default_domain(n) and len(n.inputs) > 1
                     and (_producer(n.inputs[0], "MatMul") or _producer(n.inputs[0], "Gemm"))]
            if not outer:
                break
            dims = infer_dims(model)
            env = evaluate_model(model, dims, opset_version(model))
            taken = model_names(model)
            done = 0
            for node in outer:
                kind = self._rewrite(node, dims, env, taken)
                if kind:
                    counters[kind] += 1
                    done += 1
            if not done:
                break
        if counters:
            logger.info("unflattened %s", dict(counters))
        return CountedPassResult(model, bool(counters), dict(counters))

    def _rewrite(self, reshape: ir.Node, dims, env, taken: set[str]) -> str | None:
        mm = reshape.inputs[0].producer()
        if single_consumer(mm.outputs[0]) is not reshape:
            return None
        flat_node = mm.inputs[0].producer() if mm.inputs[0] is not None else None
        if flat_node is None or flat_node.graph is not reshape.graph or not is_default_domain(flat_node):
            return None  # the flattened value may feed other MatMuls (Q, K, V): each is rewritten alone
        x = flat_node.inputs[0]
        x_dims = dims.of(x)
        w = mm.inputs[1]
        w_dims = dims.of(w)
        if x_dims is None or len(x_dims) < 3 or w_dims is None or len(w_dims) != 2:
            return None
        transposed = mm.op_type == "Gemm" and attr_int(mm, "transB", 0)
        k, n = (w_dims[1], w_dims[0]) if transposed else (w_dims[0], w_dims[1])
        if not isinstance(k, int) or not isinstance(n, int):
            return None
        if x_dims[-1] != k and not (flat_node.op_type == "Flatten" and x_dims[-1] is not None
                                    and not isinstance(x_dims[-1], int)):
            return None  # a Flatten to [*, K] feeding a K-row matrix proves x's last dim is K
        if not self._flattens(flat_node, (*x_dims[:-1], k), env):
            return None
        target = env.get(id(reshape.inputs[1]))
        if target is None:
            const = constant_array(reshape.inputs[1])
            if const is None:
                return None
            target_elems = [int(v) for v in const.reshape(-1)]
        else:
            target_elems = target.elems
        if list(target_elems) != [*x_dims[:-1], n] or any(e is None for e in target_elems):
            return None
        graph = reshape.graph
        if mm.op_type == "MatMul":
            new = ir.Node("", "MatMul", [x, w], name=mm.name)
            graph.insert_before(reshape, new)
            result = new.outputs[0]
            kind = "tensordot_unflattened"
        else:
            result = self._gemm(mm, reshape, x, w, n, taken)
            if result is None:
                return None
            kind = "flatten_gemm_unflattened"
        out = reshape.outputs[0]
        if out.type is not None and out.dtype is not None:
            result.type, result.shape = out.type, out.shape
        name = out.name
        out.replace_all_uses_with(result, replace_graph_outputs=True)
        graph.remove(reshape, safe=True)
        result.name = name
        logger.debug("%s %s -> MatMul(%s)", kind, name, x.name)
        return kind

    @staticmethod
    def _flattens(node: ir.Node, x_dims, env) -> bool:
        """The node turns x [d0, ..., K] into [d0 * ... , K]."""
        rank = len(x_dims)
        if node.op_type == "Flatten":
            axis = attr_int(node, "axis", 1)
            return axis in (-1, rank - 1)
        if node.op_type != "Reshape" or attr_int(node, "allowzero", 0):
            return False
        vec = env.get(id(node.inputs[1]))
        elems = vec.elems if vec is not None else None
        if elems is None:
            const = constant_array(node.inputs[1])
            elems = None if const is None else [int(v) for v in const.reshape(-1)]
        if elems is None or len(elems) != 2 or elems[1] != x_dims[-1]:
            return False
        lead = x_dims[:-1]
        return elems[0] == -1 or (all(isinstance(d, int) for d in lead) and elems[0] == int(np.prod(lead)))

    @staticmethod
    def _gemm(gemm: ir.Node, reshape: ir.Node, x, w, n: int, taken: set[str]) -> ir.Value | None:
        if attr_int(gemm, "transA", 0) or gemm.attributes.get_float("alpha", 1.0) != 1.0 \
                or gemm.attributes.get_float("beta", 1.0) != 1.0:
            return None
        graph = reshape.graph
        if attr_int(gemm, "transB", 0):
            w_data = constant_array(w)
            if w_data is None or len({id(u.node) for u in w.uses()}) != 1 or w.is_graph_output():
                return None
            name = fresh_name(taken, f"{w.name}_t")
            w = ir.Value(name=name, shape=ir.Shape(w_data.T.shape), type=ir.TensorType(w.dtype),
                         const_value=ir.tensor(np.ascontiguousarray(w_data.T), name=name))
            graph.register_initializer(w)
        bias = gemm.inputs[2] if len(gemm.inputs) > 2 else None
        if bias is not None:
            b_shape = bias.shape
            if b_shape is None or [d for d in b_shape if d != 1] not in ([], [n]) or len(b_shape) > 2 \
                    or (len(b_shape) == 2 and b_shape[0] != 1):
                return None
        mm = ir.Node("", "MatMul", [x, w], name=gemm.name)
        graph.insert_before(reshape, mm)
        if bias is None:
            return mm.outputs[0]
        add = ir.Node("", "Add", [mm.outputs[0], bias], name=f"{gemm.name}_bias" if gemm.name else None)
        graph.insert_before(reshape, add)
        return add.outputs[0]
