"""Sparse storage (graphopt.core.sparse) through ONNX Runtime, and the compression stage end to end:
optimize(sparsity=..., structured=..., low_rank=..., quantize=...) and the CLI."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx.helper as oh
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import graphopt
from graphopt.core import io
from graphopt.core.errors import BudgetError, UsageError
from graphopt.core.sparse import densify_proto, index_dtype, sparsify_proto
from tests.conftest import DIGITS, run_cli

TEST = DIGITS.parent / "digits_test.npz"
CALIB = DIGITS.parent / "digits_calib.npz"
RNG = np.random.default_rng(4)


def sparse_mlp(sparsity: float, rows: int = 256, cols: int = 128, dtype=np.float32) -> onnx.ModelProto:
    w = RNG.standard_normal((rows, cols)).astype(dtype)
    w[RNG.random(w.shape) < sparsity] = 0
    graph = oh.make_graph([oh.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [oh.make_tensor_value_info("x", onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)),
                                                     [2, rows])],
                          [oh.make_tensor_value_info("y", onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)),
                                                     [2, cols])],
                          [numpy_helper.from_array(w, "w")])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)


def ort_run(proto: onnx.ModelProto, feeds) -> np.ndarray:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


@pytest.mark.parametrize("fmt, rows, cols, index", [
    ("ort", 256, 256, "int32"), ("ort", 100, 300, "int16"), ("ort", 8, 16, "int8"), ("onnx", 256, 128, "int64")])
def test_sparse_initializer_round_trips_through_ort(fmt, rows, cols, index):
    dense = sparse_mlp(0.8, rows, cols)
    x = RNG.standard_normal((2, rows)).astype(np.float32)
    proto = onnx.ModelProto()
    proto.CopyFrom(dense)
    stats = sparsify_proto(proto, fmt, min_bytes=0)
    assert len(proto.graph.sparse_initializer) == 1 and not proto.graph.initializer
    assert stats.tensors["w"]["index_dtype"] == index == index_dtype(rows * cols, fmt).name
    assert proto.ByteSize() < 0.8 * dense.ByteSize() if fmt == "ort" else proto.ByteSize() < dense.ByteSize()
    np.testing.assert_array_equal(ort_run(proto, {"x": x}), ort_run(dense, {"x": x}))  # ORT expands it exactly
    if fmt == "onnx":
        onnx.checker.check_model(proto)  # the plain checker accepts int64 indices (full_check: see module doc)
    back = onnx.ModelProto()
    back.CopyFrom(proto)
    assert densify_proto(back) == 1
    np.testing.assert_array_equal(numpy_helper.to_array(back.graph.initializer[0]),
                                  numpy_helper.to_array(dense.graph.initializer[0]))


def test_ort_checker_rejects_narrow_indices_so_onnx_format_exists():
    proto = sparse_mlp(0.8)
    sparsify_proto(proto, "ort", min_bytes=0)
    with pytest.raises(onnx.checker.ValidationError, match="INT64"):
        onnx.checker.check_model(proto)


@pytest.mark.parametrize("sparsity, fmt, stored", [(0.3, "ort", False), (0.6, "ort", True), (0.6, "onnx", False),
                                                    (0.8, "onnx", True)])
def test_a_tensor_is_stored_sparse_only_where_that_is_smaller(sparsity, fmt, stored):
    proto = sparse_mlp(sparsity)
    sparsify_proto(proto, fmt)
    assert bool(proto.graph.sparse_initializer) == stored


def test_float16_and_int8_values_round_trip():
    for dtype in (np.float16, np.int8):
        w = (RNG.standard_normal((64, 64)) * 10).astype(dtype)
        w[RNG.random(w.shape) < 0.9] = 0
        graph = oh.make_graph([oh.make_node("Identity", ["w"], ["y"])], "g", [],
                              [oh.make_tensor_value_info("y", onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)),
                                                         [64, 64])], [numpy_helper.from_array(w, "w")])
        proto = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)
        sparsify_proto(proto, "ort")
        assert proto.graph.sparse_initializer
        np.testing.assert_array_equal(ort_run(proto, {}), w)


def test_io_saves_sparse_loads_dense_and_external_data_still_works(tmp_path):
    model = io.load(sparse_mlp(0.9))
    written = io.save(model, tmp_path / "m.onnx", sparse_format="ort")
    assert onnx.load(written[0]).graph.sparse_initializer
    back = io.load(tmp_path / "m.onnx")
    np.testing.assert_array_equal(back.graph.initializers["w"].const_value.numpy(),
                                  model.graph.initializers["w"].const_value.numpy())
    written = io.save(model, tmp_path / "e.onnx", sparse_format="onnx", external_data=True)
    assert [p.name for p in written] == ["e.onnx", "e.onnx.data"]
    x = RNG.standard_normal((2, 256)).astype(np.float32)
    session = ort.InferenceSession(str(written[0]), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"x": x})[0],
                               x @ model.graph.initializers["w"].const_value.numpy(), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- the stage, end to end

def test_optimize_unstructured_saves_a_smaller_file_ort_runs(tmp_path):
    result = graphopt.optimize(DIGITS, sparsity=0.7, eval=TEST, quantize_measure=False)
    section = result.report.sections["compression"]
    assert section["unstructured"]["weight_sparsity"] == pytest.approx(0.7, abs=0.01)
    assert section["file_bytes"] < 0.8 * section["file_bytes_dense"]
    assert "no sparse CPU kernels" in " ".join(result.report.warnings)
    written = result.save(tmp_path / "out.onnx")
    assert written[0].stat().st_size == section["file_bytes"] == result.report.file_bytes_after
    proto = onnx.load(written[0])
    assert len(proto.graph.sparse_initializer) >= 4
    data = np.load(TEST)
    session = ort.InferenceSession(str(written[0]), providers=["CPUExecutionProvider"])
    acc = 100 * np.mean(session.run(None, {"input": data["input"]})[0].argmax(1) == data["labels"])
    assert acc == pytest.approx(section["accuracy_after"])


def test_optimize_structured_cuts_macs_and_reports_groups():
    result = graphopt.optimize(DIGITS, sparsity=0.5, structured=True, eval=TEST, quantize_measure=False)
    section = result.report.sections["compression"]
    assert section["structured"]["groups_pruned"] == "3 of 4"
    assert "graph output" in section["structured"]["groups_blocked"]["/classifier/Gemm"]
    assert section["macs_ratio"] < 0.35 and result.sparse_format is None
    assert result.report.after["macs"] == section["macs"]["after"]


def test_prune_factorize_quantize_in_one_call_hold_the_budget():
    result = graphopt.optimize(DIGITS, sparsity=0.25, structured=True, low_rank=0.9, quantize="int8",
                               calibration=CALIB, eval=TEST, max_accuracy_drop=6.0, quantize_measure=False,
                               measure=False)
    section = result.report.sections["compression"]
    assert section["steps"] == ["structured", "low_rank"]
    assert section["structured"]["budget_share"] == pytest.approx(2.0)  # a third of 6 points
    assert section["accuracy_drop_all_stages"] <= 6.0 + 1e-9
    assert "quantization" in result.report.sections
    ops = result.report.after["op_histogram"]
    assert ops.get("QuantizeLinear", 0) > 0 and result.report.after["macs"] < 0.8 * result.report.before["macs"]


def test_layers_pruned_unstructured_are_not_factored():
    result = graphopt.optimize(DIGITS, sparsity=0.3, low_rank=0.9, eval=TEST, quantize_measure=False)
    section = result.report.sections["compression"]
    assert section["steps"] == ["unstructured"]
    assert "pruned unstructured" in section["low_rank"]["declined"]["/features/features.7/body/body.3/Conv"]


def test_budget_that_nothing_meets_raises_and_usage_errors():
    with pytest.raises(BudgetError):
        graphopt.optimize(DIGITS, sparsity=0.9, structured=True, eval=TEST, max_accuracy_drop=0.0,
                          quantize_measure=False)
    with pytest.raises(UsageError, match="needs data"):
        graphopt.optimize(DIGITS, sparsity=0.5, max_accuracy_drop=1.0)
    with pytest.raises(UsageError, match="--structured needs --sparsity"):
        graphopt.optimize(DIGITS, structured=True, low_rank=0.9)
    with pytest.raises(UsageError, match="choose one"):
        graphopt.optimize(DIGITS, sparsity=0.5, sparsity_pattern="2:4")


def test_cli_sparsity_writes_sparse_file_and_json(tmp_path):
    out = tmp_path / "d.onnx"
    run = run_cli("optimize", DIGITS, "-o", out, "--sparsity", "0.8", "--sparse-format", "onnx", "--json")
    assert run.code == 0, str(run)
    report = json.loads(run.stdout)
    assert report["compression"]["sparse_storage"].startswith("sparse_initializer, onnx")
    assert onnx.load(out).graph.sparse_initializer and out.stat().st_size < DIGITS.stat().st_size
    run = run_cli("optimize", DIGITS, "-o", tmp_path / "e.onnx", "--sparsity", "0.5", "--structured",
                  "--eval", TEST, "--max-accuracy-drop", "0")
    assert run.code == 1 and "max-accuracy-drop" in run.stderr
    run = run_cli("optimize", DIGITS, "-o", tmp_path / "f.onnx", "--low-rank", "2")
    assert run.code == 2 and "--low-rank" in run.stderr
