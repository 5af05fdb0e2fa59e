"""Side-by-side comparison of exports of one network (different frameworks or exporters).

For each model: producer, IR version and opsets, node count and op histogram, parameters,
FLOPs, file size, and the patterns the exporter left behind (`leftovers`). Outputs are
compared with the first model's on the same inputs where the input signatures match (an NHWC
export gets the same data transposed when that is the only difference); latency comes from one
interleaved benchmark (graphopt.core.bench) of every model, exported and optimized, so all ratios
are to the first export in the same process. Then each model goes through
`graphopt.optimize` and the same figures are shown after, with how far optimization brought
the exports together (node-count spread, op-histogram distance, latency spread).

Reports: rich tables, JSON, Markdown (plots as PNG files beside it) or self-contained HTML
(plots embedded as base64 PNG). Plots need matplotlib (`pip install 'graphopt[report]'`);
without it the report is written without them and says so.
"""

from __future__ import annotations

__all__ = ["CompareResult", "ModelSummary", "compare", "leftovers"]

import collections
import dataclasses
import json
import logging
import os
import pathlib
from collections.abc import Callable, Sequence

import numpy as np
import onnx_ir as ir

from graphopt.core import io
from graphopt.core.analysis import analyze
from graphopt.core.errors import UsageError

logger = logging.getLogger(__name__)



# ----------------------------------------------------------------------------- leftover patterns


def _producer_op(value: ir.Value | None) -> str | None:
    node = value.producer() if value is not None else None
    return node.op_type if node is not None else None


def leftovers(model: ir.Model) -> dict[str, int]:
    """Counts of what an exporter leaves for an optimizer (main graph and subgraphs)."""
    graph = model.graph
    nodes = list(graph.all_nodes())
    counts: collections.Counter = collections.Counter()
    for node in nodes:
        op = node.op_type
        first = node.inputs[0] if node.inputs else None
        if op == "BatchNormalization":
            after_conv = _producer_op(first) in ("Conv", "ConvTranspose")
            counts["BatchNormalization after Conv (unfused)" if after_conv else "BatchNormalization (other)"] += 1
        elif op == "Identity":
            counts["Identity nodes"] += 1
            if _producer_op(first) == "Identity":
                counts["Identity chain links"] += 1
        elif op == "Transpose" and _producer_op(first) == "Transpose":
            counts["Transpose pairs"] += 1
            inner = first.producer()
            p1 = inner.attributes["perm"].as_ints() if "perm" in inner.attributes else None
            p2 = node.attributes["perm"].as_ints() if "perm" in node.attributes else None
            if p1 is not None and p2 is not None and [p1[i] for i in p2] == list(range(len(p1))):
                counts["Transpose pairs that cancel"] += 1
        elif op == "Concat" and any(_is_shape_chain(v) for v in node.inputs):
            counts["Shape->Gather->Unsqueeze->Concat"] += 1
        elif op == "Dropout":
            counts["Dropout"] += 1
        elif op == "Shape":
            counts["Shape ops"] += 1
    counts["initializers listed as inputs"] = sum(1 for v in graph.inputs if v.name in graph.initializers)
    order = ["BatchNormalization after Conv (unfused)", "BatchNormalization (other)", "Identity nodes",
             "Identity chain links", "Transpose pairs", "Transpose pairs that cancel",
             "Shape->Gather->Unsqueeze->Concat", "Shape ops", "Dropout", "initializers listed as inputs"]
    return {k: counts.get(k, 0) for k in order}


def _is_shape_chain(value: ir.Value | None) -> bool:
    unsqueeze = value.producer() if value is not None else None
    if unsqueeze is None or unsqueeze.op_type != "Unsqueeze":
        return False
    gather = unsqueeze.inputs[0].producer() if unsqueeze.inputs[0] is not None else None
    if gather is None or gather.op_type != "Gather":
        return False
    return _producer_op(gather.inputs[0]) == "Shape"


# ----------------------------------------------------------------------------- results


