import numpy as np
import onnx
import onnxruntime as ort
import pytest

from graphopt.passes.fusion.recompose_ops import RecomposeOpsPass
from tests.util import assert_equivalent, copy, ops, parse, to_proto

GAMMA = "{1.0, 0.5, 2.0, 1.5}"
BETA = "{0.1, -0.2, 0.3, 0.0}"

# tf2onnx's LayerNorm: means as GlobalAveragePool (rank 3), x * m + (beta - mean * m).
KERAS_LN = """
<ir_version: 8, opset_import: ["" : %(opset)d]>
g (float[batch,seq,4] x) => (float[batch,seq,4] y)
  <float eps = {0.001}, float[4] gamma = %(gamma)s, float[4] beta = %(beta)s> {
    mean = GlobalAveragePool(x)
    d = Sub(x, mean)
    dd = Mul(d, d)
    var = GlobalAveragePool(dd)
    ve = Add(var, eps)
    sd = Sqrt(ve)
    r = Reciprocal(sd)
    m = Mul(r, gamma)
    xm = Mul(x, m)
    nm = Neg(mean)
    nmm = Mul(nm, m)
    sh = Add(nmm, beta)
    y = Add(xm, sh)
}
"""

# MXNet's LayerNorm: the bias subtracted as its negation.
MXNET_LN = """
<ir_version: 8, opset_import: ["" : %(opset)d]>
g (float[batch,seq,4] x) => (float[batch,seq,4] y)
  <float two = {2.0}, float eps = {0.001}, float[4] gamma = %(gamma)s, float[4] nbeta = {-0.1, 0.2, -0.3, 0.0}> {
    mean = ReduceMean <axes = [-1]> (x)
    d = Sub(x, mean)
    dd = Pow(d, two)
    var = ReduceMean <axes = [-1]> (dd)
    ve = Add(var, eps)
    sd = Sqrt(ve)
    n = Div(d, sd)
    s = Mul(n, gamma)
    y = Sub(s, nbeta)
}
"""

CANONICAL_LN = MXNET_LN.replace("nbeta", "beta").replace("{-0.1, 0.2, -0.3, 0.0}", BETA).replace(
    "y = Sub(s, beta)", "y = Add(s, beta)")

# Keras' Gelu: x * 0.7071 and the 0.5 on x first.
KERAS_GELU = """
<ir_version: 8, opset_import: ["" : %(opset)d]>
g (float[batch,8] x) => (float[batch,8] y) <float c = {%(c)s}, float one = {1.0}, float half = {0.5}> {
    s = Mul(x, c)
    e = Erf(s)
    a = Add(one, e)
    h = Mul(half, x)
    y = Mul(h, a)
}
"""


def _feeds(shape=(2, 3, 4)):
    return {"x": np.random.default_rng(0).standard_normal(shape).astype(np.float32) * 3}


def _run(text, **params):
    model = parse(text % {"gamma": GAMMA, "beta": BETA, **params})
    before = copy(model)
    result = RecomposeOpsPass()(model)
    return before, model, result




