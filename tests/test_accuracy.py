"""Metrics, the generic accuracy budget, and the lossy stage end to end (API and CLI)."""

from __future__ import annotations

import math
import pathlib

import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir
import pytest
from onnx import TensorProto, numpy_helper

import graphopt
from graphopt.core.accuracy import Evaluator, Score, cosine, fit_budget, snr_db
from graphopt.core.calibrate import Dataset
from graphopt.core.errors import BudgetError, UsageError
from graphopt.stages.quantize import LossyOptions, run_lossy

ROOT = pathlib.Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(0)


# ---------------------------------------------------------------- metrics


def test_snr_and_cosine():
    ref = RNG.standard_normal((4, 10))
    assert snr_db(ref, ref) == math.inf and cosine(ref, ref) == pytest.approx(1.0)
    assert snr_db(ref, ref + 0.1 * ref) == pytest.approx(20.0)
    assert cosine(ref, -ref) == pytest.approx(-1.0)
    assert cosine(np.zeros((2, 3)), np.zeros((2, 3))) == 1.0


# ---------------------------------------------------------------- fit_budget, with no model at all


def fake(drops: dict[str, float], baseline=90.0):
    """Each applied decision costs its drop (additive): build returns the set, evaluate scores it."""
    def build(applied):
        return frozenset(applied)

    def evaluate(applied):
        return Score("top-1 accuracy", baseline - sum(drops[a] for a in applied), 100, "y",
                     {"y": {"snr_db": 40.0 - len(applied)}})
    return build, evaluate, Score("top-1 accuracy", baseline, 100, "y")


def test_budget_met_without_search():
    build, evaluate, base = fake({"a": 0.1, "b": 0.2})
    result = fit_budget(["a", "b"], build, evaluate, base, 0.5)
    assert result.applied == {"a", "b"} and result.kept == [] and result.evaluations == 1


def test_budget_reverts_the_most_sensitive_first():
    build, evaluate, base = fake({"a": 0.1, "b": 3.0, "c": 0.2, "d": 1.0})
    result = fit_budget(["a", "b", "c", "d"], build, evaluate, base, 1.0)
    assert result.kept == ["b", "d"] and result.applied == {"a", "c"}
    assert result.sensitivity["b"] == pytest.approx(3.0) and result.recovered["b"] == pytest.approx(3.0)
    assert result.drop == pytest.approx(0.3)
    assert result.evaluations == 1 + 4 + 2 + 2  # all, each alone, two reverts, two re-apply tries


def test_budget_skips_reverts_that_win_nothing():
    def build(applied):
        return frozenset(applied)

    def evaluate(applied):  # "a" looks worst alone, yet costs nothing next to the others
        drop = 2.0 * ("b" in applied) + 0.2 * ("c" in applied) + (2.5 if applied == {"a"} else 0.0)
        return Score("top-1 accuracy", 90.0 - drop, 100, "y")
    result = fit_budget(["a", "b", "c"], build, evaluate, Score("top-1 accuracy", 90.0, 100, "y"), 0.5)
    assert result.kept == ["b"] and result.applied == {"a", "c"}
    assert result.steps[1].action == "revert a: no gain, kept"


def test_budget_re_applies_what_it_can_afford_at_the_end():
    # interactions: "c" only hurts together with "b"; once "b" is reverted, "c" can come back
    def build(applied):
        return frozenset(applied)

    def evaluate(applied):
        drop = 0.4 * ("a" in applied) + 2.0 * ("b" in applied) + (1.0 if {"b", "c"} <= applied else 0.0)
        alone_c = 3.0 if applied == {"c"} else 0.0
        return Score("top-1 accuracy", 90.0 - drop - alone_c, 100, "y")
    result = fit_budget(["a", "b", "c"], build, evaluate, Score("top-1 accuracy", 90.0, 100, "y"), 0.5)
    assert result.applied == {"a", "c"} and result.kept == ["b"]
    assert any(s.action == "re-apply c" for s in result.steps)


def test_budget_impossible_raises_with_the_best():
    build, evaluate, base = fake({"a": 2.0, "b": 2.0})
    with pytest.raises(BudgetError, match="no setting meets --max-accuracy-drop 1") as info:
        fit_budget(["a", "b"], build, evaluate, base, 1.0)
    assert info.value.exit_code == 1
    assert info.value.best.drop == pytest.approx(2.0) and len(info.value.best.kept) == 1


def test_no_budget_applies_everything():
    build, evaluate, base = fake({"a": 5.0})
    assert fit_budget(["a"], build, evaluate, base, None).applied == {"a"}


# ---------------------------------------------------------------- a model with one deliberately sensitive layer


def sensitive_mlp() -> ir.Model:
    """fc1's first output channel is ~1000x the others and fc2 ignores it: quantizing fc2's input
    per tensor flattens every useful channel to a few steps, so fc2 is the sensitive layer."""
    w1 = RNG.standard_normal((16, 32)).astype(np.float32) * 0.3
    w1[:, 0] *= 3000.0
    w2 = RNG.standard_normal((32, 10)).astype(np.float32) * 0.3
    w2[0, :] = 0.0
    nodes = [oh.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1"),
             oh.make_node("Relu", ["h"], ["r"], name="relu"),
             oh.make_node("Gemm", ["r", "w2", "b2"], ["logits"], name="fc2")]
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                          [oh.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
                          [numpy_helper.from_array(a, n) for n, a in
                           (("w1", w1), ("b1", np.abs(w1[0]) * 0), ("w2", w2), ("b2", np.zeros(10, np.float32)))])
    return ir.serde.deserialize_model(onnx.shape_inference.infer_shapes(
        oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])))


