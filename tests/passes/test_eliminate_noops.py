import itertools

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from graphopt.passes.cleanup.eliminate_noops import EliminateNoOpsPass
from tests.util import assert_equivalent, copy, ops, parse, random_feeds, to_proto


def _model(body, inputs="float[2,3,4] x", outputs="float[2,3,4] y", opset=17, inits=""):
    inits = f"<{inits}>" if inits else ""
    return parse(f"""
        <ir_version: 8, opset_import: ["" : {opset}]>
        g ({inputs}) => ({outputs}) {inits} {{ {body} }}
    """)


def _apply(model, feeds=None, check=True):
    before = copy(model)
    result = EliminateNoOpsPass()(model)
    if check:
        assert_equivalent(before, model, feeds=feeds)
    return result


def _io_names(model):
    return [v.name for v in model.graph.inputs], [v.name for v in model.graph.outputs]


# --- single no-ops: (body, extra model args, counter) ---------------------------------------
REMOVED = [
    ("a = Identity(x)  y = Relu(a)", {}, "identity_removed"),
    ("a = Dropout(x)  y = Relu(a)", {}, "dropout_removed"),
    ("a = Dropout(x, r)  y = Relu(a)", {"inits": "float r = {0.5}"}, "dropout_removed"),
    ("a = Dropout(x, r, t)  y = Relu(a)", {"inits": "float r = {0.5}, bool t = {0}"}, "dropout_removed"),
    ("a, m = Dropout(x)  y = Relu(a)", {}, "dropout_removed"),  # mask unused
    ("a = Dropout(x)  y = Relu(a)", {"opset": 10}, "dropout_removed"),
    ("a = Cast<to=1>(x)  y = Relu(a)", {}, "cast_removed"),
    ("a = CastLike(x, x)  y = Relu(a)", {}, "cast_removed"),
    ("a = Reshape(x, s)  y = Relu(a)", {"inits": "int64[3] s = {2, 3, 4}"}, "reshape_removed"),
    ("a = Reshape(x, s)  y = Relu(a)", {"inits": "int64[3] s = {0, 0, -1}"}, "reshape_removed"),
    ("a = Reshape(x, s)  y = Relu(a)", {"inits": "int64[3] s = {-1, 3, 4}", "inputs": "float[N,3,4] x",
                                        "outputs": "float[N,3,4] y"}, "reshape_removed"),
    ("a = Reshape(x, s)  y = Relu(a)", {"inits": "int64[3] s = {0, 3, 0}", "inputs": "float[N,3,M] x",
                                        "outputs": "float[N,3,M] y"}, "reshape_removed"),
    ("a = Reshape<allowzero=1>(x, s)  y = Relu(a)", {"inits": "int64[3] s = {2, 3, 4}"}, "reshape_removed"),
    ("s = Constant<value_ints=[2, 3, 4]>()  a = Reshape(x, s)  y = Relu(a)", {}, "reshape_removed"),
    ("a = Transpose<perm=[0, 1, 2]>(x)  y = Relu(a)", {}, "transpose_removed"),
    ("a = Transpose(x)  y = Relu(a)", {"inputs": "float[5] x", "outputs": "float[5] y"}, "transpose_removed"),
    ("a = Pad(x, p)  y = Relu(a)", {"inits": "int64[6] p = {0, 0, 0, 0, 0, 0}"}, "pad_removed"),
    ("a = Pad<mode=\"reflect\">(x, p)  y = Relu(a)", {"inits": "int64[6] p = {0, 0, 0, 0, 0, 0}"}, "pad_removed"),
    ("a = Pad<pads=[0, 0, 0, 0, 0, 0]>(x)  y = Relu(a)", {"opset": 10}, "pad_removed"),
]


