"""Run the original and the optimized model in ONNX Runtime on the same inputs and compare.

Inputs come from the input model (graphopt.core.inputs): the user's arrays and `--shape`, else
sizes and values that exercise the model, else the first fallback ORT can run. The original
runs with ORT's graph optimizations off; the optimized model runs off (we check the graph we
wrote, not ORT's rewrite of it) and at ORT's default level (what users run). Sessions run
one after the other, so a model over 2 GB is never held twice.
"""

from __future__ import annotations

__all__ = [
    "OutputCheck", "VerifyResult", "Reference", "verify", "reference", "check", "make_inputs", "plan_inputs",
    "runnable_inputs", "check_data", "shapes_of", "model_ir", "run_model", "parse_shape", "load_npz", "ort_session",
]

import contextlib
import dataclasses
import os
import pathlib
import tempfile

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from graphopt.core.errors import InputError, UsageError, ort_message
from graphopt.core.input_search import NotRunnable, first_runnable
from graphopt.core.inputs import InputModel, input_model, signatures

RTOL = 1e-3
ATOL = 1e-4
_NONDETERMINISTIC = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
                     "Bernoulli", "Dropout"}


@dataclasses.dataclass
class OutputCheck:
    name: str
    ok: bool
    max_abs_diff: float
    max_rel_diff: float
    detail: str = ""


@dataclasses.dataclass
class VerifyResult:
    status: str  # "passed", "failed" or "skipped"
    outputs: list[OutputCheck] = dataclasses.field(default_factory=list)
    reason: str = ""
    rtol: float = RTOL
    atol: float = ATOL
    input_shapes: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    inputs: dict[str, dict] = dataclasses.field(default_factory=dict)  # per input: shape, why, values
    levels: dict[str, str] = dataclasses.field(default_factory=dict)  # ORT optimization level -> status

    @property
    def ok(self) -> bool:
        return self.status != "failed"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def parse_shape(text: str) -> tuple[str, list[int]]:
    """`name=1x3x224x224` -> ("name", [1, 3, 224, 224])."""
    name, sep, dims = text.rpartition("=")
    try:
        if not sep or not name:
            raise ValueError
        values = [int(d) for d in dims.lower().split("x")]
        if any(not 0 <= d < 2**63 for d in values):  # ONNX dims are int64
            raise ValueError
        return name, values
    except ValueError:
        raise UsageError(f"--shape {text!r}: expected NAME=D1xD2x... such as input=1x3x224x224, "
                         "each dim 0..2^63-1") from None


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    path = pathlib.Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such data file")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (ValueError, OSError) as e:
        raise InputError(f"{path}: not a readable .npz file ({e})") from e


@contextlib.contextmanager
def _session_source(model, workdir: pathlib.Path, tag: str):
    """A path or bytes ORT can load for a path, ModelProto or ir.Model."""
    if isinstance(model, (str, os.PathLike)):
        yield str(model)
    elif isinstance(model, onnx.ModelProto):
        yield model.SerializeToString()
    elif isinstance(model, ir.Model):
        from graphopt.core.io import save  # local: io imports nothing from here, keep it that way

        path = workdir / f"{tag}.onnx"
        save(model, path)
        yield str(path)
    else:
        raise UsageError(f"cannot run {type(model).__name__} in ONNX Runtime")


def ort_session(source, providers=None, optimize=False) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 4  # errors reach the user as one line, not ORT's log
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(source, options, providers=providers or ["CPUExecutionProvider"])


def model_ir(model) -> ir.Model:
    """An ir.Model to read the graph of (lazily loaded from a path; weights are not read)."""
    if isinstance(model, ir.Model):
        return model
    if isinstance(model, onnx.ModelProto):
        return ir.serde.deserialize_model(model)
    from graphopt.core.io import load  # local: io imports nothing from here, keep it that way

    return load(model)


def plan_inputs(model, shapes: dict[str, list[int]] | None = None, data: dict | None = None,
                seed: int = 0) -> InputModel:
    """The input model of `model` (path, proto or IR): see graphopt.core.inputs."""
    graph = model_ir(model)
    if data:
        data = check_data(graph, data)
    return input_model(graph, shapes=shapes, data=data, seed=seed)


def make_inputs(model, shapes: dict[str, list[int]] | None = None, data: dict | None = None,
                seed: int = 0) -> dict[str, np.ndarray]:
    """Feeds for every non-initializer graph input: user data, else from the input model."""
    return plan_inputs(model, shapes, data, seed).feeds()


