"""Run the original and the optimized model in ONNX Runtime on the same inputs and compare.

Inputs are random (from the declared shapes, dynamic dims set to 1 unless `shapes` gives
them) or the user's `.npz`. The two sessions run one after the other so that a model over
2 GB is never held twice. ORT graph optimizations are off on both sides by default: we
check the graph we wrote, not ORT's rewrite of it.
"""

from __future__ import annotations

__all__ = ["OutputCheck", "VerifyResult", "Reference", "verify", "reference", "check", "make_inputs", "run_model", "parse_shape", "load_npz"]

import contextlib
import dataclasses
import os
import pathlib
import tempfile

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from graphopt.errors import InputError, UsageError, ort_message

RTOL = 1e-3
ATOL = 1e-4
_NONDETERMINISTIC = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
                     "Bernoulli", "Dropout"}
_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(uint16)": np.uint16, "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64, "tensor(bool)": np.bool_, "tensor(string)": np.str_,
}


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
        from graphopt.io import save  # local: io imports nothing from here, keep it that way

        path = workdir / f"{tag}.onnx"
        save(model, path)
        yield str(path)
    else:
        raise UsageError(f"cannot run {type(model).__name__} in ONNX Runtime")


def _session(source, providers=None, optimize=False) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 4  # errors reach the user as one line, not ORT's log
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(source, options, providers=providers or ["CPUExecutionProvider"])


