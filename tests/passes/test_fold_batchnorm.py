"""Tests for passes/fusion/fold_batchnorm.py."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt.passes.fusion.fold_batchnorm import FoldBatchNormPass
from tests import util

RTOL = 1e-4
RNG = np.random.default_rng(0)


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def bn_params(c, prefix="bn"):
    return [numpy_helper.from_array(a, f"{prefix}_{n}") for n, a in (
        ("scale", rand(c)), ("bias", rand(c)), ("mean", rand(c)),
        ("var", RNG.uniform(0.5, 2.0, c).astype(np.float32)))]


def bn_node(x, y, prefix="bn", **attrs):
    return helper.make_node("BatchNormalization", [x] + [f"{prefix}_{n}" for n in ("scale", "bias", "mean", "var")],
                            [y], epsilon=1e-3, **attrs)


def make(nodes, inits, x_shape, y_shape, opset=21, extra_inputs=(), outputs=("out",), value_info=True):
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape), *extra_inputs],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    proto = onnx.shape_inference.infer_shapes(proto)  # the full checker wants output shapes
    if not value_info:
        del proto.graph.value_info[:]
    return ir.serde.deserialize_model(proto)


# kind -> (layer node, layer initializers, x shape, output channels)
def layer(kind):
    if kind == "conv1d":
        return helper.make_node("Conv", ["x", "W"], ["y"], pads=[1, 1]), [numpy_helper.from_array(rand(6, 4, 3), "W")], [2, 4, 9], 6
    if kind == "conv2d":
        return helper.make_node("Conv", ["x", "W"], ["y"], strides=[2, 2]), [numpy_helper.from_array(rand(6, 4, 3, 3), "W")], [2, 4, 9, 9], 6
    if kind == "conv2d_bias":
        return (helper.make_node("Conv", ["x", "W", "B"], ["y"], pads=[1, 1, 1, 1]),
                [numpy_helper.from_array(rand(6, 4, 3, 3), "W"), numpy_helper.from_array(rand(6), "B")], [2, 4, 9, 9], 6)
    if kind == "conv_grouped":
        return helper.make_node("Conv", ["x", "W"], ["y"], group=2), [numpy_helper.from_array(rand(6, 2, 3, 3), "W")], [2, 4, 9, 9], 6
    if kind == "conv_depthwise":
        return (helper.make_node("Conv", ["x", "W", "B"], ["y"], group=4, pads=[1, 1, 1, 1]),
                [numpy_helper.from_array(rand(4, 1, 3, 3), "W"), numpy_helper.from_array(rand(4), "B")], [2, 4, 9, 9], 4)
    if kind == "convtranspose":
        return helper.make_node("ConvTranspose", ["x", "W"], ["y"], strides=[2, 2]), [numpy_helper.from_array(rand(4, 6, 3, 3), "W")], [2, 4, 5, 5], 6
    if kind == "convtranspose_groups":
        return (helper.make_node("ConvTranspose", ["x", "W", "B"], ["y"], group=2, pads=[1, 1, 1, 1]),
                [numpy_helper.from_array(rand(4, 3, 3, 3), "W"), numpy_helper.from_array(rand(6), "B")], [2, 4, 5, 5], 6)
    if kind.startswith("gemm"):
        trans_b = int("transB" in kind)
        w = rand(6, 5) if trans_b else rand(5, 6)
        inits = [numpy_helper.from_array(w, "W")]
        inputs = ["x", "W"]
        c_shape = {"gemm": None, "gemm_transB": None, "gemm_c": (6,), "gemm_transB_c_row": (1, 6), "gemm_c_full": (3, 6)}[kind]
        if c_shape:
            inits.append(numpy_helper.from_array(rand(*c_shape), "C"))
            inputs.append("C")
        return helper.make_node("Gemm", inputs, ["y"], transB=trans_b, alpha=0.7, beta=1.3), inits, [3, 5], 6
    if kind == "matmul":
        return helper.make_node("MatMul", ["x", "W"], ["y"]), [numpy_helper.from_array(rand(5, 6), "W")], [3, 5], 6
    raise ValueError(kind)


KINDS = ["conv1d", "conv2d", "conv2d_bias", "conv_grouped", "conv_depthwise", "convtranspose",
         "convtranspose_groups", "gemm", "gemm_transB", "gemm_c", "gemm_transB_c_row", "gemm_c_full", "matmul"]


def layer_bn_model(kind, **bn_attrs):
    node, inits, x_shape, c = layer(kind)
    nodes = [node, bn_node("y", "z", **bn_attrs), helper.make_node("Relu", ["z"], ["out"])]
    return make(nodes, inits + bn_params(c), x_shape, None)


def fold(model):
    before = util.copy(model)
    result = FoldBatchNormPass()(model)
    return before, result


@pytest.mark.parametrize("kind", KINDS)
def test_layer_then_bn_is_folded(kind):
    model = layer_bn_model(kind)
    before, result = fold(model)
    assert result.modified and result.counters == {"batchnorm_folded": 1}
    assert "BatchNormalization" not in util.ops(model)
    assert len(model.graph) == 2  # the layer (MatMul became Gemm) and the Relu
    assert not {"W", "B", "C"} & set(model.graph.initializers), "originals are replaced, not edited"
    assert not any(n.startswith("bn_") for n in model.graph.initializers)
    util.assert_equivalent(before, model, rtol=RTOL, atol=1e-4)


def test_matmul_becomes_gemm():
    model = layer_bn_model("matmul")
    fold(model)
    assert util.ops(model) == ["Gemm", "Relu"]


def test_gemm_beta_becomes_one():
    model = layer_bn_model("gemm_c")
    fold(model)
    gemm = model.graph.node(0)
    assert gemm.attributes["beta"].as_float() == 1.0 and gemm.attributes["alpha"].as_float() == pytest.approx(0.7)


def test_bn_output_that_is_a_graph_output_keeps_its_name():
    node, inits, x_shape, c = layer("conv2d")
    model = make([node, bn_node("y", "out")], inits + bn_params(c), x_shape, None, value_info=False)
    before, result = fold(model)
    assert result.modified and util.ops(model) == ["Conv"]
    assert [v.name for v in model.graph.outputs] == ["out"] and model.graph.node(0).outputs[0].name == "out"
    util.assert_equivalent(before, model, rtol=RTOL, atol=1e-4)


def test_bn_then_conv_is_folded_into_the_conv():
    for with_bias in (False, True):
        w = numpy_helper.from_array(rand(5, 4, 3, 3), "W")
        inputs = ["z", "W"] + (["B"] if with_bias else [])
        inits = [w] + ([numpy_helper.from_array(rand(5), "B")] if with_bias else []) + bn_params(4)
        model = make([bn_node("x", "z"), helper.make_node("Conv", inputs, ["out"], pads=[0, 0, 0, 0])],
                     inits, [2, 4, 7, 7], None)
        before, result = fold(model)
        assert result.modified and util.ops(model) == ["Conv"]
        assert model.graph.node(0).inputs[0] is model.graph.inputs[0]
        util.assert_equivalent(before, model, rtol=RTOL, atol=1e-4)


@pytest.mark.parametrize("attrs", [{"pads": [1, 1, 1, 1]}, {"group": 2}, {"auto_pad": "SAME_UPPER"}])
def test_bn_then_padded_or_grouped_conv_is_declined(attrs):
    w = rand(4, 2, 3, 3) if attrs.get("group") else rand(5, 4, 3, 3)
    model = make([bn_node("x", "z"), helper.make_node("Conv", ["z", "W"], ["out"], **attrs)],
                 [numpy_helper.from_array(w, "W")] + bn_params(4), [2, 4, 7, 7], None)
    assert not FoldBatchNormPass()(model).modified
    assert util.ops(model) == ["BatchNormalization", "Conv"]


def test_training_mode_bn_is_declined():
    model = layer_bn_model("conv2d", training_mode=1)
    assert not FoldBatchNormPass()(model).modified
    assert "BatchNormalization" in util.ops(model)


def test_bn_with_running_statistics_used_is_declined():
    node, inits, x_shape, c = layer("conv2d")
    bn = helper.make_node("BatchNormalization", ["y"] + [f"bn_{n}" for n in ("scale", "bias", "mean", "var")],
                          ["out", "rm", "rv"], training_mode=1)
    model = make([node, bn], inits + bn_params(c), x_shape, None, outputs=("out", "rm"))
    assert not FoldBatchNormPass()(model).modified


def test_layer_output_with_two_consumers_is_declined():
    node, inits, x_shape, c = layer("conv2d")
    nodes = [node, bn_node("y", "z"), helper.make_node("Relu", ["y"], ["r"]), helper.make_node("Add", ["z", "r"], ["out"])]
    model = make(nodes, inits + bn_params(c), x_shape, None)
    assert not FoldBatchNormPass()(model).modified


def test_layer_output_that_is_a_graph_output_is_declined():
    node, inits, x_shape, c = layer("conv2d")
    model = make([node, bn_node("y", "out")], inits + bn_params(c), x_shape, None, outputs=("out", "y"))
    assert not FoldBatchNormPass()(model).modified


def test_weight_that_is_a_graph_input_is_declined():
    node, _, x_shape, c = layer("conv2d")
    w_input = helper.make_tensor_value_info("W", TensorProto.FLOAT, [6, 4, 3, 3])
    model = make([node, bn_node("y", "out")], bn_params(c), x_shape, None, extra_inputs=[w_input])
    assert not FoldBatchNormPass()(model).modified


def test_bn_params_that_are_graph_inputs_are_declined():
    node, inits, x_shape, c = layer("conv2d")
    params = bn_params(c)
    mean_input = helper.make_tensor_value_info("bn_mean", TensorProto.FLOAT, [c])
    model = make([node, bn_node("y", "out")], inits + params, x_shape, None, extra_inputs=[mean_input])
    assert model.graph.initializers["bn_mean"].is_graph_input()
    assert not FoldBatchNormPass()(model).modified


def test_matmul_with_3d_input_is_declined():
    model = make([helper.make_node("MatMul", ["x", "W"], ["y"]), bn_node("y", "out")],
                 [numpy_helper.from_array(rand(5, 6), "W")] + bn_params(4), [3, 4, 5], None)
    assert not FoldBatchNormPass()(model).modified


def test_shared_weight_stays_exact_for_the_other_conv():
    w = numpy_helper.from_array(rand(6, 4, 3, 3), "W")
    nodes = [helper.make_node("Conv", ["x", "W"], ["y"]), bn_node("y", "z"),
             helper.make_node("Conv", ["x", "W"], ["y2"]), helper.make_node("Add", ["z", "y2"], ["out"])]
    model = make(nodes, [w] + bn_params(6), [2, 4, 9, 9], None)
    original_w = model.graph.initializers["W"].const_value.numpy().copy()
    before, result = fold(model)
    assert result.modified
    other = [n for n in model.graph if n.op_type == "Conv"][1]
    assert other.inputs[1] is model.graph.initializers["W"]
    np.testing.assert_array_equal(model.graph.initializers["W"].const_value.numpy(), original_w)
    util.assert_equivalent(before, model, rtol=RTOL, atol=1e-4)


def test_new_initializers_never_overwrite_existing_names():
    node, inits, x_shape, c = layer("conv2d")
    squatter = numpy_helper.from_array(rand(6, 4, 3, 3), "W_fold_batchnorm")
    nodes = [node, bn_node("y", "z"), helper.make_node("Conv", ["x", "W_fold_batchnorm"], ["y2"], strides=[2, 2]),
             helper.make_node("Add", ["z", "y2"], ["out"])]
    model = make(nodes, inits + [squatter] + bn_params(c), x_shape, None)
    kept = numpy_helper.to_array(squatter)
    before, result = fold(model)
    assert result.modified
    np.testing.assert_array_equal(model.graph.initializers["W_fold_batchnorm"].const_value.numpy(), kept)
    util.assert_equivalent(before, model, rtol=RTOL, atol=1e-4)


def test_quantized_weight_is_declined():
    nodes = [helper.make_node("DequantizeLinear", ["Wq", "ws", "wz"], ["W"]),
             helper.make_node("Conv", ["x", "W"], ["y"]), bn_node("y", "out")]
    inits = [numpy_helper.from_array(RNG.integers(-100, 100, (6, 4, 3, 3)).astype(np.int8), "Wq"),
             numpy_helper.from_array(np.float32(0.01), "ws"), numpy_helper.from_array(np.int8(0), "wz")]
    model = make(nodes, inits + bn_params(6), [2, 4, 9, 9], None)
    assert not FoldBatchNormPass()(model).modified


def test_constant_expression_weight_gets_a_mul_node_not_a_new_array():
    w = rand(6, 4, 3, 3)
    nodes = [helper.make_node("Transpose", ["Wt"], ["W"], perm=[1, 0, 2, 3]),
             helper.make_node("Conv", ["x", "W"], ["y"]), bn_node("y", "z"), helper.make_node("Relu", ["z"], ["out"])]
    model = make(nodes, [numpy_helper.from_array(w.transpose(1, 0, 2, 3).copy(), "Wt")] + bn_params(6), [2, 4, 9, 9], None)
    before, result = fold(model)
    assert result.modified and "BatchNormalization" not in util.ops(model)
    assert util.ops(model).count("Mul") == 1 and "Transpose" in util.ops(model)
    assert max(v.const_value.size for v in model.graph.initializers.values()) == w.size  # only Wt
    util.assert_equivalent(before, model, rtol=RTOL, atol=1e-4)


def test_constant_expression_bn_params_become_nodes():
    node, inits, x_shape, c = layer("conv2d")
    params = bn_params(c, prefix="p")
    nodes = [helper.make_node("Abs", [f"p_{n}"], [f"bn_{n}"]) for n in ("scale", "bias", "mean", "var")]
    nodes += [node, bn_node("y", "z"), helper.make_node("Relu", ["z"], ["out"])]
    model = make(nodes, inits + params, x_shape, None)
    before, result = fold(model)
    assert result.modified and "BatchNormalization" not in util.ops(model)
    assert {"Sqrt", "Div"} <= set(util.ops(model))
    util.assert_equivalent(before, model, rtol=RTOL, atol=1e-4)


def test_fill_params_and_fill_weight_do_not_grow_the_model():
    def fill(name, shape, value):
        return [helper.make_node("ConstantOfShape", [f"{name}_shape"], [name],
                                 value=numpy_helper.from_array(np.array([value], np.float32))),
                numpy_helper.from_array(np.array(shape, np.int64), f"{name}_shape")]
    parts = [fill("W", [64, 4, 3, 3], 0.02)] + [fill(f"bn_{n}", [64], v) for n, v in
                                                (("scale", 0.9), ("bias", 0.1), ("mean", 0.05), ("var", 1.5))]
    nodes = [p[0] for p in parts] + [helper.make_node("Conv", ["x", "W"], ["y"]), bn_node("y", "out")]
    model = make(nodes, [p[1] for p in parts], [1, 4, 8, 8], None)
    size = len(util.to_proto(model).SerializeToString())
    before, result = fold(model)
    assert result.modified and "BatchNormalization" not in util.ops(model)
    assert util.ops(model) == ["ConstantOfShape", "ConstantOfShape", "Conv"]  # W*s and the bias: fills
    assert len(util.to_proto(model).SerializeToString()) <= size
    util.assert_equivalent(before, model, rtol=RTOL, atol=1e-5)


def test_folds_inside_if_branch():
    node, inits, x_shape, c = layer("conv2d")
    then_graph = helper.make_graph([node, bn_node("y", "t")], "then", [], [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    else_graph = helper.make_graph([helper.make_node("Conv", ["x", "W"], ["e"])], "else", [],
                                   [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("If", ["cond"], ["out"], then_branch=then_graph, else_branch=else_graph)]
    model = make(nodes, inits + bn_params(c), x_shape, None,
                 extra_inputs=[helper.make_tensor_value_info("cond", TensorProto.BOOL, [])])
    before, result = fold(model)
    assert result.counters["batchnorm_folded"] == 1
    then_ir = model.graph.node(0).attributes["then_branch"].as_graph()
    assert [n.op_type for n in then_ir] == ["Conv"]
    assert "W" in model.graph.initializers  # still used, exactly, by the else branch
    x = rand(*x_shape)
    for cond in (True, False):
        util.assert_equivalent(before, model, feeds={"x": x, "cond": np.array(cond)}, rtol=RTOL, atol=1e-4)


LIGHT = os.path.join(os.path.dirname(onnx.__file__), "backend/test/data/light")


@pytest.mark.slow
def test_light_resnet50():
    from graphopt.passes.cleanup.drop_initializer_inputs import DropInitializerInputsPass

    path = os.path.join(LIGHT, "light_resnet50.onnx")
    model = ir.load(path)
    original = util.copy(model)
    DropInitializerInputsPass()(model)
    assert util.ops(model).count("BatchNormalization") == 53
    result = FoldBatchNormPass()(model)
    assert result.counters["batchnorm_folded"] == 53 and "BatchNormalization" not in util.ops(model)
    proto = util.to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    assert len(proto.SerializeToString()) <= os.path.getsize(path) + 4096
    # The shipped output is for onnx's runner's dummy input arange(n)/n (runner.generate_dummy_data).
    shape = [d for d in model.graph.inputs[0].shape]
    x = (np.arange(np.prod(shape)).reshape(shape) / np.prod(shape)).astype(np.float32)
    feeds = {model.graph.inputs[0].name: x}
    expected = numpy_helper.to_array(onnx.load_tensor(os.path.join(LIGHT, "light_resnet50_output_0.pb")))
    np.testing.assert_allclose(util.run(proto, feeds)[0], expected, rtol=1e-3, atol=1e-7)
    # The softmax output is nearly uniform: compare the logits with the original too.
    logits = next(n for n in model.graph if n.op_type == "Softmax").inputs[0].name
    original_proto = util.to_proto(original)
    for p in (proto, original_proto):
        p.graph.output.append(onnx.ValueInfoProto(name=logits))
    got, want = util.run(proto, feeds)[1], util.run(original_proto, feeds)[1]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
