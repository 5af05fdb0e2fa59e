import numpy as np
import onnx
import pytest

from graphopt.passes.cleanup.eliminate_dead_code import EliminateDeadCodePass
from graphopt.passes.shape.unflatten_matmul import UnflattenMatMulPass
from tests.util import assert_equivalent, copy, ops, parse, to_proto

W = "{" + ", ".join(str((i % 7) / 7 - 0.5) for i in range(24)) + "}"

# tf2onnx's Tensordot for a Keras Dense on [batch, seq, 4] -> [batch, seq, 6].
TENSORDOT = """
<ir_version: 8, opset_import: ["" : 15]>
g (float[batch,seq,4] x) => (float[batch,seq,6] y) <float[4,6] w = %s, int64[2] flat = {-1, 4}, int64[1] n = {6},
                                                     int64[2] lead = {0, 1}> {
    f = Reshape(x, flat)
    m = MatMul(f, w)
    s = Shape(x)
    s32 = Cast <to = 6> (s)
    l = Gather <axis = 0> (s32, lead)
    n32 = Cast <to = 6> (n)
    t32 = Concat <axis = 0> (l, n32)
    t = Cast <to = 7> (t32)
    y = Reshape(m, t)
}
""" % W

# MXNet's Dense: Flatten(axis=-1), Gemm(transB=1) with bias, Reshape to Shape(x)[:-1] + [N].
FLATTEN_GEMM = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[batch,seq,4] x) => (float[batch,seq,6] y) <float[6,4] w = %s, float[6] b = {1, 2, 3, 4, 5, 6},
                                                     int64[1] zero = {0}, int64[1] minus1 = {-1}, int64[1] n = {6}> {
    f = Flatten <axis = -1> (x)
    m = Gemm <transB = 1> (f, w, b)
    s = Shape(x)
    l = Slice(s, zero, minus1)
    t = Concat <axis = 0> (l, n)
    y = Reshape(m, t)
}
""" % W


def _feeds(batch=2, seq=3):
    return {"x": np.random.default_rng(0).standard_normal((batch, seq, 4)).astype(np.float32)}


def _run(text):
    model = parse(text)
    before = copy(model)
    result = UnflattenMatMulPass()(model)
    EliminateDeadCodePass()(model)
    return before, model, result


def test_tensordot_becomes_one_matmul_and_keeps_dims_dynamic():
    before, model, result = _run(TENSORDOT)
    assert result.counters == {"tensordot_unflattened": 1}
    assert ops(model) == ["MatMul"]
    assert model.graph.node(0).inputs[0] is model.graph.inputs[0]
    assert model.graph.outputs[0].name == "y"
    for batch, seq in [(2, 3), (1, 7), (5, 1)]:
        assert_equivalent(before, model, _feeds(batch, seq))


def test_flatten_gemm_becomes_matmul_add_with_transposed_weight():
    before, model, result = _run(FLATTEN_GEMM)
    assert result.counters == {"flatten_gemm_unflattened": 1}
    assert ops(model) == ["MatMul", "Add"]
    w_t = model.graph.node(0).inputs[1]
    assert w_t.name != "w" and w_t.const_value.shape == (4, 6)  # fresh name, never overwriting w
    assert "w" not in model.graph.initializers  # the old weight went dead: the file does not grow
    for batch, seq in [(2, 3), (4, 1)]:
        assert_equivalent(before, model, _feeds(batch, seq))


@pytest.mark.parametrize("text", [
    # the flattened value is reshaped to something other than x's leading dims
    TENSORDOT.replace("int64[2] lead = {0, 1}", "int64[2] lead = {1, 0}"),
    # the inner reshape keeps two dims: not a flatten of x's leading dims
    TENSORDOT.replace("int64[2] flat = {-1, 4}", "int64[2] flat = {-1, 2}").replace("float[4,6] w", "float[2,12] w")
    .replace("int64[1] n = {6}", "int64[1] n = {12}").replace("float[batch,seq,6] y", "float[?,?,?] y"),
    # the 2-D product is read by something else too
    TENSORDOT.replace("=> (float[batch,seq,6] y)", "=> (float[batch,seq,6] y, float[?,6] m)"),
    # a shared weight that transB would have to copy
    FLATTEN_GEMM.replace("y = Reshape(m, t)", "y = Reshape(m, t)\n    w2 = Identity(w)").replace(
        "=> (float[batch,seq,6] y)", "=> (float[batch,seq,6] y, float[6,4] w2)"),
    # custom-domain MatMul
    TENSORDOT.replace('["" : 15]', '["" : 15, "custom" : 1]').replace("m = MatMul(f, w)", "m = custom.MatMul(f, w)"),
])
def test_leave_it_alone(text):
    model = parse(text)
    before = copy(model)
    result = UnflattenMatMulPass()(model)
    assert not result.modified and ops(model) == ops(before)


def test_subgraph():
    model = parse("""
        <ir_version: 8, opset_import: ["" : 15]>
        g (float[batch,seq,4] x, bool c) => (float[batch,seq,6] y)
          <float[4,6] w = %s, int64[2] flat = {-1, 4}, int64[1] n = {6}, int64[1] zero = {0}, int64[1] two = {2}> {
            y = If(c) <
                then_branch = th () => (float[batch,seq,6] ty) {
                    f = Reshape(x, flat)
                    m = MatMul(f, w)
                    s = Shape(x)
                    l = Slice(s, zero, two)
                    t = Concat <axis = 0> (l, n)
                    ty = Reshape(m, t)
                },
                else_branch = el () => (float[batch,seq,6] ey) {
                    r = Relu(x)
                    ey = MatMul(r, w)
                }
            >
        }
    """ % W)
    before = copy(model)
    result = UnflattenMatMulPass()(model)
    EliminateDeadCodePass()(model)
    assert result.counters == {"tensordot_unflattened": 1}
    body = model.graph.node(0).attributes["then_branch"].as_graph()
    assert [n.op_type for n in body] == ["MatMul"] and body.outputs[0].name == "ty"
    onnx.checker.check_model(to_proto(model), full_check=True)
    for c in (True, False):
        assert_equivalent(before, model, {**_feeds(), "c": np.array(c)})
