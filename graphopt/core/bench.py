"""Latency, throughput, memory and session start-up of ONNX models in ONNX Runtime.

What is measured, and how:

1. **Session creation** (load + ORT graph optimization + kernel set-up), timed in this
   process, `init_repeats` times per model, interleaved across models; the median counts.
2. **First run**: the first `run()` of each created session (allocations, lazy kernel
   set-up); median over the same repeats.
3. **Latency**: after `warmup` runs, `runs` timed runs per model, *interleaved* (round r
   runs every model once, in a fresh random order) in one process on the same inputs, so
   background load hits every model alike. The order is shuffled rather than rotated because
   a run is slowed or sped up by what ran just before it (the caches it left): with a
   rotation every model keeps the same predecessor, and on MobileNetV2 int8 that alone moved
   one model's ratio by 2% (after a float model: 0.563x, shuffled: 0.551x). p50/p90/p99/
   mean/min come from these runs (p99 of fewer than 100 runs is close to the maximum),
   throughput is batch / mean.
4. **Ratios** to the first model: p50 ratio = p50_i / p50_0, and the median of the paired
   per-round ratios t_i/t_0 with a 95% bootstrap interval, which shows how far noise goes.
5. **Memory**, in a fresh subprocess per model (one at a time, after the timing): the
   kernel's peak-RSS mark (Linux `VmHWM`, reset through `/proc/self/clear_refs` just before
   session creation; elsewhere `ru_maxrss`) minus the RSS before creation, over session
   creation plus `memory_runs` runs; i.e. weights, ORT's arenas and activations, not the
   Python interpreter. It varies by a few percent with thread scheduling (per-thread
   buffers), so it is the median of `memory_repeats` subprocesses, with the range kept.
   ORT's own arena peak (from its profiler) is reported beside it.
6. **Placement**: one profiled run per model (a separate session, never timed) records the
   execution provider of every node ORT ran; `session.get_providers()` lists what the
   session registered. With a non-CPU provider, nodes it cannot take fall back to CPU, and
   the report says how many.

ORT runs with its own graph optimizations on (`ORT_ENABLE_ALL`) unless told otherwise:
graphopt's claims are measured against what ORT already does when it loads a model.
"""

from __future__ import annotations

__all__ = [
    "PROVIDERS",
    "ProviderError",
    "BenchResult",
    "ModelBench",
    "bench",
    "resolve_provider",
    "session_options",
    "time_interleaved",
]

import collections
import contextlib
import dataclasses
import json
import logging
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from graphopt.core.errors import GraphoptError, InputError, UsageError, first_line
from graphopt.core.machine import environment

logger = logging.getLogger(__name__)

# short name -> (ORT provider, what to install to get it)
PROVIDERS: dict[str, tuple[str, str]] = {
    "cpu": ("CPUExecutionProvider", "onnxruntime"),
    "cuda": ("CUDAExecutionProvider", "onnxruntime-gpu"),
    "tensorrt": ("TensorrtExecutionProvider", "onnxruntime-gpu (and the TensorRT libraries)"),
    "openvino": ("OpenVINOExecutionProvider", "onnxruntime-openvino"),
    "dml": ("DmlExecutionProvider", "onnxruntime-directml"),
    "coreml": ("CoreMLExecutionProvider", "onnxruntime (the macOS wheel)"),
}
_ORT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
MEMORY_METHOD = ("fresh subprocess per model: peak RSS (VmHWM reset before session creation) "
                 "minus RSS before creation, over creation + runs; median of repeats")


class ProviderError(GraphoptError):
    """An execution provider that is unknown or not installed in this onnxruntime."""


