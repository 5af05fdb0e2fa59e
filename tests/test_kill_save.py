"""SIGKILL at every write, rename, unlink and mkdir of a save leaves the old complete output or the
new complete one (ORT loads it and gives that model's outputs), and the next save leaves nothing
else beside it (graphopt/core/atomic.py).

The save runs in a forked child; strace attaches to it and kills it at the k-th traced system
call (`-e inject=...:signal=SIGKILL:when=k`, which fires before the call runs), for every k up
to the number of calls a save makes. A slow variant does the same to the whole `graphopt
optimize` command (a model with external data) at each of its renames, as the issue reproduced it.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import graphopt
from graphopt.core import io
from tests.conftest import conv_bn_model, graphopt_command, save_with_external_data

STRACE = shutil.which("strace")
pytestmark = pytest.mark.skipif(STRACE is None or not hasattr(os, "fork"), reason="needs strace and fork")

# Every call that changes the file system (openat is not needed: the state before it is the state
# after the previous call, and a created file is only seen through a later write or rename).
CALLS = ("write,pwrite64,writev,pwritev,rename,renameat,renameat2,unlink,unlinkat,rmdir,mkdir,mkdirat,"
         "fsync,fdatasync,ftruncate,copy_file_range,sendfile,link,linkat,symlink,symlinkat")
FEEDS = {"x": np.random.default_rng(7).standard_normal((1, 3, 8, 8)).astype(np.float32)}


def _outputs(path: pathlib.Path) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 4
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, FEEDS)[0]


def _data_locations(path: pathlib.Path) -> set[str]:
    proto = onnx.load(str(path), load_external_data=False)
    return {e.value for t in onnx.external_data_helper._get_all_tensors(proto) for e in t.external_data
            if e.key == "location"}


def _save_killed_at(call: tuple[str, int] | None, save) -> tuple[int, list[str]]:
    """Run `save()` in a forked child traced by strace, killed before the n-th call of system call
    `name` (`call` = (name, n); None: not killed). Returns (wait status, the traced calls in order)."""
    log = pathlib.Path(f"/tmp/graphopt-kill-{os.getpid()}.log")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child waits for strace, saves, and leaves without running pytest's exit handlers
        os.close(write_end)
        os.read(read_end, 1)
        try:
            save()
        finally:
            os._exit(0)
    os.close(read_end)
    # strace counts `when=` per system call, so the k-th call overall is named by its own ordinal.
    inject = [] if call is None else ["-e", f"inject={call[0]}:signal=SIGKILL:when={call[1]}"]
    tracer = subprocess.Popen([STRACE, "-qq", "-f", "-p", str(pid), "-e", f"trace={CALLS}", *inject,
                               "-o", str(log)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while "TracerPid:\t0\n" in pathlib.Path(f"/proc/{pid}/status").read_text():
        assert time.monotonic() < deadline, "strace did not attach"
        time.sleep(0.005)
    os.write(write_end, b"x")
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    tracer.wait(timeout=30)
    calls = [line.split("(", 1)[0].split()[-1] for line in log.read_text().splitlines()
             if "(" in line and "resumed>" not in line]
    log.unlink()
    return status, calls


def _ordinals(calls: list[str]) -> list[tuple[str, int]]:
    """Each call as (name, how many calls of that name so far, itself included)."""
    seen: dict[str, int] = {}
    out = []
    for name in calls:
        seen[name] = seen.get(name, 0) + 1
        out.append((name, seen[name]))
    return out


@pytest.mark.parametrize("external_data", [True, False], ids=["pair", "single"])
def test_kill_at_every_call_of_a_save_leaves_old_or_new_output(tmp_path, external_data):
    old, new, newer = (graphopt.load(conv_bn_model(seed=s)) for s in (1, 2, 3))
    folder = tmp_path / "dest"
    base = tmp_path / "base"
    base.mkdir()
    io.save(old, base / "out.onnx", external_data=external_data)
    expected_old = _outputs(base / "out.onnx")

    def fresh() -> pathlib.Path:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(base, folder)
        return folder / "out.onnx"

    target = fresh()
    status, calls = _save_killed_at(None, lambda: io.save(new, target, external_data=external_data))
    assert os.WIFEXITED(status) and len(calls) >= 3
    expected_new = _outputs(target)
    assert not np.allclose(expected_new, expected_old)
    outcomes = []
    for k, call in enumerate(_ordinals(calls), 1):
        target = fresh()
        status, _ = _save_killed_at(call, lambda target=target: io.save(new, target, external_data=external_data))
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == 9, f"call {k} {call}: not killed"
        got = _outputs(target)  # loads: a complete model whose data files exist and match
        which = "old" if np.array_equal(got, expected_old) else "new" if np.array_equal(got, expected_new) else None
        assert which, f"killed before call {k}: the output is neither the old model nor the new one"
        outcomes.append(which)
        if external_data:
            assert all((folder / name).is_file() for name in _data_locations(target))
        # The next run cleans what the killed one left: its staging folder, an unread data file.
        written = io.save(newer, target, external_data=external_data)
        assert {p.name for p in folder.iterdir()} == {p.name for p in written}, f"call {k}: leftovers"
    assert outcomes[0] == "old" and outcomes[-1] == "new"  # the sweep crossed the commit point


@pytest.mark.slow
def test_kill_at_every_rename_of_graphopt_optimize(tmp_path):
    """The issue's reproduction: `strace -e inject=rename:signal=SIGKILL:when=N graphopt optimize`."""
    src = tmp_path / "in" / "m.onnx"
    src.parent.mkdir()
    save_with_external_data(conv_bn_model(seed=4), src)
    out_dir = tmp_path / "out"
    command = graphopt_command()
    first = subprocess.run([*command, "optimize", str(src), "-o", str(out_dir / "m.opt.onnx"), "--level", "1"],
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    previous = _outputs(out_dir / "m.opt.onnx")
    renames = "rename,renameat,renameat2"
    log = tmp_path / "renames.log"
    subprocess.run([STRACE, "-qq", "-f", "-e", f"trace={renames}", "-o", str(log), *command, "optimize", str(src),
                    "-o", str(out_dir / "m.opt.onnx")], capture_output=True, timeout=300, check=True)
    count = sum(1 for line in log.read_text().splitlines() if " rename(" in line)
    assert count >= 2
    for k in range(1, count + 1):
        # Injection needs the call traced (-e trace=none would inject nothing); the log goes nowhere.
        run = subprocess.run([STRACE, "-qq", "-f", "-o", os.devnull, "-e", "trace=rename",
                              "-e", f"inject=rename:signal=SIGKILL:when={k}",
                              *command, "optimize", str(src), "-o", str(out_dir / "m.opt.onnx")],
                             capture_output=True, timeout=300)
        assert run.returncode != 0, f"rename {k}: not killed"
        np.testing.assert_allclose(_outputs(out_dir / "m.opt.onnx"), previous, rtol=1e-4, atol=1e-5)
        again = subprocess.run([*command, "optimize", str(src), "-o", str(out_dir / "m.opt.onnx")],
                               capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr
        names = {p.name for p in out_dir.iterdir()}
        assert names == {"m.opt.onnx", *_data_locations(out_dir / "m.opt.onnx")}, names
        previous = _outputs(out_dir / "m.opt.onnx")
