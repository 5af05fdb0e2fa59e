import pathlib

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from graphopt.passes.cleanup.drop_initializer_inputs import DropInitializerInputsPass
from tests.util import assert_equivalent, copy, parse, random_feeds, run, to_proto

LIGHT = pathlib.Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"

IR3 = """
<ir_version: 3, opset_import: ["" : 9]>
g (float[2,3] x, float[3] w, float[3] b) => (float[2,3] y) <float[3] w = {1, 2, 3}, float[3] b = {0.5, 0.5, 0.5}> {
    t = Mul(x, w)
    y = Add(t, b)
}
"""


def _inputs(model):
    return [v.name for v in model.graph.inputs]


def _apply(model, keep=False):
    before = copy(model)
    result = DropInitializerInputsPass(keep=keep)(model)
    return before, result


def test_ir3_initializer_inputs_dropped_and_ir_bumped():
    model = parse(IR3)
    before, result = _apply(model)
    assert result.modified is True
    assert result.counters == {"initializer_inputs_dropped": 2}
    assert _inputs(model) == ["x"]
    assert list(model.graph.initializers) == ["w", "b"]
    assert model.ir_version == 4
    assert_equivalent(before, model)  # includes the full onnx checker


def test_newer_ir_version_is_kept():
    model = parse(IR3.replace("ir_version: 3", "ir_version: 7"))
    _, result = _apply(model)
    assert result.counters == {"initializer_inputs_dropped": 2}
    assert model.ir_version == 7


def test_keep():
    model = parse(IR3)
    _, result = _apply(model, keep=True)
    assert result.modified is False
    assert _inputs(model) == ["x", "w", "b"]
    assert model.ir_version == 3


def test_nothing_to_drop():
    model = parse("""
        <ir_version: 3, opset_import: ["" : 9]>
        g (float[2,3] x) => (float[2,3] y) { y = Relu(x) }
    """)
    _, result = _apply(model)
    assert result.modified is False
    assert model.ir_version == 3


def test_initializer_that_is_also_graph_output():
    model = parse("""
        <ir_version: 3, opset_import: ["" : 9]>
        g (float[3] x, float[3] w) => (float[3] y, float[3] w) <float[3] w = {1, 2, 3}> { y = Add(x, w) }
    """)
    before, result = _apply(model)
    assert result.modified is True
    assert _inputs(model) == ["x"]
    assert [v.name for v in model.graph.outputs] == ["y", "w"]
    assert_equivalent(before, model)


def test_outer_initializer_used_in_if_branch_and_loop_body_inputs_untouched():
    model = parse("""
        <ir_version: 3, opset_import: ["" : 11]>
        g (float[2] x, bool c, float[2] w) => (float[2] y) <float[2] w = {3, 4}> {
            y = If(c) <
                then_branch = t () => (float[2] ty) { ty = Add(x, w) },
                else_branch = e () => (float[2] ey) { ey = Sub(x, w) }
            >
        }
    """)
    before, result = _apply(model)
    assert result.counters == {"initializer_inputs_dropped": 1}
    assert _inputs(model) == ["x", "c"]
    for cond in (True, False):
        assert_equivalent(before, model, feeds={"x": np.array([1.0, 2.0], np.float32), "c": np.array(cond)})


@pytest.mark.slow
@pytest.mark.parametrize("path", sorted(LIGHT.glob("light_*.onnx")), ids=lambda p: p.stem)
def test_light_zoo(path):  # IR v3, every initializer an input; about a second each
    model = ir.load(path)
    n_inits = len(model.graph.initializers)
    before, result = _apply(model)
    assert result.counters == {"initializer_inputs_dropped": n_inits}
    assert model.ir_version == 4
    assert all(not v.is_initializer() for v in model.graph.inputs)
    proto = to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    feeds = random_feeds(before)
    assert set(feeds) == set(_inputs(model))
    for expected, got in zip(run(before, feeds), run(proto, feeds)):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
