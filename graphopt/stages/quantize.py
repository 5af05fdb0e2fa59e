"""The lossy stage of `graphopt.optimize`: INT8 (static QDQ or dynamic) or FP16 after the
lossless pipeline, scored on data, held to an accuracy budget, measured in ONNX Runtime.

1. Prepare: for int8, opset raised to 13 when lower (per-channel Q/DQ needs it; if the
   converter cannot, opset 10-12 falls back to per-tensor weights); unique node names,
   shape annotations, BatchNormalization folded (the lossless level 2 already does it; a
   level 0/1 run gets it here, since int8 around an unfolded BN is slow and loses accuracy).
2. Load calibration data (static int8 only) and evaluation data (`--eval`; without it the
   calibration data is used and the report says so).
3. Static INT8, unless `place_for_speed` is off (`--no-measure`): layers whose int8 kernel
   ORT runs slower than the float one on this machine stay float when the whole model is
   measurably faster that way (quantize_speed.py).
4. Build with every layer decision applied; score against the float model; if the drop
   exceeds `--max-accuracy-drop`, `graphopt.core.accuracy.fit_budget` keeps the most sensitive
   layers in float until it holds, or raises `BudgetError` with the best it found.
5. Report: accuracy before/after, layers kept float and what each costs, file size,
   latency and memory side by side with the float model (`graphopt.core.bench`), and the
   kernels ORT actually runs (so a QDQ pair ORT could not fuse shows up as a float op).
"""

from __future__ import annotations

__all__ = ["LossyOptions", "LossyResult", "MODES", "run", "run_lossy"]

import collections
import dataclasses
import logging
import math
import pathlib
import tempfile
from collections.abc import Callable, Sequence

import onnx_ir as ir
from onnx_ir.passes.common import NameFixPass, ShapeInferencePass

from graphopt.core import io
from graphopt.core.accuracy import Evaluator, fit_budget
from graphopt.core.analysis import analyze
from graphopt.core.calibrate import Dataset, load_data
from graphopt.core.ranges import RANGE_METHODS
from graphopt.core.errors import UsageError
from graphopt.core.patterns import opset_version
from graphopt.passes import resolve

logger = logging.getLogger(__name__)

MODES = ("int8", "int8-dynamic", "fp16")


@dataclasses.dataclass
class LossyOptions:
    mode: str
    calibration: object = None  # path, dict, Dataset or "random[:N]"
    eval: object = None
    max_accuracy_drop: float | None = None
    calibration_method: str = "minmax"
    percentile: float = 99.999
    calibration_samples: int | None = None
    preprocess: str | None = None
    keep_io_types: bool = True
    int8_scheme: str = "auto"
    bias_correction: bool = True  # int8: fold the mean error of rounded weights into the bias
    keep_float: Sequence[str] = ()
    eval_output: str | None = None
    shapes: dict | None = None
    inputs: object = None  # graphopt.core.inputs.InputModel: the sizes random data and measurements use
    measure: bool = True  # latency and memory against the float model
    place_for_speed: bool = True  # int8: layers ORT runs slower in int8 stay float (measured)
    provider: str = "cpu"
    threads: int | None = None
    bench_runs: int = 20


@dataclasses.dataclass
class LossyResult:
    model: ir.Model
    section: dict
    warnings: list[str]


def _check_options(options: LossyOptions) -> None:
    if options.mode not in MODES:
        raise UsageError(f"--quantize {options.mode!r}: choose one of {', '.join(MODES)}")
    if options.calibration_method not in RANGE_METHODS:
        raise UsageError(f"--calibration-method {options.calibration_method!r}: choose one of "
                         f"{', '.join(RANGE_METHODS)}")
    if options.max_accuracy_drop is not None and not options.max_accuracy_drop >= 0:
        raise UsageError(f"--max-accuracy-drop {options.max_accuracy_drop}: give points >= 0 (0.5 = half a point)")
    if options.mode == "int8" and options.calibration is None:
        raise UsageError("--quantize int8 needs --calibration DATA (an .npz with one array per input, a folder of "
                         ".npy/.npz/images, or 'random' for a smoke test)")


INT8_OPSET = 13  # per-axis QuantizeLinear/DequantizeLinear; DynamicQuantizeLinear needs 11