def labelled(model, n, seed):
    """Inputs with the float model's own top-1 as labels: the float baseline is 100%."""
    x = np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)
    probe = Evaluator(Dataset({"x": x}), model)
    return {"x": x, "labels": probe.reference["logits"].argmax(1).astype(np.int64)}


def test_evaluator_top1_and_agreement():
    model = sensitive_mlp()
    data = labelled(model, 64, 1)
    with_labels = Evaluator(Dataset({"x": data["x"]}, data["labels"]), model)
    assert with_labels.metric == "top-1 accuracy" and with_labels.baseline.value == 100.0
    agreement = Evaluator(Dataset({"x": data["x"]}), model)
    assert agreement.metric == "top-1 agreement" and agreement.baseline.value == 100.0
    assert agreement.baseline.fidelity["logits"]["snr_db"] == math.inf


def lossy(model, **kwargs):
    kwargs.setdefault("calibration", labelled(model, 64, 2))
    kwargs.setdefault("eval", labelled(model, 200, 3))
    kwargs.setdefault("place_for_speed", False)  # budgets here; placement by speed has its own tests
    return run_lossy(model, LossyOptions("int8", measure=False, **kwargs))


def test_without_budget_the_sensitive_layer_costs_accuracy():
    result = lossy(sensitive_mlp())
    assert result.section["accuracy_drop"] > 10 and result.section["kept_float"] == []


def test_budget_keeps_the_sensitive_layer_in_float():
    result = lossy(sensitive_mlp(), max_accuracy_drop=2.0)
    section = result.section
    assert [k["layer"] for k in section["kept_float"]] == ["fc2"]
    kept = section["kept_float"][0]
    assert kept["op"] == "Gemm" and kept["drop_if_applied_alone"] > 10 and kept["points_recovered"] > 10
    assert kept["weight_bytes"] == 32 * 10 * 4 and 0 < kept["macs_share"] < 1
    assert section["accuracy_drop"] <= 2.0 and section["layers_quantized"] == "1 of 2"
    fc2 = result.model.graph.node("fc2")
    assert fc2.inputs[1].const_value is not None and fc2.inputs[1].dtype == ir.DataType.FLOAT


def test_budget_impossible_is_budget_error():
    model = sensitive_mlp()
    with pytest.raises(BudgetError) as info:
        lossy(model, max_accuracy_drop=0.0, keep_float=["fc1"])  # fc2 alone cannot be quantized losslessly
    assert "best keeps 0 of 1 layers" in str(info.value)


def test_budget_needs_data():
    with pytest.raises(UsageError, match="needs data"):
        run_lossy(sensitive_mlp(), LossyOptions("fp16", max_accuracy_drop=1.0, measure=False))


def test_int8_needs_calibration():
    with pytest.raises(UsageError, match="--calibration"):
        run_lossy(sensitive_mlp(), LossyOptions("int8", measure=False))


def test_cli_budget_failure_exits_1_with_the_best(tmp_path, capsys):
    from graphopt.app.cli import main

    model = sensitive_mlp()
    path = tmp_path / "m.onnx"
    ir.save(model, path)
    np.savez(tmp_path / "calib.npz", **labelled(model, 64, 2))
    np.savez(tmp_path / "test.npz", **labelled(model, 200, 3))
    args = ["optimize", str(path), "-o", str(tmp_path / "q.onnx"), "--level", "0", "--quantize", "int8",
            "--calibration", str(tmp_path / "calib.npz"), "--eval", str(tmp_path / "test.npz"),
            "--keep-float", "fc1", "--max-accuracy-drop", "0", "--no-measure"]
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 1
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "no setting meets --max-accuracy-drop 0" in lines[0]
    assert not (tmp_path / "q.onnx").exists()


def test_cli_flags_without_quantize_are_usage_errors(tmp_path, capsys):
    from graphopt.app.cli import main

    path = tmp_path / "m.onnx"
    ir.save(sensitive_mlp(), path)
    with pytest.raises(SystemExit) as info:
        main(["optimize", str(path), "--calibration", "random"])
    assert info.value.code == 2 and "--calibration needs --quantize" in capsys.readouterr().err


# ---------------------------------------------------------------- the bundled digits model, end to end


def test_digits_int8_keeps_accuracy_and_report_fields():
    result = graphopt.optimize(ROOT / "models" / "digits_cnn.onnx", quantize="int8",
                               calibration=ROOT / "models" / "digits_calib.npz",
                               eval=ROOT / "models" / "digits_test.npz", max_accuracy_drop=0.5,
                               quantize_measure=False)
    section = result.report.sections["quantization"]
    assert section["metric"] == "top-1 accuracy" and section["accuracy_before"] > 99.0
    assert section["accuracy_drop"] <= 0.5
    ops = {n.op_type for n in result.model.graph}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "BatchNormalization" not in ops
    assert result.report.file_bytes_after < result.report.file_bytes_before / 1.8
    assert [o.name for o in result.model.graph.outputs] == ["logits"]


@pytest.mark.parametrize("mode", ["fp16", "int8-dynamic"])
def test_digits_other_modes(mode):
    result = graphopt.optimize(ROOT / "models" / "digits_cnn.onnx", quantize=mode,
                               eval=ROOT / "models" / "digits_test.npz", quantize_measure=False)
    section = result.report.sections["quantization"]
    assert section["accuracy_drop"] <= 0.5 and section["mode"].startswith(mode)


def test_old_opset_is_raised_for_per_channel_int8():
    model = sensitive_mlp()
    model.opset_imports[""] = 9
    result = lossy(model)
    assert any("opset 9 converted to 13" in w for w in result.warnings)
    assert result.model.opset_imports[""] == 13
    axes = [n.attributes["axis"].as_int() for n in result.model.graph if n.op_type == "DequantizeLinear"
            and "axis" in n.attributes]
    assert axes  # per-channel weights
