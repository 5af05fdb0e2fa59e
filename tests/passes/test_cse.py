import numpy as np
import onnx
import pytest

from graphopt.passes.cleanup.cse import EliminateCommonSubexpressionsPass
from tests.util import assert_equivalent, copy, ops, parse, to_proto


def _model(body, outputs="float[2,3] y", inputs="float[2,3] x", opset=17, extra_opsets="", inits=""):
    inits = f"<{inits}>" if inits else ""
    return parse(f"""
        <ir_version: 8, opset_import: ["" : {opset}{extra_opsets}]>
        g ({inputs}) => ({outputs}) {inits} {{ {body} }}
    """)


def _apply(model, feeds=None, check=True):
    before = copy(model)
    result = EliminateCommonSubexpressionsPass()(model)
    if check:
        assert_equivalent(before, model, feeds=feeds)
    return result


def _outputs(model):
    return [v.name for v in model.graph.outputs]


def test_duplicate_chain_merged():
    model = _model("a = Relu(x)  b = Relu(x)  c = Neg(a)  d = Neg(b)  y = Add(c, d)")
    result = _apply(model)
    assert result.modified is True
    assert result.counters == {"nodes_merged": 2}
    assert ops(model) == ["Relu", "Neg", "Add"]
    add = model.graph.node(2)
    assert add.inputs[0] is add.inputs[1]


@pytest.mark.parametrize("body", [
    "a = Transpose<perm=[1, 0]>(x)  b = Transpose<perm=[1, 0]>(x)  y = Add(a, b)",
    "a = Constant<value=float[3] {1, 2, 3}>()  b = Constant<value=float[3] {1, 2, 3}>()  c = Add(a, b)  y = Add(x, c)",
    "a = ReduceSum<keepdims=1>(x)  b = ReduceSum<keepdims=1>(x)  c = Add(a, b)  y = Add(x, c)",
    "a = LeakyRelu<alpha=0.1>(x)  b = LeakyRelu<alpha=0.1>(x)  y = Add(a, b)",
])
def test_equal_attributes_merged(body):
    model = _model(body, outputs="float[3,2] y" if "Transpose" in body else "float[2,3] y")
    result = _apply(model)
    assert result.counters == {"nodes_merged": 1}


@pytest.mark.parametrize("body, inits, comparable", [
    ("a = Relu(x)  b = Neg(x)  y = Add(a, b)", "", True),
    ("a = Relu(x)  b = Relu(x2)  y = Add(a, b)", "float[2,3] x2 = {1, 2, 3, 4, 5, 6}", True),
    ("a = LeakyRelu<alpha=0.1>(x)  b = LeakyRelu<alpha=0.2>(x)  y = Add(a, b)", "", True),
    ("a = Constant<value=float[3] {1, 2, 3}>()  b = Constant<value=float[3] {1, 2, 4}>()  c = Add(a, b)  "
     "y = Add(x, c)", "", True),
    # -0.0 and 0.0 are different constants: x/0 is +-inf
    ("a = Constant<value_float=0.0>()  b = Constant<value_float=-0.0>()  c = Div(x, a)  d = Div(x, b)  "
     "y = Add(c, d)", "", True),
    ("a = Unsqueeze(x, one)  b = Unsqueeze(x, one2)  y = Add(a, b)", "int64[1] one = {0}, int64[1] one2 = {0}",
     True),  # different input values (merging them is dedupe's job)
    # nondeterministic ops
    ("a = RandomNormalLike(x)  b = RandomNormalLike(x)  y = Add(a, b)", "", False),
    ("a = RandomUniform<shape=[2, 3]>()  b = RandomUniform<shape=[2, 3]>()  y = Add(a, b)", "", False),
    ("p = Sigmoid(x)  a = Bernoulli(p)  b = Bernoulli(p)  y = Add(a, b)", "", False),
    ("a = Dropout(x, r, t)  b = Dropout(x, r, t)  y = Add(a, b)", "float r = {0.5}, bool t = {1}", False),
])
def test_not_merged(body, inits, comparable):
    outputs = "float[1,2,3] y" if "Unsqueeze" in body else "float[2,3] y"
    model = _model(body, outputs=outputs, inits=inits)
    result = _apply(model, check=comparable)
    assert result.modified is False


def test_custom_domain_not_merged():
    model = _model("a = custom.Op(x)  b = custom.Op(x)  y = Add(a, b)", extra_opsets=', "custom" : 1')
    assert _apply(model, check=False).modified is False


def test_both_graph_outputs_keep_their_names_through_identity():
    model = _model("y = Relu(x)  z = Relu(x)", outputs="float[2,3] y, float[2,3] z")
    result = _apply(model)
    assert result.counters == {"nodes_merged": 1, "identities_added": 1}
    assert _outputs(model) == ["y", "z"]
    assert ops(model) == ["Relu", "Identity"]
    # a second run does not churn
    assert EliminateCommonSubexpressionsPass()(model).modified is False


def test_removed_output_name_moves_to_kept_value():
    model = _model("a = Relu(x)  y = Neg(a)  z = Relu(x)", outputs="float[2,3] y, float[2,3] z")
    result = _apply(model)
    assert result.counters == {"nodes_merged": 1}
    assert _outputs(model) == ["y", "z"]
    assert ops(model) == ["Relu", "Neg"]
    assert model.graph.outputs[1].producer().op_type == "Relu"


