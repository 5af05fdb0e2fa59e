"""FactorizeLowRankPass: exact on rank-deficient weights (MatMul, Gemm, 1x1 and kxk Conv with
strides/pads/dilations), rank choice, declines, ORT with optimizations off."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt.core.errors import UsageError
from graphopt.passes.prune.low_rank import FactorizeLowRankPass, RankSpec, choose_rank, parse_rank_spec
from tests.passes.test_prune_magnitude import build
from tests.util import assert_equivalent, copy, ops

RNG = np.random.default_rng(2)
OPSET = '<ir_version: 8, opset_import: ["" : 17]>'


def low_rank(rows: int, cols: int, rank: int) -> np.ndarray:
    return (RNG.standard_normal((rows, rank)) @ RNG.standard_normal((rank, cols))).astype(np.float32)


def named(model):
    for i, node in enumerate(model.graph):
        node.name = f"n{i}"
    return model


def test_rank_deficient_matmul_and_gemm_factor_exactly():
    a = low_rank(32, 24, 3)
    model = named(build(OPSET + """
        g (float[4, 32] x) => (float[4, 24] y, float[4, 24] z, float[2, 2, 24] v) {
            y = MatMul (x, a)
            z = Gemm <transB = 1, alpha = 0.5, beta = 2.0> (x, at, c)
            x3 = Reshape (x, s)
            v = MatMul (x3, a2)
        }""", a=a, at=a.T.copy(), c=RNG.standard_normal(24).astype(np.float32), a2=a.copy(),
        s=np.array([2, 2, 32], np.int64)))
    before = copy(model)
    result = FactorizeLowRankPass(1.0)(model)
    assert result.counters["layers_factored"] == 3
    assert {v["rank"] for v in result.layers.values()} == {3}
    assert ops(model).count("MatMul") == 5 and ops(model).count("Gemm") == 1
    assert_equivalent(before, model, rtol=1e-4, atol=1e-4)
    assert [v.name for v in model.graph.outputs] == ["y", "z", "v"]


@pytest.mark.parametrize("attrs, out", [
    ("pads = [1, 1, 1, 1]", "float[2, 16, 12, 12]"),
    ("pads = [1, 2, 1, 0], strides = [2, 2]", "float[2, 16, 6, 6]"),
    ("pads = [2, 1, 2, 1], dilations = [2, 1]", "float[2, 16, 12, 12]"),
    ("strides = [1, 2]", "float[2, 16, 10, 5]"),
])
def test_rank_deficient_kxk_conv_factors_exactly_by_spatial_svd(attrs, out):
    m = low_rank(3 * 3, 16 * 3, 2)  # M[(i, y), (o, x)]
    w = m.reshape(3, 3, 16, 3).transpose(2, 0, 1, 3).copy()
    model = named(build(OPSET + f"""
        g (float[2, 3, 12, 12] x) => ({out} y) {{ y = Conv <{attrs}> (x, w, b) }}""",
                        w=w, b=RNG.standard_normal(16).astype(np.float32)))
    before = copy(model)
    result = FactorizeLowRankPass(1.0, min_saving=0.0)(model)
    assert result.layers["n0"]["rank"] == 2
    first, second = list(model.graph)
    assert list(first.attributes["kernel_shape"].as_ints()) == [3, 1]
    assert list(second.attributes["kernel_shape"].as_ints()) == [1, 3]
    assert len(first.inputs) == 2 and second.name == "n0"  # the bias stays on the second; the name too
    assert_equivalent(before, model, rtol=1e-4, atol=1e-4)


def test_rank_deficient_1x1_conv_becomes_a_bottleneck_with_every_attribute_on_the_first():
    w = low_rank(32, 24, 4)[:, :, None, None].copy()
    model = named(build(OPSET + """
        g (float[1, 24, 8, 8] x) => (float[1, 32, 5, 5] y) { y = Conv <strides = [2, 2], pads = [1, 1, 1, 1]> (x, w, b) }""",
                        w=w, b=RNG.standard_normal(32).astype(np.float32)))
    before = copy(model)
    FactorizeLowRankPass("energy:1.0")(model)
    first, second = list(model.graph)
    assert first.inputs[1].shape == [4, 24, 1, 1] and second.inputs[1].shape == [32, 4, 1, 1]
    assert "strides" not in second.attributes
    assert_equivalent(before, model, rtol=1e-4, atol=1e-4)


def test_full_rank_random_weights_do_not_pay_and_are_left_alone():
    w = RNG.standard_normal((64, 64)).astype(np.float32)
    model = named(build(OPSET + """
        g (float[4, 64] x) => (float[4, 64] y) { y = MatMul (x, w) }""", w=w))
    result = FactorizeLowRankPass(0.95)(model)
    assert not result.modified and "does not pay" in result.declined["n0"]
    assert ops(model) == ["MatMul"]


def test_declines():
    model = named(build(OPSET + """
        g (float[4, 8] x, float[8, 8] wi, float[1, 8, 6, 6] img) => (float[8, 8] a, float[4, 8] b,
                                                                     float[1, 8, 6, 6] c, float[1, 8, 6, 6] d) {
            a = Gemm <transA = 1> (x, w)
            b = MatMul (x, wi)
            c = Conv <group = 2> (img, wg)
            d = Conv <auto_pad = "SAME_UPPER", kernel_shape = [3, 3]> (img, w3)
        }""", w=low_rank(4, 8, 1), wg=RNG.standard_normal((8, 4, 1, 1)).astype(np.float32),
        w3=RNG.standard_normal((8, 8, 3, 3)).astype(np.float32)))
    result = FactorizeLowRankPass(0.5, min_saving=0.0)(model)
    assert not result.modified
    assert result.declined == {"n0": "transA=1", "n1": "weight is not a constant float tensor",
                               "n2": "grouped convolution", "n3": "auto_pad=SAME_UPPER"}


def test_rank_choice():
    s = np.array([4.0, 2.0, 1.0, 0.5, 0.0])
    assert choose_rank(s, RankSpec("energy", 0.75)) == 1  # 16 / 21.25
    assert choose_rank(s, RankSpec("energy", 0.94)) == 2  # 20 / 21.25
    assert choose_rank(s, RankSpec("energy", 0.95)) == 3
    assert choose_rank(s, RankSpec("energy", 1.0)) == 4  # the zero singular value never counts
    assert choose_rank(s, RankSpec("rank", 0.5)) == 3  # ceil(2.5)
    assert parse_rank_spec("0.9") == RankSpec("energy", 0.9)
    assert parse_rank_spec("rank:0.25") == RankSpec("rank", 0.25)
    for bad in ("1.5", "rank:0", "svd:0.5", "x"):
        with pytest.raises(UsageError):
            parse_rank_spec(bad)


def test_a_real_spectrum_at_energy_095_is_approximate_and_stays_close():
    u, _ = np.linalg.qr(RNG.standard_normal((128, 128)))
    v, _ = np.linalg.qr(RNG.standard_normal((128, 128)))
    w = (u * (1.0 / np.arange(1, 129)) @ v.T).astype(np.float32)  # s_i = 1/i
    model = named(build(OPSET + """
        g (float[16, 128] x) => (float[16, 128] y) { y = MatMul (x, w) }""", w=w))
    before = copy(model)
    result = FactorizeLowRankPass(0.95)(model)
    assert result.layers["n0"]["rank"] < 20 and result.layers["n0"]["energy_kept"] >= 0.95
    assert_equivalent(before, model, rtol=0.5, atol=0.2)
