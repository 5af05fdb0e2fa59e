"""Exporter clean-ups through the public API and the CLI: --shape, --inference, --target-opset,
and (slow) every export in build/zoo: optimized at the default level, verified, dynamic dims kept."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import graphopt
import graphopt.core.io
from graphopt.core.calibrate import input_specs
from tests.conftest import REPO, assert_one_line_error, run_cli
from tests.util import parse, to_proto

# A TorchScript-style `x.view(x.size(0), -1)` after a training-mode BatchNormalization.
TRAINING_VIEW = """
<ir_version: 8, opset_import: ["" : 15]>
g (float[batch,3,2,2] x) => (float[batch,12] y)
  <float[3] s = {1, 2, 3}, float[3] b = {0, 1, 0}, float[3] m = {0.5, 0, -1}, float[3] v = {1, 4, 2}> {
    n, rm, rv = BatchNormalization <training_mode = 1> (x, s, b, m, v)
    sh = Shape(n)
    i0 = Constant <value = int64 {0}> ()
    d0 = Gather <axis = 0> (sh, i0)
    ax = Constant <value = int64[1] {0}> ()
    u0 = Unsqueeze(d0, ax)
    rest = Constant <value = int64[1] {-1}> ()
    shape = Concat <axis = 0> (u0, rest)
    y = Reshape(n, shape)
}
"""


def _dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_default_keeps_dynamic_dims_and_reports_training_mode():
    result = graphopt.optimize(to_proto(parse(TRAINING_VIEW)))
    proto = result.to_onnx()
    assert _dims(proto.graph.input[0]) == ["batch", 3, 2, 2]
    assert [n.op_type for n in proto.graph.node] == ["BatchNormalization", "Reshape"]
    assert any("training mode" in w and "--inference" in w for w in result.report.warnings)
    assert result.report.verification.status == "passed"


def test_shape_fixes_the_input_dims_in_the_model():
    result = graphopt.optimize(to_proto(parse(TRAINING_VIEW)), shapes={"x": [4, 3, 2, 2]})
    proto = result.to_onnx()
    assert _dims(proto.graph.input[0]) == [4, 3, 2, 2]
    assert _dims(proto.graph.output[0]) == [4, 12]
    reshape = next(n for n in proto.graph.node if n.op_type == "Reshape")
    shape = next(i for i in proto.graph.initializer if i.name == reshape.input[1])
    assert onnx.numpy_helper.to_array(shape).tolist() == [4, -1]
    assert result.report.verification.status == "passed"


def test_inference_converts_and_verifies_against_the_converted_original():
    result = graphopt.optimize(to_proto(parse(TRAINING_VIEW)), inference=True)
    proto = result.to_onnx()
    bn = next(n for n in proto.graph.node if n.op_type == "BatchNormalization")
    assert len(bn.output) == 1 and not [a for a in bn.attribute if a.name == "training_mode"]
    assert result.report.verification.status == "passed"
    assert any("--inference converted 1 BatchNormalization" in w for w in result.report.warnings)


def test_cli_flags(tmp_path):
    src = tmp_path / "train.onnx"
    onnx.save(to_proto(parse(TRAINING_VIEW)), src)
    out = tmp_path / "out.onnx"
    run = run_cli("optimize", src, "-o", out, "--inference", "--shape", "x=2x3x2x2", "--target-opset", "17",
                  "--json", cwd=tmp_path)
    assert run.code == 0, str(run)
    report = json.loads(run.stdout)
    assert report["verification"]["status"] == "passed"
    model = onnx.load(out)
    assert {o.domain: o.version for o in model.opset_import}[""] == 17
    assert _dims(model.graph.input[0]) == [2, 3, 2, 2]
    bn = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
    assert len(bn.output) == 1


def test_cli_blocked_target_opset_is_one_line_exit_2(tmp_path):
    src = tmp_path / "ln.onnx"
    onnx.save(to_proto(parse("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2,4] x) => (float[2,4] y) <float[4] s = {1, 1, 1, 1}> { y = LayerNormalization(x, s) }
    """)), src)
    run = run_cli("optimize", src, "-o", tmp_path / "out.onnx", "--target-opset", "16", cwd=tmp_path)
    assert_one_line_error(run, 2, "LayerNormalization")


