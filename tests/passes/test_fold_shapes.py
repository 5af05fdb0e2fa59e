import numpy as np
import onnx
import onnx_ir as ir
import pytest

from graphopt.passes.cleanup.eliminate_dead_code import EliminateDeadCodePass
from graphopt.passes.shape.fold_shapes import FoldShapesPass
from graphopt.passes.shape.set_input_shapes import SetInputShapesPass
from tests.util import assert_equivalent, copy, ops, parse, to_proto
from tests.util import run as util_run

# The TorchScript exporter's `x.view(x.size(0), x.size(1), 4, -1)` on x: [batch, seq, 32].
TS_VIEW = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[batch,seq,32] x) => (float[batch,4,seq,8] y) {
    s0 = Shape(x)
    i0 = Constant <value = int64 {0}> ()
    b = Gather <axis = 0> (s0, i0)
    s1 = Shape(x)
    i1 = Constant <value = int64 {1}> ()
    n = Gather <axis = 0> (s1, i1)
    s2 = Shape(x)
    i2 = Constant <value = int64 {2}> ()
    h = Gather <axis = 0> (s2, i2)
    four = Constant <value = int64 {4}> ()
    hd = Div(h, four)
    ax = Constant <value = int64[1] {0}> ()
    ub = Unsqueeze(b, ax)
    un = Unsqueeze(n, ax)
    uf = Unsqueeze(four, ax)
    uh = Unsqueeze(hd, ax)
    shape = Concat <axis = 0> (ub, un, uf, uh)
    r = Reshape(x, shape)
    y = Transpose <perm = [0, 2, 1, 3]> (r)
}
"""


def _fold(model):
    before = copy(model)
    result = FoldShapesPass()(model)
    EliminateDeadCodePass()(model)
    return before, result


def _feeds(batch, seq):
    return {"x": np.random.default_rng(0).standard_normal((batch, seq, 32)).astype(np.float32)}


def test_torchscript_view_keeps_batch_and_sequence_symbolic():
    model = parse(TS_VIEW)
    before, result = _fold(model)
    assert result.modified and result.counters == {"reshape_shapes_folded": 1}
    assert ops(model) == ["Reshape", "Transpose"]
    shape = model.graph.node(0).inputs[1].const_value.numpy().tolist()
    assert shape == [0, 0, 4, 8]  # copies of the symbolic dims, never numbers
    assert [d.value for d in model.graph.inputs[0].shape[:2]] == ["batch", "seq"]
    for batch, seq in [(1, 5), (3, 2)]:
        assert_equivalent(before, model, _feeds(batch, seq))


def test_static_dims_fold_to_numbers():
    model = parse(TS_VIEW.replace("float[batch,seq,32] x", "float[2,5,32] x"))
    before, result = _fold(model)
    assert ops(model) == ["Reshape", "Transpose"]
    assert model.graph.node(0).inputs[1].const_value.numpy().tolist() == [2, 5, 4, 8]
    assert result.counters == {"reshape_shapes_folded": 1}
    assert_equivalent(before, model, _feeds(2, 5))


def test_fixed_by_user_then_everything_folds():
    model = parse(TS_VIEW)
    before = copy(model)
    SetInputShapesPass({"x": [3, 7, 32]})(model)
    FoldShapesPass()(model)
    EliminateDeadCodePass()(model)
    assert ops(model) == ["Reshape", "Transpose"]
    assert model.graph.node(0).inputs[1].const_value.numpy().tolist() == [3, 7, 4, 8]
    assert_equivalent(before, model, _feeds(3, 7))


def test_merged_dims_become_minus_one():
    model = parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[batch,seq,4,8] x) => (float[?,32] y) {
            s = Shape(x)
            st = Constant <value = int64[1] {0}> ()
            en = Constant <value = int64[1] {2}> ()
            bs = Slice(s, st, en)
            p = ReduceProd <keepdims = 1> (bs)
            c = Constant <value = int64[1] {32}> ()
            shape = Concat <axis = 0> (p, c)
            y = Reshape(x, shape)
        }
    """)
    before, result = _fold(model)
    assert model.graph.node(0).op_type == "Reshape"
    assert model.graph.node(0).inputs[1].const_value.numpy().tolist() == [-1, 32]
    assert_equivalent(before, model, {"x": np.ones((3, 2, 4, 8), np.float32)})


