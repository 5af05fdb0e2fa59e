"""Dynamic INT8 for MatMul/Gemm weights (transformer encoders, MLPs): no calibration data.

Each MatMul with a constant float32 2-D weight [K, N], and each Gemm with transA=0 and a
constant 2-D weight (transB folded into the stored weight, alpha into the scale, beta*C
added after), becomes the standard-ONNX chain ORT fuses into DynamicQuantizeMatMul:

    DynamicQuantizeLinear(A) -> (A_q uint8, a_scale, a_zp)     # range measured per run
    MatMulInteger(A_q, W_q, a_zp, w_zp) -> int32
    Cast(float) * (a_scale * w_scale[N])  (+ bias)

Weights are symmetric per output column (int8, +-127; +-64 under the reduced scheme, which
avoids VPMADDUBSW saturation on AVX2 without VNNI). One DynamicQuantizeLinear is shared by
every layer that reads the same activation. Declined: non-constant or non-2-D weights,
other dtypes, Gemm with transA=1 or a bias that does not broadcast as [N], nodes in
`exclude`, custom domains. Subgraphs and functions are left alone; graph I/O names stay.
"""

from __future__ import annotations

__all__ = ["QuantizeDynamicPass", "dynamic_candidates"]

import logging

import numpy as np
import onnx_ir as ir

from graphopt.core.patterns import attr_int, constant_array, fresh_name, is_default_domain, model_names
from graphopt.core.pipeline import CountedPassResult
from graphopt.passes.quantize.quantize_scheme import SCHEMES, Int8Scheme, quantize_weight

logger = logging.getLogger(__name__)


def _weight(node: ir.Node) -> tuple[np.ndarray, np.ndarray | None, float] | None:
    """(weight as [K, N], bias [N] or None, alpha) if the node qualifies, else None."""
    if not is_default_domain(node) or node.op_type not in ("MatMul", "Gemm") or len(node.inputs) < 2:
        return None
    x, w = node.inputs[0], node.inputs[1]
    if x is None or x.dtype not in (None, ir.DataType.FLOAT):
        return None
    weight = constant_array(w)
    if weight is None or weight.dtype != np.float32 or weight.ndim != 2:
        return None
    if node.op_type == "MatMul":
        return weight, None, 1.0
    if attr_int(node, "transA", 0):
        return None
    alpha = node.attributes.get_float("alpha", 1.0)
    beta = node.attributes.get_float("beta", 1.0)
    if attr_int(node, "transB", 0):
        weight = np.ascontiguousarray(weight.T)
    bias = None
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        c = constant_array(node.inputs[2])
        if c is None or c.dtype != np.float32 or c.size not in (1, weight.shape[1]) or c.ndim > 2:
            return None
        bias = (beta * c.reshape(-1)).astype(np.float32)
        if bias.size == 1:
            bias = np.full(weight.shape[1], bias[0], dtype=np.float32)
    return weight, bias, alpha


def dynamic_candidates(model: ir.Model) -> list[str]:
    return [n.name for n in model.graph if _weight(n) is not None]


class QuantizeDynamicPass(ir.passes.InPlacePass):
    """Replace qualifying MatMul/Gemm nodes by the dynamic-quantization chain (see module doc)."""

    def __init__(self, scheme: Int8Scheme | str = "u8s8-reduced", exclude=frozenset()):
        super().__init__()
        self.scheme = SCHEMES[scheme] if isinstance(scheme, str) else scheme
        self.exclude = frozenset(exclude)

    def call(self, model: ir.Model) -> CountedPassResult:
        graph = model.graph
        taken = model_names(model) | {n.name for n in graph.all_nodes() if n.name}
        shared: dict[int, tuple[ir.Value, ir.Value, ir.Value]] = {}
        weight_scheme = Int8Scheme(self.scheme.name, np.uint8, np.int8, self.scheme.weight_qmax)
        count = 0

        def init(base: str, array: np.ndarray) -> ir.Value:
            name = fresh_name(taken, base)
            value = ir.Value(name=name, const_value=ir.tensor(array, name=name))
            value.shape, value.dtype = ir.Shape(array.shape), ir.DataType.from_numpy(array.dtype)
            graph.register_initializer(value)
            return value

        def new(op: str, inputs, outs: list[str], at: ir.Node | None, **attrs) -> ir.Node:
            outputs = [ir.Value(name=fresh_name(taken, o)) for o in outs]
            node = ir.Node("", op, inputs, attributes=[ir.AttrInt64(k, v) for k, v in attrs.items()],
                           outputs=outputs, name=fresh_name(taken, f"{outs[0]}_{op}"))
            node.metadata_props["pkg.graphopt.pass"] = "quantize_dynamic"
            if at is not None:
                graph.insert_before(at, node)
            elif inputs[0].producer() is not None and inputs[0].producer().graph is graph:
                graph.insert_after(inputs[0].producer(), node)
            else:
                graph.insert_before(next(iter(graph)), node)
            return node

        for node in list(graph):
            found = _weight(node)
            if found is None or node.name in self.exclude:
                continue
            weight, bias, alpha = found
            x = node.inputs[0]
            if id(x) not in shared:
                dql = new("DynamicQuantizeLinear", [x], [f"{x.name}_quantized", f"{x.name}_scale",
                                                         f"{x.name}_zero_point"], None)
                shared[id(x)] = tuple(dql.outputs)
            xq, xs, xzp = shared[id(x)]
            q, scale, _ = quantize_weight(weight, 1, weight_scheme)
            base = node.inputs[1].name or node.name
            wq = init(f"{base}_quantized", q)
            wzp = init(f"{base}_zero_point", np.zeros(q.shape[1], dtype=np.int8))
            ws = init(f"{base}_scale", (scale * np.float32(alpha)).astype(np.float32))
            out = node.outputs[0]
            mul_scale = new("Mul", [xs, ws], [f"{out.name}_scale"], node)
            mmi = new("MatMulInteger", [xq, wq, xzp, wzp], [f"{out.name}_int32"], node)
            as_float = new("Cast", [mmi.outputs[0]], [f"{out.name}_int32_float"], node, to=ir.DataType.FLOAT.value)
            scaled = new("Mul", [as_float.outputs[0], mul_scale.outputs[0]], [f"{out.name}_scaled"], node)
            result = scaled.outputs[0]
            if bias is not None:
                result = new("Add", [result, init(f"{base}_bias", bias)], [f"{out.name}_biased"], node).outputs[0]
            result.type = None if out.type is None else ir.TensorType(out.dtype)
            result.shape = None if out.shape is None else ir.Shape(list(out.shape))
            name = out.name
            graph_output = out.is_graph_output()
            out.replace_all_uses_with(result, replace_graph_outputs=True)
            graph.remove(node, safe=True)
            if graph_output:
                result.name = name
            count += 1
            logger.debug("dynamic int8: %s (%s, %dx%d)", node.name, node.op_type, *weight.shape)
        for name in [n for n, v in graph.initializers.items() if not v.uses() and not v.is_graph_input()
                     and not v.is_graph_output()]:
            del graph.initializers[name]
        logger.info("dynamic int8: %d MatMul/Gemm quantized", count)
        return CountedPassResult(model, modified=bool(count), counters={"layers_quantized": count})
