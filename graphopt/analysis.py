"""What a model holds: versions, op histogram, parameters, MACs/FLOPs, I/O signature, subgraphs.

MACs are counted for Conv, ConvTranspose, Gemm and MatMul from inferred shapes; a dynamic dim
counts as 1 (the figure is then per unit of that dim, and `dynamic_dims` says which).
"""

from __future__ import annotations

__all__ = ["analyze", "value_signature"]

import collections
import logging
import math

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

logger = logging.getLogger(__name__)


def _dims(value: ir.Value | None) -> list[int] | None:
    if value is None or value.shape is None:
        return None
    return [d if isinstance(d, int) else 1 for d in value.shape]


def _known(value: ir.Value | None) -> bool:
    return value is not None and value.shape is not None


def value_signature(value: ir.Value) -> dict:
    dims = None if value.shape is None else [d if isinstance(d, int) else str(d.value or "?") for d in value.shape]
    return {"name": value.name, "dtype": value.dtype.name if value.dtype is not None else None, "shape": dims}


def _node_macs(node: ir.Node) -> int | None:
    op = node.op_type
    if node.domain not in ("", "ai.onnx"):
        return None
    if op in ("Conv", "ConvTranspose"):
        x, w, y = node.inputs[0], node.inputs[1], node.outputs[0]
        if not (_known(w) and _known(y) and _known(x)):
            return None
        wd, yd, xd = _dims(w), _dims(y), _dims(x)
        if len(yd) < 2 or len(wd) < 2:
            return None
        kernel = math.prod(wd[2:])
        if op == "Conv":
            return yd[0] * yd[1] * math.prod(yd[2:]) * wd[1] * kernel
        return xd[0] * xd[1] * math.prod(xd[2:]) * wd[1] * kernel
    if op == "Gemm":
        a, y = node.inputs[0], node.outputs[0]
        if not (_known(a) and _known(y)):
            return None
        ad = _dims(a)
        trans_a = node.attributes.get_int("transA", 0)
        k = ad[0] if trans_a else ad[-1]
        return math.prod(_dims(y)) * k
    if op == "MatMul":
        a, y = node.inputs[0], node.outputs[0]
        if not (_known(a) and _known(y)) or not _dims(a):
            return None
        return math.prod(_dims(y)) * _dims(a)[-1]
    return None


def analyze(model: ir.Model, *, infer_shapes: bool = True) -> dict:
    """A JSON-ready summary. With `infer_shapes`, runs onnx shape inference on the model first
    (it only annotates value shapes)."""
    if infer_shapes:
        _infer(model)
    graph = model.graph
    histogram: collections.Counter = collections.Counter()
    macs = 0
    macs_unknown = 0
    custom_ops = set()
    for node in graph.all_nodes():
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        histogram[key] += 1
        if node.domain not in ("", "ai.onnx", "com.microsoft"):
            custom_ops.add(key)
        if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            m = _node_macs(node)
            if m is None:
                macs_unknown += 1
            else:
                macs += m
    params = 0
    param_bytes = 0
    for g in (graph, *graph.subgraphs()):
        for value in g.initializers.values():
            if value.const_value is not None:
                params += int(np.prod(value.const_value.shape.numpy(), dtype=np.int64)) if value.const_value.shape else 1
                param_bytes += value.const_value.nbytes
    for node in graph.all_nodes():
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and "value" in node.attributes:
            tensor = node.attributes["value"].as_tensor()
            params += int(math.prod(tensor.shape.numpy())) if tensor.shape else 1
            param_bytes += tensor.nbytes
    inputs = [v for v in graph.inputs if v.name not in graph.initializers]
    dynamic = sorted({str(d.value) if d.value else "?" for v in [*inputs, *graph.outputs] if v.shape is not None
                      for d in v.shape if not isinstance(d, int)})
    return {
        "ir_version": model.ir_version,
        "producer": f"{model.producer_name or ''} {model.producer_version or ''}".strip(),
        "opsets": dict(sorted(model.opset_imports.items())),
        "nodes": sum(histogram.values()),
        "op_histogram": dict(histogram.most_common()),
        "parameters": params,
        "parameter_bytes": param_bytes,
        "macs": macs,
        "flops": 2 * macs,
        "macs_unknown_nodes": macs_unknown,
        "inputs": [value_signature(v) for v in inputs],
        "outputs": [value_signature(v) for v in graph.outputs],
        "initializers_as_inputs": sum(1 for v in graph.inputs if v.name in graph.initializers),
        "dynamic_dims": dynamic,
        "subgraphs": sum(1 for _ in graph.subgraphs()),
        "functions": len(model.functions),
        "custom_ops": sorted(custom_ops),
    }


def _infer(model: ir.Model) -> None:
    try:
        common_passes.ShapeInferencePass(data_prop=False)(model)
    except Exception as e:  # noqa: BLE001 - shapes only feed the report; missing ones are reported as unknown
        logger.warning("shape inference failed, MACs may be incomplete: %s", e)
