"""PruneChannelsPass and the dependency groups: residual Add, Concat, depthwise groups, BN,
Flatten into Gemm, transformer FFN; every pruned model equals a reference model built by
hand with the pruned weights, in ORT with its optimizations off; declines block their groups."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx_ir.passes.common import ShapeInferencePass

from graphopt.passes.prune.prune_channels import PruneChannelsPass, keep_count
from graphopt.passes.prune.prune_groups import analyze_channels
from tests.passes.test_prune_magnitude import build
from tests.util import copy, random_feeds, run

RNG = np.random.default_rng(1)
OPSET = '<ir_version: 8, opset_import: ["" : 17]>'


def f32(*shape, scale=1.0):
    return (scale * RNG.standard_normal(shape)).astype(np.float32)


def named(model: ir.Model) -> ir.Model:
    """Node names n0, n1, ... (groups are named after their first layer) and inferred shapes,
    as the compression stage prepares a model."""
    for i, node in enumerate(model.graph):
        node.name = f"n{i}"
    ShapeInferencePass(data_prop=False)(model)
    return model


def l1(w: np.ndarray, axis: int = 0) -> np.ndarray:
    rows = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    score = np.abs(rows).sum(axis=1)
    return score / score.mean()


def top(score: np.ndarray, keep: int) -> np.ndarray:
    return np.sort(np.argsort(-score, kind="stable")[:keep])


def assert_same_outputs(model: ir.Model, reference: ir.Model, feeds=None):
    proto = ir.serde.serialize_model(model)
    onnx.checker.check_model(proto, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=True)  # annotations agree with the weights
    dims = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in inferred.graph.value_info}
    for node in model.graph:
        for out in node.outputs:
            if out.shape is not None and out.name in dims and all(isinstance(d, int) for d in out.shape):
                assert list(out.shape) == dims[out.name], out.name
    feeds = feeds or random_feeds(reference)
    for got, want in zip(run(model, feeds), run(reference, feeds)):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# x -> conv1 -> relu -> conv2 (+ conv1: residual) -> relu -> [depthwise | 1x1 conv] -> Concat -> BN -> relu -> conv4 -> y
RESIDUAL = OPSET + """
g (float[1, 4, 8, 8] x) => (float[1, 5, 8, 8] y) {
    c1 = Conv <pads = [1, 1, 1, 1]> (x, w1, b1)
    r1 = Relu (c1)
    c2 = Conv <pads = [1, 1, 1, 1]> (r1, w2, b2)
    s = Add (c2, c1)
    r2 = Relu (s)
    dw = Conv <pads = [1, 1, 1, 1], group = %(group)d> (r2, wd, bd)
    c3 = Conv (r2, w3, b3)
    cat = Concat <axis = 1> (dw, c3)
    bn = BatchNormalization (cat, gamma, beta, mean, var)
    r3 = Relu (bn)
    y = Conv (r3, w4, b4)
}"""


def residual_weights():
    return dict(w1=f32(8, 4, 3, 3), b1=f32(8), w2=f32(8, 8, 3, 3), b2=f32(8), wd=f32(8, 1, 3, 3), bd=f32(8),
                w3=f32(6, 8, 1, 1), b3=f32(6), gamma=f32(14), beta=f32(14), mean=f32(14),
                var=np.abs(f32(14)) + 0.5, w4=f32(5, 14, 1, 1), b4=f32(5))


def test_residual_add_concat_depthwise_and_bn_equal_a_reference_built_with_the_pruned_weights():
    w = residual_weights()
    model = named(build(RESIDUAL % {"group": 8}, **w))
    dep = analyze_channels(model)
    assert {n: (g.size, g.blocked is None) for n, g in dep.groups.items()} == {
        "n0": (8, True), "n6": (6, True), "n10": (5, False)}  # conv1 + conv2 are one group (the residual Add)
    assert dep.groups["n0"].producers == ["n0", "n2"]
    assert "graph output" in dep.groups["n10"].blocked

    result = PruneChannelsPass(0.5)(model)
    assert result.modified and result.groups == {
        "n0": {"channels": 8, "kept": 4, "layers": ["n0", "n2"]}, "n6": {"channels": 6, "kept": 3, "layers": ["n6"]}}
    a = top(l1(w["w1"]) + l1(w["w2"]), 4)
    c = top(l1(w["w3"]), 3)
    cat = np.concatenate([a, 8 + c])
    ref = build(RESIDUAL % {"group": 4}, w1=w["w1"][a], b1=w["b1"][a], w2=w["w2"][a][:, a], b2=w["b2"][a],
                wd=w["wd"][a], bd=w["bd"][a], w3=w["w3"][c][:, a], b3=w["b3"][c], gamma=w["gamma"][cat],
                beta=w["beta"][cat], mean=w["mean"][cat], var=w["var"][cat], w4=w["w4"][:, cat], b4=w["b4"])
    assert_same_outputs(model, ref)
    dw = next(n for n in model.graph if n.name == "n5")
    assert dw.attributes["group"].as_int() == 4
    assert next(n for n in model.graph if n.outputs[0].name == "cat").outputs[0].shape[1] == 7  # annotation follows


def test_depthwise_multiplier_keeps_each_input_channels_outputs_together():
    text = OPSET + """
    g (float[1, 3, 6, 6] x) => (float[1, 2, 6, 6] y) {
        c = Conv (x, w1)
        d = Conv <group = 4, pads = [1, 1, 1, 1]> (c, wd)
        y = Conv (d, w2)
    }"""
    w1, wd, w2 = f32(4, 3, 1, 1), f32(8, 1, 3, 3), f32(2, 8, 1, 1)
    model = named(build(text, w1=w1, wd=wd, w2=w2))
    PruneChannelsPass(0.5)(model)
    k = top(l1(w1), 2)
    rows = (k[:, None] * 2 + np.arange(2)).reshape(-1)  # input channel c feeds depthwise outputs 2c, 2c+1
    ref = build(text.replace("group = 4", "group = 2"), w1=w1[k], wd=wd[rows], w2=w2[:, rows])
    assert_same_outputs(model, ref)


def test_flatten_into_gemm_slices_each_channels_block_of_features():
    text = OPSET + """
    g (float[2, 3, 4, 4] x) => (float[2, 10] y) {
        c = Conv (x, w1, b1)
        r = Relu (c)
        f = Flatten (r)
        y = Gemm <transB = 1> (f, w2, b2)
    }"""
    w1, b1, w2, b2 = f32(8, 3, 1, 1), f32(8), f32(10, 128), f32(10)
    model = named(build(text, w1=w1, b1=b1, w2=w2, b2=b2))
    PruneChannelsPass(0.5)(model)
    k = top(l1(w1), 4)
    cols = (k[:, None] * 16 + np.arange(16)).reshape(-1)
    assert_same_outputs(model, build(text, w1=w1[k], b1=b1[k], w2=w2[:, cols], b2=b2))


def test_transformer_ffn_intermediate_is_pruned_and_the_residual_hidden_size_is_not():
    text = OPSET + """
    g (float[2, 5, 16] x) => (float[2, 5, 16] y) {
        h = MatMul (x, w1)
        hb = Add (h, b1)
        a = Gelu (hb)
        o = MatMul (a, w2)
        ob = Add (o, b2)
        y = Add (ob, x)
    }"""
    text = text.replace('"" : 17', '"" : 20')
    w1, b1, w2, b2 = f32(16, 32), f32(32), f32(32, 16), f32(16)
    model = named(build(text, w1=w1, b1=b1, w2=w2, b2=b2))
    dep = analyze_channels(model)
    assert dep.groups["n0"].blocked is None and "mixes channels" in dep.groups["n3"].blocked
    result = PruneChannelsPass(0.25, round_to=8)(model)
    assert result.groups["n0"]["kept"] == 24
    k = top(l1(w1, axis=1), 24)
    assert_same_outputs(model, build(text, w1=w1[:, k], b1=b1[k], w2=w2[k], b2=b2))


def test_reshape_and_transpose_that_keep_the_channel_axis_follow_it():
    text = OPSET + """
    g (float[1, 3, 4, 4] x) => (float[1, 2, 16] y) {
        c = Conv (x, w1)
        t = Transpose <perm = [0, 2, 3, 1]> (c)
        r = Reshape (t, shape)
        u = Transpose <perm = [0, 2, 1]> (r)
        y = MatMul (w2, u)
    }"""
    # u is [1, 8, 16] with channels on axis 1, read by MatMul as its *second* input: blocked.
    w1 = f32(8, 3, 1, 1)
    model = named(build(text, w1=w1, shape=np.array([1, 16, 8], np.int64), w2=f32(2, 8)))
    assert "MatMul" in analyze_channels(model).groups["n0"].blocked
    text2 = text.replace("y = MatMul (w2, u)", "v = Transpose <perm = [0, 2, 1]> (u)\n y = MatMul (v, w2)").replace(
        "float[1, 2, 16] y", "float[1, 16, 2] y")
    model = named(build(text2, w1=w1, shape=np.array([1, 16, 8], np.int64), w2=f32(8, 2)))
    w2 = model.graph.initializers["w2"].const_value.numpy()
    PruneChannelsPass(0.5)(model)
    k = top(l1(w1), 4)
    ref = build(text2, w1=w1[k], shape=np.array([1, 16, 4], np.int64), w2=w2[k])
    assert_same_outputs(model, ref)


@pytest.mark.parametrize("consumer, why", [
    ("y = Softmax <axis = 1> (c)", "Softmax"),
    ("y = Conv <group = 2> (c, wg)", "Conv"),
    ("y = Reshape (c, heads)", "Reshape"),
    ("y = LayerNormalization <axis = 1> (c, ln)", "LayerNormalization"),
    ("y = Add (c, x8)", "mixes channels"),
])
def test_consumers_that_need_every_channel_block_the_group(consumer, why):
    text = OPSET.replace("17", "18") + f"""
    g (float[1, 3, 4, 4] x, float[1, 8, 4, 4] x8) => (float[1, 8, 4, 4] y) {{
        c = Conv (x, w1)
        {consumer}
    }}"""
    model = named(build(text, w1=f32(8, 3, 1, 1), wg=f32(8, 4, 1, 1), heads=np.array([1, 2, 4, 4, 4], np.int64),
                        ln=f32(8, 4, 4)))
    group = analyze_channels(model).groups["n0"]
    assert group.blocked and why in group.blocked
    before = copy(model)
    result = PruneChannelsPass(0.5)(model)
    assert not result.modified and "n0" in result.blocked
    assert [v.name for n in model.graph for v in n.inputs] == [v.name for n in before.graph for v in n.inputs]


def test_a_value_read_inside_a_subgraph_blocks_its_channels():
    text = OPSET + """
    g (float[1, 3, 4, 4] x, bool cond) => (float[1, 8, 4, 4] y, float[1, 2, 4, 4] z) {
        c = Conv (x, w1)
        y = If (cond) <then_branch = t () => (float[1, 8, 4, 4] a) { a = Relu (c) },
                       else_branch = e () => (float[1, 8, 4, 4] b) { b = Neg (c) }>
        z = Conv (c, w2)
    }"""
    model = named(build(text, w1=f32(8, 3, 1, 1), w2=f32(2, 8, 1, 1)))
    assert analyze_channels(model).groups["n0"].blocked
    assert not PruneChannelsPass(0.5)(model).modified


def test_only_the_selected_groups_are_pruned_and_bn_scales_rank_channels():
    w = residual_weights()
    model = named(build(RESIDUAL % {"group": 8}, **w))
    result = PruneChannelsPass(0.5, groups=frozenset({"n6"}))(model)
    assert set(result.groups) == {"n6"}
    model = named(build(RESIDUAL % {"group": 8}, **w))
    gamma = np.array([0, 0, 0, 0, 9, 9, 9, 9], np.float32)  # the last four channels matter
    result = PruneChannelsPass(0.5, groups=frozenset({"n0"}), criterion="bn",
                               bn_scales={"n0": gamma, "n2": gamma})(model)
    conv1 = next(n for n in model.graph if n.name == "n0")
    np.testing.assert_array_equal(conv1.inputs[1].const_value.numpy(), w["w1"][4:])


@pytest.mark.parametrize("channels, sparsity, multiple, kept", [
    (64, 0.5, 8, 32), (64, 0.3, 8, 48), (64, 0.7, 8, 24), (6, 0.5, 8, 3), (16, 0.99, 8, 8), (3, 0.9, 1, 1),
    (16, 0.3, 8, 16),
    (100, 0.5, 1, 50)])
def test_keep_count(channels, sparsity, multiple, kept):
    assert keep_count(channels, sparsity, multiple) == kept


def test_digits_model_prunes_runs_and_shrinks():
    import graphopt
    from graphopt.core.analysis import analyze
    from tests.conftest import DIGITS

    model = graphopt.optimize(DIGITS, verify=False).model
    before = analyze(model)
    result = PruneChannelsPass(0.5, round_to=8)(model)
    assert result.counters["groups_pruned"] == 3 and "graph output" in next(iter(result.blocked.values()))
    after = analyze(model)
    assert after["macs"] < 0.4 * before["macs"] and after["parameters"] < 0.5 * before["parameters"]
    out = run(model, {"input": np.random.default_rng(0).random((4, 1, 8, 8), np.float32)})[0]
    assert out.shape == (4, 10)
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)
