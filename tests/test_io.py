"""Loading and saving: every bad input is one line on stderr and exit 2; outputs are atomic; external data.

The error cases run the real console script in a subprocess, so what is checked is what a
user sees: the exit code, exactly one `error: ...` line, no traceback.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

import graphopt
from graphopt.core import io
from graphopt.core.errors import InputError, UsageError
from tests.conftest import (DIGITS, assert_one_line_error, conv_bn_model, files_in, run_cli,
                            save_with_external_data)


def _ort(path_or_proto, feeds):
    source = path_or_proto.SerializeToString() if isinstance(path_or_proto, onnx.ModelProto) else str(path_or_proto)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"]).run(None, feeds)


def _feeds(batch: int = 2) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(1).standard_normal((batch, 3, 8, 8)).astype(np.float32)}


# --- bad inputs through the console script --------------------------------------------------------

@pytest.mark.parametrize("command", ["optimize", "inspect"])
def test_missing_file(tmp_path, command):
    run = run_cli(command, tmp_path / "nope.onnx", cwd=tmp_path)
    assert_one_line_error(run, 2, "no such file")
    assert files_in(tmp_path) == set()


def test_missing_file_verify(tmp_path):
    run = run_cli("verify", DIGITS, tmp_path / "nope.onnx", cwd=tmp_path)
    assert_one_line_error(run, 2, "no such file")


def test_directory_instead_of_file(tmp_path):
    assert_one_line_error(run_cli("optimize", tmp_path, cwd=tmp_path), 2, "directory")


@pytest.mark.parametrize("kind", ["random_bytes", "text", "empty", "json"])
def test_not_an_onnx_file(tmp_path, kind):
    path = tmp_path / "bad.onnx"
    content = {
        "random_bytes": np.random.default_rng(0).bytes(4096),
        "text": b"this is a text file, not a model\nsecond line\n",
        "empty": b"",
        "json": b'{"graph": {"node": []}}\n',
    }[kind]
    path.write_bytes(content)
    line = assert_one_line_error(run_cli("optimize", path, cwd=tmp_path), 2)
    assert "onnx" in line.lower() and str(path.name) in line
    assert path.read_bytes() == content
    assert files_in(tmp_path) == {"bad.onnx"}


def test_truncated_model(tmp_path):
    data = DIGITS.read_bytes()
    path = tmp_path / "half.onnx"
    path.write_bytes(data[: len(data) // 2])
    assert_one_line_error(run_cli("optimize", path, cwd=tmp_path), 2, "truncated")
    assert files_in(tmp_path) == {"half.onnx"}


def test_missing_external_data(tmp_path):
    path = tmp_path / "m.onnx"
    data = save_with_external_data(conv_bn_model(), path)
    data.unlink()
    line = assert_one_line_error(run_cli("optimize", path, cwd=tmp_path), 2, "missing")
    assert data.name in line


def test_truncated_external_data(tmp_path):
    path = tmp_path / "m.onnx"
    data = save_with_external_data(conv_bn_model(), path)
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    line = assert_one_line_error(run_cli("optimize", path, cwd=tmp_path), 2, "truncated")
    assert data.name in line


@pytest.mark.parametrize("ir_version", [99, 1])
def test_unsupported_ir_version(tmp_path, ir_version):
    model = conv_bn_model()
    model.ir_version = ir_version
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    assert_one_line_error(run_cli("optimize", path, cwd=tmp_path), 2, "IR version")


def test_unsupported_ir_version_api():
    model = conv_bn_model()
    model.ir_version = 99
    with pytest.raises(InputError, match="IR version 99"):
        graphopt.load(model)


def test_load_rejects_other_types():
    with pytest.raises(UsageError):
        graphopt.load(b"bytes are not a model")


# --- the input is never overwritten; outputs are atomic ------------------------------------------

def test_output_equal_to_input_is_refused(conv_bn_file):
    before = conv_bn_file.read_bytes()
    mtime = conv_bn_file.stat().st_mtime_ns
    run = run_cli("optimize", conv_bn_file, "-o", conv_bn_file, cwd=conv_bn_file.parent)
    assert_one_line_error(run, 2, "input")
    # The same file spelled differently is the same file.
    other_spelling = conv_bn_file.parent / "sub" / ".." / conv_bn_file.name
    (conv_bn_file.parent / "sub").mkdir()
    assert_one_line_error(run_cli("optimize", conv_bn_file, "-o", other_spelling), 2, "input")
    assert conv_bn_file.read_bytes() == before
    assert conv_bn_file.stat().st_mtime_ns == mtime
    assert files_in(conv_bn_file.parent) == {conv_bn_file.name, "sub"}


def test_output_through_symlink_to_input_is_refused(conv_bn_file):
    before = conv_bn_file.read_bytes()
    link = conv_bn_file.parent / "link.onnx"
    link.symlink_to(conv_bn_file)
    assert_one_line_error(run_cli("optimize", conv_bn_file, "-o", link), 2, "input")
    assert conv_bn_file.read_bytes() == before


def test_output_would_overwrite_input_external_data(tmp_path):
    """Input a.onnx keeps its weights in b.onnx.data; writing b.onnx with external data would clobber it."""
    path = tmp_path / "a.onnx"
    data = save_with_external_data(conv_bn_model(), path, location="b.onnx.data")
    before = data.read_bytes()
    run = run_cli("optimize", path, "-o", tmp_path / "b.onnx", cwd=tmp_path)
    assert_one_line_error(run, 2, "input")
    assert data.read_bytes() == before
    assert files_in(tmp_path) == {"a.onnx", "b.onnx.data"}


def test_output_written_atomically_and_input_unchanged(conv_bn_file):
    directory = conv_bn_file.parent
    before = conv_bn_file.read_bytes()
    out = directory / "out.onnx"
    out.write_bytes(b"stale output from an earlier run")
    run = run_cli("optimize", conv_bn_file, "-o", out, cwd=directory, subprocess_run=True)  # end to end
    assert run.code == 0, str(run)
    assert conv_bn_file.read_bytes() == before
    assert files_in(directory) == {"conv_bn.onnx", "out.onnx"}  # no temp files or directories left
    onnx.checker.check_model(onnx.load(out), full_check=True)
    np.testing.assert_allclose(_ort(out, _feeds())[0], _ort(conv_bn_file, _feeds())[0], rtol=1e-4, atol=1e-5)


def test_default_output_path(conv_bn_file):
    run = run_cli("optimize", conv_bn_file, cwd=conv_bn_file.parent)
    assert run.code == 0, str(run)
    assert files_in(conv_bn_file.parent) == {"conv_bn.onnx", "conv_bn.opt.onnx"}


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    """A crash while writing leaves neither a partial output nor the staging directory."""
    model = graphopt.load(conv_bn_model())
    target = tmp_path / "out.onnx"
    target.write_bytes(b"previous")

    def broken_save(*args, **kwargs):
        path = pathlib.Path(args[1])
        path.write_bytes(b"half a model")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io.protowrite, "write_inline", broken_save)
    with pytest.raises(InputError, match="cannot write"):
        io.save(model, target)
    assert target.read_bytes() == b"previous"
    assert files_in(tmp_path) == {"out.onnx"}


def test_unwritable_output_directory(conv_bn_file, tmp_path):
    if os.geteuid() == 0:
        target = pathlib.Path("/proc/graphopt-cannot-write-here/out.onnx")
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = locked / "out.onnx"
    assert_one_line_error(run_cli("optimize", conv_bn_file, "-o", target), 2)


# --- external data ----------------------------------------------------------------------------------

def test_save_with_external_data_roundtrip(tmp_path):
    """A small model forced to external data: the files exist, reload, and ORT gives the same outputs."""
    original = conv_bn_model()
    model = graphopt.load(original)
    out = tmp_path / "small.onnx"
    written = io.save(model, out, external_data=True)
    data = tmp_path / "small.onnx.data"
    assert written == [out.resolve(), data.resolve()]
    assert data.stat().st_size >= 8 * 3 * 3 * 3 * 4  # the Conv weight
    assert out.stat().st_size < data.stat().st_size
    reloaded = onnx.load(out, load_external_data=False)
    external = {t.name for t in reloaded.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}
    assert "w" in external  # small tensors may stay inline
    onnx.checker.check_model(str(out), full_check=True)
    np.testing.assert_allclose(_ort(out, _feeds())[0], _ort(original, _feeds())[0], rtol=1e-6)
    assert files_in(tmp_path) == {"small.onnx", "small.onnx.data"}


def test_optimize_keeps_external_data_and_never_touches_the_input_data(tmp_path):
    src = tmp_path / "m.onnx"
    data = save_with_external_data(conv_bn_model(), src)
    before = data.read_bytes(), src.read_bytes()
    out = tmp_path / "m.opt.onnx"
    run = run_cli("optimize", src, "-o", out, cwd=tmp_path)
    assert run.code == 0, str(run)
    assert (data.read_bytes(), src.read_bytes()) == before
    assert files_in(tmp_path) == {"m.onnx", "m.onnx.data", "m.opt.onnx", "m.opt.onnx.data"}
    np.testing.assert_allclose(_ort(out, _feeds())[0], _ort(src, _feeds())[0], rtol=1e-4, atol=1e-5)
    # The output reads its own data file, not the input's.
    locations = {entry.value for t in onnx.load(out, load_external_data=False).graph.initializer
                 for entry in t.external_data if entry.key == "location"}
    assert locations == {"m.opt.onnx.data"}


def test_result_save_forced_inline_from_external_source(tmp_path):
    src = tmp_path / "m.onnx"
    save_with_external_data(conv_bn_model(), src)
    result = graphopt.optimize(src, verify=False)
    out = tmp_path / "inline.onnx"
    assert result.save(out, external_data=False) == [out.resolve()]
    np.testing.assert_allclose(_ort(out, _feeds())[0], _ort(src, _feeds())[0], rtol=1e-4, atol=1e-5)


def test_load_accepts_path_proto_and_ir_without_mutating(tmp_path):
    proto = conv_bn_model()
    path = tmp_path / "m.onnx"
    onnx.save(proto, path)
    ir_model = ir.serde.deserialize_model(proto)
    for source in (path, str(path), proto, ir_model):
        model = graphopt.load(source)
        assert isinstance(model, ir.Model)
        assert [n.op_type for n in model.graph] == ["Conv", "BatchNormalization", "Relu"]
    graphopt.optimize(ir_model, verify=False)
    graphopt.optimize(proto, verify=False)
    assert [n.op_type for n in ir_model.graph] == ["Conv", "BatchNormalization", "Relu"]
    assert [n.op_type for n in proto.graph.node] == ["Conv", "BatchNormalization", "Relu"]


def test_ir_model_with_external_data_from_another_directory(tmp_path, monkeypatch):
    """An ir.Model read elsewhere keeps reading its weights after graphopt copies it."""
    (tmp_path / "models").mkdir()
    src = tmp_path / "models" / "m.onnx"
    save_with_external_data(conv_bn_model(), src)
    model = ir.load(src)
    monkeypatch.chdir(tmp_path)  # the data file is not relative to the working directory
    result = graphopt.optimize(model)
    assert result.report.verification.status == "passed"
    written = result.save(tmp_path / "out.onnx")
    assert [p.name for p in written] == ["out.onnx", "out.onnx.data"]
    np.testing.assert_allclose(_ort(tmp_path / "out.onnx", _feeds())[0], _ort(src, _feeds())[0], rtol=1e-4, atol=1e-5)


# --- the verified file is the file that lands ---------------------------------------------------

def test_save_moves_the_verified_file_and_cleans_up(conv_bn_file, tmp_path, monkeypatch):
    result = graphopt.optimize(conv_bn_file)
    staging = result._staged.path.parent
    assert staging.is_dir()
    # The staged file, not a second serialization: saving must not write the model again.
    monkeypatch.setattr(io.protowrite, "write_inline", lambda *a, **k: pytest.fail("serialized twice"))
    target = tmp_path / "moved.onnx"
    written = result.save(target)
    assert written == [target.resolve()] and result.report.output == str(target.resolve())
    assert not staging.exists()
    feeds = _feeds()
    np.testing.assert_allclose(_ort(target, feeds)[0], _ort(conv_bn_file, feeds)[0], rtol=1e-4, atol=1e-5)
    assert result.report.file_bytes_after == target.stat().st_size
    monkeypatch.undo()
    second = tmp_path / "again.onnx"  # a second save serializes the model again
    result.save(second)
    assert onnx.load(second) == onnx.load(target)


def test_reading_model_before_save_writes_what_the_caller_changed(conv_bn_file, tmp_path):
    result = graphopt.optimize(conv_bn_file)
    result.model.graph.outputs[0].name = "renamed"  # the caller edits the result
    result.save(tmp_path / "edited.onnx")
    assert [o.name for o in onnx.load(tmp_path / "edited.onnx").graph.output] == ["renamed"]


def test_save_refuses_the_input_on_the_staged_path_too(conv_bn_file):
    result = graphopt.optimize(conv_bn_file)
    with pytest.raises(UsageError, match="refusing to overwrite the input"):
        result.save(conv_bn_file)
    assert onnx.load(conv_bn_file).graph.node  # untouched
