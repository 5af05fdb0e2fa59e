"""Tests for passes/fusion/fold_affine.py."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt.passes.fusion.fold_affine import FoldAffineIntoWeightsPass
from tests import util

RTOL = 1e-4
RNG = np.random.default_rng(1)


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def make(nodes, inits, x_shape, outputs=("out",), extra_inputs=(), opset=21):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape), *extra_inputs],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    return ir.serde.deserialize_model(onnx.shape_inference.infer_shapes(proto))


# kind -> (layer node producing "y", initializers, x shape, per-channel constant shape)
LAYERS = {
    "conv1d": (lambda: helper.make_node("Conv", ["x", "W"], ["y"], pads=[1, 1]), {"W": (6, 4, 3)}, [2, 4, 9], (6, 1)),
    "conv2d": (lambda: helper.make_node("Conv", ["x", "W"], ["y"]), {"W": (6, 4, 3, 3)}, [2, 4, 9, 9], (6, 1, 1)),
    "conv2d_bias": (lambda: helper.make_node("Conv", ["x", "W", "B"], ["y"]), {"W": (6, 4, 3, 3), "B": (6,)},
                    [2, 4, 9, 9], (1, 6, 1, 1)),
    "conv_grouped": (lambda: helper.make_node("Conv", ["x", "W"], ["y"], group=2), {"W": (6, 2, 3, 3)},
                     [2, 4, 9, 9], (6, 1, 1)),
    "conv_depthwise": (lambda: helper.make_node("Conv", ["x", "W", "B"], ["y"], group=4), {"W": (4, 1, 3, 3), "B": (4,)},
                       [2, 4, 9, 9], (1, 4, 1, 1)),
    "convtranspose": (lambda: helper.make_node("ConvTranspose", ["x", "W"], ["y"], strides=[2, 2]), {"W": (4, 6, 3, 3)},
                      [2, 4, 5, 5], (6, 1, 1)),
    "convtranspose_groups": (lambda: helper.make_node("ConvTranspose", ["x", "W", "B"], ["y"], group=2),
                             {"W": (4, 3, 3, 3), "B": (6,)}, [2, 4, 5, 5], (6, 1, 1)),
    "gemm": (lambda: helper.make_node("Gemm", ["x", "W"], ["y"], alpha=0.5), {"W": (5, 6)}, [3, 5], (6,)),
    "gemm_transB_beta": (lambda: helper.make_node("Gemm", ["x", "W", "C"], ["y"], transB=1, beta=2.0),
                         {"W": (6, 5), "C": (6,)}, [3, 5], (1, 6)),
    "matmul": (lambda: helper.make_node("MatMul", ["x", "W"], ["y"]), {"W": (5, 6)}, [3, 5], (6,)),
}


def affine_model(kind, ops=("Mul", "Add"), scalar=False, swap=False):
    make_node, weights, x_shape, c_shape = LAYERS[kind]
    inits = [numpy_helper.from_array(rand(*shape), name) for name, shape in weights.items()]
    nodes, current = [make_node()], "y"
    for i, op in enumerate(ops):
        shape = () if scalar else c_shape
        value = rand(*shape) if op != "Div" else RNG.uniform(0.5, 2, shape).astype(np.float32)
        inits.append(numpy_helper.from_array(value, f"k{i}"))
        inputs = [f"k{i}", current] if swap else [current, f"k{i}"]
        nodes.append(helper.make_node(op, inputs, [f"a{i}"]))
        current = f"a{i}"
    nodes.append(helper.make_node("Relu", [current], ["out"]))
    return make(nodes, inits, x_shape)


def fold(model):
    before = util.copy(model)
    return before, FoldAffineIntoWeightsPass()(model)


@pytest.mark.parametrize("kind", [k for k in LAYERS if k != "matmul"])
def test_mul_add_after_layer_is_folded(kind):
    model = affine_model(kind)
    before, result = fold(model)
    assert result.counters == {"mul_folded": 1, "add_folded": 1}
    assert util.ops(model) == [LAYERS[kind][0]().op_type, "Relu"]
    assert not {"W", "B", "C", "k0", "k1"} & set(model.graph.initializers)
    util.assert_equivalent(before, model, rtol=RTOL, atol=1e-4)


@pytest.mark.parametrize("kind", ["conv2d", "gemm", "matmul"])
@pytest.mark.parametrize("ops", [("Mul",), ("Add",), ("Div", "Sub"), ("Add", "Mul")])
def test_single_ops_scalars_and_operand_order(kind, ops):
    for scalar, swap in ((False, False), (True, not {"Sub", "Div"} & set(ops))):
        model = affine_model(kind, ops, scalar=scalar, swap=swap)
        before, result = fold(model)
        assert sum(result.counters.values()) == len(ops)
        assert len(model.graph) == 2
        util.assert_equivalent(before, model, rtol=RTOL, atol=1e-4)


def test_matmul_add_becomes_gemm_only_for_2d_input():
    model = affine_model("matmul", ("Mul", "Add"))
    fold(model)
    assert util.ops(model) == ["Gemm", "Relu"]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y"]), helper.make_node("Mul", ["y", "m"], ["z"]),
             helper.make_node("Add", ["z", "a"], ["out"])]
    inits = [numpy_helper.from_array(rand(5, 6), "W"), numpy_helper.from_array(rand(6), "m"),
             numpy_helper.from_array(rand(1, 1, 6), "a")]
    model = make(nodes, inits, [2, 3, 5])
    before, result = fold(model)
    assert result.counters == {"mul_folded": 1, "add_folded": 0}
    assert util.ops(model) == ["MatMul", "Add"]
    util.assert_equivalent(before, model, rtol=RTOL, atol=1e-4)


@pytest.mark.parametrize("shape", [(1, 1, 7, 7), (6, 7, 7), (6,), (2, 6, 1, 1), (1, 1, 6, 1, 1)])
def test_constants_that_broadcast_beyond_the_channels_are_declined(shape):
    nodes = [helper.make_node("Conv", ["x", "W"], ["y"]), helper.make_node("Mul", ["y", "m"], ["out"])]
    inits = [numpy_helper.from_array(rand(6, 4, 3, 3), "W"), numpy_helper.from_array(rand(*shape), "m")]
    model = make(nodes, inits, [2, 4, 9, 9])
    assert not FoldAffineIntoWeightsPass()(model).modified
    assert util.ops(model) == ["Conv", "Mul"]


@pytest.mark.parametrize("operand", ["graph_input", "initializer_input", "layer_output"])
def test_non_constant_operands_are_declined(operand):
    conv = helper.make_node("Conv", ["x", "W"], ["y"])
    inits = [numpy_helper.from_array(rand(6, 4, 3, 3), "W")]
    m_input = [helper.make_tensor_value_info("m", TensorProto.FLOAT, [6, 1, 1])]
    if operand == "layer_output":
        model = make([conv, helper.make_node("Mul", ["y", "y"], ["out"])], inits, [2, 4, 9, 9])
    else:
        if operand == "initializer_input":
            inits.append(numpy_helper.from_array(rand(6, 1, 1), "m"))
        model = make([conv, helper.make_node("Mul", ["y", "m"], ["out"])], inits, [2, 4, 9, 9], extra_inputs=m_input)
    assert not FoldAffineIntoWeightsPass()(model).modified


def test_weight_that_is_a_graph_input_is_declined():
    nodes = [helper.make_node("Conv", ["x", "W"], ["y"]), helper.make_node("Mul", ["y", "m"], ["out"])]
    model = make(nodes, [numpy_helper.from_array(rand(6, 1, 1), "m")], [2, 4, 9, 9],
                 extra_inputs=[helper.make_tensor_value_info("W", TensorProto.FLOAT, [6, 4, 3, 3])])
    assert not FoldAffineIntoWeightsPass()(model).modified


def test_layer_output_with_two_consumers_or_as_graph_output_is_declined():
    inits = [numpy_helper.from_array(rand(6, 4, 3, 3), "W"), numpy_helper.from_array(rand(6, 1, 1), "m")]
    nodes = [helper.make_node("Conv", ["x", "W"], ["y"]), helper.make_node("Mul", ["y", "m"], ["z"]),
             helper.make_node("Add", ["z", "y"], ["out"])]
    assert not FoldAffineIntoWeightsPass()(make(nodes, inits, [2, 4, 9, 9])).modified
    nodes = [helper.make_node("Conv", ["x", "W"], ["y"]), helper.make_node("Mul", ["y", "m"], ["out"])]
    assert not FoldAffineIntoWeightsPass()(make(nodes, inits, [2, 4, 9, 9], outputs=("out", "y"))).modified


def test_mul_output_that_is_a_graph_output_keeps_its_name():
    inits = [numpy_helper.from_array(rand(6, 4, 3, 3), "W"), numpy_helper.from_array(rand(6, 1, 1), "m")]
    model = make([helper.make_node("Conv", ["x", "W"], ["y"]), helper.make_node("Mul", ["y", "m"], ["out"])],
                 inits, [2, 4, 9, 9])
    before, result = fold(model)
    assert result.modified and util.ops(model) == ["Conv"] and model.graph.outputs[0].name == "out"
    util.assert_equivalent(before, model, rtol=RTOL, atol=1e-4)


def test_shared_weight_stays_exact_for_the_other_conv():
    inits = [numpy_helper.from_array(rand(6, 4, 3, 3), "W"), numpy_helper.from_array(rand(6, 1, 1), "m")]
    nodes = [helper.make_node("Conv", ["x", "W"], ["y"]), helper.make_node("Mul", ["y", "m"], ["z"]),
             helper.make_node("Conv", ["x", "W"], ["y2"]), helper.make_node("Sub", ["z", "y2"], ["out"])]
    model = make(nodes, inits, [2, 4, 9, 9])
    w = model.graph.initializers["W"].const_value.numpy().copy()
    before, result = fold(model)
    assert result.counters["mul_folded"] == 1
    other = [n for n in model.graph if n.op_type == "Conv"][1]
    assert other.inputs[1] is model.graph.initializers["W"]
    np.testing.assert_array_equal(model.graph.initializers["W"].const_value.numpy(), w)
    util.assert_equivalent(before, model, rtol=RTOL, atol=1e-4)


def test_div_by_zero_is_declined():
    inits = [numpy_helper.from_array(rand(6, 4, 3, 3), "W"),
             numpy_helper.from_array(np.array([1, 2, 0, 1, 1, 1], np.float32).reshape(6, 1, 1), "d")]
    model = make([helper.make_node("Conv", ["x", "W"], ["y"]), helper.make_node("Div", ["y", "d"], ["out"])],
                 inits, [2, 4, 9, 9])
    assert not FoldAffineIntoWeightsPass()(model).modified


def test_quantized_weight_is_declined():
    nodes = [helper.make_node("DequantizeLinear", ["Wq", "ws"], ["W"]), helper.make_node("Conv", ["x", "W"], ["y"]),
             helper.make_node("Mul", ["y", "m"], ["out"])]
    inits = [numpy_helper.from_array(RNG.integers(-9, 9, (6, 4, 3, 3)).astype(np.int8), "Wq"),
             numpy_helper.from_array(np.float32(0.1), "ws"), numpy_helper.from_array(rand(6, 1, 1), "m")]
    assert not FoldAffineIntoWeightsPass()(make(nodes, inits, [2, 4, 9, 9])).modified


def test_folds_inside_if_branch():
    then_graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "W"], ["y"]), helper.make_node("Mul", ["y", "m"], ["z"]),
         helper.make_node("Add", ["z", "a"], ["t"])], "then", [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    else_graph = helper.make_graph([helper.make_node("Conv", ["x", "W"], ["e"])], "else", [],
                                   [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    inits = [numpy_helper.from_array(rand(6, 4, 3, 3), "W"), numpy_helper.from_array(rand(6, 1, 1), "m"),
             numpy_helper.from_array(rand(6, 1, 1), "a")]
    model = make([helper.make_node("If", ["cond"], ["out"], then_branch=then_graph, else_branch=else_graph)],
                 inits, [2, 4, 9, 9], extra_inputs=[helper.make_tensor_value_info("cond", TensorProto.BOOL, [])])
    before, result = fold(model)
    assert result.counters == {"mul_folded": 1, "add_folded": 1}
    assert [n.op_type for n in model.graph.node(0).attributes["then_branch"].as_graph()] == ["Conv"]
    x = rand(2, 4, 9, 9)
    for cond in (True, False):
        util.assert_equivalent(before, model, feeds={"x": x, "cond": np.array(cond)}, rtol=RTOL, atol=1e-4)


def test_constant_expression_weight_gets_a_mul_node():
    w = rand(6, 4, 3, 3)
    nodes = [helper.make_node("Transpose", ["Wt"], ["W"], perm=[1, 0, 2, 3]), helper.make_node("Conv", ["x", "W"], ["y"]),
             helper.make_node("Mul", ["y", "m"], ["z"]), helper.make_node("Add", ["z", "a"], ["out"])]
    inits = [numpy_helper.from_array(w.transpose(1, 0, 2, 3).copy(), "Wt"), numpy_helper.from_array(rand(6, 1, 1), "m"),
             numpy_helper.from_array(rand(6, 1, 1), "a")]
    model = make(nodes, inits, [2, 4, 9, 9])
    before, result = fold(model)
    assert result.counters == {"mul_folded": 1, "add_folded": 1}
    assert util.ops(model) == ["Transpose", "Mul", "Conv"]
    util.assert_equivalent(before, model, rtol=RTOL, atol=1e-4)


def test_fill_constants_fold_without_growing_the_model():
    # The onnx light models' affine layers: Conv -> Mul(Unsqueeze(ConstantOfShape)) -> Add(...).
    def fill(name, value):
        return [helper.make_node("ConstantOfShape", ["c_shape"], [f"{name}_1d"],
                                 value=numpy_helper.from_array(np.array([value], np.float32))),
                helper.make_node("Unsqueeze", [f"{name}_1d", "axes"], [name])]
    nodes = fill("m", 0.5) + fill("a", 0.25) + [
        helper.make_node("Conv", ["x", "W"], ["y"]), helper.make_node("Mul", ["y", "m"], ["z"]),
        helper.make_node("Add", ["z", "a"], ["r"]), helper.make_node("Relu", ["r"], ["out"])]
    inits = [numpy_helper.from_array(rand(64, 4, 3, 3), "W"), numpy_helper.from_array(np.array([64], np.int64), "c_shape"),
             numpy_helper.from_array(np.array([1, 2], np.int64), "axes")]
    model = make(nodes, inits, [1, 4, 8, 8])
    size = len(util.to_proto(model).SerializeToString())
    before, result = fold(model)
    assert result.counters == {"mul_folded": 1, "add_folded": 1}
    assert util.ops(model) == ["ConstantOfShape", "Conv", "Relu"]  # the new bias is a fill too
    assert len(util.to_proto(model).SerializeToString()) <= size
    util.assert_equivalent(before, model, rtol=RTOL, atol=1e-5)


def test_repeated_scaling_of_an_expression_weight_stays_one_mul():
    w = rand(6, 4, 3, 3)
    nodes = [helper.make_node("Transpose", ["Wt"], ["W"], perm=[1, 0, 2, 3]), helper.make_node("Conv", ["x", "W"], ["y"]),
             helper.make_node("Mul", ["y", "m1"], ["z"]), helper.make_node("Mul", ["z", "m2"], ["out"])]
    inits = [numpy_helper.from_array(w.transpose(1, 0, 2, 3).copy(), "Wt"), numpy_helper.from_array(rand(6, 1, 1), "m1"),
             numpy_helper.from_array(rand(6, 1, 1), "m2")]
    model = make(nodes, inits, [2, 4, 9, 9])
    before, result = fold(model)
    assert result.counters == {"mul_folded": 2, "add_folded": 0}
    assert util.ops(model) == ["Transpose", "Mul", "Conv"]
    util.assert_equivalent(before, model, rtol=RTOL, atol=1e-4)
