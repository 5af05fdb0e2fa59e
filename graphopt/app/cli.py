"""`graphopt` command line: a thin typer layer over the API. Rich renders; nothing is computed here.

Exit codes: 0 success, 1 verification failed (or accuracy budget exceeded), 2 bad input or
usage, 3 internal error. Errors are one line on stderr, never a traceback (unless --debug).
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import pathlib
import signal
import sys
import threading
from typing import Optional

from graphopt.app.startup import defer_sympy

defer_sympy()  # before anything imports onnx-ir

import typer  # noqa: E402
from rich.console import Console  # noqa: E402

from graphopt.core.errors import GraphoptError, UsageError, first_line  # noqa: E402

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Optimize ONNX models, verified in ONNX Runtime.")
_out = Console()
_err = Console(stderr=True)
_debug = False
_json = False  # --json anywhere on the command line: failures print a JSON object too


def _csv(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def _shapes(values: list[str] | None) -> dict[str, list[int]]:
    from graphopt.core.verify import parse_shape

    return dict(parse_shape(v) for v in values or [])


def _default_output(path: pathlib.Path) -> pathlib.Path:
    return path.with_name(path.stem + ".opt.onnx")


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debug logs.")) -> None:
    global _debug
    _debug = debug
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


# `graphopt optimize`: its options are the settings of the options schema (graphopt.app.options)
# that say `cli`, plus where the result goes. The kind says how an option's text is read.
_CLI_TYPES = {"bool": bool, "verify": bool, "int": int, "float": float, "str": str, "number-or-str": str, "list": str,
              "path": pathlib.Path, "data": str, "shapes": list[str]}


def _cli_value(kind: str, value, default):
    """An option's value as optimize() takes it: comma-separated lists, NAME=DIMS shapes."""
    if kind == "list":
        return _csv(value) or default
    if kind == "shapes":
        return _shapes(value)
    return value


def _optimize_parameters() -> list[inspect.Parameter]:
    from graphopt.app.options import fields

    keyword = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [
        inspect.Parameter("model", keyword, annotation=pathlib.Path,
                          default=typer.Argument(..., help="Input .onnx file (never overwritten).")),
        inspect.Parameter("output", keyword, annotation=Optional[pathlib.Path],
                          default=typer.Option(None, "-o", "--output", help="Output path [default: IN.opt.onnx].")),
    ]
    for _, f, spec in fields("cli"):
        typ = _CLI_TYPES[spec.kind]
        default = None if spec.kind in ("list", "shapes") else f.default
        flags = [spec.flag, *([spec.short] if spec.short else [])]
        params.append(inspect.Parameter(f.name, keyword, annotation=typ if default is not None else Optional[typ],
                                        default=typer.Option(default, *flags, help=spec.help)))
    params += [
        inspect.Parameter("json_out", keyword, annotation=bool,
                          default=typer.Option(False, "--json", help="Print one JSON object instead of tables.")),
        inspect.Parameter("report_file", keyword, annotation=Optional[pathlib.Path],
                          default=typer.Option(None, "--report", help="Also write the report (.json or .md).")),
    ]
    return params


def optimize(**given) -> None:
    """Optimize MODEL, verify it against the original and write the result."""
    from graphopt.app.api import optimize as run_optimize
    from graphopt.app.options import fields
    from graphopt.core.io import check_output_path
    from graphopt.app.rendering.report import render, to_markdown

    model, output, json_out, report_file = given["model"], given["output"], given["json_out"], given["report_file"]
    out_path = output or _default_output(model)
    if model.exists() and out_path.resolve() == model.resolve():
        raise UsageError(f"{out_path}: output would overwrite the input; choose another path with -o")
    check_output_path(out_path, {model} if model.exists() else set())  # before any work: a hard link, a FIFO
    if report_file is not None and model.exists() and (
            report_file.resolve() in (model.resolve(), out_path.resolve())
            or (report_file.exists() and os.path.samefile(report_file, model))):
        raise UsageError(f"--report {report_file}: that is the input or the output model; choose another path")
    settings = {f.name: _cli_value(spec.kind, given[f.name], f.default) for _, f, spec in fields("api")}
    _check_lossy_data(settings)
    force, require_verified = given["force"], given["require_verified"]
    result = run_optimize(model, **settings)
    report = result.report
    failed = report.verification is not None and report.verification.status == "failed"
    if (require_verified and settings["verify"] and report.verification is not None
            and report.verification.status == "skipped"):
        failed = True
        report.warnings.append("--require-verified: the model could not be verified")
    if failed and not force:
        report.warnings.append(f"verification failed: {out_path} not written (use --force to write it anyway)")
    else:
        result.save(out_path)
    error = None
    if failed:
        bad = [f"{c.name} (max abs diff {c.max_abs_diff:.3g})" for c in report.verification.outputs if not c.ok]
        error = (f"verification failed: {', '.join(bad) or report.verification.reason}; "
                 + (f"{out_path} written anyway (--force)" if force else f"{out_path} not written (--force writes it)"))
    if json_out:
        _print_json(report.to_dict(), error, 1)
    else:
        render(report, _out)
    if report_file:
        text = to_markdown(report) if report_file.suffix.lower() == ".md" else report.to_json()
        report_file.write_text(text)
    if error:
        _error_line(error)
        raise typer.Exit(1)


