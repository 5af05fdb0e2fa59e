"""Every ONNX node conformance case that ORT computes correctly stays correct after `graphopt.optimize`.

The cases are `onnx.backend.test.case.node.collect_testcases()`: one tiny model per operator
variant with inputs and expected outputs. A case counts when ONNX Runtime (CPU, graph
optimizations off so that ORT's own rewrites cannot hide ours) reproduces the expected
outputs on the original model; cases it gets wrong or cannot run are skipped with one
shared reason, so the summary line counts them. For every counted case,
`graphopt.optimize(model)` with default arguments (verified on the inputs graphopt generates,
graphopt/core/inputs.py) must not fail its own verification, and the model it returns must give
the expected outputs on the case's data too, run twice: with ORT's optimizations off (a wrong rewrite of ours
shows) and at ORT's default level, ORT_ENABLE_ALL, which users run (ORT's own shape
inference and folding can reject what the unoptimized session accepted). At the default
level a failure counts only if ORT gets the original right there too; ORT's own bugs at
that level are not ours. Nothing is cached on disk: ORT decides each run.

The default run checks a fixed tenth of the cases (those whose name's CRC-32 is 0 mod
`FAST_SHARE`, so the subset is the same on every machine); the others are marked slow. All of
them: `python -m pytest tests/test_conformance.py -n 2 -q`.
"""

from __future__ import annotations

import functools
import warnings
import zlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import graphopt

RTOL = 1e-3
ATOL = 1e-5

SKIP_ORT_FAILS = "ORT cannot run the original"
SKIP_ORT_WRONG = "ORT computes the original wrongly"
FAST_SHARE = 10  # the default run checks one case in FAST_SHARE (fixed by name); -m slow runs the rest


@functools.lru_cache(maxsize=1)
def cases() -> dict[str, object]:
    """Node cases that carry a model and at least one data set, by name (once per process)."""
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the generators overflow casts on purpose
        collected = collect_testcases()
    return {c.name: c for c in collected if c.model is not None and c.data_sets}


def _normalize(item):
    """As onnx's backend runner and ORT's backend do: TensorProto and numpy scalars become arrays."""
    if isinstance(item, onnx.TensorProto):
        return onnx.numpy_helper.to_array(item)
    if isinstance(item, np.generic):
        return np.array(item)
    if isinstance(item, (list, tuple)):
        return [_normalize(x) for x in item]
    return item


OFF = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
DEFAULT = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # what a SessionOptions() runs with
LEVELS = {OFF: "ORT_DISABLE_ALL", DEFAULT: "ORT_ENABLE_ALL"}


def _session(model: onnx.ModelProto, level=OFF) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.graph_optimization_level = level
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run(model: onnx.ModelProto, data_sets, level=OFF) -> list[list]:
    """ORT's outputs for each data set; inputs are bound by position, as onnx's backend runner does."""
    session = _session(model, level)
    names = [i.name for i in session.get_inputs()]
    results = []
    for inputs, _ in data_sets:
        if len(inputs) != len(names):
            raise ValueError(f"{len(inputs)} inputs given, session wants {len(names)}")
        results.append(session.run(None, dict(zip(names, map(_normalize, inputs)))))
    return results


def mismatch(expected, got, path: str = "output") -> str | None:
    """Why `got` is not `expected` (shape, dtype, values; NaN-aware), or None when they agree."""
    if expected is None or got is None:
        return None if expected is None and got is None else f"{path}: {got!r} != {expected!r}"
    if isinstance(expected, (list, tuple)):
        if not isinstance(got, (list, tuple)) or len(got) != len(expected):
            return f"{path}: got {type(got).__name__} of {len(got) if hasattr(got, '__len__') else '?'}, " \
                   f"expected a sequence of {len(expected)}"
        for i, (e, g) in enumerate(zip(expected, got)):
            why = mismatch(e, g, f"{path}[{i}]")
            if why:
                return why
        return None
    expected, got = np.asarray(expected), np.asarray(got)
    if expected.shape != got.shape:
        return f"{path}: shape {got.shape} != expected {expected.shape}"
    if expected.dtype == object or expected.dtype.kind in "USO":
        return None if np.array_equal(expected, got) else f"{path}: strings differ"
    if expected.dtype != got.dtype:
        return f"{path}: dtype {got.dtype} != expected {expected.dtype}"
    if expected.dtype.kind not in "fciub":  # ml_dtypes (bfloat16, float8, int4): compare as float32
        expected, got = expected.astype(np.float32), got.astype(np.float32)
    try:
        np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL, equal_nan=True)
    except AssertionError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip().startswith(("Max", "Mismatched"))]
        return f"{path}: values differ ({'; '.join(lines)})"
    return None


