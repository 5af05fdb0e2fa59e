"""The lossless stage of `graphopt.optimize`: the pass pipeline of the chosen level, then verification.

1. The pipeline: the level's passes (or `--passes`), less `--skip`, with the passes an option
   asks for in front (`--target-opset`, then `--shape`), run to a fixed point
   (`graphopt.core.pipeline`).
2. Meanwhile the original's reference run (ORT, on the input model's inputs) goes on the other
   core: only from a path (an in-memory source may share lazily loaded tensors with the working
   model) and never for a model over `OVERLAP_MAX_BYTES` (both copies would be resident).
3. The result is staged (written once, to a private temporary folder): verification runs on
   that file, and `OptimizeResult.save()` moves it into place.
4. Verification: original against result in ORT, at ORT's two levels (`graphopt.core.verify`).
   With `--inference` (outputs change on purpose) the original is converted the same way first.
"""

from __future__ import annotations

__all__ = ["run", "OVERLAP_MAX_BYTES"]

import concurrent.futures
import logging
import os

import onnx_ir as ir

from graphopt.core import io
from graphopt.core.analysis import analyze
from graphopt.core.pipeline import PassOptions, Pipeline, select
from graphopt.core.verify import check as verify_check
from graphopt.core.verify import reference as verify_reference
from graphopt.passes import ALIASES, DEFAULT_LEVEL, OPTION_PASSES, REGISTRY, level_names
from graphopt.stages.context import Context

# Largest model whose reference run overlaps the passes (both copies are resident meanwhile).
OVERLAP_MAX_BYTES = 512 << 20


def pass_options(o) -> PassOptions:
    """What the passes read, from the pipeline and target settings."""
    pipeline, target = o.pipeline, o.target
    return PassOptions(outputs=list(pipeline.outputs) if pipeline.outputs else None,
                       fold_limit_bytes=int(pipeline.fold_limit_mb * (1 << 20)),
                       shapes=dict(pipeline.shapes or {}), keep_initializer_inputs=pipeline.keep_initializer_inputs,
                       inference=pipeline.inference, target_opset=pipeline.target_opset,
                       provider=target.provider, threads=target.threads, measure=target.measure)


def pipeline_names(level: int | None, passes=None, skip=(), options: PassOptions | None = None) -> list[str]:
    """The passes optimize() runs, in order: the level's (or `passes`) less `skip`, after the
    passes that `--target-opset` and `--shape` ask for."""
    level = DEFAULT_LEVEL if level is None and not passes else level
    specs = select(REGISTRY, level_names(level) if level is not None else [], passes, skip, ALIASES)
    chosen = {s.name for s in specs}
    skipped = {ALIASES.get(n, n) for n in skip}
    front = [n for n, wanted in OPTION_PASSES.items()
             if options is not None and wanted(options) and n not in skipped and n not in chosen]
    return front + [s.name for s in specs]


def run(model: ir.Model, ctx: Context) -> ir.Model:
    """Run the pipeline on `model` (in place) and verify it; fills the context's lossless fields."""
    p, o = ctx.options.pipeline, ctx.options
    ctx.level = DEFAULT_LEVEL if p.level is None and not p.passes else p.level
    options = pass_options(o)
    options.inputs = ctx.plan
    specs = [REGISTRY[n] for n in pipeline_names(p.level, p.passes, p.skip, options)]
    reference = _start_reference(model, ctx)
    ctx.before = analyze(model)
    try:
        result = Pipeline(specs, options).run(model, progress=ctx.progress)
    except BaseException:
        if reference is not None:
            reference.cancel() or reference.exception()  # let the thread finish before the error leaves
        raise
    ctx.passes, ctx.iterations = result.stats, result.iterations
    ctx.staged = io.stage_scratch(model)
    ctx.file_bytes_after = sum(t.stat().st_size for t in ctx.staged.path.parent.iterdir())
    if o.verify.verify:
        ctx.note("verify")
    _verify(model, ctx, reference)
    _report(ctx, result.stats)
    return model


def _report(ctx: Context, stats) -> None:
    """Warnings (not verified, training leftovers) and fuse_parallel's section."""
    if ctx.verification is not None and ctx.verification.status == "skipped":
        ctx.warnings.append(f"not verified: {ctx.verification.reason}")
    ctx.warnings += _training_warnings(stats, ctx.options.pipeline.inference)
    fused = next((s.details for s in stats if s.name == "fuse_parallel" and s.details), None)
    if fused:  # every horizontal-fusion candidate, its gain and verdict
        keys = ("decision", "gain", "ms_separate", "ms_fused", "method", "detail", "whole_model")
        ctx.sections["fuse_parallel"] = {c["candidate"]: {k: c[k] for k in keys if c.get(k) is not None}
                                         for c in fused}


def _start_reference(model: ir.Model, ctx: Context):
    """The original's reference run, on the other core while the passes run (step 2), or None."""
    source, o = ctx.source, ctx.options
    if not (o.verify.verify and not o.pipeline.inference and isinstance(source, (str, os.PathLike))
            and io.model_size_bytes(model) <= OVERLAP_MAX_BYTES):
        return None
    background = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="graphopt-reference")
    outputs = list(o.pipeline.outputs) if o.pipeline.outputs else None
    future = background.submit(verify_reference, source, outputs=outputs, plan=ctx.plan)
    background.shutdown(wait=False)
    return future


def _verify(model: ir.Model, ctx: Context, reference) -> None:
    o = ctx.options
    rtol, atol = o.verify.rtol, o.verify.atol
    if reference is not None:  # the check runs in ORT while the result is analyzed here
        checking = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="graphopt-check")
        check_run = checking.submit(lambda: verify_check(reference.result(), ctx.staged.path, rtol=rtol, atol=atol))
        checking.shutdown(wait=False)
        try:
            ctx.after = analyze(model)
        finally:
            ctx.verification = check_run.result()
        ctx.plan = reference.result().inputs or ctx.plan
        return
    ctx.after = analyze(model)
    if not o.verify.verify:
        return
    ref = verify_reference(_baseline(ctx), outputs=list(o.pipeline.outputs) if o.pipeline.outputs else None,
                           plan=ctx.plan)
    ctx.verification = verify_check(ref, ctx.staged.path, rtol=rtol, atol=atol)
    ctx.plan = ref.inputs or ctx.plan


def _baseline(ctx: Context):
    """What the result is verified against: the original, converted to inference form with --inference."""
    if not ctx.options.pipeline.inference:
        return ctx.source
    baseline = io.load(ctx.source)
    quiet = logging.getLogger("graphopt.passes.cleanup.training_leftovers")  # the pipeline has already warned
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        REGISTRY["training_leftovers"].factory(PassOptions(inference=True))(baseline)
    finally:
        quiet.setLevel(level)
    return baseline


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
