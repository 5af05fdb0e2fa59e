import numpy as np
import onnx
import pytest

from graphopt.core.errors import UsageError
from graphopt.passes.cleanup.eliminate_dead_code import EliminateDeadCodePass
from graphopt.passes.cleanup.keep_outputs import KeepOutputsPass
from tests.util import copy, ops, parse, random_feeds, run, to_proto

TWO_HEADS = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2,3] x) => (float[2,3] logits, float[2,3] aux, float[2,3] feat) <float[3] w = {1, 2, 3}, float[3] v = {4, 5, 6}> {
    feat = Relu(x)
    logits = Add(feat, w)
    a1 = Mul(feat, v)
    aux = Exp(a1)
}
"""


def _outputs(model):
    return [v.name for v in model.graph.outputs]


def test_keep_one_output_then_dead_code_removes_its_branch():
    model = parse(TWO_HEADS)
    before = copy(model)
    result = KeepOutputsPass(["logits"])(model)
    assert result.modified is True
    assert result.counters == {"outputs_dropped": 2}
    assert _outputs(model) == ["logits"]

    dead = EliminateDeadCodePass()(model)
    assert dead.modified is True
    assert ops(model) == ["Relu", "Add"]
    assert list(model.graph.initializers) == ["w"]  # v fed only the dropped branch

    proto = to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    feeds = random_feeds(before)
    expected = dict(zip(_outputs(before), run(before, feeds)))
    (got,) = run(proto, feeds)
    np.testing.assert_allclose(got, expected["logits"], rtol=1e-6)


def test_reorder_keeps_every_node():
    model = parse(TWO_HEADS)
    before = copy(model)
    result = KeepOutputsPass(["feat", "logits", "aux"])(model)
    assert result.modified is True
    assert not result.counters
    assert _outputs(model) == ["feat", "logits", "aux"]
    assert EliminateDeadCodePass()(model).modified is False
    feeds = random_feeds(before)
    expected = dict(zip(_outputs(before), run(before, feeds)))
    for name, got in zip(_outputs(model), run(model, feeds)):
        np.testing.assert_array_equal(got, expected[name])


def test_dropping_an_output_that_feeds_a_kept_one_keeps_its_producer():
    model = parse(TWO_HEADS)
    KeepOutputsPass(["logits", "aux"])(model)
    EliminateDeadCodePass()(model)
    assert ops(model) == ["Relu", "Add", "Mul", "Exp"]  # feat is still needed
    onnx.checker.check_model(to_proto(model), full_check=True)


@pytest.mark.parametrize("outputs", [None, ["logits", "aux", "feat"]])
def test_no_change(outputs):
    model = parse(TWO_HEADS)
    result = KeepOutputsPass(outputs)(model)
    assert result.modified is False
    assert _outputs(model) == ["logits", "aux", "feat"]


@pytest.mark.parametrize("outputs, message", [
    (["logits", "nope"], "unknown output 'nope'; the model's outputs are: 'logits', 'aux', 'feat'"),
    (["aux", "aux"], "output 'aux' is listed twice"),
    ([], "--outputs is empty"),
])
def test_bad_names_are_usage_errors(outputs, message):
    model = parse(TWO_HEADS)
    with pytest.raises(UsageError, match=message) as info:
        KeepOutputsPass(outputs)(model)
    assert "\n" not in str(info.value)
    assert _outputs(model) == ["logits", "aux", "feat"]  # untouched


def test_graph_input_passed_through_as_output():
    model = parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] x, float[2] y) { y = Relu(x) }
    """)
    before = copy(model)
    assert KeepOutputsPass(["y"])(model).modified is True
    assert EliminateDeadCodePass()(model).modified is False
    assert [v.name for v in model.graph.inputs] == ["x"]  # inputs are interface, never dropped
    feeds = random_feeds(before)
    np.testing.assert_array_equal(run(model, feeds)[0], run(before, feeds)[1])


def test_subgraph_outputs_untouched():
    model = parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x, bool c) => (float[2] y, float[2] z) {
            y = If(c) <
                then_branch = t () => (float[2] ty) { ty = Abs(x) },
                else_branch = e () => (float[2] ey) { ey = Neg(x) }
            >
            z = Relu(x)
        }
    """)
    before = copy(model)
    KeepOutputsPass(["y"])(model)
    EliminateDeadCodePass()(model)
    assert ops(model) == ["If", "Abs", "Neg"]
    onnx.checker.check_model(to_proto(model), full_check=True)
    for cond in (True, False):
        feeds = {"x": np.array([-1.0, 2.0], np.float32), "c": np.array(cond)}
        np.testing.assert_array_equal(run(model, feeds)[0], run(before, feeds)[0])
