"""The `graphopt` console script end to end: models it must handle, usage errors, JSON, exit codes.

Most tests call the console script's entry point, `graphopt.app.cli.main(argv)`, in this
process (see conftest.run_cli); a few run the installed console script as a real process, end
to end: what stdout and fd 2 carry, SIGTERM, and a deliberately wrong pass registered by a
two-line wrapper around the same entry point.
"""

from __future__ import annotations

import json
import math
import sys
import textwrap

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

import graphopt
from graphopt.core.pipeline import PassSpec
from tests.conftest import (DIGITS, assert_one_line_error, control_flow_model, conv_bn_model, custom_op_model,
                            files_in, run_cli, two_output_model)


def _session(path_or_proto) -> ort.InferenceSession:
    source = path_or_proto.SerializeToString() if isinstance(path_or_proto, onnx.ModelProto) else str(path_or_proto)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _optimize_json(*args, cwd) -> tuple[dict, object]:
    run = run_cli("optimize", *args, "--json", cwd=cwd)
    assert "Traceback" not in run.stderr, str(run)
    return (json.loads(run.stdout) if run.stdout.strip().startswith("{") else None), run


# --- models graphopt must handle --------------------------------------------------------------------

def test_custom_domain_op_is_left_alone_and_verification_skipped(tmp_path):
    src, out = tmp_path / "custom.onnx", tmp_path / "custom.opt.onnx"
    onnx.save(custom_op_model(), src)
    run = run_cli("optimize", src, "-o", out, cwd=tmp_path)
    assert run.code == 0, str(run)
    assert "Traceback" not in run.stderr
    assert "NOT VERIFIED" in run.stdout and "warning" in run.stdout.lower(), str(run)
    optimized = onnx.load(out)
    mystery = [n for n in optimized.graph.node if n.op_type == "Mystery"]
    assert len(mystery) == 1
    original = next(n for n in custom_op_model().graph.node if n.op_type == "Mystery")
    assert mystery[0].domain == "com.example"
    assert {a.name: onnx.helper.get_attribute_value(a) for a in mystery[0].attribute} == \
           {a.name: onnx.helper.get_attribute_value(a) for a in original.attribute}
    assert {o.domain: o.version for o in optimized.opset_import}.get("com.example") == 1
    assert [o.name for o in optimized.graph.output] == ["y"]
    report, _ = _optimize_json(src, "-o", tmp_path / "again.onnx", cwd=tmp_path)
    assert report["verification"]["status"] == "skipped"
    assert any("not verified" in w for w in report["warnings"])


def test_control_flow_subgraphs_optimize_and_verify(tmp_path):
    src, out = tmp_path / "cf.onnx", tmp_path / "cf.opt.onnx"
    onnx.save(control_flow_model(), src)
    report, run = _optimize_json(src, "-o", out, cwd=tmp_path)
    assert run.code == 0, str(run)
    assert report["verification"]["status"] == "passed", report["verification"]
    optimized = onnx.load(out)
    onnx.checker.check_model(optimized, full_check=True)
    assert {"If", "Loop", "Scan"} <= {n.op_type for n in optimized.graph.node}
    assert [o.name for o in optimized.graph.output] == ["y", "z", "s"]
    # Both branches and several trip counts, not just the one random input verification drew.
    before, after = _session(src), _session(out)
    rng = np.random.default_rng(0)
    for cond in (True, False):
        for trip in (0, 1, 3):
            feeds = {"x": rng.standard_normal((2, 4)).astype(np.float32), "cond": np.array(cond),
                     "trip": np.array(trip, dtype=np.int64), "seq": rng.standard_normal((3, 4)).astype(np.float32)}
            for e, g in zip(before.run(None, feeds), after.run(None, feeds)):
                np.testing.assert_allclose(g, e, rtol=1e-6)


@pytest.mark.parametrize("data", [None, "npz"])
def test_dynamic_shapes_stay_dynamic(tmp_path, data):
    src, out = tmp_path / "dyn.onnx", tmp_path / "dyn.opt.onnx"
    onnx.save(conv_bn_model(batch="N"), src)
    flags, batch = [], 1  # dynamic dims are verified at 1 unless data says otherwise
    if data:
        np.savez(tmp_path / "x.npz", x=np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32))
        flags, batch = ["--inputs", tmp_path / "x.npz"], 4
    report, run = _optimize_json(src, "-o", out, *flags, cwd=tmp_path)
    assert run.code == 0, str(run)
    assert report["verification"]["status"] == "passed"
    assert report["verification"]["input_shapes"] == {"x": [batch, 3, 8, 8]}
    assert report["after"]["dynamic_dims"] == ["N"]
    optimized = onnx.load(out)
    for value in (optimized.graph.input[0], optimized.graph.output[0]):
        dims = value.type.tensor_type.shape.dim
        assert dims[0].dim_param == "N" and not dims[0].HasField("dim_value"), value
    before, after = _session(src), _session(out)
    for batch in (1, 5):
        feeds = {"x": np.random.default_rng(batch).standard_normal((batch, 3, 8, 8)).astype(np.float32)}
        np.testing.assert_allclose(after.run(None, feeds)[0], before.run(None, feeds)[0], rtol=1e-4, atol=1e-5)


