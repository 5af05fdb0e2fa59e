"""graphopt compare: two or more exports of one network, side by side, before and after optimize."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt.app import compare as cmp
from graphopt.app.rendering import compare as render
from graphopt.app.rendering import plots
from graphopt.app.cli import main

EPS = 1e-5


def _weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = {"w1": rng.standard_normal((8, 3, 3, 3)) * 0.3, "w2": rng.standard_normal((8, 8, 1, 1)) * 0.3,
         "fc": rng.standard_normal((10, 8)) * 0.3, "fcb": rng.standard_normal(10) * 0.1}
    for i in (1, 2):
        w[f"g{i}"] = rng.uniform(0.5, 1.5, 8)
        w[f"b{i}"] = rng.standard_normal(8) * 0.1
        w[f"m{i}"] = rng.standard_normal(8) * 0.1
        w[f"v{i}"] = rng.uniform(0.5, 1.5, 8)
    return {k: v.astype(np.float32) for k, v in w.items()}


def _model(nodes, inputs, inits, name: str, producer: str) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                                                                  [1, 10])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name=producer)
    onnx.checker.check_model(model, full_check=True)
    return model


def export_unfused(w: dict[str, np.ndarray]) -> onnx.ModelProto:
    """Like a training-framework export: Conv -> BatchNormalization, an Identity chain, Flatten via
    Shape->Gather->Unsqueeze->Concat->Reshape."""
    nodes = [
        helper.make_node("Conv", ["input", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "g1", "b1", "m1", "v1"], ["n1"], epsilon=EPS),
        helper.make_node("Relu", ["n1"], ["r1"]),
        helper.make_node("Identity", ["r1"], ["i1"]),
        helper.make_node("Identity", ["i1"], ["i2"]),
        helper.make_node("Conv", ["i2", "w2"], ["c2"]),
        helper.make_node("BatchNormalization", ["c2", "g2", "b2", "m2", "v2"], ["n2"], epsilon=EPS),
        helper.make_node("Relu", ["n2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
        helper.make_node("Shape", ["p"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["s0"], axis=0),
        helper.make_node("Unsqueeze", ["s0", "axes"], ["s0u"]),
        helper.make_node("Concat", ["s0u", "minus1"], ["shape"], axis=0),
        helper.make_node("Reshape", ["p", "shape"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc", "fcb"], ["logits"], transB=1),
    ]
    inits = {**w, "zero": np.array(0, np.int64), "axes": np.array([0], np.int64),
             "minus1": np.array([-1], np.int64)}
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])
    return _model(nodes, [x], inits, "unfused", "fake-torch")


def _folded(w: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {"fc": w["fc"], "fcb": w["fcb"]}
    for i in (1, 2):
        scale = w[f"g{i}"] / np.sqrt(w[f"v{i}"] + EPS)
        out[f"w{i}"] = (w[f"w{i}"] * scale[:, None, None, None]).astype(np.float32)
        out[f"b{i}"] = (w[f"b{i}"] - w[f"m{i}"] * scale).astype(np.float32)
    return out


def export_nhwc(w: dict[str, np.ndarray]) -> onnx.ModelProto:
    """Like a Keras export: NHWC input, BN folded, a Transpose pair that cancels."""
    f = _folded(w)
    nodes = [
        helper.make_node("Transpose", ["input_1"], ["x"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Transpose", ["r1"], ["t1"], perm=[0, 2, 3, 1]),
        helper.make_node("Transpose", ["t1"], ["t2"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["t2", "w2", "b2"], ["c2"]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
        helper.make_node("Flatten", ["p"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc", "fcb"], ["logits"], transB=1),
    ]
    x = helper.make_tensor_value_info("input_1", TensorProto.FLOAT, [1, 16, 16, 3])
    return _model(nodes, [x], f, "nhwc", "fake-tf2onnx")


def export_other(w: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A model with a different input signature: two inputs."""
    m = export_nhwc(w)
    m.graph.input.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, [1]))
    return m


def make_exports(directory: pathlib.Path, seed: int = 0) -> list[pathlib.Path]:
    """Two exports of one network (and an NHWC one), same weights; sample inputs beside the first."""
    w = _weights(seed)
    paths = []
    for name, build in (("torch_like", export_unfused), ("keras_like", export_nhwc)):
        path = directory / name / "net.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(build(w), path)
        paths.append(path)
    rng = np.random.default_rng(seed + 1)
    np.savez(paths[0].with_suffix(".npz"), input=rng.standard_normal((1, 3, 16, 16)).astype(np.float32))
    return paths


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> list[pathlib.Path]:
    return make_exports(tmp_path_factory.mktemp("zoo"))


@pytest.fixture(scope="module")
def result(exports) -> cmp.CompareResult:
    return cmp.compare(exports, level=1, runs=5, warmup=1)


