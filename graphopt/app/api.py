"""The public API: `optimize(model, ...)` -> `OptimizeResult`. The CLI is a thin layer over it."""

from __future__ import annotations

__all__ = ["OptimizeResult", "optimize", "inspect"]

import concurrent.futures
import logging
import numbers
import os
import pathlib
import tempfile
import time
from collections.abc import Callable, Sequence

import numpy as np
import onnx
import onnx_ir as ir

from graphopt.core import io
from graphopt.core.errors import UsageError
from graphopt.core.analysis import analyze
from graphopt.core.pipeline import PassOptions, Pipeline, select
from graphopt.core.report import Report
from graphopt.core.verify import (
    RTOL, ATOL, VerifyResult, check as verify_check, load_npz, plan_inputs, reference as verify_reference,
)

logger = logging.getLogger(__name__)

# Largest model whose reference run overlaps the passes (both copies are resident meanwhile).
_OVERLAP_MAX_BYTES = 512 << 20


class OptimizeResult:
    """The optimized model, its report, and `save()`.

    optimize() already wrote the model once (verification runs on that file, and the report
    gives its size); the first `save()` moves that very file into place instead of serializing
    the model again, unless `model` has been read since (the caller may have changed it).
    """

    def __init__(self, model: ir.Model, report: Report, protect: set[pathlib.Path] | None = None, *,
                 sparse_format: str | None = None, staged: io.Staged | None = None):
        self._model = model
        self.report = report
        self._protect = set(protect or ())
        self.sparse_format = sparse_format  # set by pruning: zero-heavy weights are saved as sparse_initializer
        self._staged = staged  # deleted with this result unless save() moves it

    @property
    def model(self) -> ir.Model:
        self._drop_staged()
        return self._model

    def to_onnx(self) -> onnx.ModelProto:
        return ir.serde.serialize_model(self._model)

    def save(self, path: str | os.PathLike, *, external_data: bool | None = None) -> list[pathlib.Path]:
        """Write atomically; refuses to overwrite the input model or its external data."""
        written = self._move_staged(path) if external_data is None else None
        if written is None:
            written = io.save(self._model, path, external_data=external_data, protect=self._protect,
                              sparse_format=self.sparse_format)
        self.report.output = str(written[0])
        self.report.file_bytes_after = sum(p.stat().st_size for p in written)
        return written

    def _move_staged(self, path) -> list[pathlib.Path] | None:
        staged, self._staged = self._staged, None
        if staged is None or len(staged.targets) != 1 or not staged.path.exists():
            return None
        return staged.move_to(path, self._protect)

    def _drop_staged(self) -> None:
        staged, self._staged = self._staged, None
        if staged is not None:
            staged.discard()


def _source_bytes(source, working: ir.Model) -> int:
    """Bytes on disk (model plus external data), or serialized size, for the report."""
    if isinstance(source, (str, os.PathLike)):
        files = {pathlib.Path(source).resolve(), *io.external_data_paths(working)}
        return sum(p.stat().st_size for p in files)
    if isinstance(source, onnx.ModelProto):
        return source.ByteSize()
    return io.model_size_bytes(working)


def _protected_paths(source, model: ir.Model) -> set[pathlib.Path]:
    if not isinstance(source, (str, os.PathLike)):
        return set()
    return {pathlib.Path(source).resolve(), *io.external_data_paths(model)}


