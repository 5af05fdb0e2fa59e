"""Run one fuzz case (graphopt's command line, in this process or as a real subprocess) and judge it.

A case owns a folder `ROOT/<case>/` with `in/` (the model and its data, as the case built them),
`out/` (where the output goes) and `tmp/` (the temp dir during the run). Beside the cases lies
`ROOT/outside/`, with sentinel files the hostile cases point at. The verdict holds when:

1. the exit code is 0, 1 or 2 (3 is an internal error) and no traceback was printed;
2. on exit 1 or 2, stderr (file descriptor 2, where ONNX Runtime's C++ log would land too) is
   exactly one line starting with `error:`; with `--json`, stdout is exactly one JSON object
   carrying `error` and the same `exit_code`;
3. on exit 0, the output loads and ONNX Runtime gives the original's outputs on random inputs
   (lossless runs; lossy ones must load and run), or, when ORT cannot run the original (custom
   ops), the output is a valid model with the same custom nodes;
4. the input files are byte for byte unchanged;
5. nothing is left beside the output but the model, the data file it reads and a requested
   report, and nothing of graphopt's is left in the temp dir;
6. nothing outside `in/` and `out/` was read or written: the sentinels' contents and access
   times are unchanged (an atime set in 1970 moves on any read, from Python or C++), and no
   Python-level open or mmap touched a path under ROOT outside the case's folders;
7. it finished within the case's time limit (else a hang).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import pathlib
import resource
import signal
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np
import onnx

SENTINEL_TEXT = b"root:x:0:0:root:/root:/bin/bash\n" * 64  # what the issue's /etc/passwd leak looked like
_OLD_ATIME = 1_000_000  # 1970: any read moves it (relatime updates an atime older than mtime)


@dataclasses.dataclass
class Paths:
    root: pathlib.Path
    case: pathlib.Path

    @property
    def inp(self) -> pathlib.Path:
        return self.case / "in"

    @property
    def out(self) -> pathlib.Path:
        return self.case / "out"

    @property
    def tmp(self) -> pathlib.Path:
        return self.case / "tmp"

    @property
    def outside(self) -> pathlib.Path:
        return self.root / "outside"


@dataclasses.dataclass
class Verdict:
    code: int | None = None
    outcome: str = ""  # "error" (clean exit 1/2), "correct" (exit 0, right outputs), "wrong", "traceback", "hang"
    problems: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    stderr: str = ""
    stdout: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        return (f"exit {self.code} ({self.outcome}) in {self.seconds:.1f}s: " + "; ".join(self.problems)
                + f"\n--- stderr\n{self.stderr[-3000:]}\n--- stdout\n{self.stdout[-2000:]}")


def prepare_root(root: pathlib.Path) -> None:
    """The shared sentinels outside every case's folder."""
    outside = root / "outside"
    outside.mkdir(parents=True, exist_ok=True)
    for name in ("secret", "secret.data"):
        path = outside / name
        if not path.exists():
            path.write_bytes(SENTINEL_TEXT)


def _sentinels(root: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in (root / "outside").iterdir() if p.is_file())


def _arm_sentinels(root: pathlib.Path) -> dict[pathlib.Path, tuple]:
    state = {}
    for path in _sentinels(root):
        os.utime(path, (_OLD_ATIME, path.stat().st_mtime))
        st = path.stat()
        state[path] = (st.st_atime, st.st_mtime, hashlib.sha256(path.read_bytes()).hexdigest())
        os.utime(path, (_OLD_ATIME, st.st_mtime))  # reading it for the hash moved it
    return state


