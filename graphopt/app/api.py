"""The public API: `optimize(model, ...)` -> `OptimizeResult`. The CLI is a thin layer over it."""

from __future__ import annotations

__all__ = ["OptimizeResult", "optimize", "inspect"]

import importlib
import inspect as _inspect_module
import numbers
import os
import pathlib
import time
from collections.abc import Callable

import onnx
import onnx_ir as ir

from graphopt.app.options import from_keywords, signature
from graphopt.core import io
from graphopt.core.analysis import analyze
from graphopt.core.errors import UsageError
from graphopt.core.report import Report
from graphopt.core.verify import load_npz, plan_inputs
from graphopt.stages.context import Context

# The stages of optimize(), in order (graphopt.stages.<name>.run(model, ctx) -> model), each with the
# settings group that asks for it (None: always). A stage not asked for is not even imported.
STAGES = (("lossless", None), ("compress", "compress"), ("quantize", "quantize"), ("bench", "target"))


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


def optimize(model, *, progress: Callable[[str], None] | None = None, **settings) -> OptimizeResult:
    """Optimize a model (path, onnx.ModelProto or ir.Model); the source is never modified.

    The keywords are the settings of `graphopt.app.options` (the same as `graphopt optimize`'s
    options and graphopt.toml's keys; `inspect.signature(optimize)` lists them with their
    defaults). `level` picks a named pipeline (0 none, 1 clean-up, 2 clean-up + vertical fusion,
    3 + measured horizontal fusion); `passes` replaces it with an explicit list and `skip`
    removes names from either. With `verify`, the result is run against the original in ONNX
    Runtime; the verdict is in `result.report.verification` (the caller decides whether a
    failure is fatal).
    The stages, in order (`graphopt.stages`): lossless (the pipeline and its verification);
    compress (`sparsity`, `structured`, `sparsity_pattern`, `low_rank`; zeroed weights saved as
    sparse_initializer, `sparse_format`); quantize (`quantize` "int8", "int8-dynamic" or "fp16" with
    `calibration` and `eval` data: .npz, folder, dict or "random"); bench (`bench`: original and
    final model timed side by side, ratios in `result.report.sections["bench"]`). The lossy stages
    share `max_accuracy_drop` (points; layers go back to float until it holds, else BudgetError)
    and report in `result.report.sections["compression"]` and `["quantization"]`.
    `provider`/`threads` are the ORT target that measuring steps (level 3's fuse_parallel,
    int8's placement by speed) time candidates on; `measure=False` gives them a cost model
    (fusion) or quantizes every layer it can (int8) instead.
    """
    ctx = _load(model, from_keywords(settings), progress)
    working = ctx.input_model
    for name, group in STAGES:
        if group is None or getattr(ctx.options, group).requested:
            working = importlib.import_module(f"graphopt.stages.{name}").run(working, ctx)
    return _result(working, ctx)


optimize.__signature__ = signature(
    _inspect_module.Parameter("model", _inspect_module.Parameter.POSITIONAL_OR_KEYWORD),
    _inspect_module.Parameter("progress", _inspect_module.Parameter.KEYWORD_ONLY, default=None,
                      annotation="Callable[[str], None] | None"))


def _load(model, options, progress) -> Context:
    """Checks that need no model, then the model, its files and its input model."""
    from graphopt.core.bench import resolve_provider

    resolve_provider(options.target.provider)  # an unknown or uninstalled provider fails before any work
    p, v, q = options.pipeline, options.verify, options.quantize
    _check_values(rtol=v.rtol, atol=v.atol, fold_limit_mb=p.fold_limit_mb, threads=options.target.threads,
                  shapes=p.shapes, calibration_samples=q.calibration_samples)
    ctx = Context(model, options, progress)
    ctx.input_model = io.load(model)
    ctx.protect = _protected_paths(model, ctx.input_model)
    ctx.file_bytes_before = _source_bytes(model, ctx.input_model)
    data = load_npz(v.inputs) if isinstance(v.inputs, (str, os.PathLike)) else v.inputs
    # What every run of the model uses (verification, measurements, random calibration data):
    # planned on the model as given, before any pass changes it.
    ctx.plan = plan_inputs(ctx.input_model, p.shapes, data)
    ctx.budget = q.max_accuracy_drop
    return ctx


_SECTION_ORDER = ("fuse_parallel", "bench", "compression", "quantization")


def _result(working: ir.Model, ctx: Context) -> OptimizeResult:
    ctx.warnings += _collapse_warning(ctx.sections.get("compression"), ctx.sections.get("quantization"),
                                      ctx.options.quantize.max_accuracy_drop)
    source = ctx.source
    report = Report(
        source=str(source) if isinstance(source, (str, os.PathLike)) else type(source).__name__,
        level=ctx.level, passes=ctx.passes, iterations=ctx.iterations,
        before=ctx.before, after=ctx.after, file_bytes_before=ctx.file_bytes_before,
        file_bytes_after=ctx.file_bytes_after, verification=ctx.verification,
        seconds=time.perf_counter() - ctx.start, warnings=ctx.warnings,
        sections={k: ctx.sections[k] for k in sorted(ctx.sections, key=_SECTION_ORDER.index)},
    )
    staged = ctx.staged
    if "compression" in ctx.sections or "quantization" in ctx.sections:
        staged.discard()  # the lossy stages changed the model after it was staged
        staged = None
    return OptimizeResult(working, report, ctx.protect, sparse_format=ctx.sparse_format, staged=staged)


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


def inspect(model) -> dict:
    """The analysis summary of a model (path, proto or IR)."""
    return analyze(io.load(model))
