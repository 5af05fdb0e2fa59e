"""QuantizeInt8Pass and its plan: QDQ placement, scales, what ORT fuses, and accuracy vs float.

Tolerance: int8 outputs keep an SNR of at least 25 dB against the float model (noise power
under 0.3% of the signal's) on the calibration inputs, run with ORT's full optimizations
(the fused int8 kernels, not QDQ emulation).
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
from graphopt.core.calibrate import load_data
from graphopt.core.ranges import collect_ranges
from graphopt.passes.quantize.quantize_int8 import QuantizeInt8Pass
from graphopt.passes.quantize.quantize_plan import plan_int8
from graphopt.passes.quantize.quantize_scheme import SCHEMES, activation_params, quantize_weight, resolve_scheme

RNG = np.random.default_rng(0)
MIN_SNR_DB = 25.0


def _w(*shape, scale=None):
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
    return (RNG.standard_normal(shape) * (scale or np.sqrt(2.0 / fan_in))).astype(np.float32)


def make_model(nodes, inputs, outputs, inits, opset=17) -> ir.Model:
    graph = oh.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    proto = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])
    proto = onnx.shape_inference.infer_shapes(proto)
    return ir.serde.deserialize_model(proto)


def vi(name, shape, dtype=TensorProto.FLOAT):
    return oh.make_tensor_value_info(name, dtype, shape)


def conv_relu_model(relu="Relu"):
    nodes = [oh.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             oh.make_node(relu, ["c1"] + (["lo", "hi"] if relu == "Clip" else []), ["r1"], name="act1"),
             oh.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             oh.make_node("Relu", ["c2"], ["y"], name="act2")]
    inits = {"w1": _w(8, 3, 3, 3), "b1": _w(8, scale=0.1), "w2": _w(4, 8, 3, 3), "b2": _w(4, scale=0.1)}
    if relu == "Clip":
        inits.update(lo=np.array(0.0, np.float32), hi=np.array(6.0, np.float32))
    return make_model(nodes, [vi("x", ["N", 3, 8, 8])], [vi("y", ["N", 4, 8, 8])], inits)


def residual_model():
    nodes = [oh.make_node("Conv", ["x", "w0"], ["c0"], name="stem", pads=[1, 1, 1, 1]),
             oh.make_node("Relu", ["c0"], ["r0"], name="relu0"),
             oh.make_node("Conv", ["r0", "w1", "b1"], ["c1"], name="body1", pads=[1, 1, 1, 1]),
             oh.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             oh.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="body2", pads=[1, 1, 1, 1]),
             oh.make_node("Add", ["c2", "r0"], ["s"], name="add"),
             oh.make_node("Relu", ["s"], ["r2"], name="relu2"),
             oh.make_node("MaxPool", ["r2"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             oh.make_node("GlobalAveragePool", ["p"], ["g"], name="gap"),
             oh.make_node("Flatten", ["g"], ["f"], name="flatten"),
             oh.make_node("Gemm", ["f", "wf", "bf"], ["logits"], name="fc", transB=1)]
    inits = {"w0": _w(8, 3, 3, 3), "w1": _w(8, 8, 3, 3), "b1": _w(8, scale=0.1), "w2": _w(8, 8, 3, 3, scale=0.1),
             "b2": _w(8, scale=0.1), "wf": _w(10, 8), "bf": _w(10, scale=0.1)}
    return make_model(nodes, [vi("x", ["N", 3, 8, 8])], [vi("logits", ["N", 10])], inits)


def concat_model():
    nodes = [oh.make_node("Conv", ["x", "wa"], ["a"], name="conv_a"),
             oh.make_node("Relu", ["a"], ["ra"], name="relu_a"),
             oh.make_node("Conv", ["x", "wb"], ["b"], name="conv_b"),
             oh.make_node("Concat", ["ra", "b"], ["cat"], name="cat", axis=1),
             oh.make_node("Conv", ["cat", "wc"], ["c"], name="conv_c"),
             oh.make_node("Sigmoid", ["c"], ["y"], name="head")]
    inits = {"wa": _w(4, 3, 1, 1), "wb": _w(4, 3, 1, 1), "wc": _w(2, 8, 1, 1)}
    return make_model(nodes, [vi("x", ["N", 3, 6, 6])], [vi("y", ["N", 2, 6, 6])], inits)


def matmul_model():
    nodes = [oh.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
             oh.make_node("Relu", ["h"], ["r"], name="relu"),
             oh.make_node("Transpose", ["r"], ["rt"], name="tr", perm=[0, 2, 1]),
             oh.make_node("MatMul", ["r", "rt"], ["gram"], name="mm_act"),
             oh.make_node("MatMul", ["gram", "w2"], ["y"], name="mm2")]
    inits = {"w1": _w(16, 32), "w2": _w(12, 8)}
    return make_model(nodes, [vi("x", ["N", 12, 16])], [vi("y", ["N", 12, 8])], inits)


def calib_for(model: ir.Model, n=32, seed=1):
    rng = np.random.default_rng(seed)
    feeds = {}
    for v in model.graph.inputs:
        shape = [n] + [d for d in list(v.shape)[1:]]
        feeds[v.name] = rng.standard_normal(shape).astype(np.float32)
    return load_data(feeds, model)


def quantize(model: ir.Model, scheme="u8s8-reduced", exclude=frozenset(), method="minmax"):
    data = calib_for(model)
    plan = plan_int8(model, exclude)
    ranges = collect_ranges(model, sorted(plan.range_keys()), data, method=method)
    quantized = model.clone()
    result = QuantizeInt8Pass(ranges, scheme, exclude)(quantized)
    onnx.checker.check_model(ir.serde.serialize_model(quantized), full_check=True)
    return quantized, result, data


def run(model: ir.Model, feeds, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    session = ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def ort_ops(model: ir.Model) -> collections.Counter:
    """Op types ORT runs after its (portable) QDQ fusions."""
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "opt.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(path)
        ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString(), options,
                             providers=["CPUExecutionProvider"])
        return collections.Counter(n.op_type for n in onnx.load(path).graph.node)


def ops(model: ir.Model) -> collections.Counter:
    return collections.Counter(n.op_type for n in model.graph)


def assert_close_to_float(model, quantized, data, min_snr=MIN_SNR_DB):
    feeds = data.inputs
    for ref, got in zip(run(model, feeds), run(quantized, feeds)):
        assert snr_db(ref, got) >= min_snr, f"SNR {snr_db(ref, got):.1f} dB < {min_snr}"


# ---------------------------------------------------------------- placement


@pytest.mark.parametrize("act", ["Relu", "Clip"])
def test_conv_relu_absorbed_and_fused(act):
    model = conv_relu_model(act)
    quantized, result, data = quantize(model)
    assert result.modified
    assert result.counters["layers_quantized"] == 2
    # act1 goes into conv1's range; act2 makes a graph output, which stays float (and so does its Relu)
    assert result.counters["activations_absorbed"] == 1
    assert "act1" in result.plan.absorbed and "Clip" not in ops(quantized)
    assert ops(quantized)["Relu"] == 1
    # input, conv1 output (Relu range), conv2 output: one Q each, one DQ per consumer, 2 weights + 2 biases
    assert ops(quantized)["QuantizeLinear"] == 3
    assert ops(quantized)["DequantizeLinear"] == 2 + 4 + 1
    assert all(n.metadata_props.get("pkg.graphopt.pass") == "quantize_int8" for n in quantized.graph
               if n.op_type in ("QuantizeLinear", "DequantizeLinear"))
    fused = ort_ops(quantized)
    assert fused["QLinearConv"] == 2 and fused["Conv"] == 0
    assert fused["DequantizeLinear"] == 1  # only the graph output leaves int8
    assert_close_to_float(model, quantized, data)


def test_relu_range_starts_at_zero():
    model = conv_relu_model()
    quantized, _, _ = quantize(model)
    q = next(n for n in quantized.graph if n.op_type == "QuantizeLinear" and n.inputs[0].name == "c1")
    assert int(ir.convenience.get_const_tensor(q.inputs[2]).numpy()) == 0  # behind Relu: zero point = qmin


def test_clip_not_containing_zero_is_kept():
    model = conv_relu_model("Clip")
    model.graph.initializers["lo"].const_value = ir.tensor(np.array(0.5, np.float32), name="lo")
    quantized, result, data = quantize(model)
    assert "Clip" in ops(quantized)
    assert result.counters["activations_absorbed"] == 0
    assert_close_to_float(model, quantized, data)


def test_residual_add_maxpool_gap_gemm_stay_int8():
    model = residual_model()
    quantized, result, data = quantize(model)
    plan = result.plan
    assert plan.kinds["add"] == "binary" and plan.kinds["pool"] == "shared" and plan.kinds["gap"] == "own"
    assert plan.kinds["flatten"] == "shared" and plan.kinds["fc"] == "layer"
    # MaxPool and Flatten share their input's scale and zero point (ORT drops their Q/DQ)
    assert plan.root("p") == "r2" or plan.root("p") == plan.root("s")
    fused = ort_ops(quantized)
    assert fused["QLinearConv"] == 3 and fused["QLinearAdd"] == 1 and fused["QGemm"] == 1
    assert fused["QLinearGlobalAveragePool"] == 1
    assert fused["DequantizeLinear"] == 0, fused  # the logits come straight out of QGemm in float
    assert fused["Conv"] + fused["Add"] + fused["Gemm"] == 0
    assert "logits" in [o.name for o in quantized.graph.outputs]
    assert_close_to_float(model, quantized, data)


def test_concat_quantized_when_all_inputs_are():
    model = concat_model()
    quantized, result, data = quantize(model)
    assert result.plan.kinds["cat"] == "concat"
    fused = ort_ops(quantized)
    assert fused["QLinearConcat"] == 1 and fused["QLinearConv"] == 3
    assert_close_to_float(model, quantized, data)


def test_concat_with_a_float_input_stays_float():
    model = concat_model()
    quantized, result, data = quantize(model, exclude={"conv_b"})
    assert "cat" not in result.plan.kinds and "conv_b" not in result.plan.layers
    assert ort_ops(quantized)["Conv"] == 1
    assert_close_to_float(model, quantized, data)


def test_conv_making_a_graph_output_stays_float():
    model = concat_model()
    model.graph.outputs[0] = model.graph.node("head").inputs[0]  # conv_c's output becomes the graph output
    model.graph.remove(model.graph.node("head"), safe=True)
    quantized, result, data = quantize(model)
    assert "conv_c" not in result.plan.layers and "conv_c" not in result.plan.candidates
    conv_c = quantized.graph.node("conv_c")
    assert conv_c.inputs[1].name == "wc"  # float weight, no DequantizeLinear to run every inference
    assert_close_to_float(model, quantized, data)


def test_matmul_weights_and_two_activations():
    model = matmul_model()
    quantized, result, data = quantize(model)
    assert set(result.plan.layers) == {"mm1", "mm_act", "mm2"}
    assert result.plan.layers["mm_act"].weight_index is None
    assert result.plan.kinds["tr"] == "shared"
    fused = ort_ops(quantized)
    assert fused["MatMul"] == 0, fused
    assert fused["QLinearMatMul"] + fused["MatMulIntegerToFloat"] == 3
    assert_close_to_float(model, quantized, data)


def test_graph_output_keeps_float_and_name():
    model = conv_relu_model()
    quantized, result, _ = quantize(model)
    assert [o.name for o in quantized.graph.outputs] == ["y"]
    assert quantized.graph.outputs[0].dtype == ir.DataType.FLOAT
    assert [i.name for i in quantized.graph.inputs] == ["x"]


def test_excluded_layer_stays_float():
    model = conv_relu_model()
    quantized, result, data = quantize(model, exclude={"conv2"})
    assert set(result.plan.layers) == {"conv1"}
    assert "act2" not in result.plan.absorbed
    fused = ort_ops(quantized)
    assert fused["QLinearConv"] == 1
    assert fused["Conv"] + fused["FusedConv"] == 1
    assert_close_to_float(model, quantized, data)


def test_no_layers_means_no_change():
    model = make_model([oh.make_node("Relu", ["x"], ["y"], name="r")], [vi("x", [2, 3])], [vi("y", [2, 3])], {})
    result = QuantizeInt8Pass({}, "u8s8")(model)
    assert not result.modified
    assert ops(model) == {"Relu": 1}


def test_missing_range_is_a_precondition_error():
    model = conv_relu_model()
    with pytest.raises(ir.passes.PreconditionError, match="no calibrated range"):
        QuantizeInt8Pass({}, "u8s8")(model)


def test_subgraph_nodes_are_left_alone():
    then = oh.make_graph([oh.make_node("MatMul", ["x", "w_then"], ["t"], name="inner")], "then", [],
                         [vi("t", [2, 4])], [numpy_helper.from_array(_w(4, 4), "w_then")])
    other = oh.make_graph([oh.make_node("Identity", ["x"], ["e"], name="id")], "else", [], [vi("e", [2, 4])])
    nodes = [oh.make_node("MatMul", ["x0", "w"], ["x"], name="outer"),
             oh.make_node("If", ["cond"], ["y"], name="if", then_branch=then, else_branch=other)]
    model = make_model(nodes, [vi("x0", [2, 4]), vi("cond", [], TensorProto.BOOL)], [vi("y", [2, 4])], {"w": _w(4, 4)})
    rng = np.random.default_rng(3)
    plan = plan_int8(model)
    assert set(plan.layers) == {"outer"}
    ranges = {"x0": (-3.0, 3.0), "x": (-5.0, 5.0)}
    quantized = model.clone()
    QuantizeInt8Pass(ranges, "u8s8")(quantized)
    inner = [n for n in quantized.graph.all_nodes() if n.name == "inner"][0]
    assert inner.inputs[1].name == "w_then"
    onnx.checker.check_model(ir.serde.serialize_model(quantized), full_check=True)
    feeds = {"x0": rng.standard_normal((2, 4)).astype(np.float32), "cond": np.array(True)}
    ref, got = run(model, feeds)[0], run(quantized, feeds)[0]
    assert snr_db(ref, got) > 20


def test_opset_11_uses_per_tensor_weights():
    model = conv_relu_model()
    model.opset_imports[""] = 11
    quantized, result, data = quantize(model)
    weight_dq = [n for n in quantized.graph if n.op_type == "DequantizeLinear" and n.inputs[0].const_value is not None]
    assert weight_dq and all("axis" not in n.attributes for n in weight_dq)
    assert_close_to_float(model, quantized, data, min_snr=20)


# ---------------------------------------------------------------- numbers


@pytest.mark.parametrize("scheme", ["u8s8", "u8s8-reduced", "u8u8", "s8s8"])
def test_per_channel_weight_scales(scheme):
    s = SCHEMES[scheme]
    w = _w(6, 4, 3, 3)
    w[2] *= 50  # one loud channel must not coarsen the others
    q, scale, zp = quantize_weight(w, 0, s)
    np.testing.assert_allclose(scale, np.abs(w).reshape(6, -1).max(1) / s.weight_qmax, rtol=1e-6)
    assert q.dtype == s.weight and zp.dtype == s.weight and np.all(zp == s.weight_zero_point)
    restored = (q.astype(np.float32) - s.weight_zero_point) * scale[:, None, None, None]
    assert np.all(np.abs(restored - w) <= scale[:, None, None, None] / 2 + 1e-7)
    assert np.abs(q.astype(np.int32) - s.weight_zero_point).max() == s.weight_qmax


def test_weight_scales_in_the_model_match_channels():
    model = conv_relu_model()
    w1 = ir.convenience.get_const_tensor(model.graph.initializers["w1"]).numpy()
    quantized, _, _ = quantize(model, scheme="u8s8")
    conv1 = next(n for n in quantized.graph if n.name == "conv1")
    dq = conv1.inputs[1].producer()
    assert dq.op_type == "DequantizeLinear" and dq.attributes["axis"].as_int() == 0
    scale = ir.convenience.get_const_tensor(dq.inputs[1]).numpy()
    np.testing.assert_allclose(scale, np.abs(w1).reshape(8, -1).max(1) / 127, rtol=1e-6)
    bias_dq = conv1.inputs[2].producer()
    bias_scale = ir.convenience.get_const_tensor(bias_dq.inputs[1]).numpy()
    x_scale = ir.convenience.get_const_tensor(conv1.inputs[0].producer().inputs[1]).numpy()
    np.testing.assert_allclose(bias_scale, x_scale * scale, rtol=1e-6)
    assert ir.convenience.get_const_tensor(bias_dq.inputs[0]).numpy().dtype == np.int32


@pytest.mark.parametrize("lo,hi", [(0.0, 6.0), (-1.0, 3.0), (2.0, 5.0), (-4.0, -1.0), (0.0, 0.0)])
def test_activation_params_keep_zero_exact(lo, hi):
    for scheme in (SCHEMES["u8s8"], SCHEMES["s8s8"]):
        scale, zp = activation_params(lo, hi, scheme)
        qmin, qmax = scheme.activation_range
        assert scale > 0 and qmin <= int(zp) <= qmax
        if lo == 0.0:
            assert int(zp) == qmin
        top = (qmax - int(zp)) * float(scale)
        assert top >= max(hi, 0) - float(scale)


def test_reduced_scheme_avoids_saturation():
    """255 * 64 * 2 fits int16: the u8s8 kernels without VNNI cannot saturate."""
    s = SCHEMES["u8s8-reduced"]
    assert 255 * s.weight_qmax * 2 <= 32767 < 255 * SCHEMES["u8s8"].weight_qmax * 2


def test_auto_scheme_has_a_reason():
    scheme, reason = resolve_scheme("auto")
    assert scheme.name in SCHEMES and reason


@pytest.mark.parametrize("scheme", ["u8s8", "u8s8-reduced", "u8u8", "s8s8"])
def test_every_scheme_runs_in_ort_close_to_float(scheme):
    model = residual_model()
    quantized, _, data = quantize(model, scheme=scheme)
    assert_close_to_float(model, quantized, data, min_snr=20)


@pytest.mark.parametrize("method,min_snr", [("percentile", 20), ("entropy", 15)])
def test_histogram_methods_quantize_close_to_float(method, min_snr):
    """They clip the tails on purpose: on Gaussian test inputs that costs SNR, on real data it buys resolution."""
    model = residual_model()
    quantized, _, data = quantize(model, method=method)
    assert_close_to_float(model, quantized, data, min_snr=min_snr)


def test_conv_transpose_weights_per_output_channel():
    nodes = [oh.make_node("ConvTranspose", ["x", "w", "b"], ["c"], name="up", strides=[2, 2]),
             oh.make_node("Relu", ["c"], ["r"], name="relu"),
             oh.make_node("Conv", ["r", "w2"], ["h"], name="conv"),
             oh.make_node("Sigmoid", ["h"], ["y"], name="head")]
    model = make_model(nodes, [vi("x", ["N", 4, 5, 5])], [vi("y", ["N", 2, 10, 10])],
                       {"w": _w(4, 6, 2, 2), "b": _w(6, scale=0.1), "w2": _w(2, 6, 1, 1)})
    quantized, result, data = quantize(model)
    assert set(result.plan.layers) == {"up", "conv"} and result.plan.layers["up"].axis == 1
    dq = quantized.graph.node("up").inputs[1].producer()
    assert dq.attributes["axis"].as_int() == 1
    assert ir.convenience.get_const_tensor(dq.inputs[1]).numpy().shape == (6,)
    assert_close_to_float(model, quantized, data)


def test_bias_correction_removes_the_mean_error_of_rounded_weights():
    from graphopt.core.ranges import collect_channel_means

    nodes = [oh.make_node("Conv", ["x", "w"], ["c"], name="conv"),  # no bias: one is added
             oh.make_node("Sigmoid", ["c"], ["y"], name="head")]
    model = make_model(nodes, [vi("x", ["N", 8, 6, 6])], [vi("y", ["N", 16, 4, 4])], {"w": _w(16, 8, 3, 3)})
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((32, 8, 6, 6)) + 3.0).astype(np.float32)  # a large mean makes the shift visible
    data = load_data({"x": x}, model)
    ranges = collect_ranges(model, sorted(plan_int8(model).range_keys()), data)
    means = collect_channel_means(model, {"x": 1}, data)
    np.testing.assert_allclose(means["x"], x.mean(axis=(0, 2, 3)), rtol=1e-5)
    plain, corrected = model.clone(), model.clone()
    QuantizeInt8Pass(ranges, "u8s8-reduced")(plain)
    QuantizeInt8Pass(ranges, "u8s8-reduced", input_means=means)(corrected)
    assert len(corrected.graph.node("conv").inputs) == 3
    onnx.checker.check_model(ir.serde.serialize_model(corrected), full_check=True)

    def conv_output(m):  # read the Conv output (before the Sigmoid) to see the error in its own units
        m.graph.outputs[0] = m.graph.node("conv").outputs[0]
        return run(m, {"x": x})[0]
    ref = conv_output(model.clone())
    bias_plain = np.abs((conv_output(plain) - ref).mean(axis=(0, 2, 3))).mean()
    bias_corrected = np.abs((conv_output(corrected) - ref).mean(axis=(0, 2, 3))).mean()
    assert bias_corrected < bias_plain / 3