def compare(case, outputs: list[list]) -> str | None:
    for (_, expected), got in zip(case.data_sets, outputs):
        if len(expected) != len(got):
            return f"{len(got)} outputs, expected {len(expected)}"
        for i, (e, g) in enumerate(zip(expected, got)):
            why = mismatch(_normalize(e), g, f"output {i}")
            if why:
                return why
    return None


def ort_gets_right(case, model: onnx.ModelProto | None = None, level=OFF) -> tuple[bool, str]:
    """(True, "") when ORT at `level` reproduces the case's expected outputs on `model` (the original)."""
    try:
        outputs = run(case.model if model is None else model, case.data_sets, level)
    except Exception as e:  # noqa: BLE001 - any ORT refusal means the case is out of scope
        return False, f"{SKIP_ORT_FAILS}: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}"
    why = compare(case, outputs)
    return why is None, f"{SKIP_ORT_WRONG}: {why}" if why else ""


def optimized_breakage(case, verdicts: dict | None = None) -> str | None:
    """None when the optimized model gives the expected outputs at both ORT levels, else why not.

    `verdicts[case.name]` receives graphopt's own verification status."""
    try:
        result = graphopt.optimize(case.model)  # default arguments: verified on generated inputs
        optimized = result.to_onnx()
    except Exception as e:  # noqa: BLE001 - reported as the case's breakage
        return f"optimize raised {type(e).__name__}: {e}"
    verification = result.report.verification
    if verdicts is not None:
        verdicts[case.name] = verification.status
    if verification.status == "failed":  # graphopt would refuse to write it (exit 1): broken
        return f"verification failed: {verification.reason}"
    for level, level_name in LEVELS.items():
        ok, why = ort_gets_right(case, optimized, level)
        if ok:
            continue
        # Run the original at this level only now: most cases never need it.
        if level != OFF and not ort_gets_right(case, case.model, level)[0]:
            continue  # ORT gets the original wrong at this level too: ORT's bug, not ours
        if why.startswith(SKIP_ORT_FAILS):
            return f"{level_name}: ORT cannot run the optimized model:{why[len(SKIP_ORT_FAILS) + 1:]}"
        return f"{level_name}: wrong result after optimize:{why[len(SKIP_ORT_WRONG) + 1:]}"
    return None


def _names() -> list:
    return [pytest.param(name, marks=() if zlib.crc32(name.encode()) % FAST_SHARE == 0 else pytest.mark.slow)
            for name in sorted(cases())]


@pytest.mark.parametrize("name", _names())
def test_conformance_case_survives_optimize(name):
    case = cases()[name]
    ok, why = ort_gets_right(case)
    if not ok:
        # One shared reason per kind keeps `-ra` to two summary lines with counts.
        pytest.skip(SKIP_ORT_FAILS if why.startswith(SKIP_ORT_FAILS) else SKIP_ORT_WRONG)
    breakage = optimized_breakage(case)
    assert breakage is None, f"{name}: {breakage}"


if __name__ == "__main__":  # figures for the record: python tests/test_conformance.py
    import collections
    import pathlib
    import sys
    import time

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # `passes` is the repo's, not tests/passes

    start = time.perf_counter()
    tally: collections.Counter = collections.Counter()
    broken, verdicts = {}, {}
    for name in _names():
        case = cases()[name]
        ok, why = ort_gets_right(case)
        if not ok:
            tally["ort_fails" if why.startswith(SKIP_ORT_FAILS) else "ort_wrong"] += 1
            continue
        tally["ort_right"] += 1
        if not ort_gets_right(case, level=DEFAULT)[0]:
            tally["ort_default_wrong"] += 1  # ORT's own rewrites break the original: not held against us
        breakage = optimized_breakage(case, verdicts)
        if breakage:
            broken[name] = breakage
    statuses = collections.Counter(verdicts.values())
    print(f"{len(cases())} cases: ORT right on {tally['ort_right']}, wrong on {tally['ort_wrong']}, "
          f"cannot run {tally['ort_fails']} (at ORT_ENABLE_ALL ORT fails on {tally['ort_default_wrong']} "
          f"of those it gets right); broken by graphopt at either level: {len(broken)}; graphopt's own "
          f"verification: {dict(statuses)} ({time.perf_counter() - start:.0f} s)")
    for name, status in sorted(verdicts.items()):
        if status != "passed":
            print(f"  not verified: {name}")
    for name, why in sorted(broken.items()):
        print(f"  {name}: {why}")
