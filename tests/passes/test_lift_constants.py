import numpy as np
import onnx
import pytest

from graphopt.passes.cleanup.lift_constants import LiftConstantsPass
from tests.util import assert_equivalent, copy, ops, parse, to_proto


def _run(model):
    before = copy(model)
    return before, LiftConstantsPass()(model)


def test_every_tensor_attribute_form_is_lifted_under_its_name():
    model = parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y, int64[2] z) {
            w = Constant <value = float[2] {1, 2}> ()
            f = Constant <value_float = 3.0> ()
            fs = Constant <value_floats = [4.0, 5.0]> ()
            i = Constant <value_int = 2> ()
            is = Constant <value_ints = [1, 1]> ()
            a = Add(x, w)
            b = Mul(a, f)
            y = Add(b, fs)
            s = Shape(x)
            t = Mul(s, i)
            z = Add(t, is)
        }
    """)
    before, result = _run(model)
    assert result.modified
    assert result.counters == {"constants_lifted": 5}
    assert "Constant" not in ops(model)
    assert set(model.graph.initializers) == {"w", "f", "fs", "i", "is"}
    assert model.graph.initializers["i"].const_value.numpy().dtype == np.int64
    assert model.graph.initializers["f"].const_value.numpy().shape == ()
    assert_equivalent(before, model)


def test_value_identity_and_uses_follow():
    model = parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y) {
            w = Constant <value = float[2] {1, 2}> ()
            y = Add(x, w)
        }
    """)
    add = model.graph.node(1)
    LiftConstantsPass()(model)
    assert add.inputs[1] is model.graph.initializers["w"]


@pytest.mark.parametrize("text", [
    # no constants at all
    """<ir_version: 8, opset_import: ["" : 17]>
       g (float[2] x) => (float[2] y) <float[2] w = {1, 2}> { y = Add(x, w) }""",
    # a Constant that is a graph output keeps its node
    """<ir_version: 8, opset_import: ["" : 17]>
       g (float[2] x) => (float[2] y, float[2] c) { c = Constant <value = float[2] {1, 2}> () y = Add(x, c) }""",
    # custom-domain "Constant" is somebody else's op
    """<ir_version: 8, opset_import: ["" : 17, "custom" : 1]>
       g (float[2] x) => (float[2] y) { c = custom.Constant <value = float[2] {1, 2}> () y = Add(x, c) }""",
])
def test_leave_it_alone(text):
    model = parse(text)
    before, result = _run(model)
    assert not result.modified
    assert ops(model) == ops(before)
    if "custom" not in text:
        assert_equivalent(before, model)


def test_ir_version_3_keeps_constants():
    model = parse("""
        <ir_version: 3, opset_import: ["" : 9]>
        g (float[2] x) => (float[2] y) { c = Constant <value = float[2] {1, 2}> () y = Add(x, c) }
    """)
    _, result = _run(model)
    assert not result.modified
    assert result.counters == {"kept_ir_version_below_4": 1}
    assert ops(model) == ["Constant", "Add"]


def test_subgraph_constant_becomes_body_initializer_and_outer_uses_follow():
    model = parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x, bool cond) => (float[2] y) {
            outer = Constant <value = float[2] {10, 20}> ()
            y = If(cond) <
                then_branch = t () => (float[2] ty) {
                    k = Constant <value = float[2] {1, 2}> ()
                    a = Add(x, k)
                    ty = Add(a, outer)
                },
                else_branch = e () => (float[2] ey) {
                    ey = Sub(x, outer)
                }
            >
        }
    """)
    before, result = _run(model)
    assert result.counters == {"constants_lifted": 2}
    assert "outer" in model.graph.initializers
    then_graph = model.graph.node(0).attributes["then_branch"].as_graph()
    assert "k" in then_graph.initializers and "k" not in model.graph.initializers
    assert "Constant" not in ops(model)
    onnx.checker.check_model(to_proto(model), full_check=True)
    for c in (True, False):
        feeds = {"x": np.array([1, 2], np.float32), "cond": np.array(c)}
        assert_equivalent(before, model, feeds)


def test_function_body_keeps_constants():
    model = parse("""
        <ir_version: 8, opset_import: ["" : 17, "local" : 1]>
        g (float[2] x) => (float[2] y) { y = local.addk(x) }
        <domain: "local", opset_import: ["" : 17]>
        addk (a) => (b) { k = Constant <value = float[2] {1, 2}> () b = Add(a, k) }
    """)
    before, result = _run(model)
    assert not result.modified
    fn = next(iter(model.functions.values()))
    assert [n.op_type for n in fn] == ["Constant", "Add"]
    assert_equivalent(before, model)
