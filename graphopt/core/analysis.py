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
import onnx
import onnx_ir as ir
from onnx_ir.passes.common import _c_api_utils  # the >2 GB-safe proto round trip

logger = logging.getLogger(__name__)


Shapes = dict[str, list]  # value name -> dims (int, or str for a symbolic/unknown dim)


def _dims(shapes: Shapes, value: ir.Value | None) -> list[int] | None:
    if value is None or value.name not in shapes:
        return None
    return [d if isinstance(d, int) else 1 for d in shapes[value.name]]


def value_signature(value: ir.Value) -> dict:
    dims = None if value.shape is None else [d if isinstance(d, int) else str(d.value or "?") for d in value.shape]
    return {"name": value.name, "dtype": value.dtype.name if value.dtype is not None else None, "shape": dims}


def _node_macs(node: ir.Node, shapes: Shapes) -> int | None:
    op = node.op_type
    if node.domain not in ("", "ai.onnx"):
        return None
    if op in ("Conv", "ConvTranspose"):
        xd, wd, yd = (_dims(shapes, v) for v in (node.inputs[0], node.inputs[1], node.outputs[0]))
        if xd is None or wd is None or yd is None or len(yd) < 2 or len(wd) < 2:
            return None
        kernel = math.prod(wd[2:])
        if op == "Conv":
            return yd[0] * yd[1] * math.prod(yd[2:]) * wd[1] * kernel
        return xd[0] * xd[1] * math.prod(xd[2:]) * wd[1] * kernel
    if op in ("Gemm", "MatMul"):
        ad, yd = _dims(shapes, node.inputs[0]), _dims(shapes, node.outputs[0])
        if not ad or yd is None:
            return None
        k = ad[0] if op == "Gemm" and node.attributes.get_int("transA", 0) else ad[-1]
        return math.prod(yd) * k
    return None


def _infer_shapes(model: ir.Model) -> Shapes:
    """Shapes of every main-graph value from onnx shape inference, without touching the model.

    Runs on a proto stripped of large initializers (onnx-ir's >2 GB-safe round trip), so no
    weight is copied; the model's own annotations are the fallback when inference fails.
    """
    def infer(proto: onnx.ModelProto) -> onnx.ModelProto:
        return onnx.shape_inference.infer_shapes(proto, strict_mode=False, data_prop=False)

    shapes: Shapes = {}
    try:
        inferred = _c_api_utils.call_onnx_api(infer, model).graph
        infos = [*inferred.input, *inferred.value_info, *inferred.output]
        for info in infos:
            t = info.type.tensor_type
            if info.type.HasField("tensor_type") and t.HasField("shape"):
                shapes[info.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
    except Exception as e:  # noqa: BLE001 - shapes only feed the report; missing ones are reported as unknown
        logger.warning("shape inference failed, MACs may be incomplete: %s", e)
    for node in model.graph:
        for v in [*node.inputs, *node.outputs]:
            if v is not None and v.name not in shapes and v.shape is not None:
                shapes[v.name] = [d if isinstance(d, int) else str(d) for d in v.shape]
    return shapes


def analyze(model: ir.Model) -> dict:
    """A JSON-ready summary; the model is not modified."""
    shapes = _infer_shapes(model)
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
            m = _node_macs(node, shapes) if node.graph is graph else None
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

