"""Shared fixtures: the `graphopt` command line (in process, or the real console script in a
subprocess), and small models on disk."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import pathlib
import subprocess
import sys

import numpy as np
import onnx
import onnx.helper as oh
import onnx.parser
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
DIGITS = REPO / "models" / "digits_cnn.onnx"


def graphopt_command() -> list[str]:
    """The installed console script beside this interpreter, else `python -m graphopt`."""
    script = pathlib.Path(sys.executable).parent / "graphopt"
    return [str(script)] if script.exists() else [sys.executable, "-m", "graphopt"]


@dataclasses.dataclass
class CliRun:
    args: list[str]
    code: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return f"graphopt {' '.join(self.args)} -> exit {self.code}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


def run_cli(*args, cwd: pathlib.Path | None = None, timeout: float = 300, command=None,
            subprocess_run: bool = False) -> CliRun:
    """`graphopt ARGS`: in this process through the console script's own entry point
    (`graphopt.app.cli.main(argv)`: the same parsing, error lines and exit codes), or, with
    `subprocess_run` or a `command`, as a real process (what only a process shows: the
    interpreter's start-up, signals, output written by C++ libraries straight to fd 2)."""
    argv = [str(a) for a in args]
    if not subprocess_run and command is None:
        return _run_in_process(argv, cwd)
    proc = subprocess.run([*(command or graphopt_command()), *argv], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)
    return CliRun(argv, proc.returncode, proc.stdout, proc.stderr)


def _run_in_process(argv: list[str], cwd: pathlib.Path | None) -> CliRun:
    from graphopt.app.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    previous = os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(argv)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        os.chdir(previous)
    return CliRun(argv, code, out.getvalue(), err.getvalue())


def assert_one_line_error(run: CliRun, code: int = 2, contains: str | None = None) -> str:
    """Exit `code`, exactly one non-empty line on stderr, no traceback; returns that line."""
    lines = [ln for ln in run.stderr.splitlines() if ln.strip()]
    assert run.code == code, str(run)
    assert "Traceback" not in run.stderr and "Traceback" not in run.stdout, str(run)
    assert len(lines) == 1, str(run)
    assert lines[0].startswith("error:"), str(run)
    if contains is not None:
        assert contains.lower() in lines[0].lower(), str(run)
    return lines[0]


def files_in(directory: pathlib.Path) -> set[str]:
    """Every file and directory under `directory`, relative, hidden ones included."""
    return {str(p.relative_to(directory)) for p in directory.rglob("*")}


# --- small models -------------------------------------------------------------------------------

def conv_bn_model(batch: str | int = "N", seed: int = 0) -> onnx.ModelProto:
    """x[batch,3,8,8] -> Conv (no bias) -> BatchNormalization -> Relu -> y, real random weights."""
    rng = np.random.default_rng(seed)
    inits = [
        onnx.numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w"),
        onnx.numpy_helper.from_array(rng.uniform(0.5, 1.5, 8).astype(np.float32), "gamma"),
        onnx.numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "beta"),
        onnx.numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "mean"),
        onnx.numpy_helper.from_array(rng.uniform(0.5, 1.5, 8).astype(np.float32), "var"),
    ]
    nodes = [
        oh.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        oh.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["b"], name="bn"),
        oh.make_node("Relu", ["b"], ["y"], name="relu"),
    ]
    graph = oh.make_graph(nodes, "conv_bn",
                          [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [batch, 3, 8, 8])],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [batch, 8, 8, 8])], inits)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)


def two_output_model() -> onnx.ModelProto:
    return onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        two (float[2, 4] x) => (float[2, 4] a, float[2, 4] b) {
            r = Relu (x)
            a = Identity (r)
            s = Sigmoid (x)
            b = Neg (s)
        }""")


def custom_op_model() -> onnx.ModelProto:
    """Relu -> com.example::Mystery -> Identity: ORT cannot run it; graphopt must not touch Mystery."""
    return onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17, "com.example" : 1]>
        custom (float[2, 4] x) => (float[2, 4] y) {
            r = Relu (x)
            m = com.example.Mystery <alpha = 0.5, mode = "fast"> (r)
            i = Identity (m)
            y = Abs (i)
        }""")


def control_flow_model() -> onnx.ModelProto:
    """If, Loop and Scan with outer-scope references and Identities inside the bodies."""
    return onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        control_flow (float[N, 4] x, bool cond, int64 trip, float[3, 4] seq)
            => (float[N, 4] y, float[N, 4] z, float[4] s)
        <float[4] c1 = {1.0, 2.0, 3.0, 4.0}>
        {
            y = If (cond) <
                then_branch = then_g () => (float[N, 4] t) { i = Identity (x)
                                                             t = Add (i, c1) },
                else_branch = else_g () => (float[N, 4] e) { e = Mul (x, c1) }>
            true = Constant <value = bool {1}> ()
            z = Loop (trip, true, x) <body = body_g (int64 it, bool c_in, float[N, 4] v)
                                                 => (bool c_out, float[N, 4] v_out) {
                c_out = Identity (c_in)
                w = Identity (v)
                v_out = Add (w, x) }>
            zero = Constant <value = float[4] {0.0, 0.0, 0.0, 0.0}> ()
            s_final, s_all = Scan (zero, seq) <num_scan_inputs = 1, body = scan_g (float[4] acc, float[4] row)
                                                                         => (float[4] acc_out, float[4] row_out) {
                acc_out = Add (acc, row)
                row_out = Identity (acc_out) }>
            s = Identity (s_final)
        }""")


def save_with_external_data(model: onnx.ModelProto, path: pathlib.Path, location: str | None = None) -> pathlib.Path:
    """Save every initializer to one external file; return the data file's path."""
    location = location or path.name + ".data"
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=0)
    return path.parent / location


@pytest.fixture
def workdir(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path


@pytest.fixture
def conv_bn_file(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "conv_bn.onnx"
    onnx.save(conv_bn_model(), path)
    return path
