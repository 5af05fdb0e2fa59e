"""The compression stage of `graphopt.optimize`: prune, then factorize, after the lossless
pipeline and before quantization, held to the same accuracy budget (`graphopt.core.accuracy`).

1. Prepare as the quantization stage does (`graphopt.stages.quantize.prepare`: unique node
   names, shapes, BatchNormalization folded).
2. Steps, in this order, each a set of layer decisions the budget may revert:
   structured channel pruning (`--sparsity S --structured`: one decision per channel
   group), or unstructured magnitude pruning (`--sparsity S`: one per layer); N:M pattern
   pruning (`--sparsity-pattern 2:4`: one per qualifying layer); low-rank factorization
   (`--low-rank R`: one per layer where it pays; layers pruned unstructured are left
   alone, their zeros would be lost).
3. Budget: with `--max-accuracy-drop B` and evaluation data, every step is scored against
   the uncompressed model (drops add up across steps) with `fit_budget`. Each step may
   use an equal share of what is left of B, counting quantization as a later step when
   it follows: with pruning, factorization and int8, pruning may use B/3, factorization
   half of what remains, int8 the rest. A step that cannot meet its share raises
   `BudgetError` with the best it found.
4. Report: per step what was applied and reverted (with each decision's sensitivity), MACs,
   parameters, file size dense and with sparse storage, accuracy, and latency and memory
   against the uncompressed model in ONNX Runtime. Unstructured and N:M sparsity shrink
   the file (through `graphopt.core.sparse`), not CPU latency: the report says so.
"""

from __future__ import annotations

__all__ = ["CompressOptions", "CompressResult", "run", "run_compress", "bn_scales", "saved_bytes"]

import dataclasses
import logging
import pathlib
import tempfile
from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from graphopt.core import io
from graphopt.core.accuracy import Evaluator, fit_budget
from graphopt.core.analysis import analyze
from graphopt.core.calibrate import load_data
from graphopt.core.errors import UsageError
from graphopt.core.patterns import constant_array, single_consumer
from graphopt.core.sparse import FORMATS
from graphopt.passes import resolve
from graphopt.passes.prune.low_rank import FactorizeLowRankPass, parse_rank_spec, plan_low_rank
from graphopt.passes.prune.prune_channels import CRITERIA, PruneChannelsPass, keep_count
from graphopt.passes.prune.prune_groups import analyze_channels
from graphopt.passes.prune.prune_magnitude import SCOPES, PruneMagnitudePass, plan_magnitude, prunable_layers
from graphopt.passes.prune.prune_nm import PruneNMPass, nm_layers, parse_pattern

logger = logging.getLogger(__name__)

NO_SPEED = ("ONNX Runtime has no sparse CPU kernels: unstructured and N:M zeros shrink the file (sparse "
            "storage), not latency or memory; ORT expands sparse initializers to dense tensors when it loads the "
            "model (its load-time peak is higher than for the dense file)")


@dataclasses.dataclass
class CompressOptions:
    sparsity: float | None = None
    structured: bool = False
    sparsity_pattern: str | None = None
    low_rank: object = None  # 0.95, "energy:0.95" or "rank:0.25"
    sparsity_scope: str = "layer"
    prune_criterion: str = "l1"
    channel_multiple: int = 8
    low_rank_min_saving: float = 0.2
    sparse_format: str = "ort"
    eval: object = None
    calibration: object = None  # evaluation data when `eval` is not given
    max_accuracy_drop: float | None = None
    later_steps: int = 0  # lossy steps after this stage (quantization) that share the budget
    eval_output: str | None = None
    preprocess: str | None = None
    shapes: dict | None = None
    inputs: object = None  # graphopt.core.inputs.InputModel: the sizes random data and measurements use
    bn_source: object = None  # the original model, for the "bn" criterion
    measure: bool = True
    provider: str = "cpu"
    threads: int | None = None
    bench_runs: int = 20


