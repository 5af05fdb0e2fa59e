"""ConvertFp16Pass: what runs in float16, what stays float32 and why, and how few Casts it takes.

Tolerance: float16 outputs within 1e-2 of the float32 output, relative to the output's largest
magnitude (float16 has an 11-bit mantissa: ~5e-4 per op, a few ops deep).
"""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper

from graphopt.passes.quantize.quantize_fp16 import ConvertFp16Pass, plan_fp16, unsafe_initializer

F16, F32 = ir.DataType.FLOAT16, ir.DataType.FLOAT
RNG = np.random.default_rng(0)


def make_model(nodes, inputs, outputs, inits=None, opset=17) -> ir.Model:
    graph = oh.make_graph(nodes, "g", inputs, outputs,
                          [numpy_helper.from_array(v, k) for k, v in (inits or {}).items()])
    proto = onnx.shape_inference.infer_shapes(oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)]))
    return ir.serde.deserialize_model(proto)


def vi(name, shape, dtype=TensorProto.FLOAT):
    return oh.make_tensor_value_info(name, dtype, shape)


def convert(model, **kwargs):
    converted = model.clone()
    result = ConvertFp16Pass(**kwargs)(converted)
    onnx.checker.check_model(ir.serde.serialize_model(converted), full_check=True)
    return converted, result


def run(model, feeds):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def assert_close(model, converted, feeds, tol=1e-2):
    for ref, got in zip(run(model, feeds), run(converted, feeds)):
        assert got.dtype == ref.dtype
        np.testing.assert_allclose(got.astype(np.float32), ref, atol=tol * max(1.0, float(np.abs(ref).max())))


def op_count(model) -> collections.Counter:
    return collections.Counter(n.op_type for n in model.graph)


def conv_model():
    nodes = [oh.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             oh.make_node("Relu", ["c"], ["r"], name="relu"),
             oh.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
             oh.make_node("Flatten", ["g"], ["f"], name="flat"),
             oh.make_node("Gemm", ["f", "wf", "bf"], ["y"], name="fc", transB=1)]
    inits = {"w": RNG.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3,
             "b": RNG.standard_normal(8).astype(np.float32) * 0.1,
             "wf": RNG.standard_normal((5, 8)).astype(np.float32) * 0.3, "bf": np.zeros(5, np.float32)}
    return make_model(nodes, [vi("x", ["N", 3, 8, 8])], [vi("y", ["N", 5])], inits)


def feeds_for(model, batch=2):
    return {v.name: RNG.standard_normal([batch if not isinstance(d, int) else d for d in v.shape]).astype(np.float32)
            for v in model.graph.inputs}


def test_converts_weights_and_compute_keeps_io():
    model = conv_model()
    converted, result = convert(model)
    assert result.modified and not result.kept_fp32
    assert [(v.name, v.dtype) for v in converted.graph.inputs] == [("x", F32)]
    assert [(v.name, v.dtype) for v in converted.graph.outputs] == [("y", F32)]
    assert all(v.dtype == F16 for v in converted.graph.initializers.values())
    assert op_count(converted)["Cast"] == 2  # one in, one out
    assert result.counters["casts_inserted"] == 2
    assert_close(model, converted, feeds_for(model))


def test_without_keep_io_types_the_interface_is_float16():
    model = conv_model()
    converted, _ = convert(model, keep_io_types=False)
    assert converted.graph.inputs[0].dtype == F16 and converted.graph.outputs[0].dtype == F16
    assert op_count(converted)["Cast"] == 0
    feeds = feeds_for(model)
    ref = run(model, feeds)[0]
    got = run(converted, {"x": feeds["x"].astype(np.float16)})[0]
    np.testing.assert_allclose(got.astype(np.float32), ref, atol=1e-2 * max(1.0, float(np.abs(ref).max())))


@pytest.mark.parametrize("value,unsafe", [(1e5, True), (-7e4, True), (6e4, False), (1e-12, True), (0.0, False)])
def test_unsafe_initializer_rule(value, unsafe):
    assert (unsafe_initializer(np.array([1.0, value], np.float32)) is not None) == unsafe


def test_large_weight_with_tiny_values_is_not_unsafe():
    w = RNG.standard_normal(1000).astype(np.float32)
    w[0] = 1e-12  # flushing one tiny weight of many changes nothing
    assert unsafe_initializer(w) is None


