"""Runners for the kill_save family: a real `graphopt` process terminated or killed while it works."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

from tests.fuzz.harness import Paths


def _command() -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "graphopt")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "graphopt"]


def sigterm_runner(delay: float):
    """SIGTERM `delay` seconds after the run has started working (its first temp folder exists)."""

    def run(argv: list[str], paths: Paths, timeout: float):
        env = dict(os.environ, TMPDIR=str(paths.tmp))
        proc = subprocess.Popen([*_command(), *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env, cwd=paths.case)
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            if any(p.name.startswith(("graphopt-", ".graphopt-")) for p in paths.tmp.iterdir()):
                break
            time.sleep(0.005)
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            return None, out, err, True, []
        return proc.returncode, out, err, False, []

    return run


def strace_kill_runner(k: int):
    """An earlier output in place; SIGKILL at the k-th rename of a second run (strace fault
    injection); the output must still load; a third run must then leave nothing else behind."""

    def run(argv: list[str], paths: Paths, timeout: float):
        env = dict(os.environ, TMPDIR=str(paths.tmp))
        strace = shutil.which("strace")
        first = subprocess.run([*_command(), *argv], capture_output=True, text=True, env=env, timeout=timeout)
        if first.returncode != 0 or strace is None:
            return first.returncode, first.stdout, first.stderr, False, []
        killed = subprocess.run([strace, "-qq", "-f", "-o", os.devnull, "-e", "trace=rename",  # inject needs it traced
                                 "-e", f"inject=rename:signal=SIGKILL:when={k}", *_command(), *argv],
                                capture_output=True, env=env, timeout=timeout)
        if killed.returncode == 0 and k <= 4:  # a save of a model with external data makes 4 renames
            return 3, "", f"error: strace did not kill the run at rename {k}", False, []
        output = paths.out / "model.opt.onnx"
        try:
            from tests.fuzz.harness import _ort_run

            _ort_run(output)
        except Exception as e:  # noqa: BLE001 - the invariant: old or new output, complete
            return 3, "", f"error: after SIGKILL at rename {k} the output does not load: {e}", False, []
        third = subprocess.run([*_command(), *argv], capture_output=True, text=True, env=env, timeout=timeout)
        return third.returncode, third.stdout, third.stderr, False, []

    return run