def _hash_tree(folder: pathlib.Path) -> dict[str, str]:
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            out[str(path.relative_to(folder))] = "link:" + os.readlink(path)
        elif path.is_file():
            out[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


class _Hang(BaseException):
    pass


class _Audit:
    """Python-level opens and mmaps under ROOT but outside the case's own folders."""

    installed = False
    active: _Audit | None = None

    def __init__(self, root: pathlib.Path, allowed: list[pathlib.Path]):
        self.root = os.path.realpath(root) + os.sep
        self.allowed = [os.path.realpath(a) + os.sep for a in allowed]
        self.violations: list[str] = []

    @classmethod
    def hook(cls, event: str, args) -> None:
        self = cls.active
        if self is None or event != "open" or not args or not isinstance(args[0], (str, bytes, os.PathLike)):
            return
        try:
            path = os.path.realpath(os.fsdecode(args[0]))
        except (TypeError, ValueError):
            return
        if path.startswith(self.root) and not any(path.startswith(a) or path + os.sep == a for a in self.allowed):
            self.violations.append(path)

    def __enter__(self):
        if not _Audit.installed:
            sys.addaudithook(_Audit.hook)
            _Audit.installed = True
        _Audit.active = self
        return self

    def __exit__(self, *exc):
        _Audit.active = None
        return False


@contextlib.contextmanager
def _captured_fds():
    """Capture file descriptors 1 and 2 (ORT's C++ log writes to 2 directly) into temp files."""
    sys.stdout.flush()
    sys.stderr.flush()
    files = [tempfile.TemporaryFile(), tempfile.TemporaryFile()]
    saved = [os.dup(1), os.dup(2)]
    os.dup2(files[0].fileno(), 1)
    os.dup2(files[1].fileno(), 2)
    result = {}
    out_buffer = io.StringIO()
    err_buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(out_buffer), contextlib.redirect_stderr(err_buffer):
            yield result
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        texts = []
        for f in files:
            f.seek(0)
            texts.append(f.read().decode("utf-8", "replace"))
            f.close()
        result["stdout"] = out_buffer.getvalue() + texts[0]
        result["stderr"] = err_buffer.getvalue() + texts[1]


def run_in_process(argv: list[str], paths: Paths, timeout: float) -> tuple[int | None, str, str, bool, list[str]]:
    """graphopt's CLI main() with argv; returns (exit code, stdout, stderr, hung, audit violations)."""
    import tempfile as tempfile_module

    from graphopt.app import cli

    code: int | None = None
    hung = False
    previous_tmp = tempfile_module.tempdir
    tempfile_module.tempdir = str(paths.tmp)

    def alarm(signum, frame):
        raise _Hang()

    old_handler = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        with _captured_fds() as captured, _Audit(paths.root, [paths.inp, paths.out, paths.tmp]) as audit:
            try:
                cli.main(argv)
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except _Hang:
                hung = True
            except BaseException:  # noqa: BLE001 - an escaped exception is a traceback in a real run
                print(traceback.format_exc(), file=sys.stderr)
                code = 3
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        tempfile_module.tempdir = previous_tmp
    return code, captured["stdout"], captured["stderr"], hung, audit.violations


MEMORY_LIMIT = 6 << 30  # address space of a subprocess case: a bomb fails there, not on the machine


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_subprocess(argv: list[str], paths: Paths, timeout: float) -> tuple[int | None, str, str, bool, list[str]]:
    script = pathlib.Path(sys.executable).parent / "graphopt"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "graphopt"]
    env = dict(os.environ, TMPDIR=str(paths.tmp))
    try:
        proc = subprocess.run([*command, *argv], capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=paths.case, preexec_fn=_limit_memory)
    except subprocess.TimeoutExpired as e:
        return None, e.stdout or "", e.stderr or "", True, []
    return proc.returncode, proc.stdout, proc.stderr, False, []