@pytest.mark.parametrize("text", [KERAS_LN, MXNET_LN])
def test_layernorm_variants_become_layernormalization_at_opset_17(text):
    before, model, result = _run(text, opset=17)
    assert result.counters == {"layernorm_recomposed": 1}
    assert [o for o in ops(model) if o != "Constant"] == ["LayerNormalization"]
    assert_equivalent(before, model, _feeds(), rtol=1e-4, atol=1e-5)
    for batch, seq in [(1, 5), (3, 1)]:  # dynamic dims stay dynamic
        assert_equivalent(before, model, _feeds((batch, seq, 4)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("text", [KERAS_LN, MXNET_LN])
def test_before_opset_17_the_form_ort_fuses(text, tmp_path):
    before, model, result = _run(text, opset=15)
    assert result.counters == {"layernorm_recomposed": 1}
    assert [o for o in ops(model) if o != "Constant"] == ["ReduceMean", "Sub", "Pow", "ReduceMean", "Add", "Sqrt",
                                                           "Div", "Mul", "Add"]
    assert_equivalent(before, model, _feeds(), rtol=1e-4, atol=1e-5)
    # The point of the rewrite: ONNX Runtime's own optimizer now fuses it (it did not before).
    fused = _ort_optimized_ops(model, tmp_path)
    assert "LayerNormalization" in fused and "ReduceMean" not in fused
    assert "LayerNormalization" not in _ort_optimized_ops(before, tmp_path)


def _ort_optimized_ops(model, tmp_path) -> list[str]:
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "ort.onnx")
    ort.InferenceSession(to_proto(model).SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(str(tmp_path / "ort.onnx")).graph.node]


@pytest.mark.parametrize("opset, expected", [(20, ["Gelu"]), (15, ["Div", "Erf", "Add", "Mul", "Mul"])])
def test_gelu(opset, expected):
    before, model, result = _run(KERAS_GELU, opset=opset, c="0.70710677")
    assert result.counters == {"gelu_recomposed": 1}
    assert [o for o in ops(model) if o != "Constant"] == expected
    assert_equivalent(before, model, {"x": np.linspace(-4, 4, 16, dtype=np.float32).reshape(2, 8)})


@pytest.mark.parametrize("text, params", [
    (CANONICAL_LN, {"opset": 15}),                       # already what ORT fuses, no LayerNormalization op yet
    (KERAS_GELU, {"opset": 20, "c": "0.6"}),             # not 1/sqrt(2)
    (KERAS_GELU.replace("Mul(x, c)", "Div(x, c)"), {"opset": 15, "c": "1.4142135"}),  # ORT's own form
])
def test_leave_it_alone(text, params):
    before, model, result = _run(text, **params)
    assert not result.modified and ops(model) == ops(before)


def test_gamma_that_is_not_per_channel_is_declined():
    text = MXNET_LN.replace("float[4] gamma = %(gamma)s", "float[2,4] gamma = {1,1,1,1,2,2,2,2}")
    model = parse(text % {"opset": 17, "gamma": ""})
    assert not RecomposeOpsPass()(model).modified


def test_mean_over_another_axis_is_declined():
    model = parse((MXNET_LN % {"opset": 17, "gamma": GAMMA}).replace("axes = [-1]", "axes = [1]"))
    assert not RecomposeOpsPass()(model).modified


def test_intermediate_used_elsewhere_is_kept():
    text = (MXNET_LN % {"opset": 17, "gamma": GAMMA}).replace(
        "=> (float[batch,seq,4] y)", "=> (float[batch,seq,4] y, float[batch,seq,1] var)")
    model = parse(text)
    assert not RecomposeOpsPass()(model).modified


def test_softplus_mish_hardswish():
    model = parse("""
        <ir_version: 8, opset_import: ["" : 18]>
        g (float[2,8] x) => (float[2,8] a, float[2,8] b, float[2,8] c)
          <float one = {1.0}, float three = {3.0}, float zero = {0.0}, float six = {6.0}> {
            e = Exp(x)
            p = Add(e, one)
            a = Log(p)
            sp = Softplus(x)
            t = Tanh(sp)
            b = Mul(x, t)
            x3 = Add(x, three)
            cl = Clip(x3, zero, six)
            m = Mul(cl, x)
            c = Div(m, six)
        }
    """)
    before = copy(model)
    result = RecomposeOpsPass()(model)
    assert result.counters == {"softplus_recomposed": 1, "mish_recomposed": 1, "hardswish_recomposed": 1}
    assert sorted(ops(model)) == ["HardSwish", "Mish", "Softplus"]
    assert_equivalent(before, model, {"x": np.linspace(-5, 5, 16, dtype=np.float32).reshape(2, 8)})


def test_no_hardswish_or_mish_before_their_opsets():
    model = parse("""
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[2,8] x) => (float[2,8] b, float[2,8] c) <float three = {3.0}, float zero = {0.0}, float six = {6.0}> {
            sp = Softplus(x)
            t = Tanh(sp)
            b = Mul(x, t)
            x3 = Add(x, three)
            cl = Clip(x3, zero, six)
            m = Mul(cl, x)
            c = Div(m, six)
        }
    """)
    assert not RecomposeOpsPass()(model).modified


def test_subgraph_and_custom_domain():
    model = parse("""
        <ir_version: 8, opset_import: ["" : 20, "custom" : 1]>
        g (float[2,8] x, bool c) => (float[2,8] y, float[2,8] z)
          <float k = {0.70710677}, float one = {1.0}, float half = {0.5}> {
            s2 = Mul(x, k)
            e2 = custom.Erf(s2)
            a2 = Add(one, e2)
            h2 = Mul(half, x)
            z = Mul(h2, a2)
            y = If(c) <
                then_branch = th () => (float[2,8] ty) {
                    s = Mul(x, k)
                    e = Erf(s)
                    a = Add(one, e)
                    h = Mul(half, x)
                    ty = Mul(h, a)
                },
                else_branch = el () => (float[2,8] ey) { ey = Relu(x) }
            >
        }
    """)
    result = RecomposeOpsPass()(model)
    assert result.counters == {"gelu_recomposed": 1}
    body = model.graph.node(-1).attributes["then_branch"].as_graph()
    assert [n.op_type for n in body] == ["Gelu"]
    assert "custom" in {n.domain for n in model.graph}  # the custom Erf chain is untouched
    onnx.checker.check_model(to_proto(model), full_check=False)


# Found by tests/test_differential.py (seed 37): a Gelu recomposed in an If body and another
# in the main graph both got onnxscript's per-graph names (val_0, val_2, node_Div_1): the
# checker rejects the model ("not in single static assignment form").
def test_rewrites_in_a_body_and_the_main_graph_get_distinct_names():
    gelu = """
            a{i} = Mul(x, k)
            e{i} = Erf(a{i})
            p{i} = Add(e{i}, one)
            h{i} = Mul(p{i}, half)
            {out} = Mul(x, h{i})"""
    model = parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2,4] x, bool c) => (float[2,4] y, float[2,4] z)
          <float k = {0.70710677}, float one = {1.0}, float half = {0.5}> {
            y = If(c) <
                then_branch = th () => (float[2,4] t) {%s
                },
                else_branch = el () => (float[2,4] u) { u = Neg(x) }
            >%s
        }""" % (gelu.format(i=1, out="t"), gelu.format(i=2, out="z")))
    before = copy(model)
    assert RecomposeOpsPass()(model).counters == {"gelu_recomposed": 2}
    body = model.graph.node(0).attributes["then_branch"].as_graph()
    names = [v.name for g in (model.graph, body) for n in g for v in n.outputs]
    names += [*model.graph.initializers, *body.initializers]
    assert len(names) == len(set(names))
    assert [v.name for v in model.graph.outputs] == ["y", "z"]
    onnx.checker.check_model(to_proto(model), full_check=True)
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)}
    for c in (True, False):
        assert_equivalent(before, model, {**feeds, "c": np.array(c)})
        ort.InferenceSession(to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {**feeds, "c": np.array(c)})


# Found by tests/test_differential.py (seed 3014): before opset 17 a LayerNorm becomes the
# canonical form ORT fuses; ORT's fusion takes a Cast before it in, and with a double (or
# integer) source has no kernel: the session fails to load at ORT's default level.
@pytest.mark.parametrize("source, folds", [("double", False), ("int64", False), ("float16", True)])
def test_no_canonical_layernorm_after_a_cast_ort_cannot_fuse(source, folds):
    model = parse(MXNET_LN.replace("g (float[batch,seq,4] x)", f"g ({source}[batch,seq,4] xin)").replace(
        "mean = ReduceMean", "x = Cast <to = 1> (xin)\n    mean = ReduceMean") % {"opset": 13, "gamma": GAMMA})
    before = copy(model)
    result = RecomposeOpsPass()(model)
    assert bool(result.modified) == folds
    feeds = {"xin": (np.random.default_rng(0).standard_normal((2, 3, 4)) * 3).astype(source)}
    assert_equivalent(before, model, feeds)
    ort.InferenceSession(to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
