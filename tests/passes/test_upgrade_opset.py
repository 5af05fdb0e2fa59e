import numpy as np
import onnx
import pytest

from graphopt.core.errors import UsageError
from graphopt.passes.cleanup.upgrade_opset import OpsetConversionError, UpgradeOpsetPass
from tests.util import assert_equivalent, copy, ops, parse, to_proto

CLIP10 = """
<ir_version: 5, opset_import: ["" : 10]>
g (float[2,16] x) => (float[2,20] y) <float[16,20] w = {%s}> {
    m = MatMul(x, w)
    y = Clip <min = -1.0, max = 1.0> (m)
}
""" % ", ".join(str(i / 320) for i in range(320))  # 1280 bytes: over the placeholder threshold


def test_upgrade_adapts_ops_keeps_weights_and_names():
    model = parse(CLIP10)
    w_before = model.graph.initializers["w"].const_value
    before = copy(model)
    result = UpgradeOpsetPass(17)(model)
    assert result.modified and result.counters == {"opset_10_to_17": 1}
    assert model.opset_imports[""] == 17 and model.ir_version >= 8
    clip = [n for n in model.graph if n.op_type == "Clip"][0]
    assert len(clip.inputs) == 3 and "min" not in clip.attributes  # attributes became inputs
    assert model.graph.initializers["w"].const_value is w_before  # the big weight never went through
    assert [v.name for v in model.graph.inputs] == ["x"] and [v.name for v in model.graph.outputs] == ["y"]
    onnx.checker.check_model(to_proto(model), full_check=True)
    assert_equivalent(before, model)


def test_same_or_no_target_leaves_it_alone():
    model = parse(CLIP10)
    assert not UpgradeOpsetPass(None)(model).modified
    assert not UpgradeOpsetPass(10)(model).modified
    assert model.opset_imports[""] == 10


def test_blocking_op_is_named_and_model_unchanged():
    model = parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2,4] x) => (float[2,4] y) <float[4] s = {1, 1, 1, 1}> {
            r = Relu(x)
            y = LayerNormalization(r, s)
        }
    """)
    with pytest.raises(OpsetConversionError, match="blocked by LayerNormalization"):
        UpgradeOpsetPass(16)(model)
    assert model.opset_imports[""] == 17 and ops(model) == ["Relu", "LayerNormalization"]
    assert "s" in model.graph.initializers and model.graph.initializers["s"].const_value is not None


def test_out_of_range_target():
    with pytest.raises(UsageError, match="converts to opsets"):
        UpgradeOpsetPass(999)(parse(CLIP10))


def test_subgraph_and_custom_domain_pass_through():
    model = parse("""
        <ir_version: 5, opset_import: ["" : 10, "custom" : 1]>
        g (float[2] x, bool c) => (float[2] y) {
            z = custom.Foo(x)
            y = If(c) <
                then_branch = th () => (float[2] ty) { ty = Clip <min = 0.0, max = 6.0> (x) },
                else_branch = el () => (float[2] ey) { ey = Clip <min = -1.0, max = 1.0> (x) }
            >
        }
    """)
    UpgradeOpsetPass(13)(model)
    assert model.opset_imports == {"": 13, "custom": 1}
    assert [n.op_type for n in model.graph] == ["Foo", "If"] and model.graph.node(0).domain == "custom"
    body = model.graph.node(1).attributes["then_branch"].as_graph()
    clip = [n for n in body if n.op_type == "Clip"][0]
    assert len(clip.inputs) == 3


def test_subgraph_numbers_match():
    model = parse("""
        <ir_version: 5, opset_import: ["" : 10]>
        g (float[4] x, bool c) => (float[4] y) {
            y = If(c) <
                then_branch = th () => (float[4] ty) { ty = Clip <min = 0.0, max = 0.5> (x) },
                else_branch = el () => (float[4] ey) { ey = Clip <min = -0.5, max = 0.0> (x) }
            >
        }
    """)
    before = copy(model)
    UpgradeOpsetPass(13)(model)
    for c in (True, False):
        feeds = {"x": np.array([-1, -0.2, 0.2, 1], np.float32), "c": np.array(c)}
        assert_equivalent(before, model, feeds)
