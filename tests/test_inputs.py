"""The input model (graphopt/core/inputs.py): verification, measurements and calibration run on
inputs the model really takes, at sizes that exercise it.

Each model in tests/exporter_shapes.py fails in ONNX Runtime on the inputs graphopt used to
generate (every dynamic dim 1, integers in [0, 4)); each test shows that first, so it cannot
pass by accident, then that `graphopt.optimize` with default arguments verifies it.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import graphopt
from graphopt.core import io
from graphopt.core.errors import InputError, UsageError
from graphopt.core.inputs import input_model
from graphopt.core.verify import plan_inputs, reference
from tests import exporter_shapes as X
from tests.conftest import run_cli


def _run(model: onnx.ModelProto, feeds: dict) -> list:
    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _old_inputs(model: onnx.ModelProto) -> dict:
    """What graphopt generated before the input model: dims 1, integers in [0, 4)."""
    rng = np.random.default_rng(0)
    feeds = {}
    for value in model.graph.input:
        t = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in t.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)
        feeds[value.name] = (rng.integers(0, 4, dims) if np.issubdtype(dtype, np.integer)
                             else rng.standard_normal(dims)).astype(dtype)
    return feeds


# Models that run on the old inputs, but at sizes that prove little (a 1-token cache, a 1-pixel line).
RUN_ON_OLD_INPUTS = {"decoder_with_past", "paddle_like"}
CASES = {
    # name: (builder, expected shapes)
    "bert_like": (X.bert_like, {"input_ids": [1, 128], "attention_mask": [1, 128], "token_type_ids": [1, 128]}),
    "unet_like": (X.unet_like, {"x": [1, 3, 640, 640]}),  # a dense predictor: timed at detector size
    "stateful_vad": (X.stateful_vad, {"input": [1, 256], "state": [2, 1, 8], "sr": []}),
    "decoder_with_past": (X.decoder_with_past, {"input_ids": [1, 1], "attention_mask": [1, 129],
                                                "past_key": [1, 2, 128, 4], "past_value": [1, 2, 128, 4]}),
    "paddle_like": (X.paddle_like, {"x": [1, 3, 32, 224]}),
    "detector_like": (X.detector_like, {"images": [1, 3, 640, 640]}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_old_inputs_fail_and_default_optimize_verifies(name):
    build, shapes = CASES[name]
    model = build()
    if name in RUN_ON_OLD_INPUTS:
        _run(model, _old_inputs(model))
    else:
        with pytest.raises(Exception):  # noqa: B017 - ORT raises several types; any refusal proves the point
            _run(model, _old_inputs(model))
    result = graphopt.optimize(model)
    v = result.report.verification
    assert v.status == "passed", v.reason
    assert v.levels == {"disabled": "passed", "default": "passed"}
    assert v.input_shapes == shapes
    assert all(item["why"] for item in v.inputs.values())


def test_integer_inputs_are_bounded_by_their_tables():
    plan = plan_inputs(X.bert_like(vocab=30))
    feeds = plan.feeds()
    assert feeds["token_type_ids"].max() <= 1 and feeds["input_ids"].max() < 30
    assert "2 rows" in plan.describe()["token_type_ids"]["values"]
    mask = feeds["attention_mask"]
    assert set(np.unique(mask)) <= {0, 1} and mask[0].all()


def test_scalar_compared_with_a_constant_takes_that_constant():
    feeds = plan_inputs(X.stateful_vad()).feeds()
    assert feeds["sr"].shape == () and int(feeds["sr"]) == 16000


def test_decoder_takes_one_new_token_after_a_128_token_past_and_a_mask_of_both():
    for mask_dim in ("past_sequence + sequence", "total_sequence_length"):
        plan = plan_inputs(X.decoder_with_past(mask_dim=mask_dim))
        assert plan.shapes["attention_mask"] == [1, 129], mask_dim


def test_detector_size_is_640_and_a_multiple_of_the_stride():
    assert plan_inputs(X.detector_like()).shapes["images"] == [1, 3, 640, 640]
    assert plan_inputs(X.unet_like(levels=6, width=2, dense=False)).shapes["x"] == [1, 3, 256, 256]


def test_fallback_finds_a_size_the_model_runs_at():
    model = X.bert_like(positions=64)  # 128 tokens run past the position table
    result = graphopt.optimize(model)
    v = result.report.verification
    assert v.status == "passed", v.reason
    assert v.input_shapes["input_ids"] == [1, 64]
    assert "found by trying" in v.inputs["input_ids"]["why"]


def unrunnable() -> onnx.ModelProto:
    """x [n] reshaped to 7x13: only n = 91 runs, and no size the search tries is 91."""
    h = onnx.helper
    nodes = [h.make_node("Reshape", ["x", "shape"], ["y"])]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n"])],
                         [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [7, 13])],
                         [onnx.numpy_helper.from_array(np.array([7, 13], np.int64), "shape")])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])


def test_a_model_no_input_runs_is_not_verified_and_says_what_was_tried(tmp_path):
    path = tmp_path / "reshape91.onnx"
    onnx.save(unrunnable(), path)
    result = graphopt.optimize(path)
    v = result.report.verification
    assert v.status == "skipped"
    assert "also tried" in v.reason and "--inputs" in v.reason
    assert any(w.startswith("not verified") for w in result.report.warnings)
    run = run_cli("optimize", path, "-o", tmp_path / "out.onnx", "--require-verified")
    assert run.code == 1 and not (tmp_path / "out.onnx").exists(), str(run)
    run = run_cli("optimize", path, "-o", tmp_path / "out.onnx")
    assert run.code == 0 and "NOT VERIFIED" in run.stdout, str(run)
    given = graphopt.optimize(path, inputs={"x": np.ones(91, np.float32)}).report.verification
    assert given.status == "passed"


def test_declared_dims_too_large_to_allocate_are_refused_in_one_line(tmp_path):
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1 << 40, 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    model = onnx.helper.make_model(onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
                                   opset_imports=[onnx.helper.make_opsetid("", 17)])
    with pytest.raises(InputError, match="needs .* TiB"):
        graphopt.optimize(model)
    with pytest.raises(InputError, match="give a smaller --shape"):
        graphopt.optimize(X.unet_like(), shapes={"x": [100000, 3, 640, 640]})


@pytest.mark.parametrize("bad, message", [
    ({"x": np.full((1, 3, 32, 64), np.nan, np.float32)}, "NaN"),
    ({"x": np.zeros((1, 3, 32, 64), np.float64)}, "float64"),
    ({"x": np.zeros((1, 3, 16, 64), np.float32)}, "dim 2 must be 32"),
    ({"x": np.zeros((3, 32, 64), np.float32)}, "rank 4"),
    ({"x": np.zeros((1, 3, 32, 64), np.float32), "y": np.zeros(1, np.float32)}, "not a graph input"),
])
def test_given_inputs_are_checked(bad, message):
    with pytest.raises(InputError, match=message):
        graphopt.optimize(X.paddle_like(), inputs=bad)


def test_given_inputs_fix_the_symbols_of_the_other_inputs():
    ids = np.ones((2, 40), np.int64)
    plan = plan_inputs(X.bert_like(), data={"input_ids": ids})
    assert plan.shapes["attention_mask"] == [2, 40] and plan.why["input_ids"] == "given data"


def test_minus_one_dims_are_dynamic_and_take_shape(tmp_path):
    model = X.paddle_like()
    result = graphopt.optimize(model)
    dims = result.to_onnx().graph.input[0].type.tensor_type.shape.dim
    assert not dims[0].HasField("dim_value") and not dims[3].HasField("dim_value")  # still dynamic
    fixed = graphopt.optimize(model, shapes={"x": [4, 3, 32, 100]})
    assert fixed.report.verification.input_shapes == {"x": [4, 3, 32, 100]}
    assert [d.dim_value for d in fixed.to_onnx().graph.input[0].type.tensor_type.shape.dim] == [4, 3, 32, 100]


@pytest.mark.parametrize("case", ["test_identity_opt", "test_identity_sequence", "test_loop13_seq",
                                  "test_loop16_seq_none", "test_sequence_insert_at_back",
                                  "test_sequence_map_add_2_sequences"])
def test_sequence_and_optional_inputs_are_generated(case):
    from tests.test_conformance import cases

    model = cases()[case].model
    v = graphopt.optimize(model).report.verification
    assert v.status == "passed", v.reason


def test_verification_fails_when_only_ortss_default_level_rejects_the_model(monkeypatch):
    import graphopt.core.verify as gv

    real = gv.ort_session

    def picky(source, providers=None, optimize=False):
        if optimize and "optimized" in str(source):
            raise RuntimeError("[ShapeInferenceError] Input to 'Range' op should be scalars")
        return real(source, providers, optimize)

    ref = reference(X.unet_like())
    monkeypatch.setattr(gv, "ort_session", picky)
    with __import__("tempfile").TemporaryDirectory() as tmp:
        path = f"{tmp}/optimized.onnx"
        onnx.save(X.unet_like(), path)
        result = gv.check(ref, path)
    assert result.status == "failed" and "default optimization level" in result.reason
    assert result.levels == {"disabled": "passed", "default": "failed"}


def test_report_names_the_shapes_and_why(tmp_path):
    path = tmp_path / "unet.onnx"
    onnx.save(X.unet_like(), path)
    run = run_cli("optimize", path, "-o", tmp_path / "o.onnx", "--json")
    report = json.loads(run.stdout)
    item = report["verification"]["inputs"]["x"]
    assert item["shape"] == [1, 3, 640, 640] and "stride 16" in item["why"]
    run = run_cli("optimize", path, "-o", tmp_path / "o.onnx")
    assert "input x 1x3x640x640" in run.stdout


def test_shape_names_must_be_inputs():
    with pytest.raises(UsageError, match="not a graph input"):
        input_model(io.load(X.unet_like()), shapes={"y": [1]})
