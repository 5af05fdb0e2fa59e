"""PruneMagnitudePass: per-layer and global magnitude pruning, declines, ORT equality with masked weights."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import numpy_helper

from graphopt.passes.prune.prune_magnitude import PruneMagnitudePass, plan_magnitude, prunable_layers, prune_array
from tests.util import assert_equivalent, copy, random_feeds, run


def build(text: str, **inits) -> ir.Model:
    """A model from onnx text with numpy initializers added (shared by the compression tests)."""
    proto = onnx.parser.parse_model(text)
    for name, array in inits.items():
        proto.graph.initializer.append(numpy_helper.from_array(np.asarray(array), name))
    return ir.serde.deserialize_model(proto)


def weights(model: ir.Model) -> dict[str, np.ndarray]:
    return {n.name: n.inputs[1].const_value.numpy() for n in model.graph if n.op_type in ("Conv", "Gemm", "MatMul")}


RNG = np.random.default_rng(0)
MLP = """<ir_version: 8, opset_import: ["" : 17]>
mlp (float[3, 16] x) => (float[3, 8] y) {
    h = MatMul (x, w1)
    r = Relu (h)
    y = Gemm <transB = 1> (r, w2, b2)
}"""


def mlp(scale2: float = 1.0) -> ir.Model:
    m = build(MLP, w1=RNG.standard_normal((16, 32)).astype(np.float32),
              w2=(scale2 * RNG.standard_normal((8, 32))).astype(np.float32), b2=np.ones(8, np.float32))
    for i, node in enumerate(m.graph):
        node.name = f"n{i}"
    return m


@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.9])
def test_layer_scope_prunes_each_layer_to_the_target_and_keeps_the_largest(sparsity):
    model = mlp()
    before = weights(model)
    original = copy(model)
    result = PruneMagnitudePass(plan_magnitude(prunable_layers(model), sparsity))(model)
    assert result.modified and result.counters["layers_pruned"] == 2
    for name, w in weights(model).items():
        assert np.mean(w == 0) == pytest.approx(sparsity, abs=0.01)
        kept = np.abs(before[name][w != 0])
        dropped = np.abs(before[name][w == 0])
        assert kept.min() >= dropped.max()  # magnitude order
        np.testing.assert_array_equal(w[w != 0], before[name][w != 0])
    # ORT: the pruned model computes what the original computes with masked weights.
    feeds = random_feeds(original)
    reference = copy(original)
    for node in reference.graph:
        if node.op_type in ("MatMul", "Gemm"):
            array = node.inputs[1].const_value.numpy()
            node.inputs[1].const_value = ir.tensor(prune_array(array, sparsity), name=node.inputs[1].name)
    assert_equivalent(reference, model, feeds)


def test_global_scope_takes_one_threshold_so_small_layers_lose_more():
    model = mlp(scale2=0.1)
    plan = plan_magnitude(prunable_layers(model), 0.5, "global")
    assert plan["n2"] > 0.9 and plan["n0"] < 0.35  # the small-weight layer goes almost entirely
    PruneMagnitudePass(plan)(model)
    total = sum(w.size for w in weights(model).values())
    zeros = sum(np.count_nonzero(w == 0) for w in weights(model).values())
    assert zeros / total == pytest.approx(0.5, abs=0.01)


def test_a_weight_shared_with_a_layer_left_out_is_not_changed():
    shared = RNG.standard_normal((16, 16)).astype(np.float32)
    model = build("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[2, 16] x) => (float[2, 16] a, float[2, 16] b) {
            a = MatMul (x, w)
            b = MatMul (x, w)
        }""", w=shared)
    first, second = list(model.graph)
    first.name, second.name = "first", "second"
    PruneMagnitudePass({"first": 0.5})(model)
    assert np.mean(first.inputs[1].const_value.numpy() == 0) == 0.5
    np.testing.assert_array_equal(second.inputs[1].const_value.numpy(), shared)
    assert first.inputs[1] is not second.inputs[1]


def test_declines_weights_that_are_inputs_or_not_float():
    model = build("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[2, 4] x, float[4, 4] w) => (float[2, 4] y, int32[2, 4] z) {
            y = MatMul (x, w)
            xi = Cast <to = 6> (x)
            z = MatMul (xi, wi)
        }""", wi=np.ones((4, 4), np.int32))
    assert prunable_layers(model) == {}
    result = PruneMagnitudePass({n.name: 0.5 for n in model.graph})(model)
    assert not result.modified


def test_already_sparse_layer_is_not_rewritten():
    w = np.zeros((16, 8), np.float32)
    w[0] = 1
    model = build("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[2, 16] x) => (float[2, 8] y) { y = MatMul (x, w) }""", w=w)
    node = next(iter(model.graph))
    node.name = "mm"
    value = node.inputs[1]
    result = PruneMagnitudePass({"mm": 0.5})(model)
    assert not result.modified and node.inputs[1] is value
    assert result.layers["mm"]["sparsity"] == pytest.approx(120 / 128)


def test_conv_weights_pruned_and_checked_in_ort():
    model = build("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 3, 8, 8] x) => (float[1, 4, 8, 8] y) { y = Conv <pads = [1, 1, 1, 1]> (x, w, b) }""",
                  w=RNG.standard_normal((4, 3, 3, 3)).astype(np.float32), b=np.zeros(4, np.float32))
    node = next(iter(model.graph))
    node.name = "conv"
    original = copy(model)
    PruneMagnitudePass({"conv": 0.7})(model)
    w = node.inputs[1].const_value.numpy()
    assert np.mean(w == 0) == pytest.approx(0.7, abs=0.02)
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)
    feeds = random_feeds(original)
    x = feeds["x"]
    got = run(model, feeds)[0]
    reference = copy(original)
    next(iter(reference.graph)).inputs[1].const_value = ir.tensor(w, name="w")
    np.testing.assert_allclose(got, run(reference, {"x": x})[0], rtol=1e-6, atol=1e-6)
