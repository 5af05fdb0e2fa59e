import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from graphopt.passes.cleanup.dedupe_initializers import DeduplicateInitializersPass
from tests.util import assert_equivalent, copy, parse, run, to_proto


def _graph_model(inits, nodes, inputs=None, outputs=None, ir_version=8):
    inputs = inputs if inputs is not None else [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])]
    outputs = outputs or [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])]
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=ir_version)
    return ir.serde.deserialize_model(proto)


def _t(name, values, dtype=np.float32, shape=None):
    array = np.asarray(values, dtype=dtype)
    return onnx.numpy_helper.from_array(array.reshape(shape) if shape else array, name)


def _apply(model, check=True):
    before = copy(model)
    result = DeduplicateInitializersPass()(model)
    if check:
        assert_equivalent(before, model)
    return result


def test_equal_weights_merged():
    big = np.arange(5000, dtype=np.float32)  # larger than onnx-ir's default limit of 1024 elements
    model = _graph_model(
        [_t("a", [1, 2, 3, 4]), _t("b", [1, 2, 3, 4]), _t("c", [1, 2, 3, 5]), _t("p", big), _t("q", big)],
        [helper.make_node("Add", ["x", "a"], ["t1"]), helper.make_node("Mul", ["t1", "b"], ["t2"]),
         helper.make_node("Sub", ["t2", "c"], ["t3"]),
         helper.make_node("ReduceSum", ["p"], ["s1"], keepdims=0),
         helper.make_node("ReduceSum", ["q"], ["s2"], keepdims=0),
         helper.make_node("Add", ["s1", "s2"], ["s"]), helper.make_node("Add", ["t3", "s"], ["y"])])
    result = _apply(model)
    assert result.modified is True
    assert result.counters == {"initializers_merged": 2, "bytes_saved": 16 + 20000}
    assert list(model.graph.initializers) == ["a", "c", "p"]
    assert model.graph.node(1).inputs[1] is model.graph.initializers["a"]


@pytest.mark.parametrize("a, b", [
    (_t("a", [1, 2, 3, 4]), _t("b", [1, 2, 3, 4], np.int32)),  # dtype differs
    (_t("a", [1, 2, 3, 4]), _t("b", [1, 2, 3, 4], shape=[2, 2])),  # shape differs
    (_t("a", [0, 0, 0, 0]), _t("b", [0, 0, 0, -0.0])),  # bytes differ (-0.0)
    (_t("a", [1, 2, 3, 4]), _t("b", [1, 2, 3, 4.5])),
])
def test_different_tensors_kept(a, b):
    model = _graph_model([a, b], [helper.make_node("Identity", ["x"], ["y"]),
                                  helper.make_node("Identity", ["a"], ["ua"]),
                                  helper.make_node("Identity", ["b"], ["ub"])])
    result = _apply(model, check=False)
    assert result.modified is False
    assert list(model.graph.initializers) == ["a", "b"]


def test_initializers_that_are_graph_inputs_are_never_merged():
    # a and b are inputs the caller may override; the plain c is not merged into them either
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    w_in = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4]) for n in ("a", "b")]
    model = _graph_model(
        [_t("a", [1, 2, 3, 4]), _t("b", [1, 2, 3, 4]), _t("c", [1, 2, 3, 4])],
        [helper.make_node("Add", ["x", "a"], ["t1"]), helper.make_node("Add", ["t1", "b"], ["t2"]),
         helper.make_node("Add", ["t2", "c"], ["y"])], inputs=[x, *w_in], ir_version=4)
    result = _apply(model)
    assert result.modified is False
    assert list(model.graph.initializers) == ["a", "b", "c"]


def test_graph_output_initializer_is_kept_and_absorbs_duplicates():
    model = _graph_model(
        [_t("a", [1, 2, 3, 4]), _t("w", [1, 2, 3, 4]), _t("v", [1, 2, 3, 4])],
        [helper.make_node("Add", ["x", "a"], ["y"])],
        outputs=[helper.make_tensor_value_info(n, TensorProto.FLOAT, [4]) for n in ("y", "w", "v")])
    result = _apply(model)
    assert result.counters == {"initializers_merged": 1, "bytes_saved": 16}
    assert list(model.graph.initializers) == ["w", "v"]  # a -> w; v is an output too, kept
    assert model.graph.node(0).inputs[1].name == "w"