def make_inputs(session: ort.InferenceSession, shapes: dict[str, list[int]] | None = None,
                data: dict[str, np.ndarray] | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs for every non-initializer graph input: user data, else random from declared shapes."""
    shapes = shapes or {}
    rng = np.random.default_rng(seed)
    feeds = {}
    for arg in session.get_inputs():
        if data is not None and arg.name in data:
            feeds[arg.name] = data[arg.name]
            continue
        if data is not None:
            raise InputError(f"input data has no array for graph input {arg.name!r} (has: {', '.join(data)})")
        dtype = _ORT_TYPES.get(arg.type)
        if dtype is None:
            raise InputError(f"graph input {arg.name!r} has type {arg.type}, which random inputs cannot fill; "
                             "give data with --inputs")
        if arg.name in shapes:
            shape = shapes[arg.name]
        else:
            shape = [d if isinstance(d, int) and d >= 0 else 1 for d in (arg.shape or [])]
        feeds[arg.name] = _random(rng, dtype, shape)
    unknown = set(shapes) - {a.name for a in session.get_inputs()}
    if unknown:
        raise UsageError(f"--shape names {sorted(unknown)[0]!r}, which is not a graph input")
    return feeds


def _random(rng: np.random.Generator, dtype, shape: list[int]) -> np.ndarray:
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if dtype == np.str_:
        return np.full(shape, "a", dtype=object)
    if np.issubdtype(dtype, np.integer):
        # Small non-negative values are valid indices, token ids and counts alike.
        return rng.integers(0, 4, size=shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def run_model(model, feeds: dict[str, np.ndarray] | None = None, shapes=None, providers=None,
              optimize: bool = False) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Run one model; return (feeds used, outputs by name)."""
    with tempfile.TemporaryDirectory(prefix="graphopt-run-") as tmp, \
            _session_source(model, pathlib.Path(tmp), "model") as source:
        session = _session(source, providers, optimize)
        if feeds is None:
            feeds = make_inputs(session, shapes)
        names = [o.name for o in session.get_outputs()]
        return feeds, dict(zip(names, session.run(names, feeds)))


@dataclasses.dataclass
class Reference:
    """The original model's outputs on the inputs verification uses (or why it cannot run)."""

    feeds: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    outputs: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    nondeterministic: set[str] = dataclasses.field(default_factory=set)
    skipped: str = ""  # why ORT cannot run the original; then nothing can be verified


def reference(original, *, shapes: dict[str, list[int]] | None = None, data: dict[str, np.ndarray] | None = None,
              outputs: list[str] | None = None, providers=None, seed: int = 0) -> Reference:
    """Run the original once. Independent of the optimized model, so it may run while that is made."""
    with tempfile.TemporaryDirectory(prefix="graphopt-verify-") as tmp:
        try:
            with _session_source(original, pathlib.Path(tmp), "original") as source:
                session = _session(source, providers)
                feeds = make_inputs(session, shapes, data, seed)
                wanted = outputs or [o.name for o in session.get_outputs()]
                got = dict(zip(wanted, session.run(wanted, feeds)))
                return Reference(feeds, got, _nondeterministic_ops(source))
        except (ort.capi.onnxruntime_pybind11_state.Fail, ort.capi.onnxruntime_pybind11_state.InvalidGraph,
                ort.capi.onnxruntime_pybind11_state.NotImplemented,
                ort.capi.onnxruntime_pybind11_state.InvalidArgument) as e:
            return Reference(skipped=f"ONNX Runtime cannot run the original model: {ort_message(e)}")


def check(ref: Reference, optimized, *, rtol: float = RTOL, atol: float = ATOL, providers=None) -> VerifyResult:
    """Run `optimized` on the reference's inputs and compare every output the reference has."""
    if ref.skipped:
        return VerifyResult("skipped", reason=ref.skipped)
    wanted = list(ref.outputs)
    input_shapes = {k: list(v.shape) for k, v in ref.feeds.items()}
    with tempfile.TemporaryDirectory(prefix="graphopt-verify-") as tmp:
        try:
            with _session_source(optimized, pathlib.Path(tmp), "optimized") as source:
                session = _session(source, providers)
                got = dict(zip(wanted, session.run(wanted, ref.feeds)))
                del session
        except Exception as e:  # noqa: BLE001 - any ORT failure on our output is a failed verification
            return VerifyResult("failed", reason=f"ONNX Runtime cannot run the optimized model: {ort_message(e)}",
                                input_shapes=input_shapes)
    checks = [_compare(name, ref.outputs[name], got[name], rtol, atol) for name in wanted]
    if ref.nondeterministic:
        checks = [dataclasses.replace(c, ok=ref.outputs[c.name].shape == got[c.name].shape,
                                      detail="random op: shape compared") for c in checks]
    status = "passed" if all(c.ok for c in checks) else "failed"
    reason = (f"random ops ({', '.join(sorted(ref.nondeterministic))}): only shapes compared"
              if ref.nondeterministic else "")
    return VerifyResult(status, checks, reason, rtol, atol, input_shapes)


def verify(original, optimized, *, shapes: dict[str, list[int]] | None = None,
           data: dict[str, np.ndarray] | None = None, rtol: float = RTOL, atol: float = ATOL,
           outputs: list[str] | None = None, providers=None, seed: int = 0) -> VerifyResult:
    """Compare every graph output of `optimized` with the same output of `original`.

    The two sessions run one after the other, so a model over 2 GB is never held twice."""
    from graphopt.limits import check_number

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


def _compare(name: str, ref: np.ndarray, got: np.ndarray, rtol: float, atol: float) -> OutputCheck:
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
    r, g = ref.astype(np.float64), got.astype(np.float64)
    finite = np.isfinite(r) & np.isfinite(g)
    # NaN/inf must sit in the same places with the same values.
    if not np.array_equal(np.where(finite, 0, r), np.where(finite, 0, g), equal_nan=True):
        return OutputCheck(name, False, float("inf"), float("inf"), "non-finite values differ")
    diff = np.abs(r - g)[finite]
    max_abs = float(diff.max(initial=0.0))
    scale = float(np.abs(r[finite]).max(initial=0.0))
    max_rel = float((diff / np.maximum(np.abs(r[finite]), 1e-12)).max(initial=0.0))
    if np.issubdtype(ref.dtype, np.integer):
        return OutputCheck(name, max_abs == 0.0, max_abs, max_rel)
    tol = atol * max(1.0, scale) + rtol * np.abs(r[finite])
    ok = bool(np.all(diff <= tol))
    return OutputCheck(name, ok, max_abs, max_rel)

