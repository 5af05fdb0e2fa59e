"""A `BenchResult` as rich tables in the terminal, Markdown, HTML or JSON; nothing is measured here."""

from __future__ import annotations

__all__ = ["render", "to_markdown", "write_bench_report"]

import base64
import html
import json
import os
import pathlib
from collections.abc import Sequence

from graphopt.core.bench import BenchResult
from graphopt.core.errors import UsageError
from graphopt.core.machine import describe_cpu
from graphopt.app.rendering.plots import CSS, PLOTS_MISSING, plots_available, png


def _fmt_bytes(n) -> str:
    from graphopt.app.rendering.report import human_bytes

    return human_bytes(int(n)) if n is not None else "-"


def _num(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 0.1 else f"{x:.2f}"


def _fmt_ratio(x) -> str:
    return "-" if x is None else f"{_num(x)}x"


def render(result: BenchResult, console=None) -> None:
    """Rich tables: latency, start-up and memory, ratios to the first model, then placement."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    console.print(describe_cpu(result.environment))
    console.print(f"onnxruntime {result.environment['onnxruntime']}, {', '.join(result.providers)}, "
                  f"threads {result.threads or 'ORT default'} (spinning {'on' if result.spin else 'off'}), "
                  f"ORT optimization {result.ort_level}, "
                  f"{result.runs} interleaved runs after {result.warmup} warm-up, inputs {result.inputs}",
                  highlight=False)

    def table(title: str, columns: Sequence[str]) -> Table:
        t = Table(title=title, title_justify="left")
        for col in columns:
            t.add_column(col, justify="left" if col == "model" else "right")
        return t

    latency = table("latency (ms)", ("model", "p50", "p90", "p99", "mean", "min", "items/s"))
    startup = table("start-up and memory", ("model", "file", "nodes", "create ms", "first run ms",
                                            "peak RSS", "ORT arena"))
    for m in result.models:
        lat = m.latency_ms
        latency.add_row(m.name, *(f"{lat[k]:.3f}" for k in ("p50", "p90", "p99", "mean", "min")),
                        f"{m.throughput:.1f}")
        startup.add_row(m.name, _fmt_bytes(m.file_bytes), str(m.nodes), f"{m.session_create_ms:.1f}",
                        f"{m.first_run_ms:.2f}", _fmt_bytes(m.memory.get("peak_bytes")),
                        _fmt_bytes(m.memory.get("ort_arena_peak_bytes")))
    console.print(latency)
    console.print(startup)
    if len(result.models) > 1:
        ratios = table(f"ratios to {result.models[0].name} (< 1: faster, smaller; 95% CI: of the median "
                       "per-round latency ratio)",
                       ("model", "p50", "95% CI", "create", "first run", "peak RSS", "file"))
        ratios.columns[2].no_wrap = True
        for m in result.models:
            r = m.ratios
            lo, hi = r["paired_ci95"]
            ratios.add_row(m.name, _fmt_ratio(r["latency_p50"]), f"{_num(lo)}-{_num(hi)}",
                           _fmt_ratio(r["session_create"]), _fmt_ratio(r["first_run"]),
                           _fmt_ratio(r["peak_memory"]), _fmt_ratio(r["file_size"]))
        console.print(ratios)
    for m in result.models:
        if m.placement:
            parts = [f"{p} {sum(ops.values())} nodes" for p, ops in m.placement.items()]
            console.print(f"placement {m.name}: registered {', '.join(m.providers)}; ran {'; '.join(parts)}",
                          highlight=False)
    console.print(f"[dim]memory: {result.memory_method}[/dim]")
    for w in result.warnings:
        console.print(f"[yellow]note:[/yellow] {w}", highlight=False)


def to_markdown(result: BenchResult) -> str:
    env = result.environment
    lines = [describe_cpu(env), "",
             f"onnxruntime {env['onnxruntime']}, providers {', '.join(result.providers)}, threads "
             f"{result.threads or 'ORT default'}, {result.runs} interleaved runs, inputs `{result.inputs}`", "",
             "| model | file | nodes | create ms | first ms | p50 ms | p90 ms | p99 ms | items/s | peak RSS "
             "| p50 ratio | paired ratio (95% CI) | memory ratio |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for m in result.models:
        lat, r = m.latency_ms, m.ratios
        lines.append(f"| {m.name} | {_fmt_bytes(m.file_bytes)} | {m.nodes} | {m.session_create_ms:.1f} | "
                     f"{m.first_run_ms:.2f} | {lat['p50']:.3f} | {lat['p90']:.3f} | {lat['p99']:.3f} | "
                     f"{m.throughput:.1f} | {_fmt_bytes(m.memory.get('peak_bytes'))} | "
                     f"{_fmt_ratio(r.get('latency_p50'))} | {_num(r['paired_median'])} ({_num(r['paired_ci95'][0])}-"
                     f"{_num(r['paired_ci95'][1])}) | "
                     f"{_fmt_ratio(r.get('peak_memory'))} |")
    lines += ["", f"memory: {result.memory_method}"]
    for m in result.models:
        if m.placement:
            lines.append(f"- {m.name}: " + "; ".join(f"{p} ran {sum(ops.values())} nodes"
                                                      for p, ops in m.placement.items()))
    lines += [f"- note: {w}" for w in result.warnings]
    return "\n".join(lines) + "\n"


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
    return png(fig, plt)


def write_bench_report(result, path: str | os.PathLike) -> list[pathlib.Path]:
    """A `graphopt bench` result as .html (plot embedded), .md (+ PNG beside it) or .json."""
    path = pathlib.Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".html", ".htm", ".md", ".json"):
        raise UsageError(f"--report {path}: use a .html, .md or .json file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".json":
        path.write_text(json.dumps(result.to_dict(samples=True), indent=2, default=str))
        return [path]
    png = _bench_plot(result)
    body = to_markdown(result)
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
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>graphopt bench</title><style>{CSS}</style>"
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
