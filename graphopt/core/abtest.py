"""Is model B faster than model A? Both timed interleaved in ONNX Runtime until the evidence
is conclusive, on the same inputs and the same execution provider.

Used wherever a rewrite is applied only if it pays on the target (horizontal fusion at level
3, INT8 placement by speed). The rule is the same everywhere: B pays when the median of the
per-round ratios B/A is at least `min_gain` below 1 and its 95% bootstrap interval lies
entirely below 1. On a noisy machine, unclear means no.
"""

from __future__ import annotations

__all__ = ["time_pair", "faster", "conclusive", "same_outputs"]

import time
from collections.abc import Callable

import numpy as np

from graphopt.core.bench import create_session, paired_ratio, session_options, time_interleaved


def same_outputs(a: list, b: list) -> bool:
    """Outputs equal up to float rounding (rtol 1e-3, atol 1e-4 of the output's scale)."""
    for x, y in zip(a, b):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        if x.shape != y.shape:
            return False
        scale = max(1.0, float(np.abs(x).max(initial=0.0)))
        if not np.allclose(x, y, rtol=1e-3, atol=1e-4 * scale, equal_nan=True):
            return False
    return True


def time_pair(a: bytes | str, b: bytes | str, feeds: dict, providers: list[str], threads: int | None, *,
              budget_s: float, min_runs: int = 10, max_runs: int = 400,
              decided: Callable[[list[float], list[float]], bool] | None = None,
              same: Callable[[list, list], bool] = same_outputs,
              ) -> tuple[list[float], list[float], bool]:
    """Interleaved seconds per run of two models on the same feeds, and whether `same` holds
    for their outputs.

    Runs chunks of `min_runs` rounds until `budget_s` is spent and `decided(ta, tb)` holds (the
    evidence is conclusive), or 3x the budget, or `max_runs` rounds."""
    options = session_options(threads)
    sa, sb = create_session(a, providers, options), create_session(b, providers, options)
    agree = same(sa.run(None, feeds), sb.run(None, feeds))
    ta: list[float] = []
    tb: list[float] = []
    start = time.perf_counter()
    warm = 3
    while len(ta) < max_runs:
        chunk = time_interleaved([lambda: sa.run(None, feeds), lambda: sb.run(None, feeds)], min_runs, warm,
                                 seed=len(ta))
        warm = 0
        ta += chunk[0]
        tb += chunk[1]
        spent = time.perf_counter() - start
        if spent > 3 * budget_s or (spent > budget_s and (decided is None or decided(ta, tb))):
            break
    return ta, tb, agree


def faster(ta: list[float], tb: list[float], min_gain: float) -> tuple[bool, float, str]:
    """(pays, gain, evidence): whether B (times `tb`) is faster than A by at least `min_gain`
    with its 95% interval below 1; gain = 1 - median ratio B/A."""
    stats = paired_ratio(ta, tb)
    gain = 1 - stats["median"]
    lo, hi = stats["ci95"]
    pays = gain >= min_gain and hi < 1.0
    return pays, gain, (f"ratio {stats['median']:.3f} (95% CI {lo:.3f}-{hi:.3f}), "
                        f"faster in {stats['faster_share']:.0%} of rounds")


def conclusive(min_gain: float) -> Callable[[list[float], list[float]], bool]:
    """Stop sampling once the interval is clear of the decision boundary on either side."""

    def decided(ta: list[float], tb: list[float]) -> bool:
        lo, hi = paired_ratio(ta, tb, boot=400)["ci95"]
        return hi < 1.0 - min_gain or lo > 1.0 - min_gain

    return decided
