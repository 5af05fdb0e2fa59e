"""Side-by-side comparison of exports of one network (different frameworks or exporters).

For each model: producer, IR version and opsets, node count and op histogram, parameters,
FLOPs, file size, and the patterns the exporter left behind (`leftovers`). Outputs are
compared with the first model's on the same inputs where the input signatures match (an NHWC
export gets the same data transposed when that is the only difference); latency comes from one
interleaved benchmark (graphopt.bench) of every model, exported and optimized, so all ratios
are to the first export in the same process. Then each model goes through
`graphopt.optimize` and the same figures are shown after, with how far optimization brought
the exports together (node-count spread, op-histogram distance, latency spread).

Reports: rich tables, JSON, Markdown (plots as PNG files beside it) or self-contained HTML
(plots embedded as base64 PNG). Plots need matplotlib (`pip install 'graphopt[report]'`);
without it the report is written without them and says so.
"""

from __future__ import annotations

__all__ = ["CompareResult", "ModelSummary", "compare", "leftovers", "render", "write_report", "to_markdown",
           "to_html"]

import base64
import collections
import dataclasses
import html
import io as _io
import json
import logging
import os
import pathlib
from collections.abc import Callable, Sequence

import numpy as np
import onnx_ir as ir

from graphopt import io
from graphopt.analysis import analyze
from graphopt.errors import UsageError

logger = logging.getLogger(__name__)

PLOTS_MISSING = "plots omitted: matplotlib is not installed (pip install 'graphopt[report]')"


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
    """The reference inputs, matched by position, for a model: (feeds, note) or (None, why)."""
    if len(reference) != len(model_inputs):
        return None, f"signatures differ ({len(model_inputs)} inputs vs {len(reference)})"
    feeds, notes = {}, []
    for (ref_name, array), arg in zip(reference.items(), model_inputs):
        from graphopt.verify import _ORT_TYPES

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
    from graphopt.api import optimize as run_optimize
    from graphopt.bench import bench, display_names, resolve_provider, sample_data_for
    from graphopt.verify import _session, load_npz, make_inputs, run_model

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
    sessions = [_session(str(m)) for m in models]
    reference = make_inputs(sessions[0], shapes, data)
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


# ----------------------------------------------------------------------------- rendering


def _fmt(n) -> str:
    if n is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:g}" if isinstance(n, (int, float)) else str(n)


def _arrow(before, after, fmt=_fmt) -> str:
    if after is None:
        return fmt(before)
    return fmt(before) if before == after else f"{fmt(before)} -> {fmt(after)}"


def _unknown(m: ModelSummary, o: ModelSummary | None) -> str:
    n = max(m.flops_unknown_nodes, o.flops_unknown_nodes if o is not None else 0)
    return f" ({n} ops of unknown shape)" if n else ""


def _agree_text(a: dict) -> str:
    if not a:
        return "-"
    if a.get("max_abs_diff") is None:
        return a.get("status", "-")
    text = f"{a['status']} (max abs {a['max_abs_diff']:.2g}"
    if a.get("top1_agreement") is not None:
        text += f", top-1 {a['top1_agreement'] * 100:.0f}%"
    return text + ")" + (f" [{a['note']}]" if a.get("note") else "")