def prepare(model: ir.Model, warnings: list[str], mode: str = "") -> None:
    """Unique node names, shapes, BatchNormalization folded, and for an int8 `mode` an opset
    high enough for it (step 1). Other lossy stages share it with `mode` left empty."""
    opset = opset_version(model)
    if mode.startswith("int8") and opset < INT8_OPSET:
        from graphopt.passes.cleanup.upgrade_opset import OpsetConversionError, UpgradeOpsetPass

        try:
            UpgradeOpsetPass(INT8_OPSET)(model)
            warnings.append(f"opset {opset} converted to {INT8_OPSET} for per-channel int8 (Q/DQ with an axis)")
        except OpsetConversionError as e:
            needed = 11 if mode == "int8-dynamic" else 10
            if opset < needed:
                raise UsageError(f"--quantize {mode} needs opset >= {needed} and this opset-{opset} model cannot be "
                                 f"converted: {e}") from e
            warnings.append(f"opset {opset} kept (conversion failed: {e}); int8 weights are per tensor")
    NameFixPass()(model)
    try:
        ShapeInferencePass(data_prop=False)(model)
    except Exception as e:  # noqa: BLE001 - shapes only sharpen the report; the passes work without
        logger.warning("shape inference failed before quantization: %s", e)
    if any(n.op_type == "BatchNormalization" for n in model.graph):
        try:
            from graphopt.passes.fusion.fold_batchnorm import FoldBatchNormPass
        except ImportError:
            warnings.append("BatchNormalization left unfolded (fold_batchnorm unavailable): its layers stay slow")
            return
        FoldBatchNormPass()(model)
        left = sum(1 for n in model.graph if n.op_type == "BatchNormalization")
        if left:
            warnings.append(f"{left} BatchNormalization node(s) could not be folded; they run in float")


def run(model: ir.Model, ctx) -> ir.Model:
    """The quantize stage of optimize() (run when `--quantize` asks for it), on the lossless (or
    compressed) result, within what is left of the accuracy budget; `ctx` is a
    graphopt.stages.context.Context."""
    q, target = ctx.options.quantize, ctx.options.target
    if ctx.lossless_failed:
        ctx.warnings.append(f"--quantize {q.quantize} skipped: the lossless result failed verification")
        return model
    ctx.note(f"quantize {q.quantize}")
    lossy = run_lossy(model, LossyOptions(
        mode=q.quantize, calibration=q.calibration, eval=q.eval, max_accuracy_drop=ctx.budget,
        calibration_method=q.calibration_method, calibration_samples=q.calibration_samples, preprocess=q.preprocess,
        keep_io_types=q.keep_io_types, int8_scheme=q.int8_scheme, keep_float=tuple(q.keep_float),
        eval_output=q.eval_output, shapes=ctx.options.pipeline.shapes, inputs=ctx.plan, measure=q.quantize_measure,
        place_for_speed=target.measure, provider=target.provider, threads=target.threads), progress=ctx.progress)
    ctx.warnings.extend(lossy.warnings)
    with tempfile.TemporaryDirectory(prefix="graphopt-lossy-") as tmp:
        written = io.save(lossy.model, pathlib.Path(tmp) / "lossy.onnx")
        ctx.file_bytes_after = sum(p.stat().st_size for p in written)
    ctx.after = analyze(lossy.model)
    ctx.sections["quantization"] = lossy.section
    if ctx.compressed is not None:  # the whole chain against the uncompressed model, sparse storage kept
        ctx.compressed.score_final(lossy.model)
        ctx.file_bytes_after = ctx.compressed.file_bytes(lossy.model) or ctx.file_bytes_after
    return lossy.model


def run_lossy(model: ir.Model, options: LossyOptions, progress: Callable[[str], None] | None = None) -> LossyResult:
    """Apply the lossy mode to `model` (not modified; a new model is returned)."""
    _check_options(options)
    warnings: list[str] = []
    model = model.clone()
    prepare(model, warnings, options.mode)
    note = progress or (lambda message: None)
    calib = None
    if options.calibration is not None:
        note("calibration data")
        calib = load_data(options.calibration, model, purpose="calibration", preprocess=options.preprocess,
                          limit=options.calibration_samples, shapes=options.shapes, inputs=options.inputs)
        warnings += calib.notes
    evaluation = None
    if options.eval is not None:
        evaluation = load_data(options.eval, model, purpose="evaluation", preprocess=options.preprocess,
                               shapes=options.shapes, seed=1, inputs=options.inputs)
        warnings += [n for n in evaluation.notes if n not in warnings]
    elif calib is not None:
        evaluation = calib
        warnings.append("accuracy measured on the calibration data (no --eval given): optimistic")
    elif options.max_accuracy_drop is not None:
        raise UsageError("--max-accuracy-drop needs data to measure accuracy on: give --eval DATA.npz")

    builder = _builder(model, options, calib, warnings, note)
    speed = None
    if options.mode == "int8" and options.place_for_speed and builder.candidates:
        from graphopt.stages.placement import place_for_speed

        note("int8: placement by speed")
        speed = place_for_speed(model, builder.build, builder.candidates, calib.first(),
                                options.provider, options.threads)
        builder.keep_float_for_speed(speed.kept_float)
    note(f"{options.mode}: build")
    evaluator = Evaluator(evaluation, model, output=options.eval_output) if evaluation is not None else None
    if evaluator is None:
        applied = frozenset(builder.candidates)
        final = builder.build(applied)
        result = None
    else:
        result = fit_budget(builder.candidates, builder.build, evaluator, evaluator.baseline,
                            options.max_accuracy_drop, what=builder.what, progress=note,
                            kept_as="in float32" if options.mode == "fp16" else "in float")
        final = result.model
    final.metadata_props["graphopt.lossy"] = builder.describe()
    section = builder.section(result, evaluation)
    if speed is not None:
        section["speed_placement"] = _speed_summary(speed)
        section["speed_trials"] = speed.trials
    if result is not None:
        section.update(_accuracy_fields(result, evaluation, options))
        section["kept_float"] = _kept(result, builder)
    warnings += builder.warnings
    if options.measure:
        note("measure")
        section.update(_measure(model, final, evaluation or calib, options, warnings))
    section["notes"] = [*builder.notes, "the verification verdict covers the lossless passes; this section "
                        f"measures the {options.mode} model against their float result"]
    return LossyResult(final, section, warnings)