def resolve_provider(name: str | None) -> list[str]:
    """`cuda` (or `CUDAExecutionProvider`) -> the ORT provider list to create sessions with.

    A provider other than CPU is followed by CPU, which takes the nodes it cannot run (ORT's
    normal partitioning; the placement report shows where nodes ended up). A provider that is
    not in `onnxruntime.get_available_providers()` is an error naming the package to install,
    never a silent fall-back to CPU.
    """
    name = (name or "cpu").strip()
    by_ort_name = {ort_name.lower(): short for short, (ort_name, _) in PROVIDERS.items()}
    short = name.lower() if name.lower() in PROVIDERS else by_ort_name.get(name.lower())
    available = ort.get_available_providers()
    if short is None:
        if name in available:  # an ORT provider we have no short name for
            return [name] + (["CPUExecutionProvider"] if name != "CPUExecutionProvider" else [])
        raise ProviderError(f"unknown execution provider {name!r}; choose one of {', '.join(PROVIDERS)} "
                            f"(this onnxruntime has: {', '.join(available)})")
    ort_name, package = PROVIDERS[short]
    if ort_name not in available:
        raise ProviderError(
            f"execution provider {short!r} ({ort_name}) is not available in this onnxruntime {ort.__version__} "
            f"(it has: {', '.join(available)}); install {package} in place of onnxruntime "
            f"(pip uninstall onnxruntime && pip install {package.split(' ')[0]})")
    chain = [ort_name]
    if short == "tensorrt" and "CUDAExecutionProvider" in available:
        chain.append("CUDAExecutionProvider")  # what TensorRT cannot take runs on CUDA before CPU
    return chain + (["CPUExecutionProvider"] if ort_name != "CPUExecutionProvider" else [])


def session_options(threads: int | None = None, ort_level: str = "all",
                    profile_prefix: str | None = None, spin: bool = False) -> ort.SessionOptions:
    """ORT session options for measuring. Thread-pool spinning is off unless `spin`: with several
    sessions in one process (interleaving), or other processes on the cores, workers that spin
    after a run steal the cores the next run needs (measured here: 2-3x slower medians)."""
    if ort_level not in _ORT_LEVELS:
        raise UsageError(f"ORT optimization level {ort_level!r}: choose one of {', '.join(_ORT_LEVELS)}")
    options = ort.SessionOptions()
    options.log_severity_level = 4  # errors reach the user as one line, not ORT's log
    options.graph_optimization_level = _ORT_LEVELS[ort_level]
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return options


def create_session(source: str | bytes, providers: list[str], options: ort.SessionOptions) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(source, options, providers=providers)
    except Exception as e:
        where = source if isinstance(source, str) else "<model>"
        raise InputError(f"{where}: ONNX Runtime cannot create a session ({first_line(e)})") from e


def time_interleaved(runners: Sequence[Callable[[], object]], runs: int, warmup: int = 2,
                     progress: Callable[[int], None] | None = None, seed: int = 0) -> list[list[float]]:
    """Seconds per run of each runner; each round runs them all once, in a shuffled order (case 3)."""
    n = len(runners)
    for _ in range(warmup):
        for run in runners:
            run()
    times: list[list[float]] = [[] for _ in range(n)]
    clock = time.perf_counter
    rng = np.random.default_rng(seed)
    for r in range(runs):
        for i in rng.permutation(n):
            start = clock()
            runners[i]()
            times[i].append(clock() - start)
        if progress:
            progress(r + 1)
    return times


def paired_ratio(base: Sequence[float], other: Sequence[float], *, boot: int = 2000, seed: int = 0) -> dict:
    """Per-round ratios other/base of interleaved runs: median, 95% bootstrap interval of the
    median, quartiles, and the share of rounds `other` was faster. Background load that slows a
    whole round cancels in the ratio; the median ignores the rounds a burst hit on one side."""
    ratios = np.asarray(other, dtype=float) / np.asarray(base, dtype=float)
    rng = np.random.default_rng(seed)
    medians = np.median(ratios[rng.integers(0, len(ratios), size=(boot, len(ratios)))], axis=1)
    q1, q3 = np.percentile(ratios, [25, 75])
    lo, hi = np.percentile(medians, [2.5, 97.5])
    return {"median": float(np.median(ratios)), "ci95": [float(lo), float(hi)], "iqr": [float(q1), float(q3)],
            "faster_share": float(np.mean(ratios < 1)), "rounds": int(len(ratios))}


# ----------------------------------------------------------------------------- results


@dataclasses.dataclass
class ModelBench:
    name: str
    path: str
    file_bytes: int
    nodes: int
    session_create_ms: float
    first_run_ms: float
    latency_ms: dict[str, float]  # p50, p90, p99, mean, min, stdev
    throughput: float  # items (batch) per second
    batch: int
    providers: list[str]  # what the session registered
    placement: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)  # provider -> op -> nodes
    memory: dict[str, float | str | None] = dataclasses.field(default_factory=dict)
    ratios: dict[str, float | list[float] | None] = dataclasses.field(default_factory=dict)
    samples_ms: list[float] = dataclasses.field(default_factory=list, repr=False)

    def to_dict(self, samples: bool = False) -> dict:
        d = dataclasses.asdict(self)
        if not samples:
            d.pop("samples_ms")
        return d


