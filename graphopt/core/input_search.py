"""The fallback search: when ONNX Runtime cannot run a model on its input model's inputs,
try other input models before giving up.

Variants, most plausible first: each role's dims resized together (`input_dims.alternatives`:
spatial 256, 320, 512, 640, 64, 32; sequences 64, 16, 256, ...; so a symbol keeps one value),
integers all 0 or all 1, then every dim 1. Given data is never changed. A model none of them
runs gets a `NotRunnable` naming the first error, what else was tried, and how to pass data.
"""

from __future__ import annotations

__all__ = ["NotRunnable", "first_runnable", "variants"]

import dataclasses
import logging
import time
from collections.abc import Callable

from graphopt.core.errors import InputError, ort_message
from graphopt.core.input_dims import DimRole, alternatives
from graphopt.core.inputs import InputModel

logger = logging.getLogger(__name__)


def variants(plan: InputModel) -> list[tuple[str, InputModel]]:
    """Other input models the fallback search tries, most plausible first."""
    out = []
    by_role: dict[DimRole, list[tuple[str, int]]] = {}
    for name, roles in plan.roles.items():
        for axis, role in enumerate(roles):
            if role is not None:
                by_role.setdefault(role, []).append((name, axis))
    order = [DimRole.SPATIAL, DimRole.SEQUENCE, DimRole.PAST, DimRole.FEATURES, DimRole.CHANNELS, DimRole.BATCH]
    for role in order:
        for size in alternatives(role):
            variant = _resized(plan, by_role.get(role, []), size)
            if variant is not None:
                out.append((f"{role.value} {size}", variant))
    ints = [n for n, r in plan.rules.items() if not r.choices and not r.pattern and n not in plan.data]
    if ints:
        for low, high, label in ((0, 1, "integers 0"), (1, 2, "integers 1")):
            rules = {**plan.rules, **{n: dataclasses.replace(plan.rules[n], low=low, high=high) for n in ints}}
            out.append((label, dataclasses.replace(plan, rules=rules)))
    ones = {s.name: [1] * len(plan.shapes[s.name]) for s in plan.signatures if s.name not in plan.data}
    if ones and any(plan.shapes[n] != v for n, v in ones.items()):
        out.append(("every dim 1", dataclasses.replace(plan, shapes={**plan.shapes, **ones})))
    return out

def _resized(plan: InputModel, places: list[tuple[str, int]], size: int) -> InputModel | None:
    if not places:
        return None
    shapes = {k: list(v) for k, v in plan.shapes.items()}
    changed = False
    for name, axis in places:
        if name in plan.data:
            continue
        changed |= shapes[name][axis] != size
        shapes[name][axis] = size
    return dataclasses.replace(plan, shapes=shapes) if changed else None


class NotRunnable(InputError):
    """ONNX Runtime cannot run the model on any input the search tried."""


def first_runnable(plan: InputModel, run: Callable[[dict], object], *, budget_s: float = 60.0,
                   max_tries: int = 12) -> tuple[InputModel, dict, object]:
    """(input model, feeds, run's result) for the first input model `run` accepts.

    `run(feeds)` raises when ORT cannot run the model on them. Given data is never changed;
    when every input is given, only that is tried.
    """
    start = time.perf_counter()
    candidates = [("as planned", plan)]
    if len(plan.data) < len(plan.signatures):
        candidates += variants(plan)
    errors = []
    for label, candidate in candidates[:max_tries]:
        if errors and time.perf_counter() - start > budget_s:
            break
        try:
            candidate_feeds = candidate.feeds()
        except (ValueError, MemoryError) as e:
            errors.append((label, candidate, e))
            continue
        try:
            result = run(candidate_feeds)
        except Exception as e:  # noqa: BLE001 - ORT raises several types for inputs it rejects
            errors.append((label, candidate, e))
            logger.debug("inputs %s (%s): %s", label, candidate.summary(), ort_message(e))
            continue
        if errors:
            candidate.tried = [f"{lbl} ({c.summary()}): {ort_message(e)}" for lbl, c, e in errors]
            candidate.why = {**candidate.why, **{n: (w + "; " if w else "") + f"found by trying ({label})"
                                                 for n, w in candidate.why.items() if n not in candidate.data}}
        return candidate, candidate_feeds, result
    label, first, error = errors[0]
    tried = "; ".join(f"{c.summary()}" for _, c, _ in errors[:4])
    more = f" and {len(errors) - 4} more" if len(errors) > 4 else ""
    hint = ("check the given data" if len(plan.data) == len(plan.signatures) else
            "give real inputs with --inputs DATA.npz (one array per graph input) or sizes with --shape NAME=DIMS")
    raise NotRunnable(f"ONNX Runtime cannot run the model on {_culprit(error, plan)}inputs {first.summary()}: "
                      f"{ort_message(error)} (also tried {tried}{more}); {hint}" if len(errors) > 1 else
                      f"ONNX Runtime cannot run the model on {_culprit(error, plan)}inputs {first.summary()}: "
                      f"{ort_message(error)}; {hint}")


def _culprit(error: BaseException, plan: InputModel) -> str:
    text = str(error)
    named = [s.name for s in plan.signatures if f"'{s.name}'" in text or f"({s.name})" in text]
    return f"input {named[0]!r} of the " if named else ""