@pytest.mark.parametrize("body, kwargs, counter", REMOVED)
def test_single_noop_removed(body, kwargs, counter):
    model = _model(body, **kwargs)
    result = _apply(model, feeds=random_feeds(model, dynamic=5))
    assert result.modified is True
    assert result.counters == {counter: 1}
    assert ops(model)[-1:] == ["Relu"] and counter.split("_")[0].capitalize() not in ops(model)
    assert model.graph.node(len(model.graph) - 1).inputs[0].name == "x"


KEPT = [
    ("a = Dropout(x, r, t)  y = Relu(a)", {"inits": "float r = {0.5}, bool t = {1}"}),  # training
    ("a = Dropout(x, r, t)  y = Relu(a)", {"inputs": "float[2,3,4] x, bool t", "inits": "float r = {0.5}"}),
    ("a, m = Dropout(x)  y = Relu(a)  z = Not(m)", {"outputs": "float[2,3,4] y, bool[2,3,4] z"}),  # mask used
    ("a, m = Dropout(x)  y = Relu(a)", {"outputs": "float[2,3,4] y, bool[2,3,4] m"}),  # mask is output
    ("a = Cast<to=10>(x)  y = Cast<to=1>(a)", {}),  # float -> float16 -> float is not a no-op
    ("a = Relu(x)  b = Cast<to=1>(a)  y = Neg(b)", {}),  # dtype of a unknown (no value_info)
    ("a = Reshape(x, s)  y = Relu(a)", {"inits": "int64[3] s = {3, 2, 4}", "outputs": "float[3,2,4] y"}),
    ("a = Reshape(x, s)  y = Relu(a)", {"inputs": "float[2,3,4] x, int64[3] s"}),  # shape not constant
    ("a = Reshape(x, s)  y = Relu(a)", {"inits": "int64[3] s = {2, 3, 4}", "inputs": "float[N,3,4] x",
                                        "outputs": "float[N,3,4] y"}),  # N may not be 2
    ("a = Reshape(x, s)  y = Relu(a)", {"inits": "int64[2] s = {6, 4}", "outputs": "float[6,4] y"}),
    ("a = Relu(x)  b = Reshape(a, s)  y = Neg(b)", {"inits": "int64[3] s = {2, 3, 4}"}),  # shape of a unknown
    ("a = Reshape(x, s)  y = Relu(a)", {"inits": "int64[3] s = {0, -1, 4}", "inputs": "float[0,3,4] x",
                                        "outputs": "float[0,3,4] y"}),  # -1 next to a 0 dim is ambiguous
    ("a = Transpose<perm=[1, 0, 2]>(x)  y = Relu(a)", {"outputs": "float[3,2,4] y"}),
    ("a = Transpose(x)  y = Relu(a)", {"outputs": "float[4,3,2] y"}),  # no perm: reverse
    ("a = Relu(x)  b = Transpose(a)  y = Neg(b)", {"outputs": "float[4,3,2] y"}),  # no perm, rank unknown
    ("a = Pad(x, p)  y = Relu(a)", {"inits": "int64[6] p = {0, 0, 1, 0, 0, 0}", "outputs": "float[2,3,5] y"}),
    ("a = Pad(x, p)  y = Relu(a)", {"inputs": "float[2,3,4] x, int64[6] p"}),
    # pairs that do not cancel
    ("a = Unsqueeze(x, one)  y = Squeeze(a, three)", {"inits": "int64[1] one = {1}, int64[1] three = {3}",
                                                     "inputs": "float[2,3,1,4] x", "outputs": "float[2,1,3,4] y"}),
    ("a = Unsqueeze(x, one)  b = Squeeze(a)  y = Relu(b)",
     {"inits": "int64[1] one = {1}", "inputs": "float[2,1,4] x", "outputs": "float[2,4] y"}),
    ("a = Relu(x)  b = Unsqueeze(a, m)  y = Squeeze(b, one)",
     {"inits": "int64[1] one = {1}, int64[1] m = {-3}"}),  # negative axis, rank of a unknown
]


