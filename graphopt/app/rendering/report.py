"""The optimize report rendered: rich tables, Markdown; `human_bytes` for every renderer. Computes nothing."""

from __future__ import annotations

__all__ = ["render", "render_inspect", "render_verification", "to_markdown", "human_bytes"]

import json

from rich.console import Console
from rich.table import Table

from graphopt.core.report import Report, jsonable
from graphopt.core.verify import VerifyResult


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _count(n: int | float | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:g}"


def _delta(before, after) -> str:
    if not before or after is None:
        return ""
    return f"{(after - before) / before * 100:+.1f}%"


def render(report: Report, console: Console | None = None) -> None:
    console = console or Console()
    summary = Table(title=f"graphopt: {report.source}", title_justify="left")
    summary.add_column("")
    summary.add_column("before", justify="right")
    summary.add_column("after", justify="right")
    summary.add_column("change", justify="right")
    b, a = report.before, report.after
    rows = [
        ("nodes", b["nodes"], a["nodes"], _count),
        ("parameters", b["parameters"], a["parameters"], _count),
        ("parameter bytes", b["parameter_bytes"], a["parameter_bytes"], human_bytes),
        ("MACs", b["macs"], a["macs"], _count),
        ("file size", report.file_bytes_before, report.file_bytes_after, human_bytes),
    ]
    for label, x, y, fmt in rows:
        summary.add_row(label, fmt(x), fmt(y), _delta(x, y))
    console.print(summary)

    passes = Table(title=f"passes (level {report.level}, {report.iterations} iteration(s))", title_justify="left")
    for col in ("pass", "runs", "ms", "removed", "added", "what changed"):
        passes.add_column(col, justify="left" if col in ("pass", "what changed") else "right")
    for p in report.passes:
        what = ", ".join(f"{k}={v}" for k, v in sorted(p.counters.items()) if v)
        passes.add_row(p.name, str(p.runs), f"{p.seconds * 1000:.1f}", str(p.nodes_removed), str(p.nodes_added),
                       what or ("changed" if p.modified_runs else "-"))
    console.print(passes)

    changed_ops = sorted(set(b["op_histogram"]) | set(a["op_histogram"]))
    changed_ops = [op for op in changed_ops if b["op_histogram"].get(op, 0) != a["op_histogram"].get(op, 0)]
    if changed_ops:
        console.print("ops: " + ", ".join(
            f"{op} {b['op_histogram'].get(op, 0)}->{a['op_histogram'].get(op, 0)}" for op in changed_ops))
    for name, section in report.sections.items():
        _render_section(console, name, section)
    render_verification(console, report.verification)
    for w in report.warnings:
        console.print(f"[yellow]warning:[/yellow] {w}")
    if report.output:
        console.print(f"wrote {report.output} in {report.seconds:.2f} s")


def _render_section(console: Console, name: str, section: dict) -> None:
    table = Table(title=name, title_justify="left", show_header=False)
    table.add_column("")
    table.add_column("")
    for key, value in section.items():
        if isinstance(value, (list, dict)):
            value = json.dumps(value, default=jsonable)
            if len(value) > 200:
                value = value[:197] + "..."
        elif isinstance(value, float):
            value = f"{value:.4g}"
        table.add_row(key, str(value))
    console.print(table)