@dataclasses.dataclass
class CompressResult:
    model: ir.Model
    section: dict
    warnings: list[str]
    sparse_format: str | None  # set when weights were zeroed: save with sparse storage
    drop: float | None  # points lost against the uncompressed model, when measured
    evaluator: Evaluator | None = None

    def score_final(self, final: ir.Model) -> None:
        """After quantization: the whole chain's accuracy against the uncompressed model."""
        if self.evaluator is None:
            return
        score = self.evaluator(final)
        self.section["accuracy_after_all_stages"] = round(score.value, 4)
        self.section["accuracy_drop_all_stages"] = round(self.evaluator.baseline.value - score.value, 4)

    def file_bytes(self, final: ir.Model) -> int | None:
        """The saved size of a later stage's model, with this stage's sparse storage (None: dense)."""
        return saved_bytes(final, self.sparse_format) if self.sparse_format else None


def _check(o: CompressOptions) -> None:
    if o.sparsity is not None and not 0 <= o.sparsity < 1:
        raise UsageError(f"--sparsity {o.sparsity}: give a fraction in [0, 1), e.g. 0.5")
    if o.structured and o.sparsity is None:
        raise UsageError("--structured needs --sparsity S (the share of channels to remove)")
    if o.sparsity is not None and not o.structured and o.sparsity_pattern:
        raise UsageError("--sparsity without --structured and --sparsity-pattern both prune single weights: "
                         "choose one (or add --structured to remove channels first)")
    for flag, value, allowed in (("--sparsity-scope", o.sparsity_scope, SCOPES),
                                 ("--prune-criterion", o.prune_criterion, CRITERIA),
                                 ("--sparse-format", o.sparse_format, FORMATS)):
        if value not in allowed:
            raise UsageError(f"{flag} {value!r}: choose one of {', '.join(allowed)}")
    if o.channel_multiple < 1:
        raise UsageError(f"--channel-multiple {o.channel_multiple}: give 1 or more")
    if o.max_accuracy_drop is not None and not o.max_accuracy_drop >= 0:
        raise UsageError(f"--max-accuracy-drop {o.max_accuracy_drop}: give points >= 0")


# ---------------------------------------------------------------- steps

class _Step:
    """A set of layer decisions on `model`: `candidates`, `build(applied)`, `describe(applied)`."""

    what = "layers"
    name = ""

    def __init__(self, model: ir.Model):
        self.model = model
        self.candidates: list[str] = []
        self.last = None

    def build(self, applied: frozenset[str]) -> ir.Model:
        built = self.model.clone()
        self.last = self.make(applied)(built)
        return built


class _Channels(_Step):
    what, name = "channel groups", "structured"

    def __init__(self, model, o: CompressOptions, scales):
        super().__init__(model)
        self.o, self.scales = o, scales
        self.dep = analyze_channels(model)
        self.candidates = [n for n, g in self.dep.groups.items()
                           if not g.blocked and keep_count(g.size, o.sparsity, o.channel_multiple) < g.size]

    def make(self, applied):
        return PruneChannelsPass(self.o.sparsity, applied, self.o.prune_criterion, self.o.channel_multiple, self.scales)

    def describe(self, applied) -> dict:
        groups = self.dep.groups
        return {"method": f"remove {self.o.sparsity:.0%} of the channels of each group by {self.o.prune_criterion} "
                          f"importance, kept counts rounded to multiples of {self.o.channel_multiple}",
                "groups_pruned": f"{len(applied)} of {len(groups)}",
                "channels": {n: f"{groups[n].size} -> {keep_count(groups[n].size, self.o.sparsity, self.o.channel_multiple)}"
                             for n in self.candidates if n in applied},
                "groups_blocked": {n: g.blocked for n, g in groups.items() if g.blocked}}


class _Magnitude(_Step):
    name = "unstructured"

    def __init__(self, model, o: CompressOptions):
        super().__init__(model)
        self.o = o
        self.weights = prunable_layers(model)
        self.plan = plan_magnitude(self.weights, o.sparsity, o.sparsity_scope)
        self.candidates = [n for n, s in self.plan.items() if s > 0]

    def make(self, applied):
        return PruneMagnitudePass({n: self.plan[n] for n in applied})

    def describe(self, applied) -> dict:
        layers = self.last.layers if self.last else {}
        total = sum(w.size for w in self.weights.values()) or 1
        zeros = sum(v["params"] * v["sparsity"] for n, v in layers.items() if n in applied)
        return {"method": f"magnitude, {self.o.sparsity_scope} scope, target {self.o.sparsity:.0%}",
                "layers_pruned": f"{len(applied)} of {len(self.weights)}",
                "weight_sparsity": round(zeros / total, 4),
                "layer_sparsity": {n: v["sparsity"] for n, v in layers.items() if n in applied}}


