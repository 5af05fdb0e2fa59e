"""INT8 placement by speed: layers whose int8 form ONNX Runtime runs slower than their float
form on this machine stay float, when the whole model is measurably faster that way.

ORT's int8 kernels do not win everywhere. A Conv with a short reduction (a 3x3 stem over 3
input channels: 27 products per output) spends more on its int8 set-up and the NHWC layout
than its multiply-adds save: MobileNetV2's stem ran 1.2-1.4x its float time as QLinearConv
on an AVX512-VNNI EPYC and 2x on AVX2, while ResNet-50's 7x7 stem (147 products) was faster
in int8, so no shape rule can decide it. This step measures, on the target provider and
thread count:

1. Profile: the all-int8 model and the float model run under ORT's profiler; each layer's
   kernel time is credited back to it (`graphopt.core.kernel_times`).
2. Suspects: layers whose int8 kernel takes longer than their float one, largest loss first.
   None: nothing changes.
3. Confirm, whole models timed interleaved (`graphopt.core.abtest`), one suspect at a time in
   that order (at most `max_trials`): the suspect goes float if the model with it float is
   at least `min_gain` faster than the best model so far, with the 95% interval below 1. A
   kernel-level gain can vanish at the boundaries (a float layer needs a QuantizeLinear
   after it and its input dequantized), and on a noisy machine unclear means no.
4. Size still counts: int8 is asked for a smaller file too, so the layers kept float for
   speed hold at most `max_weight_share` of the quantizable weight bytes (a 3-channel stem
   is a fraction of a percent). On a model too small for int8 to pay anywhere (the 8x8
   digits net at one thread) this keeps it int8 rather than handing back a float model.

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

from graphopt.core.abtest import conclusive, faster, time_pair
from graphopt.core.bench import resolve_provider
from graphopt.core.kernel_times import kernel_times, node_kernel_times

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class SpeedPlacement:
    kept_float: list[str]
    suspects: list[dict]  # layer, float_ms, int8_ms (profiled kernel time per run)
    trials: list[dict]  # layers float in the trial, ratio to the best model so far, evidence, taken
    reason: str
    ratio: float = 1.0  # latency of the placed model over the all-int8 one (product of the steps)


def place_for_speed(float_model: ir.Model, build: Callable[[frozenset[str]], ir.Model], candidates: Sequence[str],
                    feeds: dict, provider: str = "cpu", threads: int | None = None, *, min_gain: float = 0.02,
                    budget_s: float = 1.0, max_trials: int = 4, max_weight_share: float = 0.05,
                    profile_runs: int = 10) -> SpeedPlacement:
    """Which of `candidates` (layers `build` quantizes) to keep float for speed (steps 1-4)."""
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
    weights = {c: _weight_bytes(float_model, c) for c in candidates}
    allowed = max_weight_share * sum(weights.values())
    suspects = sorted((c for c in candidates if int8_times.get(c, 0.0) > float_times.get(c, float("inf"))),
                      key=lambda c: float_times[c] - int8_times[c])
    rows = [{"layer": c, "float_ms": round(float_times[c] * 1e3, 4), "int8_ms": round(int8_times[c] * 1e3, 4),
             "weight_bytes": weights[c]} for c in suspects]
    if not suspects:
        return SpeedPlacement([], [], [], "every quantized layer's int8 kernel is faster than its float one")
    trials: list[dict] = []
    kept: list[str] = []
    best, ratio = int8_bytes, 1.0
    for layer in suspects:
        if sum("ratio" in t for t in trials) == max_trials:
            break
        if sum(weights[c] for c in kept) + weights[layer] > allowed:
            trials.append({"layers": [*kept, layer], "taken": False,
                           "evidence": f"not tried: float weights would pass {max_weight_share:.0%} of the int8 ones"})
            continue
        trial = _bytes(build(everything - frozenset([*kept, layer])))
        try:
            ta, tb, _ = time_pair(best, trial, feeds, providers, threads, budget_s=budget_s,
                                  decided=conclusive(min_gain), same=lambda a, b: True)
        except Exception as e:  # noqa: BLE001 - an untimable variant is simply not taken
            trials.append({"layers": [*kept, layer], "taken": False,
                           "evidence": f"not timed: {str(e).splitlines()[0][:160]}"})
            continue
        taken, gain, evidence = faster(ta, tb, min_gain)
        trials.append({"layers": [*kept, layer], "ratio": round(1 - gain, 4), "taken": taken,
                       "evidence": f"{len(ta)} paired runs against the best so far; {evidence}"})
        logger.debug("int8 speed trial %s: %s", layer, evidence)
        if taken:
            kept.append(layer)
            best, ratio = trial, ratio * (1 - gain)
    reason = (f"{len(kept)} layer(s) kept float: the model runs {ratio:.3g}x the all-int8 latency "
              "(product of the measured steps)" if kept
              else "no float placement of the slow int8 layers made the model faster")
    logger.info("int8 placement by speed: %s", reason)
    return SpeedPlacement(list(kept), rows, trials, reason, round(ratio, 4))


def _weight_bytes(model: ir.Model, name: str) -> int:
    node = model.graph.node(name)
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    return int(weight.const_value.nbytes) if weight is not None and weight.const_value is not None else 0


def _bytes(model: ir.Model) -> bytes:
    return ir.serde.serialize_model(model).SerializeToString()