def check_data(model: ir.Model, data: dict) -> dict:
    """User arrays checked against the graph inputs: names, dtype, rank, static dims, finite values."""
    sigs = {s.name: s for s in signatures(model)}
    out = {}
    for name, array in data.items():
        sig = sigs.get(name)
        if sig is None:
            raise InputError(f"input data has an array {name!r}, which is not a graph input (inputs: "
                             f"{', '.join(sigs) or 'none'})")
        if sig.kind != "tensor":
            out[name] = array
            continue
        array = np.asarray(array)
        if array.dtype != sig.dtype and not (array.dtype.kind in "US" and sig.dtype == object):
            raise InputError(f"input data {name!r} is {array.dtype.name}, but the graph input is {sig.describe()}; "
                             f"convert it (arr.astype(np.{sig.dtype.name}))")
        if sig.dims is not None:
            if array.ndim != len(sig.dims):
                raise InputError(f"input data {name!r} has shape {list(array.shape)}, but the graph input is "
                                 f"{sig.describe()} (rank {len(sig.dims)})")
            for axis, (got, want) in enumerate(zip(array.shape, sig.dims)):
                if isinstance(want, int) and got != want:
                    raise InputError(f"input data {name!r} has shape {list(array.shape)}, but the graph input is "
                                     f"{sig.describe()} (dim {axis} must be {want})")
        if array.dtype.kind in "fc" and array.size and not np.isfinite(array).all():
            bad = int(array.size - np.isfinite(array).sum())
            raise InputError(f"input data {name!r} holds {bad} NaN or infinite value(s); outputs on them prove "
                             "nothing: give finite data")
        out[name] = array
    return out


def runnable_inputs(model, shapes: dict[str, list[int]] | None = None, data: dict | None = None,
                    providers=None, seed: int = 0) -> tuple[InputModel, dict]:
    """Inputs ORT runs `model` on: the input model, else the first fallback that runs.

    Raises `NotRunnable` (an InputError) naming what was tried."""
    plan = plan_inputs(model, shapes, data, seed)
    with tempfile.TemporaryDirectory(prefix="graphopt-run-") as tmp, \
            _session_source(model, pathlib.Path(tmp), "model") as source:
        session = ort_session(source, providers)
        wanted = [o.name for o in session.get_outputs()]
        plan, feeds, _ = first_runnable(plan, lambda f: session.run(wanted, f))
        return plan, feeds


def run_model(model, feeds: dict[str, np.ndarray] | None = None, shapes=None, providers=None,
              optimize: bool = False) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Run one model; return (feeds used, outputs by name). Without feeds: the input model's."""
    with tempfile.TemporaryDirectory(prefix="graphopt-run-") as tmp, \
            _session_source(model, pathlib.Path(tmp), "model") as source:
        session = ort_session(source, providers, optimize)
        names = [o.name for o in session.get_outputs()]
        if feeds is None:
            _, feeds, outs = first_runnable(plan_inputs(model, shapes), lambda f: session.run(names, f))
            return feeds, dict(zip(names, outs))
        return feeds, dict(zip(names, session.run(names, feeds)))


LEVELS = {"disabled": False, "default": True}  # ORT graph optimizations off, and ORT_ENABLE_ALL


@dataclasses.dataclass
class Reference:
    """The original model's outputs on the inputs verification uses (or why it cannot run)."""

    feeds: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    outputs: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    nondeterministic: set[str] = dataclasses.field(default_factory=set)
    skipped: str = ""  # why ORT cannot run the original; then nothing can be verified
    inputs: InputModel | None = None
    source: object = None  # the original, to run again at ORT's default level when that level disagrees
    providers: list[str] | None = None

    def described_inputs(self) -> dict[str, dict]:
        return self.inputs.describe() if self.inputs is not None else {}

    def outputs_at_default_level(self) -> dict[str, np.ndarray]:
        with tempfile.TemporaryDirectory(prefix="graphopt-verify-") as tmp, \
                _session_source(self.source, pathlib.Path(tmp), "original") as source:
            session = ort_session(source, self.providers, optimize=True)
            wanted = list(self.outputs)
            return dict(zip(wanted, session.run(wanted, self.feeds)))