def test_identities_to_two_outputs_are_left_alone():
    model = _model("a = Relu(x)  y = Identity(a)  z = Identity(a)", outputs="float[2,3] y, float[2,3] z")
    assert _apply(model).modified is False


def test_graph_input_passthrough_outputs():
    model = _model("y = Identity(x)  z = Identity(x)", outputs="float[2,3] y, float[2,3] z")
    assert _apply(model).modified is False
    assert _outputs(model) == ["y", "z"]


IF_MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2] x, bool c) => (float[2] y, float[2] z) {
    y = If(c) <
        then_branch = t () => (float[2] ty) { a = Abs(x)  b = Abs(x)  ty = Add(a, b) },
        else_branch = e () => (float[2] ey) { ey = Neg(x) }
    >
    z = If(c) <
        then_branch = t2 () => (float[2] ty2) { a2 = Abs(x)  b2 = Abs(x)  ty2 = Add(a2, b2) },
        else_branch = e2 () => (float[2] ey2) { ey2 = Neg(x) }
    >
}
"""


def test_if_bodies_merged_inside_but_ifs_not_merged():
    model = parse(IF_MODEL)
    before = copy(model)
    result = EliminateCommonSubexpressionsPass()(model)
    assert result.counters == {"nodes_merged": 2}  # one Abs per then-branch
    assert [n.op_type for n in model.graph] == ["If", "If"]
    for node in model.graph:
        assert [n.op_type for n in node.attributes["then_branch"].as_graph()] == ["Abs", "Add"]
    for cond in (True, False):
        assert_equivalent(before, model, feeds={"x": np.array([-1.0, 2.0], np.float32), "c": np.array(cond)})


def test_branch_output_takes_over_name():
    model = parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x, bool c) => (float[2] y) {
            y = If(c) <
                then_branch = t () => (float[2] ty) { a = Abs(x)  n = Neg(a)  ty = Abs(x) },
                else_branch = e () => (float[2] ey) { ey = Neg(x) }
            >
        }
    """)
    before = copy(model)
    result = EliminateCommonSubexpressionsPass()(model)
    assert result.counters == {"nodes_merged": 1}
    then_branch = model.graph.node(0).attributes["then_branch"].as_graph()
    assert then_branch.outputs[0].name == "ty"
    assert_equivalent(before, model, feeds={"x": np.array([-1.0, 2.0], np.float32), "c": np.array(True)})


def test_function_body():
    model = parse("""
        <ir_version: 8, opset_import: ["" : 17, "local" : 1]>
        g (float[2] x) => (float[2] y) { y = local.f(x) }
        <domain: "local", opset_import: ["" : 17]>
        f (a) => (b) { r1 = Relu(a)  r2 = Relu(a)  b = Add(r1, r2) }
    """)
    before = copy(model)
    result = EliminateCommonSubexpressionsPass()(model)
    assert result.counters == {"nodes_merged": 1}
    assert [n.op_type for n in model.functions[("local", "f", "")]] == ["Relu", "Add"]
    assert_equivalent(before, model)
    onnx.checker.check_model(to_proto(model), full_check=True)


@pytest.mark.parametrize("opsets, merged", [('"" : 17, "ai.onnx.ml" : 3', True), ('"ai.onnx.ml" : 3', False)])
def test_function_outputs_identity_needs_onnx_domain(opsets, merged):
    model = parse(f"""
        <ir_version: 8, opset_import: ["" : 17, "ai.onnx.ml" : 3, "local" : 1]>
        g (float[2,3] x) => (float[2,3] y, float[2,3] z) {{ y, z = local.f(x) }}
        <domain: "local", opset_import: [{opsets}]>
        f (a) => (b, c) {{ b = ai.onnx.ml.Normalizer<norm="L1">(a)  c = ai.onnx.ml.Normalizer<norm="L1">(a) }}
    """)
    before = copy(model)
    result = EliminateCommonSubexpressionsPass()(model)
    assert result.modified is merged
    function = model.functions[("local", "f", "")]
    assert [n.op_type for n in function] == (["Normalizer", "Identity"] if merged else ["Normalizer"] * 2)
    assert [v.name for v in function.outputs] == ["b", "c"]
    assert_equivalent(before, model)


def test_training_batchnorm_inputs_are_not_merged():
    # Two equal Constants feeding bias and running mean: ORT 1.32 miscomputes a training-mode
    # BatchNormalization that reads one value twice (see test_dedupe).
    model = parse("""
        <ir_version: 8, opset_import: ["" : 15]>
        g (float[2,4,3] x) => (float[2,4,3] y) <float[4] scale = {1,1,1,1}, float[4] var = {1,1,1,1}> {
            b = Constant <value = float[4] {0,0,0,0}> ()
            mean = Constant <value = float[4] {0,0,0,0}> ()
            y, rm, rv = BatchNormalization <training_mode = 1> (x, scale, b, mean, var)
        }""")
    before = copy(model)
    assert not EliminateCommonSubexpressionsPass()(model).modified
    assert_equivalent(before, model, {"x": np.random.default_rng(0).standard_normal((2, 4, 3)).astype(np.float32)})