class _NM(_Step):
    name = "n:m"

    def __init__(self, model, o: CompressOptions):
        super().__init__(model)
        self.n, self.m = parse_pattern(o.sparsity_pattern)
        self.candidates, self.declined = nm_layers(model, self.n, self.m)

    def make(self, applied):
        return PruneNMPass(self.n, self.m, applied)

    def describe(self, applied) -> dict:
        return {"pattern": f"{self.n}:{self.m}", "layers_pruned": f"{len(applied)} of "
                f"{len(self.candidates) + len(self.declined)}", "layers_not_qualifying": self.declined,
                "runtime": "for TensorRT with sparsity enabled on sparse tensor cores (Ampere and later), which "
                           "picks the sparse kernel per layer at build time; no speed-up on CPU"}


class _LowRank(_Step):
    name = "low_rank"

    def __init__(self, model, o: CompressOptions, exclude: set[str]):
        super().__init__(model)
        self.o, self.spec = o, parse_rank_spec(o.low_rank)
        plans, self.declined, self.figures = plan_low_rank(model, self.spec, o.low_rank_min_saving)
        for name in sorted(exclude & set(plans)):
            self.declined[name] = "pruned unstructured: factors would lose its zeros"
        self.candidates = [n for n in plans if n not in exclude]

    def make(self, applied):
        return FactorizeLowRankPass(self.spec, applied, self.o.low_rank_min_saving)

    def describe(self, applied) -> dict:
        return {"method": f"SVD, {self.spec.describe()}, only where MACs fall by >= {self.o.low_rank_min_saving:.0%}",
                "layers_factored": f"{len(applied)} of {len(self.figures)}",
                "layers": {n: self.figures[n] for n in self.candidates if n in applied},
                "declined": self.declined}


# The compress passes this stage drives, by registry name (graphopt.passes.REGISTRY).
_STEPS = {"prune_channels": _Channels, "prune_magnitude": _Magnitude, "prune_nm": _NM, "low_rank": _LowRank}


def bn_scales(source) -> dict[str, np.ndarray]:
    """Conv node name -> gamma of the BatchNormalization right after it, in the original model."""
    model = io.load(source)
    scales = {}
    for node in model.graph:
        if node.op_type != "Conv":
            continue
        bn = single_consumer(node.outputs[0])
        if bn is not None and bn.op_type == "BatchNormalization" and len(bn.inputs) > 1:
            gamma = constant_array(bn.inputs[1])
            if gamma is not None:
                scales[node.name] = gamma
    return scales


# ---------------------------------------------------------------- the stage

def run(model: ir.Model, ctx) -> ir.Model:
    """The compress stage of optimize() (run when `--sparsity`, `--sparsity-pattern` or `--low-rank`
    ask for it), on the lossless result; `ctx` is a graphopt.stages.context.Context."""
    c, q, target = ctx.options.compress, ctx.options.quantize, ctx.options.target
    if ctx.lossless_failed:
        ctx.warnings.append("compression skipped: the lossless result failed verification")
        return model
    compressed = run_compress(model, CompressOptions(
        sparsity=c.sparsity, structured=c.structured, sparsity_pattern=c.sparsity_pattern, low_rank=c.low_rank,
        sparsity_scope=c.sparsity_scope, prune_criterion=c.prune_criterion, channel_multiple=c.channel_multiple,
        sparse_format=c.sparse_format, eval=q.eval, calibration=q.calibration, max_accuracy_drop=q.max_accuracy_drop,
        later_steps=int(bool(q.quantize)), eval_output=q.eval_output, preprocess=q.preprocess,
        shapes=ctx.options.pipeline.shapes, inputs=ctx.plan, bn_source=ctx.source, measure=q.quantize_measure,
        provider=target.provider, threads=target.threads), progress=ctx.progress)
    ctx.after, ctx.file_bytes_after = analyze(compressed.model), compressed.section["file_bytes"]
    ctx.warnings.extend(compressed.warnings)
    if ctx.budget is not None and compressed.drop is not None:  # quantization gets what is left
        ctx.budget = max(0.0, ctx.budget - compressed.drop)
    ctx.compressed, ctx.sparse_format = compressed, compressed.sparse_format
    ctx.sections["compression"] = compressed.section
    return compressed.model


