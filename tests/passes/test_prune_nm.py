"""PruneNMPass: the N:M pattern along each layer's reduction axis, qualifying layers, declines, ORT."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt.core.errors import UsageError
from graphopt.passes.prune.prune_nm import PATTERN_TAG, PruneNMPass, nm_array, parse_pattern
from tests.passes.test_prune_magnitude import build
from tests.util import assert_equivalent, copy

RNG = np.random.default_rng(3)
OPSET = '<ir_version: 8, opset_import: ["" : 17]>'


def runs_ok(w: np.ndarray, axis: int, n: int, m: int) -> bool:
    runs = np.moveaxis(w, axis, -1).reshape(-1, m)
    return bool(np.all(np.count_nonzero(runs, axis=1) <= n))


@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (4, 8)])
def test_pattern_along_the_reduction_axis_of_each_layer(n, m):
    model = build(OPSET + """
        g (float[2, 8, 5, 5] img, float[3, 16] x) => (float[2, 4, 5, 5] c, float[3, 8] a, float[3, 8] b) {
            c = Conv <pads = [1, 1, 1, 1]> (img, wc)
            a = Gemm <transB = 1> (x, wg)
            b = MatMul (x, wm)
        }""", wc=RNG.standard_normal((4, 8, 3, 3)).astype(np.float32),
        wg=RNG.standard_normal((8, 16)).astype(np.float32), wm=RNG.standard_normal((16, 8)).astype(np.float32))
    names = ["conv", "gemm", "matmul"]
    for name, node in zip(names, model.graph):
        node.name = name
    before = copy(model)
    result = PruneNMPass(n, m)(model)
    assert set(result.layers) == set(names) and not result.declined
    conv, gemm, matmul = (node.inputs[1].const_value.numpy() for node in model.graph)
    assert runs_ok(conv, 1, n, m) and runs_ok(gemm, 1, n, m) and runs_ok(matmul, 0, n, m)
    assert all(node.metadata_props[PATTERN_TAG] == f"{n}:{m}" for node in model.graph)
    for layer in result.layers.values():
        assert layer["sparsity"] == pytest.approx(1 - n / m, abs=0.01)
    # ORT: the pruned model equals the original with the same masked weights.
    reference = copy(before)
    for node, axis in zip(reference.graph, (1, 1, 0)):
        w = node.inputs[1].const_value.numpy()
        node.inputs[1].const_value = __import__("onnx_ir").tensor(nm_array(w, axis, n, m), name=node.inputs[1].name)
    assert_equivalent(reference, model)


def test_keeps_the_largest_of_each_run():
    w = np.array([[1.0, -4.0, 3.0, 0.5, 2.0, 2.5, -0.1, 9.0]], np.float32)
    np.testing.assert_array_equal(nm_array(w, 1, 2, 4), [[0, -4, 3, 0, 0, 2.5, 0, 9]])


def test_layers_whose_reduction_axis_is_not_a_multiple_of_m_are_declined_and_untouched():
    w = RNG.standard_normal((6, 8)).astype(np.float32)
    model = build(OPSET + """
        g (float[3, 6] x) => (float[3, 8] y) { y = MatMul (x, w) }""", w=w)
    node = next(iter(model.graph))
    node.name = "mm"
    result = PruneNMPass(2, 4)(model)
    assert not result.modified and "not a multiple of 4" in result.declined["mm"]
    np.testing.assert_array_equal(node.inputs[1].const_value.numpy(), w)


def test_pattern_parsing():
    assert parse_pattern("2:4") == (2, 4)
    for bad in ("4:2", "2-4", "0:4", "x"):
        with pytest.raises(UsageError):
            parse_pattern(bad)
