import numpy as np
import onnx
import pytest

from graphopt.passes.fusion.fuse_pad import FusePadPass
from tests.util import assert_equivalent, copy, ops, parse, to_proto

W = "{" + ", ".join(str((i % 5) / 5 - 0.4) for i in range(2 * 3 * 3 * 3)) + "}"
PAD_CONV = """
<ir_version: 8, opset_import: ["" : 15]>
g (float[batch,3,8,8] x) => (float[batch,2,%(out)s] y) <int64[8] pads = {%(pads)s}, float[2,3,3,3] w = %(w)s> {
    p = Pad(x, pads)
    y = Conv <pads = [1, 0, 1, 0]> (p, w)
}
"""


def _model(pads="0,0,0,1,0,0,1,0", out="?,?", text=PAD_CONV):
    return parse(text % {"pads": pads, "out": out, "w": W})


def test_tf_same_padding_folds_into_conv_pads():
    model = _model()
    before = copy(model)
    result = FusePadPass()(model)
    assert result.counters == {"pads_folded_into_conv": 1}
    assert ops(model) == ["Conv"]
    assert list(model.graph.node(0).attributes["pads"].as_ints()) == [1, 1, 2, 0]
    onnx.checker.check_model(to_proto(model), full_check=True)
    for batch in (1, 3):
        assert_equivalent(before, model, {"x": np.random.default_rng(0).standard_normal((batch, 3, 8, 8))
                                          .astype(np.float32)})


@pytest.mark.parametrize("model", [
    _model(pads="0,1,0,0,0,0,0,0"),                                     # pads the channels
    _model(text=PAD_CONV.replace("Pad(x, pads)", 'Pad <mode = "reflect"> (x, pads)')),
    _model(text=PAD_CONV.replace("y = Conv", "z = Relu(p)\n    y = Conv")),  # pad read elsewhere
    _model(text=PAD_CONV.replace('["" : 15]', '["" : 15, "custom" : 1]').replace("y = Conv", "y = custom.Conv")),
    _model(text=PAD_CONV.replace("g (float[batch,3,8,8] x)", "g (float[batch,3,8,8] x, int64[8] pads)")
           .replace("<int64[8] pads = {%(pads)s}, ", "<")),                # pads fed by the caller
])
def test_leave_it_alone(model):
    before = copy(model)
    assert not FusePadPass()(model).modified
    assert ops(model) == ops(before)


def test_old_opset_is_declined():
    model = parse("""
        <ir_version: 6, opset_import: ["" : 10]>
        g (float[1,3,8,8] x) => (float[1,2,?,?] y) <float[2,3,3,3] w = %s> {
            p = Pad <pads = [0, 0, 1, 1, 0, 0, 1, 1]> (x)
            y = Conv(p, w)
        }
    """ % W)
    assert not FusePadPass()(model).modified


def test_subgraph():
    model = parse("""
        <ir_version: 8, opset_import: ["" : 15]>
        g (float[1,3,8,8] x, bool c) => (float[1,2,?,?] y) <int64[8] pads = {0,0,1,1,0,0,1,1}, float[2,3,3,3] w = %s> {
            y = If(c) <
                then_branch = th () => (float[1,2,?,?] ty) { p = Pad(x, pads) ty = Conv(p, w) },
                else_branch = el () => (float[1,2,?,?] ey) { ey = Conv <pads = [1, 1, 1, 1]> (x, w) }
            >
        }
    """ % W)
    before = copy(model)
    assert FusePadPass()(model).counters == {"pads_folded_into_conv": 1}
    for c in (True, False):
        assert_equivalent(before, model, {"x": np.ones((1, 3, 8, 8), np.float32), "c": np.array(c)})


POOL = """
<ir_version: 8, opset_import: ["" : 15]>
g (float[batch,3,8,8] x) => (float[batch,3,?,?] y) <int64[8] pads = {0,0,1,1,0,0,1,1}%(value_decl)s> {
    a = %(source)s
    p = Pad(a, pads%(value)s)
    y = %(pool)s <kernel_shape = [3, 3], strides = [2, 2]> (p)
}
"""