def run_compress(model: ir.Model, options: CompressOptions,
                 progress: Callable[[str], None] | None = None) -> CompressResult:
    """Prune and factorize `model` (not modified; a new model is returned)."""
    from graphopt.stages.quantize import prepare  # one preparation for every lossy stage

    _check(options)
    note = progress or (lambda message: None)
    warnings: list[str] = []
    model = model.clone()
    prepare(model, warnings)
    reference = model  # steps build clones: this stays the uncompressed model
    evaluator = _evaluator(model, options, warnings)
    before = analyze(model)
    scales = bn_scales(options.bn_source) if options.prune_criterion == "bn" and options.bn_source else None
    if options.prune_criterion == "bn" and not scales:
        warnings.append("--prune-criterion bn: no Conv followed by BatchNormalization in the original model; "
                        "L1 norms used")
    section: dict = {"steps": []}
    used, pruned_unstructured, zeroed = 0.0, set(), False
    plan = _steps(options)
    for i, kind in enumerate(plan):
        step = _make_step(kind, model, options, scales, pruned_unstructured)
        note(f"compress: {step.name} ({len(step.candidates)} {step.what})")
        if not step.candidates:
            section[step.name] = {**step.describe(frozenset()), "applied": 0}
            continue
        share = None
        if options.max_accuracy_drop is not None and evaluator is not None:
            share = used + (options.max_accuracy_drop - used) / (len(plan) - i + options.later_steps)
        if evaluator is None:
            applied = frozenset(step.candidates)
            model = step.build(applied)
            detail = {}
        else:
            result = fit_budget(step.candidates, step.build, evaluator, evaluator.baseline, share,
                                what=f"{step.name} {step.what}", progress=note)
            applied, model = result.applied, result.model
            step.build(applied)  # refresh step.last for the report (the budget's last build may differ)
            used = max(0.0, result.drop)
            detail = _budget_detail(result, share)
        section["steps"].append(step.name)
        section[step.name] = {**step.describe(applied), **detail}
        if kind == "prune_magnitude":
            pruned_unstructured = set(applied)
        zeroed |= kind in ("prune_magnitude", "prune_nm") and bool(applied)
    after = analyze(model)
    section.update(_figures(before, after))
    fmt = options.sparse_format if zeroed else None
    section.update(_sizes(model, fmt))
    if evaluator is not None:
        score = evaluator(model)
        section.update({"evaluation": f"{evaluator.data.source}: {len(evaluator.data)} samples",
                        "metric": score.metric, "accuracy_before": round(evaluator.baseline.value, 4),
                        "accuracy_after": round(score.value, 4),
                        "accuracy_drop": round(evaluator.baseline.value - score.value, 4),
                        "max_accuracy_drop": options.max_accuracy_drop})
        used = evaluator.baseline.value - score.value
    if zeroed:
        warnings.append(NO_SPEED)
    if options.measure and section["steps"]:
        note("compress: measure")
        section.update(_measure(reference, model, evaluator, options, warnings))
    return CompressResult(model, section, warnings, fmt, used if evaluator is not None else None, evaluator)


def _steps(o: CompressOptions) -> list[str]:
    """The passes to run, by registry name, in order."""
    steps = []
    if o.sparsity is not None and o.structured:
        steps.append("prune_channels")
    elif o.sparsity is not None:
        steps.append("prune_magnitude")
    if o.sparsity_pattern:
        steps.append("prune_nm")
    if o.low_rank is not None:
        steps.append("low_rank")
    return steps


def _make_step(name: str, model, o: CompressOptions, scales, pruned: set[str]) -> _Step:
    step = _STEPS[resolve(name, "compress").name]
    return step(model, o, pruned) if step is _LowRank else step(model, o, scales) if step is _Channels \
        else step(model, o)


