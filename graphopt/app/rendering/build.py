"""How `graphopt build` looks: live progress bars, the summary table, Markdown. Computes nothing."""

from __future__ import annotations

__all__ = ["LiveProgress", "render_build", "summary_line", "to_markdown", "write_report"]

import pathlib

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from graphopt.app.rendering.report import human_bytes

_STYLE = {"built": "green", "unverified": "yellow", "up-to-date": "dim", "failed": "red", "error": "red", "stale": "yellow",
          "skipped": "yellow"}


class LiveProgress:
    """A BuildObserver: one bar for the build, one per model running, advancing pass by pass."""

    def __init__(self, console: Console):
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.fields[model]}", style="bold"),
                                 BarColumn(bar_width=24), MofNCompleteColumn(), TextColumn("{task.description}"),
                                 TimeElapsedColumn(), console=console, transient=True)
        self.total = None
        self.tasks: dict[str, tuple[int, int]] = {}  # name -> (task id, passes in its pipeline)
        self.steps: dict[str, int] = {}
        self.done: set[str] = set()  # a worker's last steps may arrive after its result

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def planned(self, targets) -> None:
        self.total = self.progress.add_task("", total=len(targets), model="build")
        self.steps = {t.name: len(t.pass_names) for t in targets}

    def step(self, name: str, step: str) -> None:
        npasses = self.steps.get(name, 0)
        if name in self.done:
            return
        if step == "start":
            task = self.progress.add_task("load", total=npasses + 2, model=name)
            self.tasks[name] = (task, 0)
            return
        if name not in self.tasks:
            return
        task, done = self.tasks[name]
        done = {"verify": npasses + 1, "save": npasses + 2}.get(step, min(done + 1, npasses))
        self.tasks[name] = (task, done)
        self.progress.update(task, completed=done, description=step)

    def finished(self, result) -> None:
        self.done.add(result.name)
        if result.name in self.tasks:
            self.progress.remove_task(self.tasks.pop(result.name)[0])
        if self.total is not None:
            self.progress.advance(self.total)
        style = _STYLE.get(result.status, "")
        why = f": {result.reason}" if result.ok and result.reason != "not built yet" else ""
        self.progress.console.print(f"[{style}]{result.status:>10}[/{style}] {escape(result.name)}"
                                    f" ({result.seconds:.2f} s){escape(why)}", highlight=False)


def _ratio(m) -> str:
    if not m.bytes_before or not m.bytes_after:
        return ""
    return f"{m.bytes_before / m.bytes_after:.2f}x"


def _verification(m) -> str:
    if m.status in ("stale", "skipped") or (m.status == "error" and m.verification is None):
        return "-"
    return m.verification or "off"


def render_build(result, console: Console, err: Console, *, quiet: bool = False, debug: bool = False) -> None:
    """The summary table, then one line per problem or warning, then the totals."""
    if not quiet:
        measured = any(m.accuracy_drop is not None for m in result.models)
        table = Table(title=f"graphopt build: {result.config or '<config>'}", title_justify="left")
        for col in ("model", "status", "before", "after", "verify", *(["acc. drop"] if measured else []), "time"):
            table.add_column(col, justify="right" if col in ("before", "after", "acc. drop", "time") else "left",
                             no_wrap=col != "model", overflow="fold")
        table.columns[0].min_width = min(32, max((len(m.name) for m in result.models), default=5))
        for m in result.models:
            style = _STYLE.get(m.status, "")
            seconds = f"{m.seconds:.2f} s" if m.status not in ("up-to-date", "stale", "skipped") else "-"
            drop = [f"{m.accuracy_drop:.4g}" if m.accuracy_drop is not None else "-"] if measured else []
            table.add_row(escape(m.name), f"[{style}]{m.status}[/{style}]", human_bytes(m.bytes_before),
                          human_bytes(m.bytes_after),
                          _verification(m), *drop, seconds)
        console.print(table)
    for m in result.models:
        if m.status == "built" and not quiet and m.reason != "not built yet":
            console.print(f"[green]rebuilt[/green] {escape(m.name)}: {escape(m.reason)}", highlight=False,
                          soft_wrap=True)
        if m.status == "stale":
            err.print(f"[yellow]stale:[/yellow] {escape(m.output)} ({escape(m.name)}): {escape(m.reason)}",
                      highlight=False, soft_wrap=True)
        elif m.status == "unverified":
            err.print(f"[yellow]unverified:[/yellow] {escape(m.name)}: {escape(m.message)}", highlight=False,
                      soft_wrap=True)
        elif not m.ok:
            err.print(f"[red]{m.status}:[/red] {escape(m.name)}: {escape(m.message)}", highlight=False, soft_wrap=True)
            if debug and m.traceback:
                err.print(m.traceback, markup=False, highlight=False)
        if not quiet:
            for w in m.warnings:
                console.print(f"[yellow]warning:[/yellow] {escape(m.name)}: {escape(w)}", highlight=False,
                              soft_wrap=True)
    if not quiet:
        console.print(summary_line(result), highlight=False)


def summary_line(result) -> str:
    counts = result.counts()
    n = len(result.models)
    if result.check:
        stale = counts.get("stale", 0)
        if stale == 0 and result.exit_code == 0:
            return f"all {n} output(s) up to date"
        return f"{stale} of {n} output(s) stale: run `graphopt build` and commit the results"
    if n and counts.get("up-to-date", 0) == n:
        return f"nothing to rebuild: all {n} output(s) up to date ({result.seconds:.2f} s)"
    parts = [f"{counts[s]} {s}" for s in ("built", "unverified", "up-to-date", "failed", "error", "skipped")
             if counts.get(s)]
    return ", ".join(parts) + f" in {result.seconds:.2f} s"


def to_markdown(result) -> str:
    lines = [f"# graphopt build: {result.config or '<config>'}", "", summary_line(result), "",
             "| model | status | before | after | ratio | verify | acc. drop | time | note |",
             "|---|---|---:|---:|---:|---|---:|---:|---|"]
    for m in result.models:
        drop = f"{m.accuracy_drop:.4g}" if m.accuracy_drop is not None else "-"
        note = (m.message or m.reason if m.status != "up-to-date" else "").replace("|", "\\|")
        lines.append(f"| {m.name} | {m.status} | {human_bytes(m.bytes_before)} | {human_bytes(m.bytes_after)} | "
                     f"{_ratio(m)} | {_verification(m)} | {drop} | {m.seconds:.2f} s | {note} |")
    return "\n".join(lines) + "\n"


def write_report(result, path: pathlib.Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_markdown(result) if path.suffix.lower() == ".md" else result.to_json() + "\n")