def test_size_and_expand():
    model = parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[batch,3] x) => (float[batch,3] y, int64 n) {
            s = Shape(x)
            e = Expand(x, s)
            y = Relu(e)
            w = Size(y)
            n = Identity(w)
        }
    """)
    before, result = _fold(model)
    assert result.counters == {"expands_removed": 1}
    assert "Expand" not in ops(model) and "Size" in ops(model)  # Size of a dynamic tensor stays
    assert_equivalent(before, model, {"x": np.ones((4, 3), np.float32)})


@pytest.mark.parametrize("text", [
    # a dynamic dim feeding something other than a Reshape is left as it is
    """<ir_version: 8, opset_import: ["" : 17]>
       g (float[batch,3] x) => (float[batch,3] y) {
           s = Shape(x)
           z = ConstantOfShape(s)
           y = Add(x, z)
       }""",
    # two symbolic dims that are not x's own at those positions
    """<ir_version: 8, opset_import: ["" : 17]>
       g (float[a,b] x, float[b,a] t) => (float[b,a] y) {
           s = Shape(t)
           y = Reshape(x, s)
       }""",
    # the shape goes through a custom op: opaque
    """<ir_version: 8, opset_import: ["" : 17, "custom" : 1]>
       g (float[n,3] x) => (float[3,n] y) {
           s = Shape(x)
           r = custom.Reverse(s)
           y = Reshape(x, r)
       }""",
    # no shape arithmetic at all
    """<ir_version: 8, opset_import: ["" : 17]>
       g (float[2,3] x) => (float[2,3] y) { y = Relu(x) }""",
])
def test_leave_it_alone(text):
    model = parse(text)
    before = copy(model)
    result = FoldShapesPass()(model)
    assert not result.modified and not result.counters
    assert ops(model) == ops(before)
    if "custom" not in text:
        assert_equivalent(before, model, {v.name: np.ones([3 if not isinstance(d, int) else d for d in v.shape],
                                                             np.float32) for v in model.graph.inputs}
                          if "a,b" not in text else {"x": np.ones((2, 3), np.float32),
                                                     "t": np.ones((3, 2), np.float32)})


def test_stale_static_annotation_does_not_freeze_a_dynamic_dim():
    model = parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[batch,3] x) => (float[batch,3] y) {
            t = Relu(x)
            s = Shape(t)
            y = Reshape(t, s)
        }
    """)
    model.graph.node(0).outputs[0].shape = ir.Shape([1, 3])  # traced annotation from batch 1
    before, result = _fold(model)
    shape = model.graph.node(1).inputs[1]
    assert shape.const_value is None or shape.const_value.numpy().tolist()[0] == 0
    assert_equivalent(before, model, {"x": np.ones((4, 3), np.float32)})


def test_subgraph_reshape_reads_outer_shape():
    model = parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[batch,6] x, bool c) => (float[batch,2,3] y) {
            s = Shape(x)
            i = Constant <value = int64[1] {0}> ()
            j = Constant <value = int64[1] {1}> ()
            b = Slice(s, i, j)
            rest = Constant <value = int64[2] {2, 3}> ()
            shape = Concat <axis = 0> (b, rest)
            y = If(c) <
                then_branch = th () => (float[batch,2,3] ty) { ty = Reshape(x, shape) },
                else_branch = el () => (float[batch,2,3] ey) { n = Neg(x) ey = Reshape(n, shape) }
            >
        }
    """)
    before, result = _fold(model)
    assert result.counters == {"reshape_shapes_folded": 2}
    body = model.graph.node(-1).attributes["then_branch"].as_graph()
    assert body.node(0).inputs[1].const_value.numpy().tolist() == [0, 2, 3]
    onnx.checker.check_model(to_proto(model), full_check=True)
    for c in (True, False):
        assert_equivalent(before, model, {"x": np.ones((5, 6), np.float32), "c": np.array(c)})


def test_graph_output_shape_keeps_its_producer():
    model = parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2,3] x) => (int64[2] s) { s = Shape(x) }
    """)
    before, result = _fold(model)
    assert ops(model) == ["Shape"] and not result.modified


