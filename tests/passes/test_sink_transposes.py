import numpy as np
import onnx
import pytest

from graphopt.passes.cleanup.eliminate_dead_code import EliminateDeadCodePass
from graphopt.passes.shape.sink_transposes import SinkTransposesPass
from tests.util import assert_equivalent, copy, ops, parse, to_proto

# NHWC -> NCHW -> work -> NHWC: the layout round trip tf2onnx leaves when its optimizer is off.
ROUND_TRIP = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[batch,4,5,3] x) => (float[batch,%(h)s,%(w)s,3] y)
  <float[1,3,1,1] scale = {1.0, 2.0, 3.0}, float half = {0.5}, int64[1] axes = {2},
   int64[8] pads = {0, 0, 1, 0, 0, 0, 1, 0}> {
    t = Transpose <perm = [0, 3, 1, 2]> (x)
    a = Mul(t, scale)
    b = Relu(a)
    c = Add(b, half)
    %(extra)s
    y = Transpose <perm = [0, 2, 3, 1]> (%(last)s)
}
"""


def _model(extra="", last="c", h="4", w="5"):
    return parse(ROUND_TRIP % {"extra": extra, "last": last, "h": h, "w": w})


def _feeds(batch=2):
    return {"x": np.random.default_rng(0).standard_normal((batch, 4, 5, 3)).astype(np.float32)}


@pytest.mark.parametrize("extra, last, h, w", [
    ("", "c", "4", "5"),
    ("d = ReduceMean <axes = [3], keepdims = 1> (c)", "d", "4", "1"),  # reduce over W in NCHW
    ("d = Pad(c, pads)", "d", "6", "5"),                           # pad H in NCHW
    ("d = Concat <axis = 1> (c, c2)", "d", "4", "5"),              # placeholder replaced below
])
def test_pair_cancels_through_the_chain(extra, last, h, w):
    if "Concat" in extra:
        text = ROUND_TRIP.replace("<float[1,3,1,1] scale", "<float[1,3,4,5] k = {%s}, float[1,3,1,1] scale"
                                  % ", ".join(["0.25"] * 60))
        text = text.replace("=> (float[batch,%(h)s,%(w)s,3] y)", "=> (float[batch,%(h)s,%(w)s,6] y)")
        model = parse(text % {"extra": "d = Concat <axis = 1> (c, k)", "last": "d", "h": "4", "w": "5"})
    else:
        model = _model(extra, last, h, w)
    before = copy(model)
    result = SinkTransposesPass()(model)
    EliminateDeadCodePass()(model)
    assert result.counters == {"transpose_pairs_cancelled": 1}
    assert "Transpose" not in ops(model)
    assert model.graph.outputs[0].name == "y"
    onnx.checker.check_model(to_proto(model), full_check=True)
    for batch in (1, 3) if "Concat" not in extra else (1,):  # the constant fixes Concat's batch at 1
        assert_equivalent(before, model, _feeds(batch))


@pytest.mark.parametrize("model", [
    # the second transpose does not undo the first
    parse((ROUND_TRIP % {"extra": "", "last": "c", "h": "4", "w": "5"}).replace("perm = [0, 2, 3, 1]",
                                                                                 "perm = [0, 1, 3, 2]")
          .replace("float[batch,4,5,3] y", "float[batch,3,5,4] y")),
    # a branch reads the transposed layout
    _model("side = Neg(b)", "c"),
    # a non-constant operand in the chain
    parse((ROUND_TRIP % {"extra": "", "last": "c", "h": "4", "w": "5"}).replace("a = Mul(t, scale)", "a = Mul(t, t)")),
    # a custom op in the chain
    parse((ROUND_TRIP % {"extra": "", "last": "c", "h": "4", "w": "5"}).replace('["" : 17]', '["" : 17, "custom" : 1]')
          .replace("b = Relu(a)", "b = custom.Relu(a)")),
])
def test_leave_it_alone(model):
    before = copy(model)
    result = SinkTransposesPass()(model)
    assert not result.modified
    assert ops(model) == ops(before)


def test_graph_output_keeps_its_name():
    model = _model()
    SinkTransposesPass()(model)
    assert model.graph.outputs[0].name == "y" and model.graph.outputs[0].producer().op_type == "Add"


# MXNet batch_dot's right-hand side: [b, h, s, d] -> [-1, s, d] -> swap -> [b, h, d, s].
BATCH_DOT = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[b,2,s,3] x) => (float[b,2,3,s] y) <int64[1] minus1 = {-1}, int64[1] m2 = {-2}, int64[1] big = {100},
                                           int64[1] zero = {0}> {
    sh = Shape(x)
    lead = Slice(sh, zero, m2)
    tail = Slice(sh, m2, big)
    flat_shape = Concat <axis = 0> (minus1, tail)
    flat = Reshape(x, flat_shape)
    t = Transpose <perm = [0, 2, 1]> (flat)
    tsh = Shape(t)
    ttail = Slice(tsh, m2, big)
    back = Concat <axis = 0> (lead, ttail)
    y = Reshape(t, back)
}
"""


def test_mxnet_batch_dot_reshapes_become_one_transpose():
    model = parse(BATCH_DOT)
    before = copy(model)
    result = SinkTransposesPass()(model)
    EliminateDeadCodePass()(model)
    assert result.counters == {"reshape_transpose_reshape_collapsed": 1}
    assert ops(model) == ["Transpose"]
    assert list(model.graph.node(0).attributes["perm"].as_ints()) == [0, 1, 3, 2]
    for b, s in [(1, 4), (3, 2)]:
        assert_equivalent(before, model, {"x": np.random.default_rng(1).standard_normal((b, 2, s, 3))
                                          .astype(np.float32)})


def test_batch_dot_that_moves_the_merged_axis_is_declined():
    model = parse(BATCH_DOT.replace("perm = [0, 2, 1]", "perm = [1, 0, 2]"))
    assert not SinkTransposesPass()(model).modified


def test_subgraph():
    model = parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1,4,5,3] x, bool c) => (float[1,4,5,3] y) {
            y = If(c) <
                then_branch = th () => (float[1,4,5,3] ty) {
                    t = Transpose <perm = [0, 3, 1, 2]> (x)
                    r = Sigmoid(t)
                    ty = Transpose <perm = [0, 2, 3, 1]> (r)
                },
                else_branch = el () => (float[1,4,5,3] ey) { ey = Neg(x) }
            >
        }
    """)
    before = copy(model)
    assert SinkTransposesPass()(model).counters == {"transpose_pairs_cancelled": 1}
    EliminateDeadCodePass()(model)
    body = model.graph.node(0).attributes["then_branch"].as_graph()
    assert [n.op_type for n in body] == ["Sigmoid"] and body.outputs[0].name == "ty"
    for c in (True, False):
        assert_equivalent(before, model, {"x": np.ones((1, 4, 5, 3), np.float32), "c": np.array(c)})