def _pool(pool="MaxPool", source="Relu(x)", value=None):
    decl = f", float v = {{{value}}}" if value is not None else ""
    return parse(POOL % {"pool": pool, "source": source, "value": ", v" if value is not None else "",
                         "value_decl": decl})


def _pool_feeds(batch=2):
    return {"x": np.random.default_rng(2).standard_normal((batch, 3, 8, 8)).astype(np.float32)}


@pytest.mark.parametrize("pool, source, value", [
    ("MaxPool", "Relu(x)", None),          # zeros cannot beat a window max that is already >= 0
    ("MaxPool", "Neg(x)", "-inf"),         # -inf padding is what MaxPool's pads mean
    ("AveragePool", "Neg(x)", None),       # zeros counted: count_include_pad=1
])
def test_pad_folds_into_pooling(pool, source, value):
    model = _pool(pool, source, value)
    before = copy(model)
    result = FusePadPass()(model)
    assert result.counters == {"pads_folded_into_pool": 1}
    assert "Pad" not in ops(model)
    node = next(n for n in model.graph if n.op_type == pool)
    assert list(node.attributes["pads"].as_ints()) == [1, 1, 1, 1]
    for batch in (1, 3):
        assert_equivalent(before, model, _pool_feeds(batch))


@pytest.mark.parametrize("pool, source, value", [
    ("MaxPool", "Neg(x)", None),            # may be negative: zero padding changes the max
    ("MaxPool", "Relu(x)", "1.0"),          # padding with 1 is not MaxPool padding
    ("AveragePool", "Neg(x)", "-inf"),
])
def test_pooling_pad_left_alone(pool, source, value):
    model = _pool(pool, source, value)
    before = copy(model)
    assert not FusePadPass()(model).modified
    assert ops(model) == ops(before)


# Found by tests/test_differential.py (seed 1): Pad(0,0,1,0 / 0,0,0,2) -> AveragePool(kernel 2)
# became pads [1,0,0,2], which ORT refuses ("Pad should be smaller than kernel").
@pytest.mark.parametrize("pool, pads, pool_attrs", [
    ("AveragePool", "0,0,1,0,0,0,0,2", ""),                 # an end pad equal to the kernel
    ("MaxPool", "0,0,1,1,0,0,1,1", ", pads = [1, 1, 1, 1]"),  # 1 + 1 from the pool's own pads
    ("AveragePool", "0,0,0,0,0,0,1,1", ", ceil_mode = 1"),  # 4 rows + 1 padded: 3 windows, 2 from pads
    ("MaxPool", "0,0,0,0,0,0,1,1", ", ceil_mode = 1"),
])
def test_pooling_pad_not_folded_where_ort_or_the_output_size_would_differ(pool, pads, pool_attrs):
    model = parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2,3,4,4] x) => (float[2,3,?,?] y) <int64[8] pads = {%s}> {
            a = Relu(x)
            p = Pad(a, pads)
            y = %s <kernel_shape = [2, 2], strides = [2, 2]%s> (p)
        }""" % (pads, pool, pool_attrs))
    before = copy(model)
    assert not FusePadPass()(model).modified
    assert ops(model) == ops(before)


def test_pooling_pad_below_the_kernel_still_folds_with_ceil_mode():
    model = parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2,3,5,5] x) => (float[2,3,?,?] y) <int64[8] pads = {0,0,1,1,0,0,0,0}> {
            a = Relu(x)
            p = Pad(a, pads)
            y = MaxPool <kernel_shape = [2, 2], strides = [2, 2], ceil_mode = 1> (p)
        }""")
    before = copy(model)
    assert FusePadPass()(model).counters == {"pads_folded_into_pool": 1}
    assert_equivalent(before, model, {"x": np.random.default_rng(0).standard_normal((2, 3, 5, 5)).astype(np.float32)})