@pytest.mark.parametrize("body, kwargs", KEPT)
def test_declined(body, kwargs):
    model = _model(body, **kwargs)
    before_ops = ops(model)
    feeds = None
    if "bool t" in kwargs.get("inputs", ""):
        feeds = {"x": np.ones((2, 3, 4), np.float32), "t": np.array(False)}
    if "int64[6] p" in kwargs.get("inputs", ""):
        feeds = {"x": np.ones((2, 3, 4), np.float32), "p": np.zeros(6, np.int64)}
    if "int64[3] s" in kwargs.get("inputs", ""):
        feeds = {"x": np.ones((2, 3, 4), np.float32), "s": np.array([2, 3, 4], np.int64)}
    # not comparable: random (training Dropout), dynamic dims, or invalid for the checker (0 with -1)
    check = not any(k in str(kwargs) for k in ("N,", "t = {1}", "0,3,4"))
    result = _apply(model, feeds=feeds, check=check)
    assert result.modified is False
    assert ops(model) == before_ops


def test_dropout_opset6_needs_is_test():
    model = _model("a = Dropout(x)  y = Relu(a)", opset=6)
    assert _apply(model, check=False).modified is False
    model = _model("a = Dropout<is_test=1>(x)  y = Relu(a)", opset=6)
    assert _apply(model, check=False).counters == {"dropout_removed": 1}


# --- graph inputs and outputs keep their names ------------------------------------------------
@pytest.mark.parametrize("body, inits", [
    ("y = Identity(x)", ""),
    ("y = Identity(w)", "float[2,3,4] w = " + "{" + ", ".join(["1"] * 24) + "}"),
    ("a = Relu(x)  y = Identity(a)  z = Identity(a)", ""),  # second one: a is already output y
])
def test_graph_input_or_output_passthrough_kept(body, inits):
    outputs = "float[2,3,4] y, float[2,3,4] z" if "z" in body else "float[2,3,4] y"
    model = _model(body, outputs=outputs, inits=inits)
    names = _io_names(model)
    result = _apply(model)
    assert _io_names(model) == names
    assert ops(model).count("Identity") == 1
    assert result.modified is ("Relu" in body)


def test_noop_feeding_graph_output_renames_producer_output():
    model = _model("a = Relu(x)  y = Reshape(a, s)", inits="int64[3] s = {2, 3, 4}")
    model.graph.node(0).outputs[0].shape = ir.Shape([2, 3, 4])
    result = _apply(model)
    assert result.counters == {"reshape_removed": 1}
    assert ops(model) == ["Relu"]
    assert model.graph.outputs[0].name == "y" and model.graph.outputs[0].producer().op_type == "Relu"


def test_noop_output_gets_type_for_graph_output():
    # a has no value_info: taking over output y it must carry y's type for the checker
    model = _model("a = Relu(x)  y = Identity(a)")
    _apply(model)
    assert model.graph.outputs[0].dtype == ir.DataType.FLOAT


# --- pairs --------------------------------------------------------------------------------------
def test_transposes_cancel():
    model = _model("a = Transpose<perm=[0, 2, 1]>(x)  b = Transpose<perm=[0, 2, 1]>(a)  y = Relu(b)")
    result = _apply(model)
    assert result.counters == {"transposes_cancelled": 1}
    assert ops(model) == ["Relu"]


def test_transposes_merge():
    model = _model("a = Transpose<perm=[1, 0, 2]>(x)  b = Transpose<perm=[0, 2, 1]>(a)  y = Relu(b)",
                   outputs="float[3,4,2] y")
    result = _apply(model)
    assert result.counters == {"transposes_merged": 1}
    assert ops(model) == ["Transpose", "Relu"]
    assert model.graph.node(0).attributes["perm"].as_ints() == (1, 2, 0)