def reference(original, *, shapes: dict[str, list[int]] | None = None, data: dict[str, np.ndarray] | None = None,
              outputs: list[str] | None = None, providers=None, seed: int = 0,
              plan: InputModel | None = None) -> Reference:
    """Run the original once, on the input model's inputs (the first ORT runs, see graphopt.core.inputs).

    Independent of the optimized model, so it may run while that is made. Bad user data
    (`data`, `shapes`) raises; a model ORT cannot run gives a skipped Reference saying why."""
    if plan is None:
        plan = plan_inputs(original, shapes, data, seed)
    with tempfile.TemporaryDirectory(prefix="graphopt-verify-") as tmp:
        try:
            with _session_source(original, pathlib.Path(tmp), "original") as source:
                session = ort_session(source, providers)
                wanted = outputs or [o.name for o in session.get_outputs()]
                plan, feeds, got = first_runnable(plan, lambda f: session.run(wanted, f))
                return Reference(feeds, dict(zip(wanted, got)), _nondeterministic_ops(source), inputs=plan,
                                 source=original, providers=providers)
        except NotRunnable as e:
            return Reference(skipped=str(e), inputs=plan)
        except _ORT_ERRORS as e:
            return Reference(skipped=f"ONNX Runtime cannot load the original model: {ort_message(e)}", inputs=plan)


_ORT_ERRORS = (ort.capi.onnxruntime_pybind11_state.Fail, ort.capi.onnxruntime_pybind11_state.InvalidGraph,
               ort.capi.onnxruntime_pybind11_state.NotImplemented, ort.capi.onnxruntime_pybind11_state.InvalidArgument,
               ort.capi.onnxruntime_pybind11_state.InvalidProtobuf, ort.capi.onnxruntime_pybind11_state.NoSuchFile,
               ort.capi.onnxruntime_pybind11_state.RuntimeException)


def shapes_of(feeds: dict) -> dict[str, list[int]]:
    out = {}
    for k, v in feeds.items():
        if isinstance(v, np.ndarray):
            out[k] = list(v.shape)
        elif isinstance(v, (list, tuple)):
            out[k] = [len(v), *(list(v[0].shape) if v and hasattr(v[0], "shape") else [])]
    return out


def check(ref: Reference, optimized, *, rtol: float = RTOL, atol: float = ATOL, providers=None,
          levels: tuple[str, ...] = tuple(LEVELS)) -> VerifyResult:
    """Run `optimized` on the reference's inputs and compare every output the reference has.

    It runs with ORT's graph optimizations off (a wrong rewrite of ours cannot hide behind
    ORT's) and at ORT's default level (what users run: ORT may refuse to load there, or
    optimize differently). Where the default level disagrees with the reference, the
    original is run at that level too: ORT's own rewrites move values by float rounding."""
    described = ref.described_inputs()
    if ref.skipped:
        return VerifyResult("skipped", reason=ref.skipped, inputs=described)
    wanted = list(ref.outputs)
    input_shapes = shapes_of(ref.feeds)
    result = VerifyResult("passed", [], "", rtol, atol, input_shapes, described)
    with tempfile.TemporaryDirectory(prefix="graphopt-verify-") as tmp:
        with _session_source(optimized, pathlib.Path(tmp), "optimized") as source:
            for level in levels:
                where = "" if level == "disabled" else " at ORT's default optimization level"
                try:
                    session = ort_session(source, providers, optimize=LEVELS[level])
                    got = dict(zip(wanted, session.run(wanted, ref.feeds)))
                    del session
                except Exception as e:  # noqa: BLE001 - any ORT failure on our output is a failed verification
                    result.levels[level] = "failed"
                    return dataclasses.replace(result, status="failed", levels=result.levels,
                                               reason=f"ONNX Runtime cannot run the optimized model{where}: "
                                                      f"{ort_message(e)}")
                checks = _checks(ref, ref.outputs, got, rtol, atol)
                if level != "disabled" and not all(c.ok for c in checks):
                    try:
                        again = ref.outputs_at_default_level()
                    except Exception:  # noqa: BLE001 - the original fails there: only our model's verdict counts
                        again = None
                    if again is not None:
                        checks = _checks(ref, again, got, rtol, atol)
                ok = all(c.ok for c in checks)
                result.levels[level] = "passed" if ok else "failed"
                if not result.outputs or not ok:
                    result.outputs = checks
                if not ok:
                    result.status = "failed"
                    result.reason = f"outputs differ{where}"
                    return result
    if ref.nondeterministic:
        result.reason = f"random ops ({', '.join(sorted(ref.nondeterministic))}): only shapes compared"
    return result


def _checks(ref: Reference, expected: dict, got: dict, rtol: float, atol: float) -> list[OutputCheck]:
    checks = [_compare(name, expected[name], got[name], rtol, atol) for name in expected]
    if ref.nondeterministic:
        checks = [dataclasses.replace(c, ok=_shape_of(expected[c.name]) == _shape_of(got[c.name]),
                                      detail="random op: shape compared") for c in checks]
    return checks