@dataclasses.dataclass
class ModelSummary:
    name: str
    producer: str
    ir_version: int
    opsets: dict[str, int]
    nodes: int
    op_histogram: dict[str, int]
    parameters: int
    flops: int  # at the inputs compared (dynamic dims resolved), else per unit of each dynamic dim
    flops_unknown_nodes: int
    file_bytes: int
    inputs: list[dict]
    outputs: list[dict]
    leftovers: dict[str, int]
    agreement: dict = dataclasses.field(default_factory=dict)  # vs the first export
    latency: dict = dataclasses.field(default_factory=dict)  # p50 ms, ratio, paired IQR, samples quartiles
    verification: str | None = None  # optimized stage: its own verify verdict


@dataclasses.dataclass
class CompareResult:
    exported: list[ModelSummary]
    optimized: list[ModelSummary] | None
    level: int | None
    bench: dict  # environment, provider, threads, runs, inputs
    convergence: dict
    warnings: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        return {"level": self.level, "bench": self.bench, "convergence": self.convergence,
                "exported": [dataclasses.asdict(m) for m in self.exported],
                "optimized": [dataclasses.asdict(m) for m in self.optimized] if self.optimized else None,
                "warnings": self.warnings}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)


# ----------------------------------------------------------------------------- inputs and agreement


def _fits(shape: list, declared: list | None) -> bool:
    if declared is None:
        return True
    return len(shape) == len(declared) and all(not isinstance(d, int) or d < 0 or d == s
                                               for s, d in zip(shape, declared))


def _map_feeds(reference: dict[str, np.ndarray], model_inputs: list) -> tuple[dict | None, str]:
    """The reference inputs for a model, matched by name (else by position, for exporters that
    name inputs differently): (feeds, note) or (None, why)."""
    if len(reference) != len(model_inputs):
        return None, f"signatures differ ({len(model_inputs)} inputs vs {len(reference)})"
    if {a.name for a in model_inputs} == set(reference):
        pairs = [(reference[a.name], a) for a in model_inputs]
        how = []
    else:
        pairs = list(zip(reference.values(), model_inputs))
        how = ["inputs matched by position"]
    feeds, notes = {}, how
    for array, arg in pairs:
        if not isinstance(array, np.ndarray):  # sequence and optional inputs are passed as they are
            feeds[arg.name] = array
            continue
        if _ORT_TYPES.get(arg.type) != array.dtype.type:
            return None, f"signatures differ ({arg.name}: {arg.type} vs {array.dtype})"
        if _fits(list(array.shape), arg.shape):
            feeds[arg.name] = array
        elif array.ndim == 4 and _fits([array.shape[i] for i in (0, 2, 3, 1)], arg.shape):
            feeds[arg.name] = np.ascontiguousarray(array.transpose(0, 2, 3, 1))
            notes.append(f"{arg.name} fed as NHWC")
        else:
            return None, f"signatures differ ({arg.name}: {arg.shape} vs {list(array.shape)})"
    return feeds, ", ".join(notes)


_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(uint16)": np.uint16, "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64, "tensor(bool)": np.bool_, "tensor(string)": np.object_,
}


def _agreement(reference: list[np.ndarray], got: list[np.ndarray], rtol: float = 1e-3, atol: float = 1e-4) -> dict:
    if len(reference) != len(got):
        return {"status": "outputs differ in number", "max_abs_diff": None}
    worst_abs, worst_rel, top1, ok = 0.0, 0.0, None, True
    for ref, out in zip(reference, got):
        ref, out = np.asarray(ref), np.asarray(out)
        if ref.shape != out.shape:
            return {"status": f"output shapes differ ({list(out.shape)} vs {list(ref.shape)})", "max_abs_diff": None}
        if not np.issubdtype(ref.dtype, np.number):
            ok &= bool(np.array_equal(ref, out))
            continue
        r, g = ref.astype(np.float64), out.astype(np.float64)
        diff = np.abs(r - g)
        scale = max(1.0, float(np.abs(r).max(initial=0.0)))
        worst_abs = max(worst_abs, float(diff.max(initial=0.0)))
        worst_rel = max(worst_rel, float(diff.max(initial=0.0)) / max(float(np.abs(r).max(initial=0.0)), 1e-12))
        ok &= bool(np.allclose(g, r, rtol=rtol, atol=atol * scale, equal_nan=True))
        if ref.ndim == 2 and ref.shape[1] > 1 and top1 is None:
            top1 = float(np.mean(ref.argmax(1) == out.argmax(1)))
    return {"status": "agree" if ok else "differ", "max_abs_diff": worst_abs, "max_rel_diff": worst_rel,
            "top1_agreement": top1}


