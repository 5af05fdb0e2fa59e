import logging

import numpy as np
import onnx
import pytest

from graphopt.passes.cleanup.training_leftovers import TrainingLeftoversPass
from tests.util import assert_equivalent, copy, ops, parse, run, to_proto

BN_TRAIN = """
<ir_version: 8, opset_import: ["" : 15]>
g (float[2,3,4] x) => (float[2,3,4] y)
  <float[3] s = {1, 2, 3}, float[3] b = {0, 1, 0}, float[3] m = {0.5, 0, -1}, float[3] v = {1, 4, 2}> {
    y, rm, rv = BatchNormalization <training_mode = 1, epsilon = 0.001> (x, s, b, m, v)
}
"""

BN_EVAL = """
<ir_version: 8, opset_import: ["" : 15]>
g (float[2,3,4] x) => (float[2,3,4] y)
  <float[3] s = {1, 2, 3}, float[3] b = {0, 1, 0}, float[3] m = {0.5, 0, -1}, float[3] v = {1, 4, 2}> {
    y = BatchNormalization <epsilon = 0.001> (x, s, b, m, v)
}
"""

DROPOUT_TRAIN = """
<ir_version: 8, opset_import: ["" : 15]>
g (float[2,3] x) => (float[2,3] y) <bool t = {1}, float r = {0.5}> {
    d = Dropout(x, r, t)
    y = Relu(d)
}
"""


def test_report_only_by_default(caplog):
    model = parse(BN_TRAIN)
    before = copy(model)
    with caplog.at_level(logging.WARNING):
        result = TrainingLeftoversPass()(model)
    assert not result.modified
    assert result.counters == {"batchnorm_training": 1}
    assert "training mode" in caplog.text and "--inference" in caplog.text
    assert len(model.graph.node(0).outputs) == 3
    assert_equivalent(before, model)


def test_batchnorm_to_inference_uses_running_statistics():
    model = parse(BN_TRAIN)
    result = TrainingLeftoversPass(inference=True)(model)
    assert result.modified
    assert result.counters == {"batchnorm_training": 1, "batchnorm_converted": 1}
    node = model.graph.node(0)
    assert len(node.outputs) == 1 and "training_mode" not in node.attributes
    assert node.outputs[0] is model.graph.outputs[0] and node.outputs[0].name == "y"
    onnx.checker.check_model(to_proto(model), full_check=True)
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)}
    np.testing.assert_allclose(run(model, feeds)[0], run(parse(BN_EVAL), feeds)[0], rtol=1e-6, atol=1e-6)


def test_dropout_to_inference_passes_input_through():
    model = parse(DROPOUT_TRAIN)
    result = TrainingLeftoversPass(inference=True)(model)
    assert result.counters == {"dropout_training": 1, "dropout_converted": 1}
    node = model.graph.node(0)
    assert len(node.inputs) == 2
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)}
    np.testing.assert_array_equal(run(model, feeds)[0], np.maximum(feeds["x"], 0))


def test_dropout_mode_from_graph_input_counts_as_training():
    model = parse("""
        <ir_version: 8, opset_import: ["" : 15]>
        g (float[2] x, bool train) => (float[2] y) { y = Dropout(x, , train) }
    """)
    result = TrainingLeftoversPass()(model)
    assert result.counters == {"dropout_training": 1}


def test_batchnorm_whose_statistics_are_used_is_kept():
    model = parse("""
        <ir_version: 8, opset_import: ["" : 15]>
        g (float[2,3,4] x) => (float[2,3,4] y, float[3] rm)
          <float[3] s = {1, 2, 3}, float[3] b = {0, 1, 0}, float[3] m = {0.5, 0, -1}, float[3] v = {1, 4, 2}> {
            y, rm, rv = BatchNormalization <training_mode = 1> (x, s, b, m, v)
        }
    """)
    result = TrainingLeftoversPass(inference=True)(model)
    assert not result.modified
    assert result.counters == {"batchnorm_training": 1, "batchnorm_training_kept": 1}


@pytest.mark.parametrize("text", [
    BN_EVAL,
    """<ir_version: 8, opset_import: ["" : 15]>
       g (float[2,3] x) => (float[2,3] y) <bool t = {0}> { y = Dropout(x, , t) }""",
    """<ir_version: 8, opset_import: ["" : 11]>
       g (float[2,3] x) => (float[2,3] y) { y = Dropout <ratio = 0.3> (x) }""",
    # custom-domain look-alike
    """<ir_version: 8, opset_import: ["" : 15, "custom" : 1]>
       g (float[2,3] x) => (float[2,3] y) <bool t = {1}> { y = custom.Dropout(x, , t) }""",
])
def test_leave_it_alone(text):
    model = parse(text)
    before = copy(model)
    result = TrainingLeftoversPass(inference=True)(model)
    assert not result.modified and not result.counters
    assert ops(model) == ops(before)
    if "custom" not in text:
        assert_equivalent(before, model)


def test_old_opsets():
    model = parse("""
        <ir_version: 3, opset_import: ["" : 6]>
        g (float[2,3] x) => (float[2,3] y) { y = Dropout <is_test = 0> (x) }
    """)
    result = TrainingLeftoversPass(inference=True)(model)
    assert result.counters == {"dropout_training": 1, "dropout_converted": 1}
    assert model.graph.node(0).attributes["is_test"].as_int() == 1
    model = parse("""
        <ir_version: 8, opset_import: ["" : 9]>
        g (float[2,3,4] x) => (float[2,3,4] y)
          <float[3] s = {1, 2, 3}, float[3] b = {0, 1, 0}, float[3] m = {0.5, 0, -1}, float[3] v = {1, 4, 2}> {
            y, mo, vo, sm, sv = BatchNormalization (x, s, b, m, v)
        }
    """)
    result = TrainingLeftoversPass(inference=True)(model)
    assert result.counters == {"batchnorm_training": 1, "batchnorm_converted": 1}
    assert len(model.graph.node(0).outputs) == 1
    onnx.checker.check_model(to_proto(model), full_check=True)


def test_subgraph_is_converted():
    model = parse("""
        <ir_version: 8, opset_import: ["" : 15]>
        g (float[2,3] x, bool c) => (float[2,3] y) <bool t = {1}> {
            y = If(c) <
                then_branch = th () => (float[2,3] ty) { ty = Dropout(x, , t) },
                else_branch = el () => (float[2,3] ey) { ey = Relu(x) }
            >
        }
    """)
    result = TrainingLeftoversPass(inference=True)(model)
    assert result.counters == {"dropout_training": 1, "dropout_converted": 1}
    onnx.checker.check_model(to_proto(model), full_check=True)
    feeds = {"x": np.ones((2, 3), np.float32), "c": np.array(True)}
    np.testing.assert_array_equal(run(model, feeds)[0], feeds["x"])


def test_each_node_is_reported_once_across_pipeline_iterations():
    model = parse(BN_TRAIN)
    pass_ = TrainingLeftoversPass()
    assert pass_(model).counters == {"batchnorm_training": 1}
    assert pass_(model).counters == {}