def optimize(
    model,
    *,
    level: int | None = None,
    passes: Sequence[str] | None = None,
    skip: Sequence[str] = (),
    outputs: Sequence[str] | None = None,
    shapes: dict[str, list[int]] | None = None,
    inputs: str | os.PathLike | dict[str, np.ndarray] | None = None,
    verify: bool = True,
    inference: bool = False,
    target_opset: int | None = None,
    rtol: float = RTOL,
    atol: float = ATOL,
    fold_limit_mb: float = 1.0,
    keep_initializer_inputs: bool = False,
    provider: str = "cpu",
    threads: int | None = None,
    measure: bool = True,
    bench: bool = False,
    bench_runs: int = 30,
    quantize: str | None = None,
    calibration=None,
    eval=None,  # noqa: A002 - the public name mirrors --eval
    max_accuracy_drop: float | None = None,
    calibration_method: str = "minmax",
    calibration_samples: int | None = None,
    preprocess: str | None = None,
    keep_io_types: bool = True,
    int8_scheme: str = "auto",
    keep_float: Sequence[str] = (),
    eval_output: str | None = None,
    quantize_measure: bool = True,
    sparsity: float | None = None,
    structured: bool = False,
    sparsity_pattern: str | None = None,
    low_rank: float | str | None = None,
    sparsity_scope: str = "layer",
    prune_criterion: str = "l1",
    channel_multiple: int = 8,
    sparse_format: str = "ort",
    progress: Callable[[str], None] | None = None,
) -> OptimizeResult:
    """Optimize a model (path, onnx.ModelProto or ir.Model); the source is never modified.

    `level` picks a named pipeline (0 none, 1 clean-up, 2 clean-up + vertical fusion);
    `passes` replaces it with an explicit list and `skip` removes names from either.
    With `verify`, the result is run against the original in ONNX Runtime; the verdict
    is in `result.report.verification` (the caller decides whether a failure is fatal).
    With `quantize` ("int8", "int8-dynamic", "fp16") a lossy stage runs after the lossless
    pipeline and its verification: `calibration` and `eval` data (.npz, folder, dict or
    "random"), `max_accuracy_drop` in points (layers go back to float until it holds, else
    BudgetError), figures in `result.report.sections["quantization"]`.
    `provider`/`threads` are the ORT target that measuring steps (level 3's fuse_parallel,
    int8's placement by speed) time candidates on, `measure=False` gives them a cost model
    (fusion) or quantizes every layer it can (int8) instead; with `bench`, the
    original and optimized models are timed side by side on that target and the ratios go
    to `result.report.sections["bench"]`.
    Compression runs before quantization, on the same data and budget (graphopt/stages/compress.py):
    `sparsity` (magnitude pruning, `sparsity_scope` "layer" or "global"; with `structured`,
    that share of channels is removed, by `prune_criterion` "l1", "l2" or "bn", kept counts
    rounded to `channel_multiple`), `sparsity_pattern` ("2:4"), `low_rank` (energy 0.95, or
    "rank:0.25"); zeroed weights are saved as sparse_initializer (`sparse_format` "ort" or
    "onnx"); figures in `result.report.sections["compression"]`.
    """
    from graphopt.passes import DEFAULT_LEVEL, OPTION_PASSES, REGISTRY, level_names  # the one place the engine meets the passes
    from graphopt.core.bench import resolve_provider

    resolve_provider(provider)  # an unknown or uninstalled provider fails before any work
    _check_values(rtol=rtol, atol=atol, fold_limit_mb=fold_limit_mb, threads=threads, shapes=shapes,
                  calibration_samples=calibration_samples)

    start = time.perf_counter()
    level = DEFAULT_LEVEL if level is None and not passes else level
    specs = select(REGISTRY, level_names(level) if level is not None else [], passes, skip)
    options = PassOptions(outputs=list(outputs) if outputs else None,
                          fold_limit_bytes=int(fold_limit_mb * (1 << 20)),
                          shapes=dict(shapes or {}), keep_initializer_inputs=keep_initializer_inputs,
                          inference=inference, target_opset=target_opset)
    # --target-opset and --shape act whatever the level: their passes go first, in that order.
    specs = [REGISTRY[n] for n, wanted in OPTION_PASSES.items()
             if wanted(options) and n not in skip and n not in {s.name for s in specs}] + specs
    options.extra.update(provider=provider, threads=threads, measure=measure)
    working = io.load(model)
    protect = _protected_paths(model, working)
    file_before = _source_bytes(model, working)
    data = load_npz(inputs) if isinstance(inputs, (str, os.PathLike)) else inputs
    # What every run of the model uses (verification, measurements, random calibration data):
    # planned on the model as given, before any pass changes it.
    plan = plan_inputs(working, shapes, data)
    options.inputs = plan
    # The original's reference run needs nothing from the passes: it runs on the other core
    # meanwhile (ORT reads the file and releases the GIL). Only from a path (an in-memory
    # source may share lazily loaded tensors with `working`), never for big models (which
    # must not be held twice).
    background = None
    if (verify and not inference and isinstance(model, (str, os.PathLike))
            and io.model_size_bytes(working) <= _OVERLAP_MAX_BYTES):
        background = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="graphopt-reference")
        reference_run = background.submit(verify_reference, model, outputs=list(outputs) if outputs else None,
                                          plan=plan)
        background.shutdown(wait=False)
    before = analyze(working)
    try:
        result = Pipeline(specs, options).run(working, progress=progress)
    except BaseException:
        if background is not None:
            reference_run.cancel() or reference_run.exception()  # let the thread finish before the error leaves
        raise

    file_after = None
    verification: VerifyResult | None = None
    baseline = model
    if inference and verify:
        # --inference changes outputs on purpose: compare with the original converted the same way.
        baseline = io.load(model)
        quiet = logging.getLogger("graphopt.passes.cleanup.training_leftovers")  # the pipeline has already warned
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            REGISTRY["training_leftovers"].factory(PassOptions(inference=True))(baseline)
        finally:
            quiet.setLevel(level)
    # Staged in a private directory of the temp dir; save() moves it to where the user wants it.
    staged = io.stage_scratch(working)
    file_after = sum(t.stat().st_size for t in staged.path.parent.iterdir())
    if verify and progress:
        progress("verify")
    if background is not None:  # the check runs in ORT while the result is analyzed here
        checking = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="graphopt-check")
        check_run = checking.submit(lambda: verify_check(reference_run.result(), staged.path, rtol=rtol, atol=atol))
        checking.shutdown(wait=False)
        try:
            after = analyze(working)
        finally:
            verification = check_run.result()
        plan = reference_run.result().inputs or plan
    else:
        after = analyze(working)
        if verify:
            ref = verify_reference(baseline, outputs=list(outputs) if outputs else None, plan=plan)
            verification = verify_check(ref, staged.path, rtol=rtol, atol=atol)
            plan = ref.inputs or plan
            del ref
    warnings = []
    if verification is not None and verification.status == "skipped":
        warnings.append(f"not verified: {verification.reason}")
    warnings += _training_warnings(result.stats, inference)
    lossy_section = compressed = None
    budget = max_accuracy_drop
    compress = sparsity is not None or sparsity_pattern or low_rank is not None
    if compress and verification is not None and verification.status == "failed":
        warnings.append("compression skipped: the lossless result failed verification")
    elif compress:
        from graphopt.stages.compress import CompressOptions, run_compress, saved_bytes

        compressed = run_compress(working, CompressOptions(
            sparsity=sparsity, structured=structured, sparsity_pattern=sparsity_pattern, low_rank=low_rank,
            sparsity_scope=sparsity_scope, prune_criterion=prune_criterion, channel_multiple=channel_multiple,
            sparse_format=sparse_format, eval=eval, calibration=calibration, max_accuracy_drop=max_accuracy_drop,
            later_steps=int(bool(quantize)), eval_output=eval_output, preprocess=preprocess, shapes=shapes, inputs=plan,
            bn_source=model, measure=quantize_measure, provider=provider, threads=threads), progress=progress)
        working, after, file_after = compressed.model, analyze(compressed.model), compressed.section["file_bytes"]
        warnings.extend(compressed.warnings)
        if budget is not None and compressed.drop is not None:  # quantization gets what is left
            budget = max(0.0, budget - compressed.drop)
    if quantize:
        working, after, file_after, lossy_section = _lossy_stage(
            working, after, file_after, verification, warnings, progress, mode=quantize, calibration=calibration,
            eval=eval, max_accuracy_drop=budget, calibration_method=calibration_method,
            calibration_samples=calibration_samples, preprocess=preprocess, keep_io_types=keep_io_types,
            int8_scheme=int8_scheme, keep_float=tuple(keep_float), eval_output=eval_output, shapes=shapes, inputs=plan,
            measure=quantize_measure, place_for_speed=measure, provider=provider, threads=threads)
        if compressed is not None and lossy_section is not None:
            compressed.score_final(working)
            if compressed.sparse_format:
                file_after = saved_bytes(working, compressed.sparse_format)
    warnings += _collapse_warning(compressed and compressed.section, lossy_section, max_accuracy_drop)
    bench_section = None
    if bench:  # the final model (after any lossy stage) against the original, on the target provider
        if progress:
            progress("bench")
        bench_section = _bench_section(model, working, provider, threads, plan.feeds(), bench_runs)
    report = Report(
        source=str(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__,
        level=level, passes=result.stats, iterations=result.iterations,
        before=before, after=after, file_bytes_before=file_before, file_bytes_after=file_after,
        verification=verification, seconds=time.perf_counter() - start, warnings=warnings,
    )
    if options.extra.get("fuse_parallel"):  # every horizontal-fusion candidate, its gain and verdict
        keys = ("decision", "gain", "ms_separate", "ms_fused", "method", "detail", "whole_model")
        report.sections["fuse_parallel"] = {c["candidate"]: {k: c[k] for k in keys if c.get(k) is not None}
                                            for c in options.extra["fuse_parallel"]}
    if bench_section is not None:
        report.sections["bench"] = bench_section
    if compressed is not None:
        report.sections["compression"] = compressed.section
    if lossy_section is not None:
        report.sections["quantization"] = lossy_section
    if compressed is not None or lossy_section is not None:
        staged.discard()  # the lossy stages changed the model after it was staged
        staged = None
    return OptimizeResult(working, report, protect, sparse_format=compressed and compressed.sparse_format,
                          staged=staged)


_COLLAPSE_POINTS = 1.0


def _collapse_warning(compress_section: dict | None, lossy_section: dict | None, budget) -> list[str]:
    """A lossy run without --max-accuracy-drop that measured a drop over a point says so."""
    if budget is not None:
        return []
    first = compress_section or lossy_section
    last = lossy_section or compress_section
    if not first or not last or "accuracy_drop" not in last:
        return []
    before = first.get("accuracy_before")
    after = (compress_section or {}).get("accuracy_after_all_stages", last.get("accuracy_after"))
    if before is None or after is None or not before - after > _COLLAPSE_POINTS:
        return []
    return [f"accuracy fell {before - after:.2f} points ({last.get('metric', 'score')} {before:g} -> {after:g}) "
            f"with no --max-accuracy-drop; set one to keep the most sensitive layers until the drop fits"]


def _check_values(*, rtol, atol, fold_limit_mb, threads, shapes, calibration_samples) -> None:
    """Bad numbers are usage errors before any work (not a crash, not a verification failure)."""
    from graphopt.core.limits import MAX_DIM, check_number, check_threads

    check_number("--rtol", rtol)
    check_number("--atol", atol)
    check_number("--fold-limit", fold_limit_mb, what="megabytes")
    check_threads(threads)
    if calibration_samples is not None and (isinstance(calibration_samples, bool)
                                            or not isinstance(calibration_samples, numbers.Integral)
                                            or calibration_samples < 1):
        raise UsageError(f"--calibration-samples {calibration_samples}: give 1 or more (or leave it out for all)")
    for name, dims in (shapes or {}).items():
        if any(isinstance(d, bool) or not isinstance(d, numbers.Integral) or not 0 <= d <= MAX_DIM for d in dims):
            raise UsageError(f"--shape {name}={'x'.join(map(str, dims))}: each dim must be an integer 0..{MAX_DIM}")


def _bench_section(original, optimized: ir.Model, provider: str, threads: int | None, feeds: dict,
                   runs: int) -> dict:
    """Original vs optimized, interleaved in one process: ratios (optimized / original) and figures."""
    from graphopt.core.bench import bench
    from graphopt.core.machine import describe_cpu

    result = bench([original, optimized], provider=provider, threads=threads, inputs=feeds,
                    runs=runs, warmup=3, init_repeats=2, names=["original", "optimized"])
    base, opt = result.models

    def pair(get, digits=4):
        values = {m.name: get(m) for m in (base, opt)}
        return {k: (round(v, digits) if isinstance(v, float) else v) for k, v in values.items()}

    def where(m):
        return "; ".join(f"{p} {sum(ops.values())} nodes" for p, ops in m.placement.items())

    section = {
        "provider": ", ".join(result.providers), "threads": threads or "ORT default", "runs": runs,
        "cpu": describe_cpu(result.environment), "inputs": result.inputs,
        "latency_ratio": round(opt.ratios["latency_p50"], 4),
        "latency_paired_ratio": round(opt.ratios["paired_median"], 4),
        "latency_paired_ci95": [round(x, 4) for x in opt.ratios["paired_ci95"]],
        "latency_p50_ms": pair(lambda m: m.latency_ms["p50"]),
        "memory_ratio": None if opt.ratios["peak_memory"] is None else round(opt.ratios["peak_memory"], 4),
        "peak_rss_bytes": pair(lambda m: m.memory.get("peak_bytes")),
        "session_create_ratio": round(opt.ratios["session_create"], 4),
        "session_create_ms": pair(lambda m: m.session_create_ms, 2),
        "placement": pair(where),
    }
    if result.warnings:
        section["notes"] = result.warnings
    return section


def _training_warnings(stats, inference: bool) -> list[str]:
    counters = next((s.counters for s in stats if s.name == "training_leftovers"), {})
    found = {k: counters.get(k, 0) for k in ("batchnorm_training", "dropout_training")}
    if not any(found.values()):
        return []
    what = f"{found['batchnorm_training']} BatchNormalization(training_mode=1), {found['dropout_training']} training Dropout"
    if not inference:
        return [f"exported in training mode: {what}; outputs are batch-dependent or random. Re-export in eval "
                "mode or use --inference"]
    kept = counters.get("batchnorm_training_kept", 0)
    note = f" ({kept} BatchNormalization kept: their batch statistics are used)" if kept else ""
    return [f"--inference converted {what} to inference form{note}; verified against the original converted "
            "the same way"]


def _lossy_stage(working: ir.Model, after: dict, file_after: int | None, verification, warnings: list[str], progress,
                 **settings):
    """Quantize or convert to fp16 after the lossless pipeline; returns (model, after, file bytes, section)."""
    from graphopt.stages.quantize import LossyOptions, run_lossy

    if verification is not None and verification.status == "failed":
        warnings.append(f"--quantize {settings['mode']} skipped: the lossless result failed verification")
        return working, after, file_after, None
    if progress:
        progress(f"quantize {settings['mode']}")
    lossy = run_lossy(working, LossyOptions(**settings), progress=progress)
    warnings.extend(lossy.warnings)
    with tempfile.TemporaryDirectory(prefix="graphopt-lossy-") as tmp:
        written = io.save(lossy.model, pathlib.Path(tmp) / "lossy.onnx")
        size = sum(p.stat().st_size for p in written)
    return lossy.model, analyze(lossy.model), size, lossy.section


def inspect(model) -> dict:
    """The analysis summary of a model (path, proto or IR)."""
    return analyze(io.load(model))