def test_out_of_range_initializer_stays_float32_never_clipped():
    big = RNG.standard_normal((4, 4)).astype(np.float32)
    big[0, 0] = 1e6
    nodes = [oh.make_node("Relu", ["x"], ["r"], name="relu"),
             oh.make_node("MatMul", ["r", "big"], ["m"], name="mm_big"),
             oh.make_node("Mul", ["m", "s"], ["y"], name="scale")]
    model = make_model(nodes, [vi("x", [3, 4])], [vi("y", [3, 4])], {"big": big, "s": np.float32([1e-6] * 4)})
    converted, result = convert(model)
    assert "mm_big" in result.kept_fp32 and "exceed" in result.kept_fp32["mm_big"]
    assert result.unsafe_initializers == ["big"]
    kept = converted.graph.initializers["big"]
    assert kept.dtype == F32
    np.testing.assert_array_equal(kept.const_value.numpy(), big)  # same values, not clipped to 65504
    assert converted.graph.node("mm_big").inputs[1] is kept
    # The MatMul's output reaches 1e6 too; only data can show that. The calibration scan reports it as
    # an unsafe value, which keeps its consumer float32 as well.
    converted, result = convert(model, unsafe_values={"m"})
    assert {"mm_big", "scale"} <= set(result.kept_fp32)
    feeds = {"x": np.abs(RNG.standard_normal((3, 4))).astype(np.float32)}
    np.testing.assert_allclose(run(converted, feeds)[0], run(model, feeds)[0], rtol=1e-2)


def test_epsilon_that_would_flush_to_zero_keeps_its_consumer_float32():
    nodes = [oh.make_node("Mul", ["x", "x"], ["sq"], name="square"),
             oh.make_node("Add", ["sq", "eps"], ["v"], name="add_eps"),
             oh.make_node("Sqrt", ["v"], ["s"], name="sqrt"),
             oh.make_node("Div", ["x", "s"], ["y"], name="div")]
    model = make_model(nodes, [vi("x", [2, 3])], [vi("y", [2, 3])], {"eps": np.float32([1e-12])})
    converted, result = convert(model)
    assert "add_eps" in result.kept_fp32 and "flush" in result.kept_fp32["add_eps"]
    assert {"square", "sqrt", "div"} <= set(result.fp16_nodes)
    feeds = {"x": np.array([[0.0, 1.0, -2.0], [3.0, 0.0, 0.5]], np.float32)}
    out = run(converted, feeds)[0]
    assert np.all(np.isfinite(out))  # 0 / sqrt(0 + eps): no NaN


def test_resize_stays_float32_with_one_cast_each_way():
    nodes = [oh.make_node("Relu", ["x"], ["r"], name="relu"),
             oh.make_node("Resize", ["r", "", "scales"], ["u"], name="resize", mode="nearest"),
             oh.make_node("Relu", ["u"], ["y"], name="relu2")]
    model = make_model(nodes, [vi("x", [1, 2, 4, 4])], [vi("y", [1, 2, 8, 8])],
                       {"scales": np.array([1, 1, 2, 2], np.float32)})
    converted, result = convert(model)
    assert "resize" in result.kept_fp32
    assert converted.graph.initializers["scales"].dtype == F32
    resize = converted.graph.node("resize")
    assert resize.inputs[0].dtype == F32 and resize.outputs[0].dtype == F32
    # x (f32) -> relu (f16): 1 Cast; relu -> resize: 1; resize -> relu2: 1; relu2 -> y: 1
    assert result.counters["casts_inserted"] == 4
    assert_close(model, converted, feeds_for(model))


def test_data_movement_between_float32_nodes_stays_float32():
    nodes = [oh.make_node("Resize", ["x", "", "scales"], ["u"], name="resize1", mode="nearest"),
             oh.make_node("Transpose", ["u"], ["t"], name="transpose", perm=[0, 1, 3, 2]),
             oh.make_node("Resize", ["t", "", "scales"], ["y"], name="resize2", mode="nearest")]
    model = make_model(nodes, [vi("x", [1, 1, 2, 2])], [vi("y", [1, 1, 8, 8])],
                       {"scales": np.array([1, 1, 2, 2], np.float32)})
    converted, result = convert(model)
    assert result.kept_fp32["transpose"] == "moves data between float32 nodes"
    assert op_count(converted)["Cast"] == 0 and not result.modified
    assert_close(model, converted, feeds_for(model), tol=0)