def test_weights_stay_constants_after_shape_inference():
    """The pass infers shapes on a copy that turns large initializers into inputs; they must not stay inputs."""
    weights = ", ".join(["0.5"] * 600)  # over the 1 KiB stripping threshold
    model = parse(f"""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[batch,600] x) => (float[batch,600] y) <float[600] w = {{{weights}}}> {{
            s = Shape(x)
            t = Add(x, w)
            y = Reshape(t, s)
        }}
    """)
    w = model.graph.initializers["w"]
    FoldShapesPass()(model)
    assert not w.is_graph_input() and w.const_value is not None
    assert [v.name for v in model.graph.inputs] == ["x"]


def test_flatten_of_a_flattened_value_is_removed():
    model = parse("""
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[batch,8,1,1] x) => (float[batch,8] y) {
            f = Flatten(x)
            g2 = Flatten(f)
            y = Relu(g2)
        }
    """)
    before, result = _fold(model)
    assert result.counters == {"flattens_removed": 1}
    assert ops(model) == ["Flatten", "Relu"]
    assert_equivalent(before, model, {"x": np.ones((3, 8, 1, 1), np.float32)})


def test_flatten_that_merges_dims_is_kept():
    model = parse("""
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[batch,8,2] x) => (float[batch,16] y) { y = Flatten(x) }
    """)
    assert not FoldShapesPass()(model).modified


# Found by tests/test_differential.py: shape arithmetic folded to other numbers than ORT's.
@pytest.mark.parametrize("arith, expected", [
    # TorchScript's int(w * 0.7): 10 * 0.7 is 7.0 in float32 (ORT); in float64, 6.99999988 -> 6
    ("wf = Cast <to = 1> (w)\n m = Mul(wf, s)\n n = Cast <to = 7> (m)", 7),
    ("d = Sub(w, twelve)\n n = Mod(d, four)", 2),               # fmod=0: -2 mod 4 takes 4's sign
    ("d = Sub(w, twelve)\n n = Mod <fmod = 1> (d, four)", 0),   # fmod=1: -2, an empty Range
])
def test_shape_arithmetic_follows_ort_numbers(arith, expected):
    model = parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1,1,8,10] x) => (int64[?] y)
          <int64 three = {3}, float s = {0.7}, int64 twelve = {12}, int64 four = {4}, int64 zero = {0},
           int64 one = {1}> {
            sh = Shape(x)
            w = Gather(sh, three)
            %s
            y = Range(zero, n, one)
        }""" % arith)
    before, result = _fold(model)
    assert result.counters["values_folded"] == 1 and "Shape" not in ops(model)
    feeds = {"x": np.zeros((1, 1, 8, 10), np.float32)}
    assert_equivalent(before, model, feeds)
    assert len(util_run(model, feeds)[0]) == expected


def test_reduce_sum_without_axes_and_noop_with_empty_axes_keeps_the_vector():
    model = parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1,2,3,4] x) => (float[?,?,?,?] y) {
            sh = Shape(x)
            r = ReduceSum <noop_with_empty_axes = 1> (sh)
            y = Reshape(x, r)
        }""")
    before, _ = _fold(model)
    onnx.checker.check_model(to_proto(model), full_check=True)
    assert_equivalent(before, model, {"x": np.ones((1, 2, 3, 4), np.float32)})


# Found by tests/test_differential.py (seed 101697): `mean * 1` materialized as a parameter of
# a training-mode BatchNormalization equal to its running mean; ORT's default level shares
# the two initializers and then computes the BN wrongly.
def test_training_batchnorm_parameters_are_not_materialized():
    model = parse("""
        <ir_version: 8, opset_import: ["" : 15]>
        g (float[2,4,3] x) => (float[2,4,3] y)
          <float[4] scale = {1,1,1,1}, float[4] mean = {0.5,0,1,0}, float[4] var = {1,1,1,1}, float one = {1}> {
            s = Shape(x)
            xs = Reshape(x, s)
            b = Mul(mean, one)
            y, rm, rv = BatchNormalization <training_mode = 1> (xs, scale, b, mean, var)
        }""")
    before, result = _fold(model)
    assert "Mul" in ops(model)
    assert_equivalent(before, model, {"x": np.random.default_rng(0).standard_normal((2, 4, 3)).astype(np.float32)})