def _rows(result: CompareResult) -> dict[str, list[tuple[str, list[str]]]]:
    """Table sections as (row label, one cell per model); cells show `exported -> optimized`."""
    from graphopt.report import human_bytes

    exp, opt = result.exported, result.optimized or [None] * len(result.exported)
    get = lambda m, f: None if m is None else f(m)  # noqa: E731
    summary = [
        ("producer", [m.producer for m in exp]),
        ("IR / opset", [f"{m.ir_version} / {m.opsets.get('ai.onnx', '-')}" for m in exp]),
        ("nodes", [_arrow(m.nodes, get(o, lambda x: x.nodes)) for m, o in zip(exp, opt)]),
        ("parameters", [_arrow(m.parameters, get(o, lambda x: x.parameters)) for m, o in zip(exp, opt)]),
        ("FLOPs", [_arrow(m.flops, get(o, lambda x: x.flops)) + _unknown(m, o) for m, o in zip(exp, opt)]),
        ("file", [_arrow(m.file_bytes, get(o, lambda x: x.file_bytes), human_bytes) for m, o in zip(exp, opt)]),
        ("p50 ms", [_arrow(m.latency.get("p50_ms"), get(o, lambda x: x.latency.get("p50_ms")),
                           lambda v: "-" if v is None else f"{v:.3f}") for m, o in zip(exp, opt)]),
        ("latency ratio", [_arrow(m.latency.get("ratio"), get(o, lambda x: x.latency.get("ratio")),
                                  lambda v: "-" if v is None else f"{v:.2f}x") for m, o in zip(exp, opt)]),
    ]
    agreement = [("exported", [_agree_text(m.agreement) for m in exp])]
    if result.optimized:
        agreement.append(("optimized", [_agree_text(o.agreement) for o in opt]))
        agreement.append(("verify vs own export", [o.verification or "-" for o in opt]))
    patterns = [(k, [_arrow(m.leftovers[k], get(o, lambda x: x.leftovers[k])) for m, o in zip(exp, opt)])
                for k in exp[0].leftovers]
    totals: collections.Counter = collections.Counter()
    for m in exp:
        totals.update(m.op_histogram)
    ops = [(op, [_arrow(m.op_histogram.get(op, 0), get(o, lambda x: x.op_histogram.get(op, 0)))
                 for m, o in zip(exp, opt)]) for op, _ in totals.most_common()]
    extra = sorted({op for o in opt if o is not None for op in o.op_histogram} - set(totals))
    ops += [(op, [_arrow(0, get(o, lambda x: x.op_histogram.get(op, 0))) for o in opt]) for op in extra]
    return {"summary": summary, f"outputs vs {exp[0].name}": agreement, "patterns left by the exporter": patterns,
            "op histogram": ops}


def _convergence_lines(result: CompareResult) -> list[str]:
    c = result.convergence
    exp, opt = c["exported"], c.get("optimized")
    lines = []

    def spread(key, label):
        a = exp[key]
        b = opt[key] if opt else None
        if a is not None:
            lines.append(f"{label}: {a:.2f}x" + (f" -> {b:.2f}x" if b is not None else ""))

    spread("node_spread", "node-count spread (max/min)")
    spread("latency_spread", "latency spread (max/min p50)")
    for name, d in exp["histogram_distance"].items():
        after = opt["histogram_distance"].get(name) if opt else None
        lines.append(f"op-histogram distance {name} to {result.exported[0].name}: {d}"
                     + (f" -> {after}" if after is not None else ""))
    lines.append(f"leftover patterns (all models): {exp['leftovers']}" + (f" -> {opt['leftovers']}" if opt else ""))
    return lines