# ----------------------------------------------------------------------------- the comparison


def _summary(name: str, model: ir.Model, file_bytes: int, feeds: dict[str, np.ndarray] | None) -> ModelSummary:
    info = analyze(model)
    flops, unknown = info["flops"], info["macs_unknown_nodes"]
    if feeds is not None and info["dynamic_dims"]:
        at = _analyze_at(model, feeds)
        flops, unknown = at["flops"], at["macs_unknown_nodes"]
    return ModelSummary(name=name, producer=info["producer"] or "-", ir_version=info["ir_version"],
                        opsets={k or "ai.onnx": v for k, v in info["opsets"].items()}, nodes=info["nodes"],
                        op_histogram=info["op_histogram"], parameters=info["parameters"], flops=flops,
                        flops_unknown_nodes=unknown, file_bytes=file_bytes, inputs=info["inputs"],
                        outputs=info["outputs"], leftovers=leftovers(model))


def _analyze_at(model: ir.Model, feeds: dict[str, np.ndarray]) -> dict:
    """analyze() with the graph inputs at the shapes of `feeds` (FLOPs of the run that is timed,
    not per unit of each dynamic dim). The model's annotations are restored afterwards."""
    saved = [(v, v.shape) for v in model.graph.inputs]
    saved += [(out, out.shape) for node in model.graph for out in node.outputs]
    try:
        for value in model.graph.inputs:
            if value.name in feeds:
                value.shape = ir.Shape(feeds[value.name].shape)
        for node in model.graph:
            for out in node.outputs:
                out.shape = None
        return analyze(model)
    finally:
        for value, shape in saved:
            value.shape = shape


def _hist_distance(a: dict[str, int], b: dict[str, int]) -> int:
    return sum(abs(a.get(op, 0) - b.get(op, 0)) for op in set(a) | set(b))


def _spread(values: list[float]) -> float | None:
    values = [v for v in values if v]
    return max(values) / min(values) if values else None


