import numpy as np
import onnx
import onnx_ir as ir
import pytest

from graphopt.passes.cleanup.eliminate_dead_code import EliminateDeadCodePass
from tests.util import assert_equivalent, copy, ops, parse, to_proto

IF_MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2] x, bool c) => (float[2] y) {
    a = Relu(x)
    dead_outer = Neg(x)
    y = If(c) <
        then_branch = t () => (float[2] ty) {
            unused_t = Sigmoid(a)
            ty = Abs(a)
        },
        else_branch = e () => (float[2] ey) {
            ey = Identity(a)
        }
    >
}
"""


def _run(model):
    before = copy(model)
    result = EliminateDeadCodePass()(model)
    return before, result


def test_dead_chain_and_initializer_removed():
    model = parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2,3] x) => (float[2,3] y) <float[3] w = {1, 2, 3}, float[3] unused = {4, 5, 6}> {
            y = Add(x, w)
            d1 = Mul(x, unused)
            d2 = Exp(d1)
        }
    """)
    before, result = _run(model)
    assert result.modified is True
    assert ops(model) == ["Add"]
    assert list(model.graph.initializers) == ["w"]
    assert result.counters == {"nodes_removed": 2, "initializers_removed": 1}
    assert_equivalent(before, model)


@pytest.mark.parametrize("text", [
    # everything live
    """<ir_version: 8, opset_import: ["" : 17]>
       g (float[2] x) => (float[2] y) { y = Relu(x) }""",
    # unused graph input and initializer that is a graph output are interface, not dead
    """<ir_version: 8, opset_import: ["" : 17]>
       g (float[2] x, float[2] spare) => (float[2] y, float[2] w) <float[2] w = {1, 2}> { y = Relu(x) }""",
])
def test_no_change(text):
    model = parse(text)
    before, result = _run(model)
    assert result.modified is False
    assert not result.counters
    assert_equivalent(before, model)


def test_unused_initializer_that_is_graph_input_is_kept():
    model = parse("""
        <ir_version: 3, opset_import: ["" : 9]>
        g (float[2] x, float[2] w) => (float[2] y) <float[2] w = {1, 2}> { y = Relu(x) }
    """)
    _, result = _run(model)
    assert result.modified is False
    assert "w" in model.graph.initializers


def test_node_with_no_outputs_is_kept():
    model = parse("""
        <ir_version: 8, opset_import: ["" : 17, "custom" : 1]>
        g (float[2] x) => (float[2] y) {
            unused = custom.Print(x)
            y = Relu(x)
        }
    """)
    model.graph.node(0).resize_outputs(0)  # the text syntax cannot write a node without outputs
    _, result = _run(model)
    assert result.modified is False
    assert ops(model) == ["Print", "Relu"]


def test_custom_domain_node_with_unused_output_is_removed():
    model = parse("""
        <ir_version: 8, opset_import: ["" : 17, "custom" : 1]>
        g (float[2] x) => (float[2] y) {
            z = custom.Anything(x)
            y = Relu(x)
        }
    """)
    _, result = _run(model)
    assert result.modified is True
    assert ops(model) == ["Relu"]
    assert "custom" not in model.opset_imports  # its opset import went with it
    assert result.counters["opsets_removed"] == 1


def test_if_branches_are_swept():
    model = parse(IF_MODEL)
    before, result = _run(model)
    assert result.modified is True
    assert ops(model) == ["Relu", "If", "Abs", "Identity"]
    assert result.counters == {"nodes_removed": 2}
    for cond in (True, False):
        assert_equivalent(before, model, feeds={"x": np.array([-1.0, 2.0], np.float32), "c": np.array(cond)})


def test_dead_if_releases_outer_values_used_only_in_its_body():
    model = parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x, bool c) => (float[2] y) {
            a = Relu(x)
            z = If(c) <
                then_branch = t () => (float[2] ty) { ty = Abs(a) },
                else_branch = e () => (float[2] ey) { ey = Neg(a) }
            >
            y = Sigmoid(x)
        }
    """)
    before, result = _run(model)
    assert result.modified is True
    assert ops(model) == ["Sigmoid"]  # Relu died with the If that used it in its bodies
    assert_equivalent(before, model)


def test_loop_body_and_body_initializer():
    body = onnx.helper.make_graph(
        [onnx.helper.make_node("Add", ["v_in", "one"], ["v_out"]),
         onnx.helper.make_node("Mul", ["v_in", "two"], ["dead"]),
         onnx.helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body",
        [onnx.helper.make_tensor_value_info("i", onnx.TensorProto.INT64, []),
         onnx.helper.make_tensor_value_info("cond_in", onnx.TensorProto.BOOL, []),
         onnx.helper.make_tensor_value_info("v_in", onnx.TensorProto.FLOAT, [2])],
        [onnx.helper.make_tensor_value_info("cond_out", onnx.TensorProto.BOOL, []),
         onnx.helper.make_tensor_value_info("v_out", onnx.TensorProto.FLOAT, [2])],
        initializer=[onnx.helper.make_tensor("one", onnx.TensorProto.FLOAT, [2], [1, 1]),
                     onnx.helper.make_tensor("two", onnx.TensorProto.FLOAT, [2], [2, 2]),
                     onnx.helper.make_tensor("never", onnx.TensorProto.FLOAT, [1], [0])])
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Loop", ["n", "c", "x"], ["y"], body=body)],
        "g",
        [onnx.helper.make_tensor_value_info("n", onnx.TensorProto.INT64, []),
         onnx.helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, []),
         onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])])
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8)
    model = ir.serde.deserialize_model(proto)
    before, result = _run(model)
    assert result.modified is True
    assert result.counters == {"nodes_removed": 1, "initializers_removed": 2}
    body_graph = model.graph.node(0).attributes["body"].as_graph()
    assert list(body_graph.initializers) == ["one"]
    assert_equivalent(before, model, feeds={"n": np.array(3, np.int64), "c": np.array(True),
                                            "x": np.array([1.0, 2.0], np.float32)})


def test_functions_swept_and_unused_removed():
    model = parse("""
        <ir_version: 8, opset_import: ["" : 17, "local" : 1]>
        g (float[2] x) => (float[2] y) {
            y = local.used(x)
        }
        <domain: "local", opset_import: ["" : 17]>
        used (a) => (b) {
            dead = Exp(a)
            b = Relu(a)
        }
        <domain: "local", opset_import: ["" : 17]>
        unused (a) => (b) {
            b = Neg(a)
        }
    """)
    before, result = _run(model)
    assert result.modified is True
    assert result.counters == {"nodes_removed": 1, "functions_removed": 1}
    assert [f.name for f in model.functions.values()] == ["used"]
    assert [n.op_type for n in model.functions[("local", "used", "")]] == ["Relu"]
    assert_equivalent(before, model)


def test_graph_output_producer_kept():
    model = parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y, float[2] z) { y = Relu(x)  z = Neg(y) }
    """)
    _, result = _run(model)
    assert result.modified is False
    onnx.checker.check_model(to_proto(model), full_check=True)