def _shape_of(value):
    return np.shape(value) if not isinstance(value, (list, tuple)) else (len(value),)


def verify(original, optimized, *, shapes: dict[str, list[int]] | None = None,
           data: dict[str, np.ndarray] | None = None, rtol: float = RTOL, atol: float = ATOL,
           outputs: list[str] | None = None, providers=None, seed: int = 0) -> VerifyResult:
    """Compare every graph output of `optimized` with the same output of `original`.

    The sessions run one after the other, so a model over 2 GB is never held twice."""
    from graphopt.core.limits import check_number

    check_number("--rtol", rtol)
    check_number("--atol", atol)
    ref = reference(original, shapes=shapes, data=data, outputs=outputs, providers=providers, seed=seed)
    return check(ref, optimized, rtol=rtol, atol=atol, providers=providers)


def _nondeterministic_ops(source) -> set[str]:
    if isinstance(source, bytes):
        proto = onnx.load_from_string(source)
    else:
        proto = onnx.load(source, load_external_data=False)
    ops = {n.op_type for n in proto.graph.node}
    # Dropout in inference is deterministic; only count it when a training_mode input is given.
    found = ops & (_NONDETERMINISTIC - {"Dropout"})
    if any(n.op_type == "Dropout" and len(n.input) >= 3 and n.input[2] for n in proto.graph.node):
        found.add("Dropout")
    return found


def _compare(name: str, ref, got, rtol: float, atol: float) -> OutputCheck:
    if ref is None or got is None:  # an optional output that holds nothing
        same = ref is None and got is None
        return OutputCheck(name, same, 0.0 if same else float("inf"), 0.0 if same else float("inf"),
                           "" if same else "one output is empty")
    if isinstance(ref, (list, tuple)) or isinstance(got, (list, tuple)):  # a sequence output
        if not isinstance(ref, (list, tuple)) or not isinstance(got, (list, tuple)) or len(ref) != len(got):
            return OutputCheck(name, False, float("inf"), float("inf"), "sequence lengths differ")
        parts = [_compare(f"{name}[{i}]", r, g, rtol, atol) for i, (r, g) in enumerate(zip(ref, got))]
        bad = next((p for p in parts if not p.ok), None)
        return OutputCheck(name, bad is None, max((p.max_abs_diff for p in parts), default=0.0),
                           max((p.max_rel_diff for p in parts), default=0.0), bad.detail if bad else "")
    ref, got = np.asarray(ref), np.asarray(got)
    if ref.shape != got.shape:
        return OutputCheck(name, False, float("inf"), float("inf"), f"shape {got.shape} != {ref.shape}")
    if ref.dtype != got.dtype:
        return OutputCheck(name, False, float("inf"), float("inf"), f"dtype {got.dtype} != {ref.dtype}")
    if ref.size == 0:
        return OutputCheck(name, True, 0.0, 0.0)
    if ref.dtype == object or not np.issubdtype(ref.dtype, np.number):
        same = bool(np.array_equal(ref, got))
        return OutputCheck(name, same, 0.0 if same else float("inf"), 0.0 if same else float("inf"))
    if ref.dtype == np.float16:  # tolerances below half precision would flag one rounding step
        eps = float(np.finfo(np.float16).eps)
        rtol, atol = max(rtol, 4 * eps), max(atol, 4 * eps)
    r, g = ref.astype(np.float64), got.astype(np.float64)
    finite = np.isfinite(r) & np.isfinite(g)
    # NaN/inf must sit in the same places with the same values.
    if not np.array_equal(np.where(finite, 0, r), np.where(finite, 0, g), equal_nan=True):
        return OutputCheck(name, False, float("inf"), float("inf"), "non-finite values differ")
    diff = np.abs(np.where(finite, r, 0.0) - np.where(finite, g, 0.0))[finite]
    max_abs = float(diff.max(initial=0.0))
    scale = float(np.abs(r[finite]).max(initial=0.0))
    max_rel = float((diff / np.maximum(np.abs(r[finite]), 1e-12)).max(initial=0.0))
    if np.issubdtype(ref.dtype, np.integer):
        return OutputCheck(name, max_abs == 0.0, max_abs, max_rel)
    tol = atol * max(1.0, scale) + rtol * np.abs(r[finite])
    ok = bool(np.all(diff <= tol))
    return OutputCheck(name, ok, max_abs, max_rel)

