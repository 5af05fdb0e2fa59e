import numpy as np
import onnx_ir as ir
import pytest

from graphopt.core.errors import UsageError
from graphopt.passes.shape.set_input_shapes import SetInputShapesPass
from tests.util import assert_equivalent, copy, parse

MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[batch,3,n] x, float[batch,3] z) => (float[batch,3,n] y, float[batch,3] w) {
    y = Relu(x)
    w = Neg(z)
}
"""


def _dims(value):
    return [d if isinstance(d, int) else d.value for d in value.shape]


def test_fixes_input_and_propagates_named_symbol():
    model = parse(MODEL)
    before = copy(model)
    result = SetInputShapesPass({"x": [2, 3, 5]})(model)
    assert result.modified and result.counters == {"dims_fixed": 2}
    assert _dims(model.graph.inputs[0]) == [2, 3, 5]
    assert _dims(model.graph.inputs[1]) == [2, 3]  # same symbol on another input
    assert _dims(model.graph.outputs[0]) == [2, 3, 5]
    feeds = {"x": np.ones((2, 3, 5), np.float32), "z": np.ones((2, 3), np.float32)}
    assert_equivalent(before, model, feeds)


def test_no_shapes_or_static_input_leaves_it_alone():
    model = parse(MODEL)
    assert not SetInputShapesPass({})(model).modified
    static = parse("""<ir_version: 8, opset_import: ["" : 17]> g (float[2,3] x) => (float[2,3] y) { y = Relu(x) }""")
    assert not SetInputShapesPass({"x": [2, 3]})(static).modified


@pytest.mark.parametrize("shapes, message", [
    ({"nope": [1]}, "not a graph input"),
    ({"x": [2, 3]}, "rank 2"),
    ({"x": [2, 4, 5]}, "dim 1 is 3"),
    ({"x": [2, 3, 5], "z": [3, 3]}, "given as 2 and as 3"),
    ({"x": [0, 3, 5]}, "positive"),
])
def test_refusals(shapes, message):
    model = parse(MODEL)
    with pytest.raises(UsageError, match=message):
        SetInputShapesPass(shapes)(model)


def test_intermediate_annotation_with_unnamed_dim_is_dropped():
    model = parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[batch,3] x) => (float[batch,3] y) { t = Relu(x) y = Neg(t) }
    """)
    t = model.graph.node(0).outputs[0]
    t.shape = ir.Shape([ir.SymbolicDim(None), 3])
    SetInputShapesPass({"x": [4, 3]})(model)
    assert t.shape is None


def test_subgraph_annotations_follow():
    model = parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[batch,3] x, bool c) => (float[batch,3] y) {
            y = If(c) <
                then_branch = th () => (float[batch,3] ty) { ty = Relu(x) },
                else_branch = el () => (float[batch,3] ey) { ey = Neg(x) }
            >
        }
    """)
    before = copy(model)
    SetInputShapesPass({"x": [2, 3]})(model)
    body = model.graph.node(0).attributes["then_branch"].as_graph()
    assert _dims(body.outputs[0]) == [2, 3]
    for c in (True, False):
        assert_equivalent(before, model, {"x": np.ones((2, 3), np.float32), "c": np.array(c)})
