"""Calibration/evaluation data: every source, every check, and the range methods."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir
import pytest
from onnx import TensorProto

from graphopt.core.calibrate import Dataset, InputSpec, input_specs, load_data
from graphopt.core.images import Preprocess
from graphopt.core.ranges import collect_ranges
from graphopt.core.errors import InputError, UsageError

SPECS = [InputSpec("input", np.dtype(np.float32), (None, 1, 8, 8))]
RNG = np.random.default_rng(0)


def images(n=4):
    return RNG.random((n, 1, 8, 8)).astype(np.float32)


def relu_model(shape=("N", 3, 4, 4)) -> ir.Model:
    nodes = [oh.make_node("Relu", ["x"], ["r"], name="relu"), oh.make_node("Neg", ["r"], ["y"], name="neg")]
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))])
    return ir.serde.deserialize_model(onnx.shape_inference.infer_shapes(
        oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])))


# ---------------------------------------------------------------- sources


def test_npz_with_labels(tmp_path):
    path = tmp_path / "calib.npz"
    np.savez(path, input=images(5), labels=np.arange(5))
    data = load_data(path, SPECS)
    assert len(data) == 5 and data.labels.tolist() == [0, 1, 2, 3, 4] and not data.synthetic
    assert [b["input"].shape[0] for b in data.batches(2)] == [2, 2, 1]


def test_the_bundled_digits_data_fits_the_digits_model():
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1]
    model = ir.load(root / "models" / "digits_cnn.onnx")
    data = load_data(root / "models" / "digits_calib.npz", model)
    assert len(data) == 270 and data.labels is not None


def test_float64_data_is_converted(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, input=images().astype(np.float64))
    assert load_data(path, SPECS).inputs["input"].dtype == np.float32


def test_folder_of_npy_samples_and_labels(tmp_path):
    for i in range(3):
        np.save(tmp_path / f"s{i}.npy", images(1)[0])  # one sample each, no batch axis
    (tmp_path / "labels.txt").write_text("3\n1\n2\n")
    data = load_data(tmp_path, SPECS)
    assert data.inputs["input"].shape == (3, 1, 8, 8) and data.labels.tolist() == [3, 1, 2]


def test_folder_of_npz_batches(tmp_path):
    np.savez(tmp_path / "a.npz", input=images(2), labels=np.array([0, 1]))
    np.savez(tmp_path / "b.npz", input=images(3), labels=np.array([2, 3, 4]))
    data = load_data(tmp_path, SPECS)
    assert len(data) == 5 and data.labels.tolist() == [0, 1, 2, 3, 4]


def test_subfolder_per_input(tmp_path):
    specs = [InputSpec("a", np.dtype(np.float32), (None, 2)), InputSpec("b", np.dtype(np.int64), (None, 3))]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for i in range(2):
        np.save(tmp_path / "a" / f"{i}.npy", np.ones(2, np.float32))
        np.save(tmp_path / "b" / f"{i}.npy", np.ones(3, np.int64))
    data = load_data(tmp_path, specs)
    assert data.inputs["a"].shape == (2, 2) and data.inputs["b"].shape == (2, 3)


def test_image_folder_defaults_from_the_model(tmp_path):
    pil = pytest.importorskip("PIL.Image")
    for i in range(3):
        pil.fromarray((RNG.random((20, 16)) * 255).astype(np.uint8)).save(tmp_path / f"{i}.png")
    data = load_data(tmp_path, SPECS)
    x = data.inputs["input"]
    assert x.shape == (3, 1, 8, 8) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    assert any("preprocessed" in n for n in data.notes)


def test_image_folder_with_preprocess_nhwc(tmp_path):
    pil = pytest.importorskip("PIL.Image")
    pil.fromarray((RNG.random((40, 30, 3)) * 255).astype(np.uint8)).save(tmp_path / "a.jpg")
    specs = [InputSpec("img", np.dtype(np.float32), (None, 24, 24, 3))]
    pre = "resize=32,crop=24x24,mean=0.5/0.5/0.5,std=0.25/0.25/0.25,layout=nhwc,color=bgr"
    x = load_data(tmp_path, specs, preprocess=pre).inputs["img"]
    assert x.shape == (1, 24, 24, 3) and -2.0 - 1e-6 <= x.min() and x.max() <= 2.0 + 1e-6


@pytest.mark.parametrize("text", ["resize=abc", "layout=chw", "std=0", "nonsense", "mean=1/x"])
def test_bad_preprocess_is_a_usage_error(text):
    with pytest.raises(UsageError, match="--preprocess"):
        Preprocess.parse(text)


def test_preprocess_round_trip():
    pre = Preprocess.parse("resize=256,crop=224,mean=0.485/0.456/0.406,std=0.229/0.224/0.225,layout=nchw")
    assert pre.resize == (256,) and pre.crop == (224, 224) and pre.layout == "nchw"
    assert "crop=224x224" in pre.describe()


def test_random_data_is_loud(caplog):
    data = load_data("random:5", SPECS)
    assert data.synthetic and len(data) == 5 and data.inputs["input"].shape == (5, 1, 8, 8)
    assert data.notes and "RANDOM" in data.notes[0]
    assert "RANDOM" in caplog.text


def test_random_respects_a_fixed_batch():
    specs = [InputSpec("x", np.dtype(np.float32), (4, 3))]
    assert len(load_data("random:6", specs)) == 8


# ---------------------------------------------------------------- errors (one clear line each)


@pytest.mark.parametrize("arrays,match", [
    ({"image": images()}, "no array for graph input 'input'"),
    ({"input": images(), "extra": images()}, "'extra' matches no graph input"),
    ({"input": images()[:, 0]}, r"shape \[4, 8, 8\].*rank 4"),
    ({"input": RNG.random((4, 3, 8, 8)).astype(np.float32)}, "dim 1 is 3, expected 1"),
    ({"input": (images() * 255).astype(np.uint8)}, "is uint8, but the graph input is float32"),
    ({"input": images(), "labels": np.arange(3)}, "3 labels for 4 samples"),
    ({"input": images(), "labels": np.zeros(4)}, "1-D integer array"),
    ({"input": images()[:0]}, "holds no samples"),
])
def test_bad_arrays_are_input_errors(tmp_path, arrays, match):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(InputError, match=match) as info:
        load_data(path, SPECS)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    assert info.value.exit_code == 2


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(InputError, match="no such data file"):
        load_data(tmp_path / "nope.npz", SPECS)
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a readable .npz"):
        load_data(tmp_path / "broken.npz", SPECS)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="empty data folder"):
        load_data(empty, SPECS)


def test_inputs_with_different_counts(tmp_path):
    specs = [InputSpec("a", np.dtype(np.float32), (None, 2)), InputSpec("b", np.dtype(np.float32), (None, 2))]
    with pytest.raises(InputError, match="different sample counts"):
        load_data({"a": np.ones((3, 2), np.float32), "b": np.ones((2, 2), np.float32)}, specs)


def test_fixed_batch_needs_a_multiple(tmp_path):
    specs = [InputSpec("x", np.dtype(np.float32), (4, 3))]
    with pytest.raises(InputError, match="multiple of the model's fixed batch size 4"):
        load_data({"x": np.ones((6, 3), np.float32)}, specs)


def test_cli_reports_bad_calibration_in_one_line(tmp_path, capsys):
    from graphopt.app.cli import main

    bad = tmp_path / "bad.npz"
    np.savez(bad, wrong_name=images())
    model = tmp_path / "m.onnx"
    ir.save(relu_model(("N", 1, 8, 8)), model)
    with pytest.raises(SystemExit) as exit_info:
        main(["optimize", str(model), "-o", str(tmp_path / "o.onnx"), "--level", "0", "--quantize", "int8",
              "--calibration", str(bad)])
    assert exit_info.value.code == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "no array for graph input 'x'" in lines[0] and "Traceback" not in lines[0]


# ---------------------------------------------------------------- ranges


def test_input_specs_skip_initializer_inputs():
    model = relu_model()
    assert [s.name for s in input_specs(model)] == ["x"] and input_specs(model)[0].shape == (None, 3, 4, 4)


def test_minmax_ranges_of_inputs_and_intermediates():
    model = relu_model()
    x = RNG.standard_normal((10, 3, 4, 4)).astype(np.float32)
    ranges = collect_ranges(model, ["x", "r", "y"], Dataset({"x": x}), method="minmax", batch_size=3)
    assert ranges["x"] == pytest.approx((float(x.min()), float(x.max())))
    assert ranges["r"] == pytest.approx((0.0, float(x.max())))
    assert ranges["y"] == pytest.approx((-float(x.max()), 0.0))


def test_percentile_cuts_outliers():
    model = relu_model()
    x = np.abs(RNG.standard_normal((20, 3, 4, 4))).astype(np.float32)
    x[0, 0, 0, 0] = 1000.0  # one outlier in 960 values
    ranges = collect_ranges(model, ["r"], Dataset({"x": x}), method="percentile", percentile=99.0)
    assert 0.0 <= ranges["r"][0] < 0.01 and ranges["r"][1] < 10.0


def test_entropy_clips_a_long_tail_but_keeps_the_bulk():
    model = relu_model()
    x = np.abs(np.random.default_rng(0).standard_t(2, (200, 3, 4, 4))).astype(np.float32)  # heavy tail
    lo, hi = collect_ranges(model, ["r"], Dataset({"x": x}), method="entropy")["r"]
    assert 0.0 <= lo < 0.01 and np.percentile(x, 99) < hi < x.max() / 2


def test_unknown_method_is_a_usage_error():
    with pytest.raises(UsageError, match="calibration method"):
        collect_ranges(relu_model(), ["r"], Dataset({"x": np.ones((1, 3, 4, 4), np.float32)}), method="mse")


def _vad_specs():
    from graphopt.core.calibrate import input_specs
    from graphopt.core import io
    from tests.exporter_shapes import stateful_vad

    return input_specs(io.load(stateful_vad()))


def test_scalar_inputs_are_shared_and_state_inputs_stack_on_their_batch_axis():
    specs = _vad_specs()
    assert [(s.name, s.batch_axis) for s in specs] == [("input", 0), ("state", 1), ("sr", None)]
    data = load_data({"input": np.ones((5, 64), np.float32), "state": np.zeros((2, 5, 8), np.float32),
                      "sr": np.array(16000, np.int64)}, specs)
    assert len(data) == 5
    batches = list(data.batches(2))
    assert [b["state"].shape for b in batches] == [(2, 2, 8), (2, 2, 8), (2, 1, 8)]
    assert all(b["sr"].shape == () and int(b["sr"]) == 16000 for b in batches)
    assert data.first()["input"].shape == (1, 64)


def test_a_state_given_once_is_repeated_for_every_sample():
    data = load_data({"input": np.ones((5, 64), np.float32), "state": np.zeros((2, 1, 8), np.float32),
                      "sr": np.array(16000, np.int64)}, _vad_specs())
    assert len(data) == 5 and [b["state"].shape for b in data.batches(3)] == [(2, 3, 8), (2, 2, 8)]


def test_non_finite_calibration_data_is_refused():
    bad = np.ones((4, 1, 8, 8), np.float32)
    bad[2, 0, 3, 3] = np.inf
    with pytest.raises(InputError, match="1 NaN or infinite"):
        load_data({"input": bad}, SPECS)


def test_random_data_follows_the_input_model():
    from graphopt.core import io
    from tests.exporter_shapes import bert_like

    data = load_data("random:3", io.load(bert_like(vocab=30)))
    assert data.inputs["input_ids"].shape == (3, 128) and data.inputs["input_ids"].max() < 30
    assert data.inputs["token_type_ids"].max() <= 1