def test_transpose_chain_of_three_cancels():
    model = _model("a = Transpose<perm=[1, 2, 0]>(x)  b = Transpose<perm=[1, 2, 0]>(a)  "
                   "c = Transpose<perm=[1, 2, 0]>(b)  y = Relu(c)")
    result = _apply(model)
    assert result.counters == {"transposes_merged": 1, "transposes_cancelled": 1}
    assert ops(model) == ["Relu"]


def test_transposes_shared_first_cancel_then_merge_with_last_consumer():
    model = _model("a = Transpose<perm=[0, 2, 1]>(x)  b = Transpose<perm=[0, 2, 1]>(a)  "
                   "c = Transpose<perm=[1, 0, 2]>(a)  y = Add(b, b)  z = Relu(c)",
                   outputs="float[2,3,4] y, float[4,2,3] z")
    result = _apply(model)
    assert result.counters == {"transposes_cancelled": 1, "transposes_merged": 1}
    assert ops(model) == ["Transpose", "Add", "Relu"]


def test_transposes_do_not_merge_when_first_is_shared():
    model = _model("a = Transpose<perm=[1, 0, 2]>(x)  b = Transpose<perm=[0, 2, 1]>(a)  "
                   "y = Relu(b)  z = Neg(a)", outputs="float[3,4,2] y, float[3,2,4] z")
    result = _apply(model)
    assert result.modified is False


def test_reshapes_merge_and_then_vanish():
    model = _model("a = Reshape(x, s1)  b = Reshape(a, s2)  y = Relu(b)",
                   inits="int64[2] s1 = {6, 4}, int64[3] s2 = {2, 3, -1}")
    result = _apply(model)
    assert result.counters == {"reshapes_merged": 1, "reshape_removed": 1}
    assert ops(model) == ["Relu"]


@pytest.mark.parametrize("body, inits, outputs", [
    # the 0 copies a dim of the intermediate
    ("a = Reshape(x, s1)  b = Reshape(a, s2)  y = Relu(b)", "int64[2] s1 = {6, 4}, int64[2] s2 = {0, 4}",
     "float[6,4] y"),
    # the intermediate has a second consumer
    ("a = Reshape(x, s1)  b = Reshape(a, s2)  c = Neg(a)  y = Add(b, c)",
     "int64[2] s1 = {24, 1}, int64[2] s2 = {24, 1}", "float[24,1] y"),
])
def test_reshapes_not_merged(body, inits, outputs):
    model = _model(body, inits=inits, outputs=outputs)
    result = _apply(model)
    assert result.modified is False


@pytest.mark.parametrize("body, opset, inits", [
    ("a = Unsqueeze(x, ax)  y = Squeeze(a, ax)", 17, "int64[1] ax = {1}"),
    ("a = Unsqueeze(x, ax)  y = Squeeze(a, bx)", 17, "int64[2] ax = {0, 4}, int64[2] bx = {-1, 0}"),
    ("a = Unsqueeze<axes=[1]>(x)  y = Squeeze<axes=[1]>(a)", 11, ""),
    ("a = Squeeze(x, ax)  y = Unsqueeze(a, ax)", 17, "int64[1] ax = {1}"),
])
def test_squeeze_pairs_cancel(body, opset, inits):
    inputs, outputs = ("float[2,1,4] x", "float[2,1,4] y") if "a = Squeeze" in body else ("float[2,3,4] x",
                                                                                       "float[2,3,4] y")
    model = _model(body + "  z = Relu(y)", opset=opset, inits=inits, inputs=inputs,
                   outputs=outputs.replace(" y", " z"))
    result = _apply(model)
    assert result.counters == {"squeeze_pairs_cancelled": 1}
    assert ops(model) == ["Relu"]