def test_one_cast_shared_by_all_consumers():
    nodes = [oh.make_node("Relu", ["x"], ["a"], name="a"), oh.make_node("Sigmoid", ["x"], ["b"], name="b"),
             oh.make_node("Add", ["a", "b"], ["y"], name="add")]
    model = make_model(nodes, [vi("x", [2, 3])], [vi("y", [2, 3])])
    converted, result = convert(model)
    assert op_count(converted)["Cast"] == 2


@pytest.mark.parametrize("size,kept", [(16, False), (100000, True)])
def test_long_reductions_stay_float32(size, kept):
    nodes = [oh.make_node("Relu", ["x"], ["r"], name="relu"),
             oh.make_node("ReduceSum", ["r", "axes"], ["y"], name="sum", keepdims=0)]
    model = make_model(nodes, [vi("x", ["N", size])], [vi("y", ["N"])], {"axes": np.array([1], np.int64)})
    plan, _ = plan_fp16(model)
    assert (plan["sum"] is not None) == kept
    converted, _ = convert(model)
    feeds = {"x": RNG.random((2, size)).astype(np.float32)}
    np.testing.assert_allclose(run(converted, feeds)[0], run(model, feeds)[0], rtol=2e-2 if not kept else 1e-5)


def test_cast_to_float_is_retargeted_not_doubled():
    nodes = [oh.make_node("Cast", ["i"], ["f"], name="to_float", to=TensorProto.FLOAT),
             oh.make_node("Add", ["x", "f"], ["y"], name="add")]
    model = make_model(nodes, [vi("x", [3]), vi("i", [3], TensorProto.INT64)], [vi("y", [3])])
    converted, _ = convert(model)
    cast = converted.graph.node("to_float")
    assert cast.attributes["to"].as_int() == TensorProto.FLOAT16 and cast.outputs[0].dtype == F16
    assert_close(model, converted, {"x": np.ones(3, np.float32), "i": np.arange(3, dtype=np.int64)})


def test_overflowing_activation_keeps_producer_and_consumers_float32():
    nodes = [oh.make_node("Mul", ["x", "k"], ["big"], name="grow"),
             oh.make_node("Sub", ["big", "k"], ["d"], name="shrink"),
             oh.make_node("Relu", ["d"], ["y"], name="relu")]
    model = make_model(nodes, [vi("x", [2])], [vi("y", [2])], {"k": np.float32([1000.0])})
    converted, result = convert(model, unsafe_values={"big"})
    assert {"grow", "shrink"} <= set(result.kept_fp32) and result.fp16_nodes == ["relu"]
    feeds = {"x": np.float32([200.0, 300.0])}
    np.testing.assert_allclose(run(converted, feeds)[0], run(model, feeds)[0], rtol=1e-3)


def test_excluded_nodes_and_subgraph_holders_stay_float32():
    then = oh.make_graph([oh.make_node("Relu", ["r"], ["t"], name="inner")], "then", [], [vi("t", [2])])
    other = oh.make_graph([oh.make_node("Neg", ["r"], ["e"], name="inner2")], "else", [], [vi("e", [2])])
    nodes = [oh.make_node("Sigmoid", ["x"], ["r"], name="sig"),
             oh.make_node("If", ["c"], ["o"], name="if", then_branch=then, else_branch=other),
             oh.make_node("Abs", ["o"], ["y"], name="abs"), oh.make_node("Exp", ["x"], ["z"], name="exp")]
    model = make_model(nodes, [vi("x", [2]), vi("c", [], TensorProto.BOOL)], [vi("y", [2]), vi("z", [2])])
    converted, result = convert(model, exclude={"exp"})
    assert result.kept_fp32["if"] == "holds a subgraph"
    assert result.kept_fp32["sig"] == "feeds a subgraph"  # its output is read inside the branches
    assert result.kept_fp32["exp"] == "kept float32 on request"
    assert result.fp16_nodes == ["abs"]
    feeds = {"x": np.float32([0.5, -1.0]), "c": np.array(True)}
    for ref, got in zip(run(model, feeds), run(converted, feeds)):
        np.testing.assert_allclose(got, ref, rtol=1e-2)


def test_graph_output_read_inside_the_graph_keeps_its_name():
    nodes = [oh.make_node("Relu", ["x"], ["h"], name="relu"), oh.make_node("Neg", ["h"], ["y"], name="neg")]
    model = make_model(nodes, [vi("x", [2])], [vi("h", [2]), vi("y", [2])])
    converted, _ = convert(model)
    assert [(o.name, o.dtype) for o in converted.graph.outputs] == [("h", F32), ("y", F32)]
    assert_close(model, converted, {"x": np.float32([1.0, -2.0])})