def render(result: CompareResult, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    from graphopt.machine import describe_cpu

    console = console or Console()
    console.print(describe_cpu(result.bench["environment"]))
    stage = f"exported -> after graphopt optimize (level {result.level})" if result.optimized else "exported"
    for title, rows in _rows(result).items():
        table = Table(title=f"{title} ({stage})" if title == "summary" else title, title_justify="left")
        table.add_column("")
        for m in result.exported:
            table.add_column(m.name, justify="right" if title != f"outputs vs {result.exported[0].name}" else "left")
        for label, cells in rows:
            table.add_row(label, *cells)
        console.print(table)
    console.print("convergence: " + "; ".join(_convergence_lines(result)), highlight=False)
    console.print(f"[dim]latency: {result.bench['runs']} interleaved runs per model in one process, "
                  f"{', '.join(result.bench['providers'])}, threads {result.bench['threads']}, "
                  f"ratios to {result.exported[0].name}[/dim]", highlight=False)
    for w in result.warnings:
        console.print(f"[yellow]note:[/yellow] {w}", highlight=False)


# ----------------------------------------------------------------------------- reports and plots


def plots_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def plots(result: CompareResult) -> dict[str, bytes] | None:
    """{"latency": png, "ops": png}, or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    out = {}
    names = [m.name for m in result.exported]
    stages = [("exported", result.exported)] + ([("optimized", result.optimized)] if result.optimized else [])
    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.5 * len(names) * len(stages)))
    y = np.arange(len(names))
    height = 0.8 / len(stages)
    for k, (label, models) in enumerate(stages):
        p50 = [m.latency.get("p50_ms") or 0 for m in models]
        err = [[max(0, (m.latency.get("p50_ms") or 0) - (m.latency.get("q1_ms") or 0)) for m in models],
               [max(0, (m.latency.get("q3_ms") or 0) - (m.latency.get("p50_ms") or 0)) for m in models]]
        ax.barh(y + k * height, p50, height, xerr=err, label=label, capsize=3)
    ax.set_yticks(y + height * (len(stages) - 1) / 2, names)
    ax.invert_yaxis()
    ax.set_xlabel("p50 latency, ms (bars: 25th-75th percentile)")
    ax.legend()
    fig.tight_layout()
    out["latency"] = _png(fig, plt)

    totals: collections.Counter = collections.Counter()
    for m in result.exported:
        totals.update(m.op_histogram)
    top = [op for op, _ in totals.most_common(14)]
    fig, axes = plt.subplots(1, len(stages), figsize=(5 * len(stages), 0.5 + 0.35 * len(top)), squeeze=False)
    for ax, (label, models) in zip(axes[0], stages):
        width = 0.8 / len(models)
        x = np.arange(len(top))
        for k, m in enumerate(models):
            ax.barh(x + k * width, [m.op_histogram.get(op, 0) for op in top], width, label=m.name)
        ax.set_yticks(x + width * (len(models) - 1) / 2, top)
        ax.invert_yaxis()
        ax.set_title(label)
        ax.set_xlabel("nodes")
    axes[0][0].legend(fontsize="small")
    fig.tight_layout()
    out["ops"] = _png(fig, plt)
    return out


def _png(fig, plt) -> bytes:
    buffer = _io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def to_markdown(result: CompareResult, images: dict[str, str] | None = None) -> str:
    """Markdown tables; `images` maps plot names to file names written beside the report."""
    names = [m.name for m in result.exported]
    lines = [f"# graphopt compare: {', '.join(names)}", ""]
    from graphopt.machine import describe_cpu

    lines += [describe_cpu(result.bench["environment"]), ""]
    for title, rows in _rows(result).items():
        lines += [f"## {title}", "", "| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        lines += ["| " + label + " | " + " | ".join(c.replace("|", "/") for c in cells) + " |" for label, cells in rows]
        lines.append("")
    lines += ["## convergence", ""] + [f"- {line}" for line in _convergence_lines(result)] + [""]
    if images is None:
        lines.append(f"_{PLOTS_MISSING}_")
    else:
        lines += [f"![{name}]({file})" for name, file in images.items()]
    lines += [""] + [f"- note: {w}" for w in result.warnings]
    return "\n".join(lines) + "\n"


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;
margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child,th:first-child{
text-align:left}th{background:#f3f3f3}.note{color:#8a6d00}img{max-width:100%}"""


def to_html(result: CompareResult, pngs: dict[str, bytes] | None) -> str:
    """One self-contained page: tables and plots (base64 PNG), viewable offline."""
    from graphopt.machine import describe_cpu

    names = [m.name for m in result.exported]
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>graphopt compare</title>"
             f"<style>{_CSS}</style></head><body><h1>graphopt compare</h1>",
             f"<p>{esc(describe_cpu(result.bench['environment']))}; {esc(', '.join(result.bench['providers']))}, "
             f"threads {esc(str(result.bench['threads']))}, {result.bench['runs']} interleaved runs per model</p>"]
    for title, rows in _rows(result).items():
        parts.append(f"<h2>{esc(title)}</h2><table><tr><th></th>" + "".join(f"<th>{esc(n)}</th>" for n in names)
                     + "</tr>")
        parts += ["<tr><td>" + esc(label) + "</td>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>"
                  for label, cells in rows]
        parts.append("</table>")
    parts.append("<h2>convergence</h2><ul>" + "".join(f"<li>{esc(x)}</li>" for x in _convergence_lines(result))
                 + "</ul>")
    if pngs is None:
        parts.append(f"<p class='note'>{esc(PLOTS_MISSING)}</p>")
    else:
        for name, png in pngs.items():
            parts.append(f"<h2>{esc(name)}</h2><img alt='{esc(name)}' "
                         f"src='data:image/png;base64,{base64.b64encode(png).decode()}'>")
    parts += [f"<p class='note'>note: {esc(w)}</p>" for w in result.warnings]
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(result: CompareResult, path: str | os.PathLike) -> list[pathlib.Path]:
    """Write .html (self-contained), .md (+ PNGs beside it) or .json; return the files written."""
    path = pathlib.Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".html", ".htm", ".md", ".json"):
        raise UsageError(f"--report {path}: use a .html, .md or .json file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".json":
        path.write_text(result.to_json())
        return [path]
    pngs = plots(result)
    if suffix in (".html", ".htm"):
        path.write_text(to_html(result, pngs))
        return [path]
    written = [path]
    images = None
    if pngs is not None:
        images = {}
        for name, png in pngs.items():
            image = path.with_name(f"{path.stem}_{name}.png")
            image.write_bytes(png)
            images[name] = image.name
            written.append(image)
    path.write_text(to_markdown(result, images))
    return written


# ----------------------------------------------------------------------------- bench reports


def _bench_plot(result) -> bytes | None:
    if not plots_available():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [m.name for m in result.models]
    fig, ax = plt.subplots(figsize=(7, 0.8 + 0.45 * len(names)))
    samples = [m.samples_ms for m in result.models]
    try:
        ax.boxplot(samples, orientation="horizontal", showfliers=False)  # matplotlib >= 3.10
    except TypeError:
        ax.boxplot(samples, vert=False, showfliers=False)
    ax.set_yticks(range(1, len(names) + 1), names)
    ax.invert_yaxis()
    ax.set_xlabel(f"latency per run, ms ({result.runs} interleaved runs; box: 25th-75th percentile)")
    fig.tight_layout()
    return _png(fig, plt)


def write_bench_report(result, path: str | os.PathLike) -> list[pathlib.Path]:
    """A `graphopt bench` result as .html (plot embedded), .md (+ PNG beside it) or .json."""
    from graphopt.bench_render import to_markdown as bench_markdown

    path = pathlib.Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".html", ".htm", ".md", ".json"):
        raise UsageError(f"--report {path}: use a .html, .md or .json file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".json":
        path.write_text(json.dumps(result.to_dict(samples=True), indent=2, default=str))
        return [path]
    png = _bench_plot(result)
    body = bench_markdown(result)
    if suffix == ".md":
        written = [path]
        if png is not None:
            image = path.with_name(f"{path.stem}_latency.png")
            image.write_bytes(png)
            written.append(image)
            body += f"\n![latency]({image.name})\n"
        else:
            body += f"\n_{PLOTS_MISSING}_\n"
        path.write_text("# graphopt bench\n\n" + body)
        return written
    rows = [line for line in body.splitlines() if line.startswith("|")]
    header, table = rows[:1], rows[2:]
    cells = lambda line: [c.strip() for c in line.strip("|").split("|")]  # noqa: E731
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>graphopt bench</title><style>{_CSS}</style>"
             "</head><body><h1>graphopt bench</h1>"]
    parts += [f"<p>{esc(line)}</p>" for line in body.splitlines() if line and not line.startswith(("|", "- "))]
    parts.append("<table><tr>" + "".join(f"<th>{esc(c)}</th>" for c in cells(header[0])) + "</tr>")
    parts += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in cells(line)) + "</tr>" for line in table]
    parts.append("</table><ul>" + "".join(f"<li>{esc(line[2:])}</li>" for line in body.splitlines()
                                          if line.startswith("- ")) + "</ul>")
    if png is None:
        parts.append(f"<p class='note'>{esc(PLOTS_MISSING)}</p>")
    else:
        parts.append(f"<img alt='latency' src='data:image/png;base64,{base64.b64encode(png).decode()}'>")
    parts.append("</body></html>")
    path.write_text("\n".join(parts))
    return [path]