def test_shape_fixes_input_dims(tmp_path):
    """`--shape` pins a dynamic input (and what follows from it) and verifies at that shape."""
    src, out = tmp_path / "dyn.onnx", tmp_path / "fixed.onnx"
    onnx.save(conv_bn_model(batch="N"), src)
    report, run = _optimize_json(src, "-o", out, "--shape", "x=4x3x8x8", cwd=tmp_path)
    assert run.code == 0, str(run)
    assert report["verification"]["status"] == "passed"
    assert report["verification"]["input_shapes"] == {"x": [4, 3, 8, 8]}
    dims = onnx.load(out).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [4, 3, 8, 8]


def test_outputs_keeps_only_the_named_output(tmp_path):
    src, out = tmp_path / "two.onnx", tmp_path / "two.opt.onnx"
    onnx.save(two_output_model(), src)
    report, run = _optimize_json(src, "-o", out, "--outputs", "a", cwd=tmp_path)
    assert run.code == 0, str(run)
    assert report["verification"]["status"] == "passed"
    optimized = onnx.load(out)
    assert [o.name for o in optimized.graph.output] == ["a"]
    assert {n.op_type for n in optimized.graph.node} <= {"Relu", "Identity"}
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_array_equal(_session(out).run(None, {"x": x})[0], np.maximum(x, 0))


def test_outputs_unknown_name(tmp_path):
    src = tmp_path / "two.onnx"
    onnx.save(two_output_model(), src)
    assert_one_line_error(run_cli("optimize", src, "--outputs", "nope", cwd=tmp_path), 2, "nope")
    assert files_in(tmp_path) == {"two.onnx"}


# --- usage errors -----------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", ["x", "x=", "=1x3x8x8", "x=1xAx8x8", "x=1,3,8,8", "x=1x3x8x8x"])
def test_malformed_shape(conv_bn_file, shape):
    run = run_cli("optimize", conv_bn_file, "--shape", shape, cwd=conv_bn_file.parent)
    assert_one_line_error(run, 2, "--shape")
    assert files_in(conv_bn_file.parent) == {"conv_bn.onnx"}


def test_shape_for_unknown_input(conv_bn_file):
    run = run_cli("optimize", conv_bn_file, "--shape", "nope=1x3x8x8", cwd=conv_bn_file.parent)
    assert_one_line_error(run, 2, "nope")


@pytest.mark.parametrize("flags, needle", [
    (["--passes", "fold_batchnorm,no_such_pass"], "no_such_pass"),
    (["--skip", "no_such_pass"], "no_such_pass"),
    (["--level", "9"], "level"),
    (["--level", "two"], "level"),
    (["--inputs", "missing.npz"], "missing.npz"),
    (["--no-such-flag"], "no-such-flag"),
])
def test_usage_errors(conv_bn_file, flags, needle):
    run = run_cli("optimize", conv_bn_file, *flags, cwd=conv_bn_file.parent)
    assert_one_line_error(run, 2, needle)
    assert files_in(conv_bn_file.parent) == {"conv_bn.onnx"}


@pytest.mark.parametrize("flags, needle", [
    (["--fold-limit", "nan"], "--fold-limit nan"),
    (["--fold-limit", "inf"], "--fold-limit inf"),
    (["--fold-limit", "-1"], "--fold-limit -1"),
    (["--rtol", "nan"], "--rtol nan"),
    (["--atol", "-1"], "--atol -1"),
    (["--threads", "0"], "--threads 0"),
    (["--threads", "100000"], "--threads 100000"),
    (["--shape", "x=123456789012345678901x3x8x8"], "each dim"),
])
def test_bad_option_values_are_usage_errors(conv_bn_file, flags, needle):
    run = run_cli("optimize", conv_bn_file, *flags, cwd=conv_bn_file.parent)
    assert_one_line_error(run, 2, needle)
    assert files_in(conv_bn_file.parent) == {"conv_bn.onnx"}