def render_verification(console: Console, v: VerifyResult | None) -> None:
    if v is None:
        console.print("verification: [yellow]off[/yellow]")
        return
    if v.status == "skipped":
        console.print(f"verification: [bold yellow]NOT VERIFIED[/bold yellow]: {v.reason}")
    else:
        colour = {"passed": "green", "failed": "red"}[v.status]
        levels = " and ".join(f"ORT optimizations {'off' if k == 'disabled' else 'at the default level'}"
                              for k in v.levels) or "ONNX Runtime"
        console.print(f"verification: [{colour}]{v.status}[/{colour}] with {levels} (rtol {v.rtol:g}, atol {v.atol:g})"
                      + (f": {v.reason}" if v.reason else ""))
    for name, item in v.inputs.items():
        shape = "x".join(map(str, item.get("shape", []))) or "scalar"
        why = "; ".join(filter(None, [item.get("why"), item.get("values")]))
        console.print(f"  input {name} {shape}" + (f" ({why})" if why else ""))
    if v.outputs and (v.status == "failed" or len(v.outputs) <= 8):
        table = Table(show_header=True)
        for col in ("output", "max abs diff", "max rel diff", "ok"):
            table.add_column(col)
        for c in v.outputs:
            table.add_row(c.name, f"{c.max_abs_diff:.3g}", f"{c.max_rel_diff:.3g}",
                          ("yes" if c.ok else "[red]NO[/red]") + (f" ({c.detail})" if c.detail else ""))
        console.print(table)


def render_inspect(info: dict, path: str, console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"graphopt inspect: {path}", title_justify="left", show_header=False)
    table.add_column("")
    table.add_column("")
    table.add_row("producer", info["producer"] or "-")
    table.add_row("IR version", str(info["ir_version"]))
    table.add_row("opsets", ", ".join(f"{d or 'ai.onnx'}:{v}" for d, v in info["opsets"].items()))
    table.add_row("nodes", str(info["nodes"]))
    table.add_row("parameters", f"{_count(info['parameters'])} ({human_bytes(info['parameter_bytes'])})")
    unknown = f" ({info['macs_unknown_nodes']} nodes with unknown shapes)" if info["macs_unknown_nodes"] else ""
    table.add_row("MACs / FLOPs", f"{_count(info['macs'])} / {_count(info['flops'])}{unknown}")
    for kind in ("inputs", "outputs"):
        table.add_row(kind, "\n".join(f"{v['name']}: {v['dtype']} {v['shape']}" for v in info[kind]))
    table.add_row("dynamic dims", ", ".join(info["dynamic_dims"]) or "none")
    table.add_row("initializers listed as inputs", str(info["initializers_as_inputs"]))
    table.add_row("subgraphs / functions", f"{info['subgraphs']} / {info['functions']}")
    if info["custom_ops"]:
        table.add_row("custom-domain ops", ", ".join(info["custom_ops"]))
    console.print(table)
    hist = Table(title="op histogram", title_justify="left")
    hist.add_column("op")
    hist.add_column("count", justify="right")
    for op, n in info["op_histogram"].items():
        hist.add_row(op, str(n))
    console.print(hist)


def to_markdown(report: Report) -> str:
    b, a = report.before, report.after
    lines = [f"# graphopt report: {report.source}", "",
             "| | before | after |", "|---|---:|---:|",
             f"| nodes | {b['nodes']} | {a['nodes']} |",
             f"| parameters | {b['parameters']} | {a['parameters']} |",
             f"| MACs | {b['macs']} | {a['macs']} |",
             f"| file size | {human_bytes(report.file_bytes_before)} | {human_bytes(report.file_bytes_after)} |",
             "", "| pass | runs | ms | removed | added | counters |", "|---|---:|---:|---:|---:|---|"]
    for p in report.passes:
        counters = ", ".join(f"{k}={v}" for k, v in sorted(p.counters.items()) if v)
        lines.append(f"| {p.name} | {p.runs} | {p.seconds * 1000:.1f} | {p.nodes_removed} | {p.nodes_added} | {counters} |")
    v = report.verification
    lines += ["", f"verification: {v.status if v else 'off'}" + (f" ({v.reason})" if v and v.reason else "")]
    if v is not None:
        lines += [f"- input `{n}` {'x'.join(map(str, i.get('shape', []))) or 'scalar'}"
                  + (f": {'; '.join(filter(None, [i.get('why'), i.get('values')]))}" if i.get("why") or i.get("values")
                     else "") for n, i in v.inputs.items()]
    for name, section in report.sections.items():
        lines += ["", f"## {name}", "", "```json", json.dumps(section, indent=2, default=jsonable), "```"]
    return "\n".join(lines) + "\n"
