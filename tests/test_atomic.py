"""graphopt/core/atomic.py: a model + data pair replaced as one, stale staging removed, odd targets refused.

The kill test (tests/test_kill_save.py) proves the protocol under SIGKILL; these pin its rules.
"""

from __future__ import annotations

import os
import pathlib
import stat
import subprocess
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import graphopt
from graphopt.core import atomic, io
from graphopt.core.errors import UsageError
from tests.conftest import conv_bn_model, files_in, save_with_external_data

FEEDS = {"x": np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)}


def _run(path: pathlib.Path) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 4
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, FEEDS)[0]


def _locations(path: pathlib.Path) -> set[str]:
    proto = onnx.load(str(path), load_external_data=False)
    return {e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"}


def test_pair_alternates_data_names_and_removes_the_old_data(tmp_path):
    target = tmp_path / "out.onnx"
    names = []
    for seed in (1, 2, 3):
        written = io.save(graphopt.load(conv_bn_model(seed=seed)), target, external_data=True)
        names.append(written[1].name)
        assert _locations(target) == {written[1].name}
        assert files_in(tmp_path) == {"out.onnx", written[1].name}  # the old data file is gone
        np.testing.assert_allclose(_run(target), _run_original(seed, tmp_path), rtol=1e-5, atol=1e-6)
    # While the new data is written, the model in place still reads the old file under its own name.
    assert names == ["out.onnx.data", "out.onnx.1.data", "out.onnx.data"]


def _run_original(seed: int, tmp_path: pathlib.Path) -> np.ndarray:
    path = tmp_path.parent / f"original-{seed}.onnx"
    onnx.save(conv_bn_model(seed=seed), path)
    return _run(path)


def test_single_file_over_a_pair_removes_the_pair_data(tmp_path):
    target = tmp_path / "out.onnx"
    io.save(graphopt.load(conv_bn_model()), target, external_data=True)
    io.save(graphopt.load(conv_bn_model()), target, external_data=False)
    assert files_in(tmp_path) == {"out.onnx"}


def test_input_data_in_the_output_folder_is_never_touched(tmp_path):
    src = tmp_path / "m.onnx"
    data = save_with_external_data(conv_bn_model(), src, location="out.onnx.1.data")
    before = data.read_bytes()
    result = graphopt.optimize(src, verify=False)
    target = tmp_path / "out.onnx"
    for _ in range(3):
        written = result.save(target)
        assert data.read_bytes() == before
        assert "out.onnx.1.data" not in {p.name for p in written}  # the input's data: never a candidate
    assert data.exists()


def test_a_concurrent_commit_of_the_staged_name_is_avoided(tmp_path):
    target = tmp_path / "out.onnx"
    staged = io.stage(graphopt.load(conv_bn_model(seed=1)), target, external_data=True)
    assert staged.targets[1].name == "out.onnx.data"
    io.save(graphopt.load(conv_bn_model(seed=2)), target, external_data=True)  # another writer wins meanwhile
    assert _locations(target) == {"out.onnx.data"}
    written = staged.commit()  # must not replace the data the model now in place reads
    assert written[1].name == "out.onnx.1.data" and _locations(target) == {"out.onnx.1.data"}
    assert files_in(tmp_path) == {"out.onnx", "out.onnx.1.data"}
    np.testing.assert_allclose(_run(target), _run_original(1, tmp_path), rtol=1e-5, atol=1e-6)


def test_stale_staging_of_dead_processes_is_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stale = tmp_path / f"{atomic.STAGING_PREFIX}{atomic._HOST}-{pid}-abc"
    stale.mkdir()
    (stale / "out.onnx").write_bytes(b"half")
    mine = tmp_path / f"{atomic.STAGING_PREFIX}{atomic._HOST}-{os.getpid()}-abc"
    mine.mkdir()  # a live process's staging stays
    other_host = tmp_path / f"{atomic.STAGING_PREFIX}ffffff-{pid}-abc"
    other_host.mkdir()  # another machine's (shared folder) stays
    legacy_old = tmp_path / f"{atomic.STAGING_PREFIX}k9r5fuqv"
    legacy_old.mkdir()
    os.utime(legacy_old, (time.time() - 7200, time.time() - 7200))
    legacy_new = tmp_path / f"{atomic.STAGING_PREFIX}zzzzzzzz"
    legacy_new.mkdir()
    io.save(graphopt.load(conv_bn_model()), tmp_path / "out.onnx")
    assert files_in(tmp_path) == {"out.onnx", mine.name, other_host.name, legacy_new.name}


def test_fifo_device_folder_and_hard_link_targets_are_refused(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(conv_bn_model(), src)
    model = graphopt.load(src)
    fifo = tmp_path / "fifo.onnx"
    os.mkfifo(fifo)
    (tmp_path / "dir.onnx").mkdir()
    os.link(src, tmp_path / "hard.onnx")
    targets = [(fifo, "a FIFO"), (tmp_path / "dir.onnx", "a folder"),
               (tmp_path / "hard.onnx", "refusing to overwrite the input")]
    device = tmp_path / "null.onnx"  # a private /dev/null: a regression must not replace the system's
    try:
        os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        targets.append((device, "a device"))
    except OSError:
        pass  # no CAP_MKNOD here
    for target, needle in targets:
        with pytest.raises(UsageError, match=needle):
            io.save(model, target, protect={src})
    assert fifo.is_fifo() and (tmp_path / "dir.onnx").is_dir()
    assert not device.exists() or device.is_char_device()
    assert os.path.samefile(src, tmp_path / "hard.onnx")