@dataclasses.dataclass
class BenchResult:
    models: list[ModelBench]
    provider: str
    providers: list[str]
    threads: int | None
    ort_level: str
    runs: int
    warmup: int
    inputs: dict[str, list[int]]
    environment: dict
    warnings: list[str] = dataclasses.field(default_factory=list)
    memory_method: str = MEMORY_METHOD
    spin: bool = False

    def to_dict(self, samples: bool = False) -> dict:
        return {
            "provider": self.provider, "providers": self.providers, "threads": self.threads,
            "ort_level": self.ort_level, "spin": self.spin, "runs": self.runs, "warmup": self.warmup,
            "inputs": self.inputs,
            "environment": self.environment, "memory_method": self.memory_method,
            "models": [m.to_dict(samples) for m in self.models], "warnings": self.warnings,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)


# ----------------------------------------------------------------------------- inputs


def _stage(model, workdir: pathlib.Path, index: int) -> tuple[str, str, int, int]:
    """(name, path ORT loads, bytes on disk, node count) for a path, ModelProto or ir.Model."""
    from graphopt.core import io

    if isinstance(model, (str, os.PathLike)):
        path = pathlib.Path(model)
        loaded = io.load(path)  # one-line errors for missing/broken files; lazy weights
        files = {path.resolve(), *io.external_data_paths(loaded)}
        return str(path), str(path), sum(f.stat().st_size for f in files), len(list(loaded.graph.all_nodes()))
    if isinstance(model, onnx.ModelProto):
        model = ir.serde.deserialize_model(model)
    if not isinstance(model, ir.Model):
        raise UsageError(f"cannot benchmark {type(model).__name__}: give a path, onnx.ModelProto or ir.Model")
    path = workdir / f"model{index}.onnx"
    written = io.save(model, path)
    name = model.graph.name or f"model{index}"
    return name, str(path), sum(p.stat().st_size for p in written), len(list(model.graph.all_nodes()))


def display_names(paths: Sequence[str]) -> list[str]:
    """Short labels: file stems, or parent/stem where stems collide (zoo/torch_ts/bert vs .../tf/bert)."""
    stems = [pathlib.Path(p).stem for p in paths]
    out = []
    for p, stem in zip(paths, stems):
        path = pathlib.Path(p)
        out.append(f"{path.parent.name}/{stem}" if stems.count(stem) > 1 and path.parent.name else stem)
    return [f"{n}#{i}" if out.count(n) > 1 else n for i, n in enumerate(out)]


def sample_data_for(path: str | os.PathLike) -> pathlib.Path | None:
    """`net.npz` beside `net.onnx`, the export zoo's convention for sample inputs."""
    candidate = pathlib.Path(path).with_suffix(".npz")
    return candidate if candidate.exists() else None


def _feeds(path: str, session: ort.InferenceSession, shapes: dict[str, list[int]], batch: int | None,
           data: dict[str, np.ndarray] | None, warnings: list[str], where: str) -> dict[str, np.ndarray]:
    """The given data (resized to `batch`), else the input model's inputs that the session runs."""
    from graphopt.core.input_dims import DimRole
    from graphopt.core.input_search import first_runnable
    from graphopt.core.verify import plan_inputs

    names = {a.name for a in session.get_inputs()}
    if data is not None:
        data = {k: v for k, v in data.items() if k in names}
        if batch:
            data = {k: _resize_batch(v, batch) for k, v in data.items()}
    plan = plan_inputs(path, shapes, data)
    if batch:
        for name, roles in plan.roles.items():
            if name in shapes:
                continue
            for axis, role in enumerate(roles):
                if role is DimRole.BATCH:
                    plan.shapes[name][axis] = batch
        for sig in plan.signatures:
            if sig.name not in shapes and sig.dims and isinstance(sig.dims[0], int) and sig.dims[0] > 0 \
                    and sig.dims[0] != batch and sig.name not in plan.data:
                raise UsageError(f"{where}: input {sig.name!r} has a fixed batch of {sig.dims[0]}; --batch {batch} "
                                 "needs a model with a dynamic first dimension")
    wanted = [o.name for o in session.get_outputs()]
    plan, feeds, _ = first_runnable(plan, lambda f: session.run(wanted, f))
    generated = [s.name for s in plan.signatures
                 if s.name not in plan.data and s.name not in shapes and any(plan.roles.get(s.name) or ())]
    if generated:
        text = f"{where}: generated inputs {plan.explain(generated)}"
        if text not in warnings:
            warnings.append(text)
    return feeds