@pytest.mark.parametrize("args", [
    ["optimize", "missing.onnx"],
    ["optimize", "conv_bn.onnx", "--rtol", "nan"],
    ["optimize", "conv_bn.onnx", "--no-such-flag"],
    ["inspect", "missing.onnx"],
    ["verify", "conv_bn.onnx", "missing.onnx"],
])
def test_json_failures_print_one_error_object(conv_bn_file, args):
    run = run_cli(*args, "--json", cwd=conv_bn_file.parent)
    line = assert_one_line_error(run, 2)
    assert json.loads(run.stdout) == {"error": line.removeprefix("error: "), "exit_code": 2}


def test_ort_log_never_reaches_stderr(tmp_path):
    """ORT cannot run the custom op: its C++ error log (colour codes included) stays out of stderr."""
    src = tmp_path / "custom.onnx"
    onnx.save(custom_op_model(), src)
    run = run_cli("optimize", src, "-o", tmp_path / "out.onnx", cwd=tmp_path, subprocess_run=True)  # fd 2 itself
    assert run.code == 0, str(run)
    assert run.stderr == "", str(run)
    assert "\x1b[" not in run.stdout and "onnxruntime_src" not in run.stdout


def test_sigterm_removes_temporary_files_and_prints_one_line(tmp_path):
    import os
    import signal
    import subprocess
    import time

    from tests.conftest import graphopt_command

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    src = tmp_path / "digits.onnx"
    src.write_bytes(DIGITS.read_bytes())
    proc = subprocess.Popen([*graphopt_command(), "optimize", src, "-o", tmp_path / "out.onnx", "--quantize", "int8",
                             "--calibration", "random"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, TMPDIR=str(scratch)))
    deadline = time.monotonic() + 120
    while proc.poll() is None and not any("graphopt" in p.name for p in scratch.iterdir()):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal")
    assert proc.returncode == 143, err
    assert [ln for ln in err.splitlines() if ln.strip()] == ["error: terminated (SIGTERM)"]
    assert {p.name for p in scratch.iterdir()} <= {".ses"}  # ORT's own session id file, not ours
    assert not (tmp_path / "out.onnx").exists()


def test_no_arguments_prints_help():
    run = run_cli()
    assert run.code == 2 and "optimize" in run.stdout and "Traceback" not in run.stderr


# --- output formats ------------------------------------------------------------------------------------

def test_json_prints_exactly_one_object(tmp_path):
    src = tmp_path / "digits.onnx"
    src.write_bytes(DIGITS.read_bytes())
    run = run_cli("optimize", src, "-o", tmp_path / "out.onnx", "--json", cwd=tmp_path, subprocess_run=True)
    assert run.code == 0, str(run)
    report = json.loads(run.stdout)  # raises on anything before or after the one object
    assert isinstance(report, dict)
    assert report["verification"]["status"] == "passed"
    assert report["before"]["op_histogram"]["BatchNormalization"] == 4
    assert report["after"]["op_histogram"].get("BatchNormalization", 0) == 0
    assert {p["name"] for p in report["passes"]} >= {"fold_batchnorm", "eliminate_dead_code"}
    assert report["file_bytes_after"] == (tmp_path / "out.onnx").stat().st_size


def test_report_file(tmp_path):
    src = tmp_path / "digits.onnx"
    src.write_bytes(DIGITS.read_bytes())
    run = run_cli("optimize", src, "-o", tmp_path / "out.onnx", "--report", tmp_path / "r.md", cwd=tmp_path)
    assert run.code == 0, str(run)
    assert "verification: passed" in (tmp_path / "r.md").read_text()


def test_inspect_digits_prints_macs_and_histogram():
    run = run_cli("inspect", DIGITS)
    assert run.code == 0, str(run)
    assert "MACs" in run.stdout and "op histogram" in run.stdout
    for op, count in {"Conv": 4, "BatchNormalization": 4, "Relu": 4, "Gemm": 1}.items():
        assert any(line.split("│")[1:3] and line.split("│")[1].strip() == op and line.split("│")[2].strip() ==
                   str(count) for line in run.stdout.splitlines() if "│" in line), (op, run.stdout)