def _session(path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _ort_run(path, feeds=None):
    session = _session(path)
    if feeds is None:
        feeds = _feeds(session)
    names = [o.name for o in session.get_outputs()]
    return feeds, dict(zip(names, session.run(names, feeds)))


_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64,
          "tensor(int32)": np.int32, "tensor(bool)": np.bool_, "tensor(float16)": np.float16,
          "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}


def _feeds(session) -> dict:
    rng = np.random.default_rng(0)
    feeds = {}
    for arg in session.get_inputs():
        shape = [d if isinstance(d, int) and d >= 0 else 1 for d in arg.shape]
        dtype = _TYPES[arg.type]
        if dtype == np.bool_:
            feeds[arg.name] = rng.integers(0, 2, size=shape).astype(bool)
        elif np.issubdtype(dtype, np.integer):
            feeds[arg.name] = rng.integers(0, 3, size=shape).astype(dtype)
        else:
            feeds[arg.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype == object or not np.issubdtype(a.dtype, np.number):
        return bool(np.array_equal(a, b))
    scale = max(1.0, float(np.nanmax(np.abs(a))) if a.size and np.isfinite(a).any() else 1.0)
    return bool(np.allclose(a, b, rtol=1e-3, atol=1e-4 * scale, equal_nan=True))


def _check_output(source: pathlib.Path, output: pathlib.Path, lossy: bool) -> str | None:
    """None if `output` is right for `source`, else what is wrong."""
    try:
        proto = onnx.load(str(output), load_external_data=False)
    except Exception as e:  # noqa: BLE001
        return f"output does not load: {e}"
    try:  # inputs from the output's declared shapes: --shape may have fixed a dynamic dim
        feeds = _feeds(_session(output))
    except Exception as e:  # noqa: BLE001
        feeds = None
        load_error = str(e)[:200]
    try:
        feeds, expected = _ort_run(source, feeds)
    except Exception:  # noqa: BLE001 - ORT cannot run the original (custom ops): the output must still be a model
        original = onnx.load(str(source), load_external_data=False)
        used = {i for n in original.graph.node for i in n.input} | {o.name for o in original.graph.output}
        # Custom nodes whose results are used must survive (dead ones may go with dead code).
        custom = sorted(n.op_type for n in original.graph.node
                        if n.domain not in ("", "ai.onnx") and used.intersection(n.output))
        kept = sorted(n.op_type for n in proto.graph.node if n.domain not in ("", "ai.onnx"))
        return None if set(custom) <= set(kept) else f"custom nodes changed: {custom} -> {kept}"
    if feeds is None:
        return f"ORT cannot load the output: {load_error}"
    try:
        _, got = _ort_run(output, feeds)
    except Exception as e:  # noqa: BLE001
        return f"ORT cannot run the output: {str(e)[:200]}"
    if lossy:
        return None if set(got) == set(expected) else "lossy output lost graph outputs"
    for name, value in expected.items():
        if name not in got:
            return f"output {name!r} missing"
        if not _same(value, got[name]):
            return f"output {name!r} differs"
    return None


def _data_files(model: pathlib.Path) -> set[str]:
    try:
        proto = onnx.load(str(model), load_external_data=False)
    except Exception:  # noqa: BLE001
        return set()
    return {e.value for t in onnx.external_data_helper._get_all_tensors(proto) for e in t.external_data
            if e.key == "location"}


def judge(case, paths: Paths, argv: list[str], timeout: float = 120.0) -> Verdict:
    """Run a built case and check every invariant of the module docstring."""
    verdict = Verdict()
    sentinels = _arm_sentinels(paths.root)
    before = _hash_tree(paths.inp)  # may read a hard link of a sentinel: armed again below
    for path in sentinels:
        os.utime(path, (_OLD_ATIME, path.stat().st_mtime))
    start = time.perf_counter()
    runner = case.runner or (run_subprocess if case.subprocess else run_in_process)
    code, stdout, stderr, hung, violations = runner(argv, paths, case.timeout or timeout)
    verdict.seconds = time.perf_counter() - start
    verdict.code, verdict.stdout, verdict.stderr = code, stdout, stderr
    problems = verdict.problems
    for path, (atime, mtime, digest) in sentinels.items():  # first: the checks below read files too
        st = path.stat()
        if hashlib.sha256(path.read_bytes()).hexdigest() != digest or st.st_mtime != mtime:
            problems.append(f"{path.name} outside the model's folder was modified")
        elif st.st_atime != atime:
            problems.append(f"{path.name} outside the model's folder was read")
        os.utime(path, (_OLD_ATIME, st.st_mtime))
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    if hung:
        verdict.outcome = "hang"
        problems.append(f"no exit within {case.timeout or timeout:.0f}s")
    elif code not in (0, *case.error_codes) or "Traceback" in stderr or "Traceback" in stdout:
        verdict.outcome = "traceback"
        problems.append(f"exit {code}" + (" with a traceback" if "Traceback" in stderr + stdout else ""))
    elif code in case.error_codes:
        verdict.outcome = "error"
        if len(lines) != 1 or not lines[0].startswith("error:"):
            problems.append(f"stderr is {len(lines)} lines, expected one 'error:' line")
        if "--json" in argv:
            try:
                obj = json.loads(stdout)
            except ValueError:
                obj = None
            if not isinstance(obj, dict) or obj.get("exit_code") != code or not obj.get("error"):
                problems.append("--json: stdout is not one object with error and exit_code")
    else:
        verdict.outcome = "correct"
    if case.expect == "error" and code == 0:
        problems.append("accepted a case that must be refused")
    if case.expect == "ok" and code != 0 and not hung:
        problems.append(f"refused a valid case ({lines[0] if lines else ''})")
    if case.expect_code is not None and code != case.expect_code and not hung:
        problems.append(f"exit {code}, expected {case.expect_code}")
    output = case.output(paths)
    if code == 0 and output is not None and case.check_output:
        source = case.source(paths)
        wrong = _check_output(source, output, case.lossy) if output.exists() else "no output written"
        if wrong:
            problems.append(wrong)
    if _hash_tree(paths.inp) != before:
        problems.append("input files changed")
    if paths.out.exists():
        allowed = set(case.allowed_out)
        if output is not None and output.exists() and output.parent == paths.out:
            allowed |= {output.name, *_data_files(output)}
        extra = sorted(p.name for p in paths.out.iterdir() if p.name not in allowed)
        if extra:
            problems.append(f"left in the output folder: {extra}")
    leftovers = sorted(p.name for p in paths.tmp.iterdir() if p.name != ".ses") if paths.tmp.exists() else []
    if leftovers:
        problems.append(f"left in the temp dir: {leftovers}")
    if violations:
        problems.append(f"opened outside the case's folders: {sorted(set(violations))[:3]}")
    if case.extra_check is not None and not hung:
        extra = case.extra_check(verdict, paths)
        if extra:
            problems.append(extra)
    if problems and verdict.outcome in ("correct", "error"):
        verdict.outcome = "wrong"
    return verdict


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
