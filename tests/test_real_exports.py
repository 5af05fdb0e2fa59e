"""Real exports (models/zoo, made by tools/export_*.py with random weights): Hugging Face BERT,
DistilBERT, GPT-2 with past key/values, a sentence embedder, a torch dynamo decoder, a U-Net
and a YOLO-style head with dynamic height/width, CRNN OCR recognizers (torch, paddle2onnx 1
and 2, one with `-1` dims), a DB text detector, a Keras/tf2onnx byte classifier, and one
stateful voice-activity detector exported three ways (an If on a scalar `sr`, an LSTM state).

Each one is verified by `graphopt.optimize` with default arguments, at a shape that exercises
it (no dim of 1 where a real input has many), and the optimized model still gives the
framework's own outputs on the realistic sample beside it (`NAME.npz`, `expected_*`).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest

import graphopt
from tests.conftest import REPO

ZOO = REPO / "models" / "zoo"
MODELS = sorted(p.stem for p in ZOO.glob("*.onnx"))
# The dim that must not be 1 (it is what made the old inputs prove nothing), per family.
EXERCISED = {"hf_": ("input_ids", 1, 128), "sentence": ("input_ids", 1, 128), "dynamo_decoder": ("input_ids", 1, 128),
             "unet": ("input", 2, 640), "yolo": ("input", 2, 640), "crnn": ("input", 3, 224),
             "paddle_crnn": ("x", 3, 224), "paddle_db": ("x", 2, 224), "keras": ("bytes", 1, 1536),
             "stateful_vad": ("input", 1, 256)}


def _expected(name: str):
    for prefix, value in EXERCISED.items():
        if name.startswith(prefix) and not (prefix == "crnn" and name.startswith("paddle")):
            return value
    raise KeyError(name)


def _sample(name: str) -> tuple[dict, dict]:
    with np.load(ZOO / f"{name}.npz") as data:
        arrays = {k: data[k] for k in data.files}
    feeds = {k: v for k, v in arrays.items() if not k.startswith("expected_")}
    return feeds, {k[len("expected_"):]: v for k, v in arrays.items() if k.startswith("expected_")}


def test_the_zoo_is_there():
    assert len(MODELS) >= 17, MODELS


@pytest.mark.parametrize("name", MODELS)
def test_default_optimize_verifies_at_a_real_size_and_keeps_the_framework_outputs(name, tmp_path):
    result = graphopt.optimize(ZOO / f"{name}.onnx")
    v = result.report.verification
    assert v.status == "passed", v.reason
    assert v.levels == {"disabled": "passed", "default": "passed"}
    if name.startswith("hf_gpt2"):
        assert v.input_shapes["input_ids"] == [1, 1] and v.input_shapes["attention_mask"] == [1, 129]
        assert v.input_shapes["past_key_values.0.key"][2] == 128
    else:
        input_name, axis, size = _expected(name)
        assert v.input_shapes[input_name][axis] == size, v.inputs
    assert v.inputs and all(item["why"] for item in v.inputs.values())
    out = tmp_path / f"{name}.opt.onnx"
    result.save(out)
    feeds, expected = _sample(name)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    for key, want in expected.items():
        scale = max(1.0, float(np.abs(want).max()))
        assert np.abs(got[key].astype(np.float64) - want).max() <= 1e-3 * scale, key


def test_stateful_model_calibrates_from_an_npz_with_its_scalar_and_state(tmp_path):
    rng = np.random.default_rng(0)
    n = 12
    calib = tmp_path / "calib.npz"
    np.savez(calib, input=(rng.standard_normal((n, 512)) * 0.1).astype(np.float32),
             state=np.zeros((2, n, 128), np.float32), sr=np.array(16000, np.int64))
    result = graphopt.optimize(ZOO / "stateful_vad_ts.onnx", quantize="int8", calibration=calib)
    section = result.report.sections["quantization"]
    assert section["latency_inputs"] == {"input": [1, 512], "state": [2, 1, 128], "sr": []}
    assert section["accuracy_after"] >= 99.0


def test_compare_stateful_exports_without_data_matches_inputs_by_name(tmp_path):
    paths = []
    for name in ("stateful_vad_ts", "stateful_vad_dynamo", "stateful_vad_helper"):  # the last: inputs reordered
        shutil.copy(ZOO / f"{name}.onnx", tmp_path)  # no sample .npz beside them
        paths.append(tmp_path / f"{name}.onnx")
    from graphopt.app.compare import compare

    result = compare(paths, runs=3, warmup=1)
    data = json.loads(result.to_json())
    assert all(m["agreement"]["status"] == "agree" for m in data["exported"]), data["exported"]
    assert all(m["latency"] for m in data["exported"])  # every export timed
    assert not any("signatures differ" in w for w in data["warnings"])
    assert any("sr scalar" in w and "16000" in w for w in data["warnings"]), data["warnings"]