def _expected_macs(model: onnx.ModelProto) -> int:
    """MACs of Conv and Gemm at batch 1, from onnx shape inference, independently of graphopt."""
    model = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for v in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        shapes[v.name] = [d.dim_value if d.HasField("dim_value") else 1 for d in v.type.tensor_type.shape.dim]
    weights = {t.name: list(t.dims) for t in model.graph.initializer}
    total = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            w, y = weights[node.input[1]], shapes[node.output[0]]
            total += math.prod(y) * math.prod(w[1:])
        elif node.op_type == "Gemm":  # M x N x K, whichever way B is stored
            total += shapes[node.output[0]][0] * math.prod(weights[node.input[1]])
    return total


def test_inspect_json_macs_match_an_independent_count():
    run = run_cli("inspect", DIGITS, "--json")
    assert run.code == 0, str(run)
    info = json.loads(run.stdout)
    assert info["macs"] == _expected_macs(onnx.load(DIGITS)) > 0
    assert info["op_histogram"]["Conv"] == 4
    assert info["dynamic_dims"] == ["batch"]
    assert info["inputs"][0]["shape"] == ["batch", 1, 8, 8]


def test_verify_command(tmp_path):
    same = run_cli("verify", DIGITS, DIGITS, cwd=tmp_path)
    assert same.code == 0, str(same)
    other = tmp_path / "other.onnx"
    model = onnx.load(DIGITS)
    gemm_bias = next(n for n in model.graph.node if n.op_type == "Gemm").input[2]
    init = next(t for t in model.graph.initializer if t.name == gemm_bias)
    init.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(init) + 1.0, gemm_bias))
    onnx.save(model, other)
    differs = run_cli("verify", DIGITS, other, cwd=tmp_path)
    assert differs.code == 1, str(differs)
    assert "failed" in differs.stdout


# --- verification failure: a deliberately wrong pass ------------------------------------------------

class BreakFirstWeightPass(ir.passes.InPlacePass):
    """Wrong on purpose: doubles the first float initializer and adds one. Changes the model once."""

    def __init__(self):
        super().__init__()
        self.done = False

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        if self.done:
            return ir.passes.PassResult(model, False)
        for value in model.graph.initializers.values():
            if value.dtype == ir.DataType.FLOAT and value.const_value is not None:
                value.const_value = ir.tensor(value.const_value.numpy() * 2 + 1, name=value.name)
                self.done = True
                return ir.passes.PassResult(model, True)
        return ir.passes.PassResult(model, False)


WRONG_PASS = PassSpec("break_first_weight", lambda options: BreakFirstWeightPass(), "deliberately wrong (tests)")

_WRAPPER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests_parent!r})
    import graphopt.passes as passes
    from tests.test_cli import WRONG_PASS
    passes.REGISTRY[WRONG_PASS.name] = WRONG_PASS
    from graphopt.app.cli import main
    main(sys.argv[1:])
""")


def test_wrong_pass_fails_verification_in_the_api(monkeypatch):
    import graphopt.passes as passes

    monkeypatch.setitem(passes.REGISTRY, WRONG_PASS.name, WRONG_PASS)
    result = graphopt.optimize(DIGITS, passes=["break_first_weight"])
    assert result.report.verification.status == "failed"
    assert not result.report.verification.ok
    assert not all(check.ok for check in result.report.verification.outputs)


def test_verification_failure_exits_1_and_writes_nothing_unless_forced(tmp_path):
    from tests.conftest import REPO

    wrapper = tmp_path / "graphopt_with_wrong_pass.py"
    wrapper.write_text(_WRAPPER.format(tests_parent=str(REPO)))
    command = [sys.executable, str(wrapper)]
    src = tmp_path / "digits.onnx"
    src.write_bytes(DIGITS.read_bytes())
    out = tmp_path / "out.onnx"

    run = run_cli("optimize", src, "-o", out, "--passes", "break_first_weight", cwd=tmp_path, command=command)
    assert run.code == 1, str(run)
    assert "Traceback" not in run.stderr
    assert "failed" in run.stdout
    assert files_in(tmp_path) == {"digits.onnx", wrapper.name}

    run = run_cli("optimize", src, "-o", out, "--passes", "break_first_weight", "--json", cwd=tmp_path,
                  command=command)
    assert run.code == 1, str(run)
    report = json.loads(run.stdout)
    assert report["verification"]["status"] == "failed"
    assert report["exit_code"] == 1 and "verification failed" in report["error"]  # what every --json failure has
    assert_one_line_error(run, 1, "verification failed")
    assert not out.exists()

    run = run_cli("optimize", src, "-o", out, "--passes", "break_first_weight", "--force", cwd=tmp_path,
                  command=command)
    assert run.code == 1, str(run)
    assert out.exists()
    assert src.read_bytes() == DIGITS.read_bytes()
