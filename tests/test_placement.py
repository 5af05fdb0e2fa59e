"""place_for_speed: which int8 layers stay float because the whole model runs faster that way.

The decisions are tested with profiles and timings injected (tests never assert on time);
how ORT's profile names are credited to nodes is tested on real ORT profiles; a model with
layers placed float runs in ORT within the int8 tolerance of the float model (SNR >= 25 dB
on its calibration inputs, ORT's full optimizations: the fused int8 kernels).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

import graphopt.stages.placement as qs
from graphopt.core.accuracy import snr_db
from graphopt.core.bench import resolve_provider
from graphopt.core.kernel_times import kernel_times, node_kernel_times
from graphopt.stages.placement import SpeedPlacement, place_for_speed
from graphopt.stages.quantize import LossyOptions, run_lossy
from tests import util

RNG = np.random.default_rng(0)


def _floats(n: int, scale: float = 0.3) -> str:
    return ",".join(f"{v:.4f}" for v in RNG.standard_normal(n) * scale)


def conv_chain() -> ir.Model:
    """stem Conv(3->8) + Clip(0, 6), Conv(8->8) + Relu, Conv(8->4). The last one makes the graph
    output, so it stays float (quantize_plan): two int8 candidates."""
    return util.parse(f"""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1,3,16,16] x) => (float[1,4,16,16] y)
          <float[8,3,3,3] w1 = {{{_floats(216)}}}, float[8] b1 = {{{_floats(8, 0.1)}}},
           float[8,8,3,3] w2 = {{{_floats(576, 0.1)}}}, float[8] b2 = {{{_floats(8, 0.1)}}},
           float[4,8,1,1] w3 = {{{_floats(32)}}}, float lo = {{0.0}}, float hi = {{6.0}}> {{
            c1 = Conv <pads = [1, 1, 1, 1]> (x, w1, b1)
            r1 = Clip (c1, lo, hi)
            c2 = Conv <pads = [1, 1, 1, 1]> (r1, w2, b2)
            r2 = Relu (c2)
            y = Conv (r2, w3)
        }}""")


def _named(model: ir.Model) -> ir.Model:
    for i, node in enumerate(model.graph):
        node.name = node.name or f"{node.op_type.lower()}{i}"
    return model


def calibration(n: int = 16) -> dict:
    return {"x": RNG.standard_normal((n, 3, 16, 16)).astype(np.float32)}


# ---------------------------------------------------------------- crediting ORT's profile to nodes


def test_profile_names_are_credited_by_name_token_and_nchwc_output():
    model = _named(conv_chain())
    conv1, clip, conv2, relu, conv3 = (n.name for n in model.graph)
    times = {f"{conv1}_token_3": 1.0, f"{relu}": 0.5, "r1_nchwc": 2.0, "y_nchwc": 4.0, f"{conv2}": 3.0,
             "Transpose": 0.25}
    credited = node_kernel_times(times, model.graph)
    # r1 is the Clip's output: ORT fused Clip into the Conv behind it, which gets the time
    assert credited == {conv1: 3.0, relu: 0.5, conv2: 3.0, conv3: 4.0, "?Transpose": 0.25}


@pytest.mark.parametrize("quantized", [False, True])
def test_real_profiles_credit_every_layer(quantized):
    model = _named(conv_chain())
    if quantized:
        options = LossyOptions("int8", calibration=calibration(), measure=False, place_for_speed=False)
        model = run_lossy(model, options).model
    feeds = {"x": calibration(1)["x"]}
    proto = ir.serde.serialize_model(model).SerializeToString()
    credited = node_kernel_times(kernel_times(proto, feeds, resolve_provider("cpu"), 1, runs=3), model.graph)
    convs = [n.name for n in model.graph if n.op_type == "Conv"]
    assert len(convs) == 3 and all(credited.get(c, 0) > 0 for c in convs), credited


# ---------------------------------------------------------------- decisions, with timing injected


class Fake:
    """Profiles and latencies as given: `latency` maps the set of layers a model keeps float
    to its time per run (the all-int8 model, the empty set, takes 1.0)."""

    def __init__(self, monkeypatch, int8_ms: dict, float_ms: dict, latency: dict | None = None, fail: bool = False):
        self.model = _named(conv_chain())
        self.timed: list[tuple[frozenset, frozenset]] = []
        profiles = iter([int8_ms, float_ms])
        latency = {frozenset(k): v for k, v in (latency or {}).items()}

        def fake_kernel_times(*args, **kwargs):
            if fail:
                raise RuntimeError("profiling is off in this build\nsecond line")
            return {}

        def fake_node_times(times, graph):
            return {k: v / 1e3 for k, v in next(profiles).items()}

        def fake_time_pair(a, b, feeds, providers, threads, **kwargs):
            fa, fb = (self._float_layers(m) for m in (a, b))
            self.timed.append((fa, fb))
            noise = np.random.default_rng(len(self.timed)).normal(0, 0.002, 60)
            return [latency.get(fa, 1.0)] * 60, list(latency.get(fb, 1.0) * (1 + noise)), True

        monkeypatch.setattr(qs, "kernel_times", fake_kernel_times)
        monkeypatch.setattr(qs, "node_kernel_times", fake_node_times)
        monkeypatch.setattr(qs, "time_pair", fake_time_pair)

    @staticmethod
    def _float_layers(model_bytes: bytes) -> frozenset:
        doc = onnx.load_from_string(model_bytes).doc_string
        return frozenset(doc.split(",")) if doc else frozenset()

    def build(self, applied: frozenset) -> ir.Model:
        model = self.model.clone()
        model.doc_string = ",".join(sorted(set(self.layers()) - applied))
        return model

    def layers(self) -> list[str]:
        return [n.name for n in self.model.graph if n.op_type == "Conv"]

    def place(self, **kwargs) -> SpeedPlacement:
        kwargs.setdefault("max_weight_share", 1.0)
        return place_for_speed(self.model, self.build, self.layers(), {"x": calibration(1)["x"]}, **kwargs)


SLOW_STEM = dict(int8_ms={"conv0": 3, "conv2": 2.5, "conv4": 1}, float_ms={"conv0": 1, "conv2": 2, "conv4": 2})


def test_no_layer_slower_in_int8_means_no_trial(monkeypatch):
    fake = Fake(monkeypatch, int8_ms={"conv0": 1, "conv2": 1, "conv4": 1}, float_ms={"conv0": 2, "conv2": 2, "conv4": 2})
    placement = fake.place()
    assert placement.kept_float == [] and placement.trials == [] and fake.timed == []
    assert "faster than its float one" in placement.reason


def test_slow_layers_go_float_one_at_a_time_against_the_best_so_far(monkeypatch):
    fake = Fake(monkeypatch, **SLOW_STEM, latency={("conv0",): 0.9, ("conv0", "conv2"): 0.85})
    placement = fake.place()
    assert placement.kept_float == ["conv0", "conv2"]  # largest loss first
    assert [s["layer"] for s in placement.suspects] == ["conv0", "conv2"]
    assert placement.suspects[0] == {"layer": "conv0", "float_ms": 1.0, "int8_ms": 3.0, "weight_bytes": 864}
    conv0, both = frozenset({"conv0"}), frozenset({"conv0", "conv2"})
    assert fake.timed == [(frozenset(), conv0), (conv0, both)]
    assert [t["taken"] for t in placement.trials] == [True, True]
    assert placement.ratio == pytest.approx(0.85, abs=0.01)


def test_a_suspect_that_does_not_pay_is_passed_over(monkeypatch):
    fake = Fake(monkeypatch, **SLOW_STEM, latency={("conv0",): 1.01, ("conv2",): 0.9})
    placement = fake.place()
    assert placement.kept_float == ["conv2"]
    assert [t["layers"] for t in placement.trials] == [["conv0"], ["conv2"]]
    assert [t["taken"] for t in placement.trials] == [False, True]


def test_a_step_that_makes_the_model_slower_is_not_taken(monkeypatch):
    fake = Fake(monkeypatch, **SLOW_STEM, latency={("conv0",): 0.9, ("conv0", "conv2"): 0.95})
    placement = fake.place()
    assert placement.kept_float == ["conv0"] and placement.ratio == pytest.approx(0.9, abs=0.01)


def test_a_gain_inside_the_noise_is_not_taken(monkeypatch):
    fake = Fake(monkeypatch, int8_ms={"conv0": 3}, float_ms={"conv0": 1}, latency={("conv0",): 0.995})
    placement = fake.place()
    assert placement.kept_float == [] and not placement.trials[0]["taken"]
    assert "no float placement" in placement.reason


def test_layers_kept_float_for_speed_hold_a_small_share_of_the_weights(monkeypatch):
    # conv0 holds 864 of the 3,296 weight bytes: over a 20% share, under 30%
    fake = Fake(monkeypatch, **SLOW_STEM, latency={("conv0",): 0.5, ("conv2",): 0.5})
    placement = fake.place(max_weight_share=0.2)
    assert placement.kept_float == [] and fake.timed == []
    assert all("not tried" in t["evidence"] for t in placement.trials)
    fake = Fake(monkeypatch, **SLOW_STEM, latency={("conv0",): 0.5})
    assert fake.place(max_weight_share=0.3).kept_float == ["conv0"]


def test_a_model_ort_cannot_profile_changes_nothing(monkeypatch):
    fake = Fake(monkeypatch, {}, {}, fail=True)
    placement = fake.place()
    assert placement.kept_float == [] and placement.reason == "not measured (profiling is off in this build)"


# ---------------------------------------------------------------- the lossy stage


def test_layers_placed_float_run_float_and_the_model_stays_accurate(monkeypatch):
    model = _named(conv_chain())
    stem = next(n.name for n in model.graph if n.op_type == "Conv")
    seen = {}

    def placement(float_model, build, candidates, feeds, provider, threads):
        seen.update(candidates=list(candidates), feeds={k: v.shape for k, v in feeds.items()}, threads=threads)
        return SpeedPlacement([stem], [], [{"layers": [stem], "ratio": 0.9, "taken": True, "evidence": "given"}],
                              "1 layer(s) kept float", 0.9)

    monkeypatch.setattr(qs, "place_for_speed", placement)
    calib = calibration()
    result = run_lossy(model, LossyOptions("int8", calibration=calib, measure=False, threads=1))
    assert seen == {"candidates": ["conv0", "conv2"], "feeds": {"x": (1, 3, 16, 16)}, "threads": 1}
    section = result.section
    assert section["layers_quantized"] == "1 of 2"
    assert section["speed_placement"] == f"kept float for speed: {stem}: 0.9x the all-int8 latency"
    quantized = result.model
    onnx.checker.check_model(ir.serde.serialize_model(quantized), full_check=True)
    conv = quantized.graph.node(stem)
    assert conv.inputs[1].const_value is not None and conv.inputs[1].dtype == ir.DataType.FLOAT
    assert conv.inputs[0].producer() is None  # reads the graph input itself, not a DequantizeLinear
    assert quantized.graph.node("conv2").inputs[1].producer().op_type == "DequantizeLinear"
    for x in calib["x"][:, None]:
        assert snr_db(_run_all_optimizations(model, {"x": x}), _run_all_optimizations(quantized, {"x": x})) >= 25.0


def test_no_measure_quantizes_every_layer(monkeypatch):
    monkeypatch.setattr(qs, "place_for_speed", lambda *a, **k: pytest.fail("placement by speed ran"))
    result = run_lossy(_named(conv_chain()), LossyOptions("int8", calibration=calibration(), measure=False,
                                                          place_for_speed=False))
    assert "speed_placement" not in result.section and result.section["layers_quantized"] == "2 of 2"


def test_real_measurement_keeps_only_candidates_and_reports_evidence():
    from graphopt.core.calibrate import Dataset
    from graphopt.stages.quantize_builders import Int8Builder

    model = _named(conv_chain())
    options = LossyOptions("int8", calibration=calibration(), measure=False, threads=1)
    builder = Int8Builder(model, options, Dataset(calibration()), lambda message: None)
    placement = place_for_speed(model, builder.build, builder.candidates, {"x": calibration(1)["x"]}, threads=1,
                                budget_s=0.05, max_weight_share=1.0)
    assert set(placement.kept_float) <= set(builder.candidates)
    assert {s["layer"] for s in placement.suspects} <= set(builder.candidates)
    for trial in placement.trials:
        assert "paired runs against the best so far" in trial["evidence"] and 0 < trial["ratio"] < 10
    section = run_lossy(model, options).section  # the stage reports whatever it decided
    assert section["speed_placement"] and isinstance(section["speed_trials"], list)


def _run_all_optimizations(model: ir.Model, feeds: dict) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]