def test_cli_shape_with_wrong_rank_is_one_line_exit_2(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(to_proto(parse(TRAINING_VIEW)), src)
    run = run_cli("optimize", src, "-o", tmp_path / "out.onnx", "--shape", "x=2x3", cwd=tmp_path)
    assert_one_line_error(run, 2, "rank")


# --- the export zoo (tools/export_*.py writes it; absent in a fresh checkout) ---------------------------

ZOO = REPO / "build" / "zoo"
EXPORTS = sorted(p for p in ZOO.glob("*/*.onnx") if p.with_suffix(".npz").exists() and "_train" not in p.stem)


def _symbolic_dims(model: onnx.ModelProto) -> dict[str, list[int]]:
    inits = {i.name for i in model.graph.initializer}
    # `dim_value: -1` (Paddle) is a dynamic dim too, and comes out as one
    return {i.name: [k for k, d in enumerate(i.type.tensor_type.shape.dim)
                     if not d.HasField("dim_value") or d.dim_value < 0]
            for i in model.graph.input if i.name not in inits}


@pytest.mark.slow
@pytest.mark.skipif(not EXPORTS, reason="no exports in build/zoo (run tools/export_*.py)")
@pytest.mark.parametrize("path", EXPORTS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_zoo_export_optimizes_verifies_and_stays_dynamic(path: pathlib.Path):
    data = dict(np.load(path.with_suffix(".npz")))
    feeds = {k: v for k, v in data.items() if not k.startswith("expected_")}
    result = graphopt.optimize(path, inputs=feeds)
    assert result.report.verification.status == "passed", result.report.verification
    original = onnx.load(str(path), load_external_data=False)
    optimized = result.to_onnx()
    assert _symbolic_dims(optimized) == _symbolic_dims(original)
    assert len(optimized.graph.node) <= len(original.graph.node)
    # Runs at another batch size, as the original does (each input cut on its own batch axis).
    axes = {s.name: s.batch_axis for s in input_specs(graphopt.core.io.load(path))}
    small = {k: v if axes.get(k) is None else np.take(v, [0], axis=axes[k]) for k, v in feeds.items()}
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    want = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, small)
    got = ort.InferenceSession(optimized.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, small)
    for w, g in zip(want, got):
        np.testing.assert_allclose(g, w, rtol=1e-3, atol=1e-4 * max(1.0, float(np.abs(w).max())))


def _bench_exports():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_exports", REPO / "tools" / "bench_exports.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_verdict_does_not_count_training_dropouts(tmp_path):
    bench = _bench_exports()
    model = parse("""
        <ir_version: 8, opset_import: ["" : 15]>
        g (float[2,4] x) => (float[2,4] y) {
            r = Constant <value = float {0.2}> ()
            t = Constant <value = bool {1}> ()
            d = Dropout(x, r, t)
            y = Relu(d)
        }""")
    path = tmp_path / "m.onnx"
    onnx.save(to_proto(model), path)
    facts = bench.model_facts(path)
    assert facts["train_dropouts"] == 1
    timing = {"latency_ratio": 1.0, "latency_ci": 0.01}
    common = {"agrees": True, "dynamic": True, "custom_domains": [], **timing}
    variants = {"original": {"nodes": 4, **common}, "copy": {"nodes": 4, **common},
                "graphopt": {"nodes": 2, "train_dropouts": 1, "verified": "passed", **common},
                "dropper": {"nodes": 1, "train_dropouts": 0, **common}}
    assert bench.verdict(variants)["ok"]
    variants["dropper"]["nodes"] = 0  # fewer nodes for another reason: graphopt misses the target
    assert not bench.verdict(variants)["ok"]