def test_leftovers_counts_each_pattern():
    w = _weights()
    unfused = cmp.leftovers(ir.serde.deserialize_model(export_unfused(w)))
    nhwc = cmp.leftovers(ir.serde.deserialize_model(export_nhwc(w)))
    assert unfused["BatchNormalization after Conv (unfused)"] == 2
    assert unfused["Identity nodes"] == 2 and unfused["Identity chain links"] == 1
    assert unfused["Shape->Gather->Unsqueeze->Concat"] == 1
    assert unfused["Transpose pairs"] == 0
    assert nhwc["Transpose pairs"] == 1 and nhwc["Transpose pairs that cancel"] == 1
    assert nhwc["BatchNormalization after Conv (unfused)"] == 0


def test_initializers_listed_as_inputs_are_counted():
    model = export_nhwc(_weights())
    model.ir_version = 3
    model.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, t.dims)
                             for t in model.graph.initializer)
    assert cmp.leftovers(ir.serde.deserialize_model(model))["initializers listed as inputs"] == 6


def test_compare_two_exports_agree_and_report_both_stages(result):
    a, b = result.exported
    assert a.producer == "fake-torch" and b.producer == "fake-tf2onnx"
    assert a.opsets["ai.onnx"] == 17
    assert a.nodes == 15 and b.nodes == 10
    assert a.op_histogram["BatchNormalization"] == 2 and "BatchNormalization" not in b.op_histogram
    assert a.parameters > b.parameters  # BN statistics
    assert b.flops > 0 and abs(a.flops - b.flops) <= 0.01 * b.flops  # the Reshape hides the Gemm shape in a
    # Same weights, NHWC input fed the same data transposed: the outputs agree.
    assert a.agreement["status"] == "agree"
    assert b.agreement["status"] == "agree" and "NHWC" in b.agreement["note"]
    assert b.agreement["top1_agreement"] == 1.0
    assert a.latency["ratio"] == 1.0 and b.latency["ratio"] > 0
    # After optimize (level 1: no-ops, folding): Identity chain and shape arithmetic are gone.
    oa, ob = result.optimized
    assert oa.leftovers["Identity nodes"] == 0
    assert oa.leftovers["Shape->Gather->Unsqueeze->Concat"] == 0
    assert oa.nodes < a.nodes
    assert oa.verification == "passed" and ob.verification == "passed"
    assert oa.agreement["status"] == "agree" and ob.agreement["status"] == "agree"
    assert oa.latency["p50_ms"] > 0 and ob.latency["ratio"] > 0
    conv = result.convergence
    assert conv["optimized"]["histogram_distance"]["keras_like/net"] <= conv["exported"]["histogram_distance"][
        "keras_like/net"]
    assert conv["optimized"]["leftovers"] < conv["exported"]["leftovers"]


def test_signatures_that_differ_are_said_not_compared(tmp_path, exports):
    other = tmp_path / "other.onnx"
    onnx.save(export_other(_weights()), other)
    result = cmp.compare([exports[0], other], optimize=False, runs=3, warmup=0)
    assert result.optimized is None
    assert result.exported[1].agreement["status"].startswith("signatures differ")
    assert not result.exported[1].latency
    assert any("not timed" in w for w in result.warnings)


def test_reports_html_with_embedded_plots_and_markdown(result, tmp_path):
    pytest.importorskip("matplotlib")
    page = render.write_report(result, tmp_path / "r.html")
    text = page[0].read_text()
    assert text.count("data:image/png;base64,") == 2
    assert "patterns left by the exporter" in text and "BatchNormalization after Conv" in text
    files = render.write_report(result, tmp_path / "r.md")
    assert [f.name for f in files] == ["r.md", "r_latency.png", "r_ops.png"]
    assert "![latency](r_latency.png)" in files[0].read_text()
    assert files[1].read_bytes().startswith(b"\x89PNG")


def test_reports_without_matplotlib_say_so(result, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert render.plots(result) is None and not plots.plots_available()
    text = render.write_report(result, tmp_path / "r.html")[0].read_text()
    assert "matplotlib is not installed" in text and "data:image/png" not in text
    files = render.write_report(result, tmp_path / "r.md")
    assert len(files) == 1 and "matplotlib is not installed" in files[0].read_text()


def test_cli_compare_json(exports, capsys, tmp_path):
    main(["compare", str(exports[0]), str(exports[1]), "--level", "1", "--runs", "3", "--json",
          "--report", str(tmp_path / "c.md")])
    data = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in data["exported"]] == ["torch_like/net", "keras_like/net"]
    assert data["optimized"][0]["verification"] == "passed"
    assert (tmp_path / "c.md").exists()


def test_cli_compare_tables(exports, capsys):
    main(["compare", str(exports[0]), str(exports[1]), "--no-optimize", "--runs", "3"])
    out = capsys.readouterr().out
    assert "patterns left by the exporter" in out and "agree" in out and "convergence" in out


def test_cli_compare_needs_two_models(exports, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", str(exports[0])])
    assert exit_info.value.code == 2
    assert "two or more" in capsys.readouterr().err