# --- subgraphs and functions ------------------------------------------------------------------
IF_MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2] x, bool c) => (float[2] y) {
    a = Relu(x)
    y = If(c) <
        then_branch = t () => (float[2] ty) {
            ty = Identity(a)
        },
        else_branch = e () => (float[2] ey) {
            i1 = Identity(a)
            n = Neg(i1)
            ey = Identity(n)
        }
    >
}
"""


def test_if_branches():
    model = parse(IF_MODEL)
    before = copy(model)
    result = EliminateNoOpsPass()(model)
    # then: Identity(outer a) is the branch output -> kept; else: both Identities go
    assert result.counters == {"identity_removed": 2}
    then_branch, else_branch = (model.graph.node(1).attributes[k].as_graph() for k in ("then_branch",
                                                                                        "else_branch"))
    assert [n.op_type for n in then_branch] == ["Identity"]
    assert [n.op_type for n in else_branch] == ["Neg"]
    assert else_branch.outputs[0].name == "ey"
    for cond in (True, False):
        assert_equivalent(before, model, feeds={"x": np.array([-1.0, 2.0], np.float32), "c": np.array(cond)})
    assert EliminateNoOpsPass()(model).modified is False


def test_loop_body_passthrough_kept_and_inner_noop_removed():
    body = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         onnx.helper.make_node("Transpose", ["v_in"], ["t"], perm=[0, 1]),
         onnx.helper.make_node("Add", ["t", "x"], ["v_out"])],
        "body",
        [onnx.helper.make_tensor_value_info("i", onnx.TensorProto.INT64, []),
         onnx.helper.make_tensor_value_info("cond_in", onnx.TensorProto.BOOL, []),
         onnx.helper.make_tensor_value_info("v_in", onnx.TensorProto.FLOAT, [2, 2])],
        [onnx.helper.make_tensor_value_info("cond_out", onnx.TensorProto.BOOL, []),
         onnx.helper.make_tensor_value_info("v_out", onnx.TensorProto.FLOAT, [2, 2])])
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Loop", ["n", "c", "x"], ["y"], body=body)], "g",
        [onnx.helper.make_tensor_value_info("n", onnx.TensorProto.INT64, []),
         onnx.helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, []),
         onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 2])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 2])])
    model = ir.serde.deserialize_model(
        onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8))
    before = copy(model)
    result = EliminateNoOpsPass()(model)
    assert result.counters == {"transpose_removed": 1}
    assert [n.op_type for n in model.graph.node(0).attributes["body"].as_graph()] == ["Identity", "Add"]
    assert_equivalent(before, model, feeds={"n": np.array(3, np.int64), "c": np.array(True),
                                            "x": np.ones((2, 2), np.float32)})


def test_function_body():
    model = parse("""
        <ir_version: 8, opset_import: ["" : 17, "local" : 1]>
        g (float[2] x) => (float[2] y) { y = local.f(x) }
        <domain: "local", opset_import: ["" : 17]>
        f (a) => (b) {
            i = Identity(a)
            r = Relu(i)
            b = Identity(r)
        }
    """)
    before = copy(model)
    result = EliminateNoOpsPass()(model)
    assert result.counters == {"identity_removed": 2}
    function = model.functions[("local", "f", "")]
    assert [n.op_type for n in function] == ["Relu"]
    assert function.outputs[0].name == "b"
    assert_equivalent(before, model)
    onnx.checker.check_model(to_proto(model), full_check=True)


@pytest.mark.parametrize("p1", list(itertools.permutations(range(3))))
@pytest.mark.parametrize("p2", list(itertools.permutations(range(3))))
def test_every_transpose_pair_of_rank_3(p1, p2):
    dims = [[2, 3, 4][p1[i]] for i in p2]
    body = f"a = Transpose<perm={list(p1)}>(x)  b = Transpose<perm={list(p2)}>(a)  y = Relu(b)"
    model = _model(body, outputs=f"float[{','.join(map(str, dims))}] y")
    result = _apply(model)
    assert result.modified is True
    assert ops(model).count("Transpose") == (0 if [p1[i] for i in p2] == [0, 1, 2] else 1)


def _reshaped(dims, target):
    """numpy's reshape after ONNX's 0 (copy the input dim, allowzero=0)."""
    target = [dims[i] if t == 0 else t for i, t in enumerate(target)]
    return list(np.empty(dims).reshape(target).shape)


@pytest.mark.parametrize("s1", [[6, 4], [24], [4, -1], [2, 3, 2, 2]])
@pytest.mark.parametrize("s2", [[2, 3, 4], [3, 8], [-1], [0, -1], [2, -1, 4]])
def test_reshape_pairs(s1, s2):
    mid = _reshaped([2, 3, 4], s1)
    out = _reshaped(mid, s2)
    inits = f"int64[{len(s1)}] s1 = {{{', '.join(map(str, s1))}}}, int64[{len(s2)}] s2 = {{{', '.join(map(str, s2))}}}"
    model = _model("a = Reshape(x, s1)  b = Reshape(a, s2)  y = Relu(b)", inits=inits,
                   outputs=f"float[{','.join(map(str, out))}] y")
    result = _apply(model)
    merged = 0 not in s2
    assert result.counters.get("reshapes_merged", 0) == int(merged)
    assert ops(model).count("Reshape") == (2 - merged - int(merged and out == [2, 3, 4]))


# --- case 10: neutral arithmetic (Paddle's scale op writes x * s + 0) ---------------------------------

@pytest.mark.parametrize("body, expected", [
    ("t = Relu(x)\n y = Add(t, zero)", ["Relu"]),
    ("t = Relu(x)\n y = Add(zero, t)", ["Relu"]),
    ("t = Relu(x)\n y = Mul(t, one)", ["Relu"]),
    ("t = Relu(x)\n y = Div(t, one)", ["Relu"]),
    ("t = Relu(x)\n y = Sub(t, zero)", ["Relu"]),
    ("t = Relu(x)\n y = Sub(zero, t)", ["Relu", "Sub"]),       # 0 - x is not x
    ("t = Relu(x)\n y = Div(one, t)", ["Relu", "Div"]),        # 1 / x is not x
    ("t = Relu(x)\n y = Add(t, two)", ["Relu", "Add"]),
    ("t = Relu(x)\n y = Add(t, zero4)", ["Relu", "Add"]),      # rank 4 > rank 2: broadcasts x up
])
def test_neutral_arithmetic(body, expected):
    model = parse(f"""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[batch,3] x) => ({"float[?,?,?,?]" if "zero4" in body else "float[batch,3]"} y)
          <float zero = {{0}}, float one = {{1}}, float two = {{2}}, float[1,1,1,1] zero4 = {{0}}> {{
            {body}
        }}
    """)
    before = copy(model)
    EliminateNoOpsPass()(model)
    assert ops(model) == expected
    assert_equivalent(before, model, {"x": np.array([[1, -2, 3], [0, 5, -6]], np.float32)})


# Found by tests/test_differential.py (seed 2278): `mean * 1` as the bias of a training-mode
# BatchNormalization whose running mean is `mean`; dropping the Mul made one value feed two
# inputs, which ORT 1.32 computes wrongly.
def test_no_op_kept_where_a_training_batchnorm_would_read_one_value_twice():
    model = parse("""
        <ir_version: 8, opset_import: ["" : 15]>
        g (float[2,4,3] x) => (float[2,4,3] y)
          <float[4] scale = {1,1,1,1}, float[4] mean = {0.5,0,1,0}, float[4] var = {1,1,1,1}, float one = {1}> {
            b = Mul(mean, one)
            y, rm, rv = BatchNormalization <training_mode = 1> (x, scale, b, mean, var)
        }""")
    before = copy(model)
    assert not EliminateNoOpsPass()(model).modified
    assert_equivalent(before, model, {"x": np.random.default_rng(0).standard_normal((2, 4, 3)).astype(np.float32)})
