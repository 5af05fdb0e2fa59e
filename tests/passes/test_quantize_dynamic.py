"""QuantizeDynamicPass: MatMul/Gemm weights to int8 in the form ORT fuses into DynamicQuantizeMatMul.

Tolerance: SNR of at least 30 dB against float (per-column int8 weights, per-run uint8
activations), run with ORT's full optimizations.
"""

from __future__ import annotations

import collections
import pathlib
import tempfile

import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper

from graphopt.core.accuracy import snr_db
from graphopt.passes.quantize.quantize_dynamic import QuantizeDynamicPass, dynamic_candidates

RNG = np.random.default_rng(0)


def make_model(nodes, inputs, outputs, inits) -> ir.Model:
    graph = oh.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return ir.serde.deserialize_model(onnx.shape_inference.infer_shapes(
        oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])))


def vi(name, shape):
    return oh.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def mlp():
    nodes = [oh.make_node("MatMul", ["x", "w1"], ["m1"], name="fc1"),
             oh.make_node("Add", ["m1", "b1"], ["a1"], name="bias1"),
             oh.make_node("Relu", ["a1"], ["r1"], name="relu"),
             oh.make_node("MatMul", ["r1", "w2"], ["y"], name="fc2"),
             oh.make_node("MatMul", ["r1", "w3"], ["z"], name="fc3")]
    inits = {"w1": RNG.standard_normal((32, 64)).astype(np.float32) * 0.2, "b1": np.full(64, 0.1, np.float32),
             "w2": RNG.standard_normal((64, 16)).astype(np.float32) * 0.2,
             "w3": RNG.standard_normal((64, 8)).astype(np.float32) * 0.2}
    return make_model(nodes, [vi("x", ["B", 10, 32])], [vi("y", ["B", 10, 16]), vi("z", ["B", 10, 8])], inits)


def run(model, feeds):
    session = ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def ort_ops(model) -> collections.Counter:
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(pathlib.Path(tmp) / "o.onnx")
        ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString(), options,
                             providers=["CPUExecutionProvider"])
        return collections.Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)


def quantize(model, **kwargs):
    quantized = model.clone()
    result = QuantizeDynamicPass(**kwargs)(quantized)
    onnx.checker.check_model(ir.serde.serialize_model(quantized), full_check=True)
    return quantized, result


def test_mlp_becomes_dynamic_quantize_matmul():
    model = mlp()
    quantized, result = quantize(model)
    assert result.counters["layers_quantized"] == 3
    ops = collections.Counter(n.op_type for n in quantized.graph)
    assert ops["DynamicQuantizeLinear"] == 2  # fc2 and fc3 share the quantized r1
    assert ops["MatMulInteger"] == 3 and ops["MatMul"] == 0
    fused = ort_ops(quantized)
    # fc1 fuses whole; fc2 and fc3 keep the shared DynamicQuantizeLinear and fuse the rest
    assert fused["DynamicQuantizeMatMul"] == 1 and fused["MatMulIntegerToFloat"] == 2, fused
    assert fused["MatMulInteger"] + fused["Cast"] + fused["Mul"] == 0
    assert [o.name for o in quantized.graph.outputs] == ["y", "z"]
    feeds = {"x": RNG.standard_normal((4, 10, 32)).astype(np.float32)}
    for ref, got in zip(run(model, feeds), run(quantized, feeds)):
        assert snr_db(ref, got) >= 30


@pytest.mark.parametrize("trans_b,alpha,beta", [(0, 1.0, 1.0), (1, 1.0, 1.0), (1, 0.5, 2.0)])
def test_gemm_variants(trans_b, alpha, beta):
    w = RNG.standard_normal((16, 24) if not trans_b else (24, 16)).astype(np.float32)
    nodes = [oh.make_node("Gemm", ["x", "w", "c"], ["y"], name="gemm", transB=trans_b, alpha=alpha, beta=beta)]
    model = make_model(nodes, [vi("x", ["B", 16])], [vi("y", ["B", 24])],
                       {"w": w, "c": RNG.standard_normal(24).astype(np.float32)})
    quantized, result = quantize(model)
    assert result.modified
    feeds = {"x": RNG.standard_normal((5, 16)).astype(np.float32)}
    assert snr_db(run(model, feeds)[0], run(quantized, feeds)[0]) >= 30


def test_declines_what_it_cannot_quantize():
    nodes = [oh.make_node("MatMul", ["x", "v"], ["a"], name="two_inputs"),
             oh.make_node("MatMul", ["a", "w3d"], ["b"], name="batched_weight"),
             oh.make_node("Gemm", ["a2", "w"], ["c"], name="trans_a", transA=1),
             oh.make_node("MatMul", ["a", "w"], ["d"], name="kept")]
    model = make_model(nodes, [vi("x", [4, 8]), vi("v", [8, 8]), vi("a2", [8, 4])],
                       [vi("b", [2, 4, 8]), vi("c", [4, 8]), vi("d", [4, 8])],
                       {"w3d": RNG.standard_normal((2, 8, 8)).astype(np.float32),
                        "w": RNG.standard_normal((8, 8)).astype(np.float32)})
    assert dynamic_candidates(model) == ["kept"]
    quantized, result = quantize(model, exclude={"kept"})
    assert not result.modified and quantized.graph.node("kept").op_type == "MatMul"


def test_reduced_scheme_keeps_weights_within_64():
    model = mlp()
    quantized, _ = quantize(model, scheme="u8s8-reduced")
    weights = [v.const_value.numpy() for v in quantized.graph.initializers.values() if v.dtype == ir.DataType.INT8
               and v.const_value.numpy().ndim == 2]
    assert weights and max(int(np.abs(w.astype(np.int32)).max()) for w in weights) == 64
