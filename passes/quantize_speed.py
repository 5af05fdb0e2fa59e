"""INT8 placement by speed: layers whose int8 form ONNX Runtime runs slower than their float
form on this machine stay float, when the whole model is measurably faster that way.

ORT's int8 kernels do not win everywhere. A Conv with a short reduction (a 3x3 stem over 3
input channels: 27 products per output) spends more on its int8 set-up and the NHWC layout
than its multiply-adds save: MobileNetV2's stem ran 1.2-1.4x its float time as QLinearConv
on an AVX512-VNNI EPYC and 2x on AVX2, while ResNet-50's 7x7 stem (147 products) was faster
in int8, so no shape rule can decide it. This step measures, on the target provider and
thread count:

1. Profile: the all-int8 model and the float model run under ORT's profiler; each layer's
   kernel time is credited back to it (`graphopt.kernel_times`).
2. Suspects: layers whose int8 kernel takes longer than their float one, largest loss first.
   None: nothing changes.
3. Confirm, whole models timed interleaved (`graphopt.abtest`): first all suspects float
   against all-int8; if that does not pay, each suspect alone (at most `max_trials`), and the
   ones that pay together once more. A set is taken only if the model is at least `min_gain`
   faster with the 95% interval below 1: a kernel-level gain can vanish at the boundaries (a
   float layer needs a QuantizeLinear after it and its input dequantized), and on a noisy
   machine unclear means no.

Declined, with the reason in the result: no suspect, a model ORT cannot profile or time.
Layers kept float here are no longer candidates of the accuracy budget; they only add
accuracy. Only the main graph is seen (like the int8 plan itself).
"""

from __future__ import annotations

__all__ = ["SpeedPlacement", "place_for_speed"]

import dataclasses
import logging
from collections.abc import Callable, Sequence

import onnx_ir as ir

from graphopt.abtest import conclusive, faster, time_pair
from graphopt.bench import resolve_provider
from graphopt.kernel_times import kernel_times, node_kernel_times

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class SpeedPlacement:
    kept_float: list[str]
    suspects: list[dict]  # layer, float_ms, int8_ms (profiled kernel time per run)
    trials: list[dict]  # layers tried float, ratio to all-int8, evidence, taken
    reason: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def place_for_speed(float_model: ir.Model, build: Callable[[frozenset[str]], ir.Model], candidates: Sequence[str],
                    feeds: dict, provider: str = "cpu", threads: int | None = None, *, min_gain: float = 0.02,
                    budget_s: float = 1.0, max_trials: int = 4, profile_runs: int = 10) -> SpeedPlacement:
    """Which of `candidates` (layers `build` quantizes) to keep float for speed (steps 1-3)."""
    providers = resolve_provider(provider)
    everything = frozenset(candidates)
    try:
        int8_model = build(everything)
        int8_bytes, float_bytes = _bytes(int8_model), _bytes(float_model)
        int8_times = node_kernel_times(kernel_times(int8_bytes, feeds, providers, threads, profile_runs),
                                       int8_model.graph)
        float_times = node_kernel_times(kernel_times(float_bytes, feeds, providers, threads, profile_runs),
                                        float_model.graph)
    except Exception as e:  # noqa: BLE001 - placement by speed is an optimization: never fail the stage on it
        return SpeedPlacement([], [], [], f"not measured ({str(e).splitlines()[0][:160]})")
    suspects = sorted((c for c in candidates if int8_times.get(c, 0.0) > float_times.get(c, float("inf"))),
                      key=lambda c: float_times[c] - int8_times[c])
    rows = [{"layer": c, "float_ms": round(float_times[c] * 1e3, 4), "int8_ms": round(int8_times[c] * 1e3, 4)}
            for c in suspects]
    if not suspects:
        return SpeedPlacement([], [], [], "every quantized layer's int8 kernel is faster than its float one")
    trials: list[dict] = []

    def pays(layers: list[str]) -> bool:
        model = build(everything - frozenset(layers))
        try:
            ta, tb, _ = time_pair(int8_bytes, _bytes(model), feeds, providers, threads, budget_s=budget_s,
                                  decided=conclusive(min_gain), same=lambda a, b: True)
        except Exception as e:  # noqa: BLE001 - an untimable variant is simply not taken
            trials.append({"layers": layers, "taken": False, "evidence": f"not timed: {str(e).splitlines()[0]}"})
            return False
        taken, gain, evidence = faster(ta, tb, min_gain)
        trials.append({"layers": layers, "ratio": round(1 - gain, 4), "taken": taken,
                       "evidence": f"{len(ta)} paired runs; {evidence}"})
        logger.debug("int8 speed trial %s: %s", layers, evidence)
        return taken

    if pays(suspects):
        kept = suspects
    elif len(suspects) == 1:
        kept = []
    else:
        kept = [c for c in suspects[:max_trials] if pays([c])]
        if len(kept) > 1 and not pays(kept):
            kept = [max(kept, key=lambda c: 1 - _ratio(trials, [c]))]
    reason = (f"{len(kept)} layer(s) kept float: the model runs faster that way on this machine" if kept
              else "no float placement of the slow int8 layers made the model faster")
    logger.info("int8 placement by speed: %s", reason)
    return SpeedPlacement(list(kept), rows, trials, reason)


def _ratio(trials: list[dict], layers: list[str]) -> float:
    return next(t.get("ratio", 1.0) for t in trials if t["layers"] == layers)


def _bytes(model: ir.Model) -> bytes:
    return ir.serde.serialize_model(model).SerializeToString()