def test_string_tensors():
    s1 = helper.make_tensor("s1", TensorProto.STRING, [2], [b"ab", b"c"])
    s2 = helper.make_tensor("s2", TensorProto.STRING, [2], [b"ab", b"c"])
    s3 = helper.make_tensor("s3", TensorProto.STRING, [2], [b"a", b"bc"])
    model = _graph_model(
        [s1, s2, s3],
        [helper.make_node("Concat", ["s1", "s2", "s3"], ["y"], axis=0)],
        inputs=[], outputs=[helper.make_tensor_value_info("y", TensorProto.STRING, [6])])
    before = copy(model)
    result = _apply(model, check=False)  # assert_allclose cannot compare strings
    assert result.counters["initializers_merged"] == 1
    assert list(model.graph.initializers) == ["s1", "s3"]
    onnx.checker.check_model(to_proto(model), full_check=True)
    np.testing.assert_array_equal(run(model, {})[0], run(before, {})[0])


def test_if_branches_deduped_on_their_own():
    model = parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x, bool c) => (float[2] y) <float[2] w = {1, 2}> {
            y = If(c) <
                then_branch = t () => (float[2] ty) <float[2] p = {1, 2}, float[2] q = {1, 2}> {
                    t1 = Add(x, p)
                    ty = Mul(t1, q)
                },
                else_branch = e () => (float[2] ey) {
                    ey = Add(x, w)
                }
            >
        }
    """)
    before = copy(model)
    result = DeduplicateInitializersPass()(model)
    assert result.counters == {"initializers_merged": 1, "bytes_saved": 8}
    then_branch = model.graph.node(0).attributes["then_branch"].as_graph()
    assert list(then_branch.initializers) == ["p"]  # q merged into p; p is not merged into outer w
    assert list(model.graph.initializers) == ["w"]
    for cond in (True, False):
        assert_equivalent(before, model, feeds={"x": np.array([1.0, -2.0], np.float32), "c": np.array(cond)})


def test_no_initializers():
    model = parse("""<ir_version: 8, opset_import: ["" : 17]> g (float[2] x) => (float[2] y) { y = Relu(x) }""")
    assert _apply(model).modified is False
    onnx.checker.check_model(to_proto(model), full_check=True)


# Found by tests/test_differential.py (seed 2278, through noops): ORT 1.32 computes a
# training-mode BatchNormalization wrongly when two of its inputs are one value, and a fresh
# training export has a zero bias and a zero running mean.
def test_training_batchnorm_inputs_are_not_merged():
    model = parse("""
        <ir_version: 8, opset_import: ["" : 15]>
        g (float[2,4,3] x) => (float[2,4,3] y)
          <float[4] scale = {1,1,1,1}, float[4] b = {0,0,0,0}, float[4] mean = {0,0,0,0}, float[4] var = {1,1,1,1}> {
            y, rm, rv = BatchNormalization <training_mode = 1> (x, scale, b, mean, var)
        }""")
    before = copy(model)
    assert not DeduplicateInitializersPass()(model).modified
    assert_equivalent(before, model, {"x": np.random.default_rng(0).standard_normal((2, 4, 3)).astype(np.float32)})
    # In inference the same tensors merge: ORT reads them correctly there.
    inference = parse("""
        <ir_version: 8, opset_import: ["" : 15]>
        g (float[2,4,3] x) => (float[2,4,3] y)
          <float[4] scale = {1,1,1,1}, float[4] b = {0,0,0,0}, float[4] mean = {0,0,0,0}, float[4] var = {1,1,1,1}> {
            y = BatchNormalization(x, scale, b, mean, var)
        }""")
    assert DeduplicateInitializersPass()(inference).counters["initializers_merged"] == 2
