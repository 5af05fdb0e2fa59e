"""graphopt bench: interleaved latency, memory, start-up, providers; optimize --bench."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt.core import bench as gb
from graphopt.app.rendering import bench as bench_render
from graphopt.core import machine
from graphopt.app.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]
DIGITS = ROOT / "models" / "digits_cnn.onnx"


def _net(path: pathlib.Path, channels: int, batch="N") -> pathlib.Path:
    """A small conv net with a dynamic (or fixed) batch dim."""
    rng = np.random.default_rng(channels)
    w = numpy_helper.from_array(rng.standard_normal((channels, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(nodes, path.stem, [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                               [batch, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.fixture(scope="module")
def nets(tmp_path_factory) -> list[pathlib.Path]:
    d = tmp_path_factory.mktemp("nets")
    return [_net(d / "small.onnx", 4), _net(d / "wide.onnx", 32)]


@pytest.fixture(scope="module")
def result(nets) -> gb.BenchResult:
    return gb.bench(nets, runs=8, warmup=1, init_repeats=1, memory=True, memory_runs=1)


def test_two_models_interleaved_with_ratios_to_the_first(result):
    small, wide = result.models
    assert [m.name for m in result.models] == ["small", "wide"]
    for m in result.models:
        lat = m.latency_ms
        assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"]
        assert len(m.samples_ms) == 8 and m.throughput > 0 and m.batch == 1
        assert m.session_create_ms > 0 and m.first_run_ms > 0 and m.file_bytes > 0 and m.nodes == 2
        assert m.providers == ["CPUExecutionProvider"]
        assert sum(m.placement["CPUExecutionProvider"].values()) >= 1
        assert m.memory["peak_bytes"] > 0 and m.memory["method"] == "VmHWM"
    assert small.ratios["latency_p50"] == 1.0 and small.ratios["file_size"] == 1.0
    assert wide.ratios["latency_p50"] == pytest.approx(wide.latency_ms["p50"] / small.latency_ms["p50"])
    lo, hi = wide.ratios["paired_iqr"]
    assert 0 < lo <= hi
    assert wide.ratios["file_size"] > 1
    assert result.inputs == {"x": [1, 3, 16, 16]}
    assert result.environment["onnxruntime"] and "features" in result.environment


def test_render_prints_cpu_and_ratios(result):
    from rich.console import Console

    console = Console(record=True, width=160)
    bench_render.render(result, console)
    text = console.export_text()
    assert "CPU:" in text and "AVX512-VNNI" in text and "AVX-VNNI" in text
    assert "ratios to small" in text and "placement small" in text and "spinning off" in text


def test_cli_bench_prints_ratios(nets, capsys):
    main(["bench", str(nets[0]), str(nets[1]), "--runs", "5", "--warmup", "1", "--no-memory"])
    out = capsys.readouterr().out
    assert "ratios to small" in out and "wide" in out and "1.00x" in out


def test_cli_bench_json_and_reports(nets, capsys, tmp_path):
    pytest.importorskip("matplotlib")
    main(["bench", str(nets[0]), str(nets[1]), "--runs", "4", "--warmup", "0", "--no-memory", "--json",
          "--report", str(tmp_path / "b.html")])
    data = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in data["models"]] == ["small", "wide"]
    assert data["models"][0]["ratios"]["latency_p50"] == 1.0
    assert "samples_ms" not in data["models"][0]
    page = (tmp_path / "b.html").read_text()
    assert "data:image/png;base64," in page and "<table>" in page
    main(["bench", str(nets[0]), "--runs", "3", "--warmup", "0", "--no-memory", "--report", str(tmp_path / "b.md")])
    assert (tmp_path / "b_latency.png").exists() and "![latency]" in (tmp_path / "b.md").read_text()


@pytest.mark.parametrize("name, package", [("cuda", "onnxruntime-gpu"), ("tensorrt", "onnxruntime-gpu"),
                                           ("openvino", "onnxruntime-openvino"), ("dml", "onnxruntime-directml")])
def test_uninstalled_provider_names_the_package(name, package):
    with pytest.raises(gb.ProviderError, match=package) as info:
        gb.resolve_provider(name)
    assert "not available" in str(info.value) and "\n" not in str(info.value)


def test_provider_names_map_to_ort():
    assert gb.resolve_provider("cpu") == ["CPUExecutionProvider"]
    assert gb.resolve_provider("CPUExecutionProvider") == ["CPUExecutionProvider"]
    assert gb.PROVIDERS["coreml"][0] == "CoreMLExecutionProvider"


@pytest.mark.parametrize("provider, text", [("nosuch", "unknown execution provider 'nosuch'"),
                                            ("cuda", "install onnxruntime-gpu")])
def test_cli_bad_provider_is_one_line_exit_2(nets, capsys, provider, text):
    with pytest.raises(SystemExit) as info:
        main(["bench", str(nets[0]), "--provider", provider, "--runs", "1"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert text in err and len(err.splitlines()) == 1


def test_cli_optimize_bad_provider_fails_before_work(nets, capsys, tmp_path):
    out = tmp_path / "o.onnx"
    with pytest.raises(SystemExit) as info:
        main(["optimize", str(nets[0]), "-o", str(out), "--provider", "openvino"])
    assert info.value.code == 2 and "onnxruntime-openvino" in capsys.readouterr().err
    assert not out.exists()


def test_batch_fills_a_dynamic_first_dim_and_refuses_a_fixed_one(nets, tmp_path):
    r = gb.bench([nets[0]], batch=4, runs=2, warmup=0, init_repeats=1, memory=False, placement=False)
    assert r.inputs == {"x": [4, 3, 16, 16]} and r.models[0].batch == 4
    fixed = _net(tmp_path / "fixed.onnx", 4, batch=1)
    with pytest.raises(graphopt.core.errors.UsageError, match="fixed batch of 1"):
        gb.bench([fixed], batch=4, runs=1, memory=False, placement=False)


def test_sample_inputs_beside_the_first_model_are_used(tmp_path):
    model = _net(tmp_path / "net.onnx", 4)
    np.savez(tmp_path / "net.npz", x=np.ones((2, 3, 16, 16), np.float32))
    r = gb.bench([model], runs=2, warmup=0, init_repeats=1, memory=False, placement=False)
    assert r.inputs == {"x": [2, 3, 16, 16]}
    assert any("sample data beside the model" in w for w in r.warnings)


def test_dynamic_inner_dims_get_a_size_that_exercises_the_model(tmp_path):
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    path = tmp_path / "seq.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    r = gb.bench([path], runs=1, warmup=0, init_repeats=1, memory=False, placement=False)
    assert r.inputs == {"x": [1, 128, 4]}
    assert any("generated inputs x 1x128x4" in w and "seq: 128 tokens" in w for w in r.warnings), r.warnings
    r = gb.bench([path], shapes={"x": [1, 64, 4]}, runs=1, warmup=0, init_repeats=1, memory=False, placement=False)
    assert r.inputs == {"x": [1, 64, 4]} and not r.warnings


def test_fallback_is_reported():
    class Session:
        def get_providers(self):
            return ["CPUExecutionProvider"]

    warnings = []
    gb._check_fallback(Session(), ["CUDAExecutionProvider", "CPUExecutionProvider"], "m", warnings)
    assert warnings == ["m: CUDAExecutionProvider was requested but the session registered only CPUExecutionProvider"]


def test_cpu_info_reads_the_vnni_flags(monkeypatch, tmp_path):
    info = machine.cpu_info()
    assert info["cpu"] and info["cores"] >= 1
    if info["features"]:
        assert set(info["features"]) >= {"avx2", "avx512_vnni", "avx_vnni"}
    text = machine.describe_cpu({"cpu": "X", "cores": 2, "features": {"avx2": True, "avx_vnni": True}})
    assert "AVX2 yes" in text and "AVX-VNNI yes" in text and "AVX512-VNNI no" in text


def test_optimize_bench_adds_ratios_to_the_report(tmp_path):
    result = graphopt.optimize(DIGITS, level=0, bench=True, bench_runs=5)
    section = result.report.sections["bench"]
    assert section["latency_ratio"] > 0 and section["memory_ratio"] > 0 and section["session_create_ratio"] > 0
    assert set(section["latency_p50_ms"]) == {"original", "optimized"}
    assert "CPU:" in section["cpu"] and "CPUExecutionProvider" in section["placement"]["original"]
    assert json.loads(result.report.to_json())["bench"]["runs"] == 5


def test_cli_optimize_bench_flag(tmp_path, capsys):
    main(["optimize", str(DIGITS), "-o", str(tmp_path / "d.onnx"), "--level", "0", "--bench", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert data["bench"]["latency_ratio"] > 0


def test_sample_of_the_first_model_does_not_fit_an_nhwc_export(tmp_path):
    from tests.test_compare import make_exports

    first, nhwc = make_exports(tmp_path)
    r = gb.bench([first, nhwc], runs=2, warmup=0, init_repeats=1, memory=False, placement=False)
    assert any("inputs differ from the sample's" in w for w in r.warnings)
    assert r.models[1].latency_ms["p50"] > 0


def test_inputs_the_model_rejects_are_one_line_errors(tmp_path):
    path = _net(tmp_path / "net.onnx", 4)
    with pytest.raises(graphopt.core.errors.InputError, match="has shape"):
        gb.bench([path], inputs={"x": np.ones((1, 3, 8, 8, 1), np.float32)}, runs=1, memory=False,
                 placement=False)