def _evaluator(model: ir.Model, o: CompressOptions, warnings: list[str]) -> Evaluator | None:
    source = o.eval if o.eval is not None else o.calibration
    if source is None:
        if o.max_accuracy_drop is not None:
            raise UsageError("--max-accuracy-drop needs data to measure accuracy on: give --eval DATA.npz")
        warnings.append("compression: accuracy not measured (give --eval DATA.npz to see what pruning or "
                        "factorization costs, and --max-accuracy-drop to bound it)")
        return None
    data = load_data(source, model, purpose="evaluation", preprocess=o.preprocess, shapes=o.shapes, seed=1,
                     inputs=o.inputs)
    warnings += [n for n in data.notes if n not in warnings]
    if o.eval is None:
        warnings.append("compression: accuracy measured on the calibration data (no --eval given): optimistic")
    return Evaluator(data, model, output=o.eval_output)


def _measure(reference: ir.Model, final: ir.Model, evaluator: Evaluator | None, o: CompressOptions,
             warnings: list[str]) -> dict:
    """Latency and memory, uncompressed vs compressed, interleaved in one process (`graphopt.core.bench`)."""
    from graphopt.core.bench import bench

    feeds = (evaluator.data.first() if evaluator is not None
             else o.inputs.feeds() if o.inputs is not None else None)
    try:
        measured = bench([reference, final], provider=o.provider, threads=o.threads, inputs=feeds, shapes=o.shapes,
                         runs=o.bench_runs, warmup=3, init_repeats=1, names=["uncompressed", "compressed"])
    except Exception as e:  # noqa: BLE001 - a report figure: its failure is a warning, not an error
        warnings.append(f"compression: latency/memory not measured ({e})")
        return {}
    base, comp = measured.models
    peak = comp.ratios.get("peak_memory")
    return {"latency_ratio": round(comp.ratios["latency_p50"], 4),
            "latency_paired_ci95": [round(x, 4) for x in comp.ratios["paired_ci95"]],
            "latency_p50_ms": {"uncompressed": round(base.latency_ms["p50"], 4),
                               "compressed": round(comp.latency_ms["p50"], 4)},
            "latency_inputs": measured.inputs,
            "memory_ratio": None if peak is None else round(peak, 4)}


def _budget_detail(result, share: float | None) -> dict:
    detail = {"budget_share": None if share is None else round(share, 4),
              "drop_after_step": round(result.drop, 4), "budget_evaluations": result.evaluations}
    if result.kept:
        detail["reverted"] = {n: {"drop_if_applied_alone": round(result.sensitivity.get(n, 0.0), 4),
                                  **({"points_recovered": round(result.recovered[n], 4)}
                                     if n in result.recovered else {})} for n in result.kept}
    return detail


def _figures(before: dict, after: dict) -> dict:
    def ratio(a, b):
        return round(b / a, 4) if a else None

    return {"macs": {"before": before["macs"], "after": after["macs"]},
            "macs_ratio": ratio(before["macs"], after["macs"]),
            "parameters": {"before": before["parameters"], "after": after["parameters"]},
            "parameters_ratio": ratio(before["parameters"], after["parameters"])}


def saved_bytes(model: ir.Model, sparse_format: str | None) -> int:
    """Bytes on disk of `model` saved as graphopt saves it (with sparse storage when given)."""
    with tempfile.TemporaryDirectory(prefix="graphopt-compress-") as tmp:
        written = io.save(model, pathlib.Path(tmp) / "model.onnx", sparse_format=sparse_format)
        return sum(p.stat().st_size for p in written)


def _sizes(model: ir.Model, fmt: str | None) -> dict:
    dense = saved_bytes(model, None)
    if fmt is None:
        return {"file_bytes": dense}
    sparse = saved_bytes(model, fmt)
    return {"file_bytes": sparse, "file_bytes_dense": dense,
            "sparse_storage": f"sparse_initializer, {fmt} indices" + (
                " (ONNX Runtime only: onnx.checker wants int64 indices; --sparse-format onnx for those)"
                if fmt == "ort" else " (int64, as the ONNX spec says)")}