def _builder(model: ir.Model, options: LossyOptions, calib: Dataset | None, warnings: list[str], note):
    from graphopt.stages.quantize_builders import BUILDERS

    builder = BUILDERS[resolve(options.mode, "quantize").name]  # the registry names the pass of each mode
    return builder(model, options, calib, note) if builder.takes_data else builder(model, options)


def _speed_summary(speed) -> str:
    if not speed.kept_float:
        return speed.reason
    return f"kept float for speed: {', '.join(speed.kept_float)}: {speed.ratio:.3g}x the all-int8 latency"


def _accuracy_fields(result, evaluation: Dataset, options: LossyOptions) -> dict:
    before, after = result.baseline, result.score
    fid = [f["snr_db"] for f in after.fidelity.values() if f.get("snr_db") is not None]
    return {
        "evaluation": f"{evaluation.source}: {len(evaluation)} samples"
                      + (", labels" if evaluation.labels is not None else ", agreement with the float model"),
        "metric": before.metric,
        "accuracy_before": round(before.value, 4),
        "accuracy_after": round(after.value, 4),
        "accuracy_drop": round(before.value - after.value, 4),
        "max_accuracy_drop": options.max_accuracy_drop,
        "output_snr_db": round(min(fid), 2) if fid and math.isfinite(min(fid)) else None,
        "budget_evaluations": result.evaluations,
        **({"budget_steps": [s.to_dict() for s in result.steps]} if len(result.steps) > 1 else {}),
    }


def _kept(result, builder) -> list[dict]:
    kept = []
    for name in result.kept:
        item = {"layer": name, **builder.cost(name)}
        if name in result.sensitivity:
            item["drop_if_applied_alone"] = round(result.sensitivity[name], 4)
        if name in result.recovered:
            item["points_recovered"] = round(result.recovered[name], 4)
        kept.append(item)
    return kept


def _measure(reference: ir.Model, final: ir.Model, data: Dataset | None, options: LossyOptions,
             warnings: list[str]) -> dict:
    """File size, latency, memory and ORT's kernels, float model vs lossy model, interleaved."""
    try:
        from graphopt.core.bench import bench
    except ImportError:  # pragma: no cover - bench ships with graphopt
        return {}
    feeds = data.first() if data is not None else (options.inputs.feeds() if options.inputs is not None else None)
    try:
        measured = bench([reference, final], provider=options.provider, threads=options.threads, inputs=feeds,
                         shapes=options.shapes, runs=options.bench_runs, warmup=3, init_repeats=1,
                         names=["float", options.mode])
    except Exception as e:  # noqa: BLE001 - measuring is a report figure; its failure is a warning, not an error
        warnings.append(f"{options.mode}: latency/memory not measured ({e})")
        return {}
    base, lossy = measured.models
    kernels = collections.Counter()
    for ops in lossy.placement.values():
        kernels.update(ops)
    floats = {op: n for op, n in kernels.items() if op in ("Conv", "ConvTranspose", "Gemm", "MatMul", "FusedConv",
                                                           "FusedGemm", "FusedMatMul")}
    return {
        "compression_ratio": round(base.file_bytes / lossy.file_bytes, 4) if lossy.file_bytes else None,
        "file_bytes": {"float": base.file_bytes, options.mode: lossy.file_bytes},
        "latency_ratio": round(lossy.ratios["latency_p50"], 4),
        "latency_p50_ms": {"float": round(base.latency_ms["p50"], 4), options.mode: round(lossy.latency_ms["p50"], 4)},
        "latency_inputs": measured.inputs,
        "memory_ratio": None if lossy.ratios["peak_memory"] is None else round(lossy.ratios["peak_memory"], 4),
        "peak_memory_bytes": {"float": base.memory.get("peak_bytes"), options.mode: lossy.memory.get("peak_bytes")},
        "ort_kernels": ", ".join(f"{op} {n}" for op, n in kernels.most_common()),
        **({"ort_float_layers": sum(floats.values())} if options.mode.startswith("int8") else {}),
    }