optimize.__signature__ = inspect.Signature(_optimize_parameters())
optimize.__annotations__ = {p.name: p.annotation for p in optimize.__signature__.parameters.values()}
app.command()(optimize)


def _check_lossy_data(settings: dict) -> None:
    """Data and a budget are for the lossy stages: without one of them they are a usage error."""
    compress = (settings["sparsity"] is not None or bool(settings["sparsity_pattern"])
                or settings["low_rank"] is not None)
    if settings["quantize"] is None and not compress:
        for flag, value in (("--calibration", settings["calibration"]), ("--eval", settings["eval"]),
                            ("--max-accuracy-drop", settings["max_accuracy_drop"])):
            if value is not None:
                raise UsageError(f"{flag} needs --quantize int8|int8-dynamic|fp16 (or --sparsity, "
                                 "--sparsity-pattern, --low-rank)")


@app.command()
def inspect(
    model: pathlib.Path = typer.Argument(..., help="An .onnx file."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Opsets, producer, op histogram, parameters, FLOPs, inputs/outputs, subgraphs."""
    from graphopt.app.api import inspect as run_inspect
    from graphopt.app.rendering.report import render_inspect

    info = run_inspect(model)
    if json_out:
        print(json.dumps(info, indent=2))
    else:
        render_inspect(info, str(model), _out)


@app.command()
def verify(
    original: pathlib.Path = typer.Argument(...),
    optimized: pathlib.Path = typer.Argument(...),
    inputs: Optional[pathlib.Path] = typer.Option(None, "--inputs", help=".npz with one array per graph input."),
    shape: Optional[list[str]] = typer.Option(None, "--shape", help="Input shape NAME=1x3x224x224 (repeatable)."),
    rtol: float = typer.Option(1e-3, "--rtol"),
    atol: float = typer.Option(1e-4, "--atol"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Run ORIGINAL and OPTIMIZED in ONNX Runtime on the same inputs and compare every output."""
    from graphopt.core import io
    from graphopt.app.rendering.report import render_verification
    from graphopt.core.verify import load_npz, verify as run_verify

    for path in (original, optimized):
        io.load(path)  # clear one-line errors for missing or broken files
    data = load_npz(inputs) if inputs else None
    result = run_verify(original, optimized, shapes=_shapes(shape), data=data, rtol=rtol, atol=atol)
    error = None
    if result.status == "failed":
        bad = [f"{c.name} (max abs diff {c.max_abs_diff:.3g})" for c in result.outputs if not c.ok]
        error = f"verification failed: {', '.join(bad) or result.reason}"
    if json_out:
        _print_json(result.to_dict(), error, 1)
    else:
        render_verification(_out, result)
    if error:
        _error_line(error)
        raise typer.Exit(1)


@app.command("bench")
def bench_command(
    models: list[pathlib.Path] = typer.Argument(..., help="One or more .onnx files; ratios are to the first."),
    provider: str = typer.Option("cpu", "--provider", help="cpu|cuda|tensorrt|openvino|dml|coreml (or an ORT name)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="ORT intra-op threads [ORT default]."),
    batch: Optional[int] = typer.Option(None, "--batch", help="Batch size for inputs with a dynamic first dim."),
    shape: Optional[list[str]] = typer.Option(None, "--shape", help="Input shape NAME=1x3x224x224 (repeatable)."),
    inputs: Optional[pathlib.Path] = typer.Option(None, "--inputs",
                                                  help=".npz inputs (default: MODEL.npz beside the first model)."),
    runs: int = typer.Option(50, "--runs", min=1, help="Timed runs per model, interleaved."),
    warmup: int = typer.Option(5, "--warmup", min=0, help="Untimed runs per model first."),
    memory: bool = typer.Option(True, "--memory/--no-memory", help="Measure peak RSS (one subprocess per model)."),
    spin: bool = typer.Option(False, "--spin", help="Let ORT's thread pool spin (its default; unfair when interleaving)."),
    ort_level: str = typer.Option("all", "--ort-level", help="ORT graph optimization: disable|basic|extended|all."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
    report_file: Optional[pathlib.Path] = typer.Option(None, "--report", help="Also write FILE.html, .md or .json."),
) -> None:
    """Latency, throughput, session start-up and memory of MODELs in ONNX Runtime, run interleaved."""
    from graphopt.core.bench import bench
    from graphopt.app.rendering.bench import render
    from graphopt.app.rendering.bench import write_bench_report

    with _progress("bench", enabled=not json_out) as progress:
        result = bench(models, provider=provider, threads=threads, batch=batch, shapes=_shapes(shape), inputs=inputs,
                       runs=runs, warmup=warmup, memory=memory, spin=spin, ort_level=ort_level, progress=progress)
    if json_out:
        print(result.to_json())
    else:
        render(result, _out)
    if report_file:
        for path in write_bench_report(result, report_file):
            _err.print(f"wrote {path}", highlight=False)


@app.command("compare")
def compare_command(
    models: list[pathlib.Path] = typer.Argument(..., help="Two or more exports of one network."),
    level: Optional[int] = typer.Option(2, "--level", "-O", help="Optimization level for the 'after' figures."),
    optimize: bool = typer.Option(True, "--optimize/--no-optimize", help="Also compare after graphopt optimize."),
    provider: str = typer.Option("cpu", "--provider", help="cpu|cuda|tensorrt|openvino|dml|coreml."),
    threads: Optional[int] = typer.Option(None, "--threads", help="ORT intra-op threads [ORT default]."),
    shape: Optional[list[str]] = typer.Option(None, "--shape", help="Input shape NAME=1x3x224x224 (repeatable)."),
    inputs: Optional[pathlib.Path] = typer.Option(None, "--inputs",
                                                  help=".npz inputs of the first model (default: its MODEL.npz)."),
    runs: int = typer.Option(30, "--runs", min=1, help="Timed runs per model, interleaved."),
    measure: bool = typer.Option(True, "--measure/--no-measure", help="Level 3: measure fusion candidates."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
    report_file: Optional[pathlib.Path] = typer.Option(None, "--report", help="Also write FILE.html, .md or .json."),
) -> None:
    """Compare exports of one network: ops, params, FLOPs, leftovers, outputs, latency; before and after optimize."""
    from graphopt.app.compare import compare
    from graphopt.app.rendering.compare import render, write_report
    from graphopt.app.rendering.plots import plots_available

    with _progress("compare", enabled=not json_out) as progress:
        result = compare(models, level=level, optimize=optimize, provider=provider, threads=threads,
                         shapes=_shapes(shape), inputs=inputs, runs=runs, measure=measure, progress=progress)
    if json_out:
        print(result.to_json())
    else:
        render(result, _out)
    if report_file:
        for path in write_report(result, report_file):
            _err.print(f"wrote {path}", highlight=False)
        if report_file.suffix.lower() != ".json" and not plots_available():
            _err.print("[yellow]note:[/yellow] report written without plots: matplotlib is not installed "
                       "(pip install 'graphopt[report]')", highlight=False)


class _progress:
    """A transient rich progress bar on stderr while a long command runs (only on a terminal)."""

    def __init__(self, label: str, enabled: bool = True):
        self.label = label
        self.enabled = enabled and _err.is_terminal
        self._bar = None
        self._tasks: dict[str, int] = {}

    def __enter__(self):
        if not self.enabled:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TimeElapsedColumn(), console=_err, transient=True)
        self._bar.__enter__()
        return self.update

    def update(self, stage: str, done: int, total: int) -> None:
        if stage not in self._tasks:
            self._tasks[stage] = self._bar.add_task(f"{self.label}: {stage}", total=total)
        self._bar.update(self._tasks[stage], completed=done, total=total)

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.__exit__(*exc)
        return False


@app.command("passes")
def list_passes() -> None:
    """Every pass: its folder, the stage that runs it, the levels it is in, and what it does."""
    from rich.table import Table
    from rich.text import Text

    from graphopt.passes import LEVELS, OPTION_PASSES, REGISTRY

    table = Table(title=f"graphopt passes ({len(REGISTRY)})", title_justify="left")
    for column in ("pass", "kind", "stage", "levels", "what it does"):
        table.add_column(column)
    for name, spec in REGISTRY.items():
        levels = ",".join(str(lv) for lv, names in sorted(LEVELS.items()) if name in names)
        levels = levels or ("by option" if name in OPTION_PASSES else "opt-in")
        aliases = f" (also: {', '.join(spec.aliases)})" if spec.aliases else ""
        table.add_row(name, spec.kind, spec.stage, levels, Text(spec.description + aliases))  # text, not markup
    _out.print(table)


@app.command()
def build(
    config: Optional[pathlib.Path] = typer.Option(
        None, "--config", "-c", help="Config file [default: ./graphopt.toml, else tool.graphopt in ./pyproject.toml]."),
    only: Optional[list[str]] = typer.Option(None, "--only", help="Build only this model: NAME or NAME/STEM (repeatable)."),
    jobs: int = typer.Option(1, "--jobs", "-j", min=0, help="Models optimized in parallel processes (0: one per CPU)."),
    check: bool = typer.Option(False, "--check", help="Write nothing; exit 1 naming the outputs that are stale."),
    force: bool = typer.Option(False, "--force", help="Rebuild every selected output, even if up to date."),
    fail_fast: bool = typer.Option(False, "--fail-fast", help="Start no further model after one fails."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Override a setting for every model: KEY=VALUE (repeatable)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
    report_file: Optional[pathlib.Path] = typer.Option(None, "--report", help="Also write the build report (.json or .md)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress and no table: only problems, on stderr."),
) -> None:
    """Optimize every model in graphopt.toml whose source, settings or graphopt version changed."""
    import contextlib

    from graphopt.app.build import build as run_build
    from graphopt.app.rendering.build import LiveProgress, render_build, write_report

    live = LiveProgress(_err) if not quiet and _out.is_terminal and _err.is_terminal else None
    with live or contextlib.nullcontext():  # errors: main() prints the line (and the JSON object)
        result = run_build(config, only=only, jobs=jobs, check=check, force=force, fail_fast=fail_fast,
                           overrides=set_, progress=live)
    if json_out:
        print(result.to_json())
    else:
        render_build(result, _out, _err, quiet=quiet, debug=_debug)
    if report_file:
        write_report(result, report_file)
    if result.exit_code:
        raise typer.Exit(result.exit_code)


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that temporary files are removed on the way out."""


_terminated = False


def _terminate(signum, frame):
    global _terminated
    _terminated = True  # raised inside an import, it comes out as an ImportError: still a SIGTERM
    raise Terminated()


def main(argv: list[str] | None = None) -> None:
    """Console entry point: maps errors to one line (and, with --json, one JSON object) and an exit code."""
    import onnx_ir as ir

    global _json
    args = list(sys.argv[1:] if argv is None else argv)
    _json = "--json" in args
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main else None
    try:
        code = app(args=args, standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except GraphoptError as e:
        _fail(str(e), e.exit_code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except KeyboardInterrupt as e:
        _fail("interrupted (SIGINT)", 130, e)
    except Terminated as e:
        _fail("terminated (SIGTERM)", 143, e)
    except SystemExit:
        raise
    except Exception as e:  # noqa: BLE001 - the CLI promises one line, never a traceback
        if _terminated:
            _fail("terminated (SIGTERM)", 143, e)
        # Click's exception base, whether typer depends on click or vendors it (typer >= 0.2x).
        click_error = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
        if isinstance(e, typer.Abort):  # click's form of KeyboardInterrupt
            _fail("interrupted (SIGINT)", 130, e)
        if isinstance(e, click_error):
            message = e.format_message().strip()
            if not message:  # no arguments: the help was printed, nothing else to say
                sys.exit(2)
            _fail(_first_line(Exception(message)), 2)
        if isinstance(e, (ir.passes.PassError, ir.passes.InvariantError)):
            _fail(f"{_first_line(e)} (rerun with --debug for details)", 3, e)
        _fail(f"internal error: {type(e).__name__}: {_first_line(e)} (rerun with --debug for details)", 3, e)
    finally:
        if in_main:
            # The whole process (console script) is exiting: a SIGTERM now would cut short the removal
            # of temporary files, so it is ignored. An in-process caller gets its handler back.
            signal.signal(signal.SIGTERM, signal.SIG_IGN if argv is None else previous)


_first_line = first_line


def _print_json(data: dict, error: str | None, code: int) -> None:
    """One JSON object on stdout; a failure adds `error` and `exit_code` (what --json failures always carry)."""
    from graphopt.core.report import jsonable

    if error:
        data = {**data, "error": error, "exit_code": code}
    print(json.dumps(data, indent=2, default=jsonable))


def _error_line(message: str) -> None:
    from rich.markup import escape  # messages name TOML tables and globs: [models.x], [ab].onnx

    _err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)


def _fail(message: str, code: int, exc: BaseException | None = None) -> None:
    if _debug and exc is not None:
        _err.print_exception()
    if _json:  # a script gets an object to parse; the line stays on stderr for people
        print(json.dumps({"error": message, "exit_code": code}))
    _error_line(message)
    sys.exit(code)


if __name__ == "__main__":
    main(sys.argv[1:])