def _shapes_of(feeds: dict) -> dict[str, list[int]]:
    from graphopt.core.verify import shapes_of

    return shapes_of(feeds)


def _resize_batch(array: np.ndarray, batch: int) -> np.ndarray:
    if array.ndim == 0 or array.shape[0] == batch:
        return array
    reps = -(-batch // array.shape[0])
    return np.concatenate([array] * reps, axis=0)[:batch]


def _fits(session: ort.InferenceSession, data: dict[str, np.ndarray]) -> bool:
    """Whether `data` has every input of the session, with its rank and static dims."""
    for arg in session.get_inputs():
        array = data.get(arg.name)
        if array is None or (arg.shape is not None and len(arg.shape) != array.ndim):
            return False
        if any(isinstance(d, int) and d > 0 and d != n for d, n in zip(arg.shape or [], array.shape)):
            return False
    return True


def _signature(session: ort.InferenceSession) -> tuple:
    return tuple((a.name, a.type) for a in session.get_inputs())


# ----------------------------------------------------------------------------- placement


def _placement(path: str, providers: list[str], threads: int | None, ort_level: str,
               feeds: dict[str, np.ndarray], workdir: pathlib.Path,
               spin: bool = False) -> tuple[dict[str, dict[str, int]], float | None]:
    """Provider -> op -> node count from one profiled run, and ORT's arena peak in bytes."""
    prefix = str(workdir / "profile")
    session = create_session(path, providers, session_options(threads, ort_level, profile_prefix=prefix, spin=spin))
    session.run(None, feeds)
    profile = pathlib.Path(session.end_profiling())
    try:
        events = json.loads(profile.read_text())
    finally:
        profile.unlink(missing_ok=True)
    seen: dict[str, tuple[str, str]] = {}
    arena_peak = None
    for event in events:
        args = event.get("args") or {}
        if event.get("cat") != "Node" or "provider" not in args:
            continue
        seen[event.get("name", "").removesuffix("_kernel_time")] = (args["provider"], args.get("op_name", "?"))
        with contextlib.suppress(KeyError, ValueError):
            arena_peak = max(arena_peak or 0, int(args["mem_in_use_peak"]))
    placement: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for provider, op in seen.values():
        placement[provider][op] += 1
    return {p: dict(c.most_common()) for p, c in placement.items()}, arena_peak


# ----------------------------------------------------------------------------- memory (subprocess)


# The program of each memory subprocess: graphopt/core/memory_probe.py, run by its text so that the
# fresh interpreter imports neither graphopt nor anything beside that file.
_MEMORY_PROBE = pathlib.Path(__file__).with_name("memory_probe.py")


def _memory(path: str, providers: list[str], threads: int | None, ort_level: str, feeds_path: str,
            runs: int, spin: bool = False) -> dict:
    level = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
             "all": "ORT_ENABLE_ALL"}[ort_level]
    spec = {"path": path, "providers": providers, "threads": threads, "ort_level": level,
            "feeds": feeds_path, "runs": runs, "spin": spin}
    cmd = [sys.executable, "-c", _MEMORY_PROBE.read_text(), json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"peak_bytes": None, "error": first_line(e)}
    if proc.returncode != 0:
        return {"peak_bytes": None, "error": first_line(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip()
                                                   else f"exit {proc.returncode}")}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _memory_median(samples: list[dict]) -> dict:
    """The sample with the median peak (the peak varies by a few % with thread scheduling), and the range."""
    good = [m for m in samples if m.get("peak_bytes") is not None]
    if not good:
        return samples[0]
    good.sort(key=lambda m: m["peak_bytes"])
    chosen = dict(good[len(good) // 2])
    chosen["peak_range_bytes"] = [good[0]["peak_bytes"], good[-1]["peak_bytes"]]
    chosen["repeats"] = len(good)
    return chosen


# ----------------------------------------------------------------------------- the benchmark


def _percentiles(samples_s: list[float]) -> dict[str, float]:
    ms = np.asarray(samples_s) * 1e3
    return {"p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)),
            "p99": float(np.percentile(ms, 99)), "mean": float(ms.mean()), "min": float(ms.min()),
            "stdev": float(ms.std(ddof=1)) if len(ms) > 1 else 0.0}


def bench(
    models: Sequence,
    *,
    provider: str = "cpu",
    threads: int | None = None,
    batch: int | None = None,
    shapes: dict[str, list[int]] | None = None,
    inputs: str | os.PathLike | dict[str, np.ndarray] | Sequence[dict[str, np.ndarray]] | None = None,
    runs: int = 50,
    warmup: int = 5,
    init_repeats: int = 3,
    memory: bool = True,
    memory_runs: int = 3,
    memory_repeats: int = 3,
    placement: bool = True,
    ort_level: str = "all",
    spin: bool = False,
    names: Sequence[str] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> BenchResult:
    """Benchmark models side by side in ORT; ratios are to the first model.

    `models` are paths, onnx.ModelProto or ir.Model. Inputs: `inputs` (.npz path, dict, or a
    list of dicts, one per model), else `MODEL.npz` beside the first model when it exists
    (used for every model with the same input names), else random data from the
    declared shapes (`shapes` and `batch` fill dynamic dims; other dynamic dims become 1 and
    the result warns). `progress(stage, done, total)` is called as work advances.
    """
    from graphopt.core.limits import check_threads
    from graphopt.core.verify import load_npz

    if not models:
        raise UsageError("bench needs at least one model")
    if runs < 1 or warmup < 0 or init_repeats < 1:
        raise UsageError("bench: --runs and repeats must be >= 1 and --warmup >= 0")
    check_threads(threads)
    providers = resolve_provider(provider)
    shapes = dict(shapes or {})
    warnings: list[str] = []
    report = progress or (lambda stage, done, total: None)
    per_model = list(inputs) if isinstance(inputs, (list, tuple)) else None
    if per_model is not None and len(per_model) != len(models):
        raise UsageError(f"bench: {len(per_model)} input sets for {len(models)} models")
    data = load_npz(inputs) if isinstance(inputs, (str, os.PathLike)) else (None if per_model else inputs)
    from_sample = False
    if data is None and per_model is None and not shapes and isinstance(models[0], (str, os.PathLike)):
        sample = sample_data_for(models[0])
        if sample is not None:
            data, from_sample = load_npz(sample), True
            warnings.append(f"inputs: {sample} (sample data beside the model)")

    with tempfile.TemporaryDirectory(prefix="graphopt-bench-") as tmp:
        workdir = pathlib.Path(tmp)
        staged = [_stage(m, workdir, i) for i, m in enumerate(models)]
        labels = list(names) if names else display_names([s[0] for s in staged])
        staged = [(n, *rest) for n, (_, *rest) in zip(labels, staged)]
        options = session_options(threads, ort_level, spin=spin)

        # 1-2: creation and first run, interleaved across models.
        sessions: list[ort.InferenceSession | None] = [None] * len(staged)
        create_s: list[list[float]] = [[] for _ in staged]
        first_s: list[list[float]] = [[] for _ in staged]
        feeds: list[dict[str, np.ndarray]] = []
        by_signature: dict[tuple, dict[str, np.ndarray]] = {}
        total_init = init_repeats * len(staged)
        for rep in range(init_repeats):
            for i, (name, path, _, _) in enumerate(staged):
                sessions[i] = None  # release the previous one before timing the next
                start = time.perf_counter()
                session = create_session(path, providers, options)
                create_s[i].append(time.perf_counter() - start)
                if rep == 0 and per_model is not None:
                    feeds.append(_feeds(path, session, shapes, batch, per_model[i], warnings, name))
                    _check_fallback(session, providers, name, warnings)
                elif rep == 0:
                    sig = _signature(session)
                    if sig not in by_signature:
                        usable = data
                        if data is not None and from_sample and not _fits(session, data):
                            usable = None  # the sample is for the first model: random data for this one
                            warnings.append(f"{name}: inputs differ from the sample's; random inputs used")
                        by_signature[sig] = _feeds(path, session, shapes, batch, usable, warnings, name)
                    feeds.append(by_signature[sig])
                    _check_fallback(session, providers, name, warnings)
                start = time.perf_counter()
                try:
                    session.run(None, feeds[i])
                except Exception as e:
                    shapes_given = _shapes_of(feeds[i])
                    raise InputError(f"{name}: ONNX Runtime cannot run the model on inputs {shapes_given} "
                                     f"({first_line(e)})") from e
                first_s[i].append(time.perf_counter() - start)
                sessions[i] = session
                report("session creation", rep * len(staged) + i + 1, total_init)

        # 3: interleaved timed runs.
        runners = [_runner(s, f) for s, f in zip(sessions, feeds)]
        times = time_interleaved(runners, runs, warmup, progress=lambda r: report("timed runs", r, runs))
        registered = [s.get_providers() for s in sessions]
        del runners, sessions

        # 5-6: memory in subprocesses, placement from a profiled run.
        results = []
        for i, (name, path, size, nodes) in enumerate(staged):
            mem: dict = {}
            if memory and not all(isinstance(v, np.ndarray) for v in feeds[i].values()):
                warnings.append(f"{name}: memory not measured (sequence or optional inputs)")
            elif memory:
                feeds_path = workdir / f"feeds{i}.npz"
                np.savez(feeds_path, **feeds[i])
                mem = _memory_median([_memory(path, providers, threads, ort_level, str(feeds_path), memory_runs, spin)
                                      for _ in range(memory_repeats)])
                if mem.get("error"):
                    warnings.append(f"{name}: memory not measured ({mem['error']})")
            where, arena = ({}, None)
            if placement:
                where, arena = _placement(path, providers, threads, ort_level, feeds[i], workdir, spin)
            mem["ort_arena_peak_bytes"] = arena
            report("memory and placement", i + 1, len(staged))
            item = _batch_of(feeds[i])
            lat = _percentiles(times[i])
            results.append(ModelBench(
                name=name, path=path if isinstance(models[i], (str, os.PathLike)) else "", file_bytes=size,
                nodes=nodes, session_create_ms=statistics.median(create_s[i]) * 1e3,
                first_run_ms=statistics.median(first_s[i]) * 1e3, latency_ms=lat,
                throughput=item / (lat["mean"] / 1e3), batch=item, providers=registered[i],
                placement=where, memory=mem, samples_ms=[t * 1e3 for t in times[i]]))
            if placement and providers[0] != "CPUExecutionProvider":
                fallback = sum(where.get("CPUExecutionProvider", {}).values())
                if fallback:
                    warnings.append(f"{name}: {fallback} node(s) fell back to CPUExecutionProvider")
    _add_ratios(results, times)
    return BenchResult(results, provider, providers, threads, ort_level, runs, warmup,
                       _shapes_of(feeds[0]), environment(), warnings, spin=spin)


def _runner(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> Callable[[], object]:
    names = [o.name for o in session.get_outputs()]
    return lambda: session.run(names, feeds)


def _batch_of(feeds: dict[str, np.ndarray]) -> int:
    for value in feeds.values():
        if isinstance(value, np.ndarray) and value.ndim:
            return int(value.shape[0])
    return 1


def _check_fallback(session: ort.InferenceSession, providers: list[str], name: str, warnings: list[str]) -> None:
    got = session.get_providers()
    if providers[0] not in got:
        warnings.append(f"{name}: {providers[0]} was requested but the session registered only {', '.join(got)}")


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _add_ratios(results: list[ModelBench], times: list[list[float]]) -> None:
    base = results[0]
    for m, t in zip(results, times):
        paired = paired_ratio(times[0], t)
        m.ratios = {
            "latency_p50": _ratio(m.latency_ms["p50"], base.latency_ms["p50"]),
            "latency_mean": _ratio(m.latency_ms["mean"], base.latency_ms["mean"]),
            "paired_median": paired["median"],
            "paired_ci95": paired["ci95"],
            "paired_iqr": paired["iqr"],
            "throughput": _ratio(m.throughput, base.throughput),
            "session_create": _ratio(m.session_create_ms, base.session_create_ms),
            "first_run": _ratio(m.first_run_ms, base.first_run_ms),
            "peak_memory": _ratio(m.memory.get("peak_bytes"), base.memory.get("peak_bytes")),
            "file_size": _ratio(m.file_bytes, base.file_bytes),
        }