def compare(
    models: Sequence[str | os.PathLike],
    *,
    level: int | None = 2,
    optimize: bool = True,
    provider: str = "cpu",
    threads: int | None = None,
    runs: int = 30,
    warmup: int = 3,
    shapes: dict[str, list[int]] | None = None,
    inputs: str | os.PathLike | dict[str, np.ndarray] | None = None,
    memory: bool = False,
    measure: bool = True,
    progress: Callable[[str, int, int], None] | None = None,
) -> CompareResult:
    """Compare exports (paths) of one network; `optimize` adds the same after graphopt.optimize."""
    from graphopt.app.api import optimize as run_optimize
    from graphopt.core.bench import bench, display_names, resolve_provider, sample_data_for
    from graphopt.core.verify import ort_session, load_npz, run_model, runnable_inputs

    if len(models) < 2:
        raise UsageError("compare needs two or more models")
    resolve_provider(provider)
    report = progress or (lambda stage, done, total: None)
    names = display_names([str(m) for m in models])
    warnings: list[str] = []
    loaded = [io.load(m) for m in models]
    sizes = [_file_bytes(m, ir_model) for m, ir_model in zip(models, loaded)]

    # Reference inputs: the user's, else the sample beside the first export, else random.
    data = load_npz(inputs) if isinstance(inputs, (str, os.PathLike)) else inputs
    if data is None and not shapes and sample_data_for(models[0]) is not None:
        data = load_npz(sample_data_for(models[0]))
        warnings.append(f"inputs: {sample_data_for(models[0])} (sample data beside the first model)")
    sessions = [ort_session(str(m)) for m in models]
    if data is not None:  # a sample file may hold expected outputs too
        first = {a.name for a in sessions[0].get_inputs()}
        data = {k: v for k, v in data.items() if k in first}
    plan, reference = runnable_inputs(models[0], shapes, data)
    generated = [s.name for s in plan.signatures if s.name not in plan.data]
    if generated:
        warnings.append("inputs: " + plan.explain(generated))
    feeds, notes = [], []
    for session in sessions:
        mapped, note = _map_feeds(reference, session.get_inputs())
        feeds.append(mapped)
        notes.append(note)
    del sessions
    exported = [_summary(n, m, s, f) for n, m, s, f in zip(names, loaded, sizes, feeds)]

    def outputs_of(model, model_feeds) -> list[np.ndarray]:
        _, out = run_model(model, model_feeds)
        return list(out.values())

    ref_out = outputs_of(models[0], feeds[0])
    for i, (summary, model_feeds, note) in enumerate(zip(exported, feeds, notes)):
        report("outputs", i + 1, len(models))
        if model_feeds is None:
            summary.agreement = {"status": note}
            continue
        summary.agreement = {**_agreement(ref_out, outputs_of(models[i], model_feeds)), "note": note}

    optimized: list[ModelSummary] | None = None
    opt_models: list[ir.Model] = []
    if optimize:
        optimized = []
        for i, (name, path) in enumerate(zip(names, models)):
            report("optimize", i + 1, len(models))
            result = run_optimize(path, level=level, shapes=shapes, inputs=feeds[i], provider=provider,
                                  threads=threads, measure=measure)
            opt_models.append(result.model)
            summary = _summary(name, result.model, result.report.file_bytes_after or 0, feeds[i])
            v = result.report.verification
            summary.verification = v.status if v is not None else "off"
            if feeds[i] is not None:
                summary.agreement = {**_agreement(ref_out, outputs_of(result.model, feeds[i])), "note": notes[i]}
            else:
                summary.agreement = {"status": notes[i]}
            optimized.append(summary)

    # One interleaved benchmark of everything, ratios to the first export.
    timed = [m for m, f in zip(models, feeds) if f is not None]
    timed_feeds = [f for f in feeds if f is not None]
    timed_names = [n for n, f in zip(names, feeds) if f is not None]
    if optimize:
        timed += [m for m, f in zip(opt_models, feeds) if f is not None]
        timed_feeds += timed_feeds[:]
        timed_names += [f"{n} (opt)" for n in timed_names]
    untimed = [n for n, f in zip(names, feeds) if f is None]
    if untimed:
        warnings.append(f"not timed (signatures differ from {names[0]}): {', '.join(untimed)}")
    result = bench(timed, provider=provider, threads=threads, inputs=timed_feeds, runs=runs, warmup=warmup,
                   init_repeats=1, memory=memory, names=timed_names, progress=progress)
    by_name = {m.name: m for m in result.models}
    for stage, suffix in ((exported, ""), (optimized or [], " (opt)")):
        for summary in stage:
            m = by_name.get(summary.name + suffix)
            if m is None:
                continue
            q1, q3 = np.percentile(m.samples_ms, [25, 75])
            summary.latency = {"p50_ms": m.latency_ms["p50"], "ratio": m.ratios["latency_p50"],
                               "paired_median": m.ratios["paired_median"], "paired_ci95": m.ratios["paired_ci95"],
                               "q1_ms": float(q1), "q3_ms": float(q3),
                               "session_create_ms": m.session_create_ms,
                               "peak_rss_bytes": m.memory.get("peak_bytes")}
    warnings += [w for w in result.warnings if not w.startswith("inputs:")]
    bench_info = {"environment": result.environment, "providers": result.providers,
                  "threads": threads or "ORT default", "runs": runs, "inputs": result.inputs}
    return CompareResult(exported, optimized, level if optimize else None, bench_info,
                         _convergence(exported, optimized), warnings)


def _file_bytes(path, model: ir.Model) -> int:
    files = {pathlib.Path(path).resolve(), *io.external_data_paths(model)}
    return sum(f.stat().st_size for f in files)


def _convergence(exported: list[ModelSummary], optimized: list[ModelSummary] | None) -> dict:
    def stage(models: list[ModelSummary]) -> dict:
        return {
            "node_spread": _spread([m.nodes for m in models]),
            "histogram_distance": {m.name: _hist_distance(m.op_histogram, models[0].op_histogram) for m in models[1:]},
            "latency_spread": _spread([m.latency.get("p50_ms") for m in models]),
            "leftovers": sum(sum(v for k, v in m.leftovers.items() if k != "Shape ops") for m in models),
        }

    out = {"exported": stage(exported)}
    if optimized:
        out["optimized"] = stage(optimized)
    return out
