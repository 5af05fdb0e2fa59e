"""`graphopt` command line: a thin typer layer over the API. Rich renders; nothing is computed here.

Exit codes: 0 success, 1 verification failed (or accuracy budget exceeded), 2 bad input or
usage, 3 internal error. Errors are one line on stderr, never a traceback (unless --debug).
"""

from __future__ import annotations

import logging
import os
import pathlib
import sys
from typing import Optional

import typer
from rich.console import Console

from graphopt.errors import GraphoptError, UsageError

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Optimize ONNX models, verified in ONNX Runtime.")
_out = Console()
_err = Console(stderr=True)
_debug = False


def _csv(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def _shapes(values: list[str] | None) -> dict[str, list[int]]:
    from graphopt.verify import parse_shape

    return dict(parse_shape(v) for v in values or [])


def _default_output(path: pathlib.Path) -> pathlib.Path:
    return path.with_name(path.stem + ".opt.onnx")


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debug logs.")) -> None:
    global _debug
    _debug = debug
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@app.command()
def optimize(
    model: pathlib.Path = typer.Argument(..., help="Input .onnx file (never overwritten)."),
    output: Optional[pathlib.Path] = typer.Option(None, "-o", "--output", help="Output path [default: IN.opt.onnx]."),
    level: Optional[int] = typer.Option(None, "--level", "-O", help="0 none, 1 clean-up, 2 + vertical fusion [2]."),
    passes: Optional[str] = typer.Option(None, "--passes", help="Comma-separated pass list replacing the level's."),
    skip: Optional[str] = typer.Option(None, "--skip", help="Comma-separated passes to leave out."),
    outputs: Optional[str] = typer.Option(None, "--outputs", help="Keep only these graph outputs (comma-separated)."),
    shape: Optional[list[str]] = typer.Option(
        None, "--shape", help="Fix input dims in the model, NAME=1x3x224x224 (repeatable); also the verification shape."),
    inputs: Optional[pathlib.Path] = typer.Option(None, "--inputs", help=".npz with one array per graph input."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Compare outputs with the original in ORT."),
    force: bool = typer.Option(False, "--force", help="Write the output even if verification fails."),
    rtol: float = typer.Option(1e-3, "--rtol"),
    atol: float = typer.Option(1e-4, "--atol", help="Absolute tolerance, scaled by max(1, |output|)."),
    fold_limit: float = typer.Option(1.0, "--fold-limit", help="Largest constant folding may create, in MB."),
    keep_initializer_inputs: bool = typer.Option(False, "--keep-initializer-inputs",
                                                 help="Keep weights that are listed as graph inputs overridable."),
    inference: bool = typer.Option(False, "--inference",
                                   help="Convert training-mode Dropout/BatchNormalization to inference form "
                                        "(changes outputs; verified against the original converted alike)."),
    target_opset: Optional[int] = typer.Option(None, "--target-opset",
                                               help="Convert to this default-domain opset first (onnx version "
                                                    "converter); fails naming the ops that block it."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
    report_file: Optional[pathlib.Path] = typer.Option(None, "--report", help="Also write the report (.json or .md)."),
) -> None:
    """Optimize MODEL, verify it against the original and write the result."""
    from graphopt.api import optimize as run_optimize
    from graphopt.report import render, to_markdown

    out_path = output or _default_output(model)
    if model.exists() and out_path.resolve() == model.resolve():
        raise UsageError(f"{out_path}: output would overwrite the input; choose another path with -o")
    result = run_optimize(model, level=level, passes=_csv(passes), skip=_csv(skip) or (), outputs=_csv(outputs),
                          shapes=_shapes(shape), inputs=inputs, verify=verify, rtol=rtol, atol=atol,
                          fold_limit_mb=fold_limit, keep_initializer_inputs=keep_initializer_inputs,
                          inference=inference, target_opset=target_opset)
    report = result.report
    failed = report.verification is not None and report.verification.status == "failed"
    if failed and not force:
        report.warnings.append(f"verification failed: {out_path} not written (use --force to write it anyway)")
    else:
        result.save(out_path)
    if json_out:
        print(report.to_json())
    else:
        render(report, _out)
    if report_file:
        text = to_markdown(report) if report_file.suffix.lower() == ".md" else report.to_json()
        report_file.write_text(text)
    if failed:
        raise typer.Exit(1)


@app.command()
def inspect(
    model: pathlib.Path = typer.Argument(..., help="An .onnx file."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Opsets, producer, op histogram, parameters, FLOPs, inputs/outputs, subgraphs."""
    import json

    from graphopt.api import inspect as run_inspect
    from graphopt.report import render_inspect

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
    import json

    from graphopt import io
    from graphopt.report import _render_verification
    from graphopt.verify import load_npz, verify as run_verify

    for path in (original, optimized):
        io.load(path)  # clear one-line errors for missing or broken files
    data = load_npz(inputs) if inputs else None
    result = run_verify(original, optimized, shapes=_shapes(shape), data=data, rtol=rtol, atol=atol)
    if json_out:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        _render_verification(_out, result)
    if result.status == "failed":
        raise typer.Exit(1)


@app.command("passes")
def list_passes() -> None:
    """What each pass does, and which levels run it."""
    from rich.table import Table

    from passes import LEVELS, REGISTRY

    table = Table(title="graphopt passes", title_justify="left")
    table.add_column("pass")
    table.add_column("levels")
    table.add_column("what it does")
    for name, spec in REGISTRY.items():
        levels = ",".join(str(lv) for lv, names in sorted(LEVELS.items()) if name in names) or "opt-in"
        table.add_row(name, levels, spec.description)
    _out.print(table)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: maps errors to one line and an exit code."""
    import onnx_ir as ir

    try:
        code = app(args=argv, standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except GraphoptError as e:
        _fail(str(e), e.exit_code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except (SystemExit, KeyboardInterrupt):
        raise
    except Exception as e:  # noqa: BLE001 - the CLI promises one line, never a traceback
        # Click's exception base, whether typer depends on click or vendors it (typer >= 0.2x).
        click_error = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
        if isinstance(e, typer.Abort):
            _fail("aborted", 130)
        if isinstance(e, click_error):
            message = e.format_message().strip()
            if not message:  # no arguments: the help was printed, nothing else to say
                sys.exit(2)
            _fail(_first_line(Exception(message)), 2)
        if isinstance(e, (ir.passes.PassError, ir.passes.InvariantError)):
            _fail(f"{_first_line(e)} (rerun with --debug for details)", 3, e)
        _fail(f"internal error: {type(e).__name__}: {_first_line(e)} (rerun with --debug for details)", 3, e)


def _first_line(e: BaseException) -> str:
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


def _fail(message: str, code: int, exc: BaseException | None = None) -> None:
    if _debug and exc is not None:
        _err.print_exception()
    _err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    sys.exit(code)


if __name__ == "__main__":
    main(sys.argv[1:])
