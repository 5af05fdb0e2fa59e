"""A `CompareResult` as rich tables, Markdown (plots as PNG files beside it) or HTML (plots embedded)."""

from __future__ import annotations

__all__ = ["plots", "render", "to_html", "to_markdown", "write_report"]

import base64
import collections
import html
import os
import pathlib

import numpy as np

from graphopt.app.compare import CompareResult, ModelSummary
from graphopt.core.errors import UsageError
from graphopt.app.rendering.plots import CSS, PLOTS_MISSING, png


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
    from graphopt.app.rendering.report import human_bytes

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
    patterns = [(k, [_arrow(m.leftovers[k], get(o, lambda x, k=k: x.leftovers[k])) for m, o in zip(exp, opt)])
                for k in exp[0].leftovers]
    totals: collections.Counter = collections.Counter()
    for m in exp:
        totals.update(m.op_histogram)
    ops = [(op, [_arrow(m.op_histogram.get(op, 0), get(o, lambda x, op=op: x.op_histogram.get(op, 0)))
                 for m, o in zip(exp, opt)]) for op, _ in totals.most_common()]
    extra = sorted({op for o in opt if o is not None for op in o.op_histogram} - set(totals))
    ops += [(op, [_arrow(0, get(o, lambda x, op=op: x.op_histogram.get(op, 0))) for o in opt]) for op in extra]
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

    from graphopt.core.machine import describe_cpu

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
    out["latency"] = png(fig, plt)

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
    out["ops"] = png(fig, plt)
    return out




def to_markdown(result: CompareResult, images: dict[str, str] | None = None) -> str:
    """Markdown tables; `images` maps plot names to file names written beside the report."""
    names = [m.name for m in result.exported]
    lines = [f"# graphopt compare: {', '.join(names)}", ""]
    from graphopt.core.machine import describe_cpu

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




def to_html(result: CompareResult, pngs: dict[str, bytes] | None) -> str:
    """One self-contained page: tables and plots (base64 PNG), viewable offline."""
    from graphopt.core.machine import describe_cpu

    names = [m.name for m in result.exported]
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>graphopt compare</title>"
             f"<style>{CSS}</style></head><body><h1>graphopt compare</h1>",
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
