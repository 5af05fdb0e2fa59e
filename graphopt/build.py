"""`graphopt.build`: optimize every model of a config whose inputs, settings or graphopt changed.

    result = graphopt.build("graphopt.toml", jobs=4)
    for m in result:
        print(m.name, m.status, m.reason or m.message)
    sys.exit(result.exit_code)

Per model the status is one of: `built`; `up-to-date` (nothing changed since the manifest
recorded it, see graphopt.manifest); `failed` (verification or accuracy budget: the output is
not written unless the model sets `force = true`); `error` (the model could not be
optimized: unreadable file, a pass failed); `stale` (`check=True`: would be rebuilt);
`skipped` (`fail_fast=True` after a failure). One model's failure never stops the others
unless `fail_fast`. `exit_code` is 0 when every model is built or up to date, else 1; a bad
config raises ConfigError (exit code 2) before anything is read or written.

With `jobs > 1` models are optimized in worker processes; results keep config order.
Nothing here prints; a `progress` observer (see `BuildObserver`) hears what happens.
"""

from __future__ import annotations

__all__ = ["build", "BuildResult", "ModelResult", "BuildObserver"]

import concurrent.futures as cf
import contextlib
import dataclasses
import json
import multiprocessing
import os
import pathlib
import queue as queue_module
import time
import traceback
from typing import Protocol

from graphopt.errors import BudgetError, GraphoptError, UsageError, VerificationError
from graphopt.manifest import Hasher, Manifest, fingerprint, make_entry, stale_reasons
from graphopt.targets import Target, load_config

OK_STATUSES = ("built", "up-to-date")


@dataclasses.dataclass
class ModelResult:
    name: str
    source: str
    output: str
    status: str  # built | up-to-date | failed | error | stale | skipped
    reason: str = ""  # why it was (or, with check, would be) rebuilt
    message: str = ""  # what went wrong, for failed and error
    bytes_before: int | None = None
    bytes_after: int | None = None
    verification: str | None = None  # passed | failed | skipped; None when verification is off
    accuracy_drop: float | None = None
    seconds: float = 0.0
    warnings: list[str] = dataclasses.field(default_factory=list)
    written: list[str] = dataclasses.field(default_factory=list)
    report: dict | None = None  # the optimize report, for models optimized in this run
    traceback: str | None = dataclasses.field(default=None, repr=False)
    external_data: list[str] = dataclasses.field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        return self.status in OK_STATUSES

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        del d["traceback"], d["external_data"]
        return d


@dataclasses.dataclass
class BuildResult:
    config: str | None
    models: list[ModelResult]
    seconds: float
    check: bool = False

    def __iter__(self):
        return iter(self.models)

    def __len__(self) -> int:
        return len(self.models)

    def __getitem__(self, name: str) -> ModelResult:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)

    @property
    def exit_code(self) -> int:
        return 0 if all(m.ok for m in self.models) else 1

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for m in self.models:
            counts[m.status] = counts.get(m.status, 0) + 1
        return counts

    def to_dict(self) -> dict:
        import graphopt

        return {"config": self.config, "graphopt": graphopt.__version__, "check": self.check,
                "exit_code": self.exit_code, "seconds": round(self.seconds, 3), "counts": self.counts(),
                "models": [m.to_dict() for m in self.models]}

    def to_json(self) -> str:
        from graphopt.report import _jsonable

        return json.dumps(self.to_dict(), indent=2, default=_jsonable)


class BuildObserver(Protocol):
    def planned(self, targets: list[Target]) -> None: ...  # the targets about to be optimized
    def step(self, name: str, step: str) -> None: ...  # "start", a pass name, "verify", "save"
    def finished(self, result: ModelResult) -> None: ...


@dataclasses.dataclass
class _Job:
    index: int
    name: str
    source: str
    output: str
    kwargs: dict
    force: bool
    reason: str


def build(config=None, *, only=None, jobs: int = 1, check: bool = False, force: bool = False,
          fail_fast: bool = False, overrides=None, base_dir=None, progress: BuildObserver | None = None) -> BuildResult:
    """Build the models of `config` (a path, a dict, or None: ./graphopt.toml, else ./pyproject.toml).

    `only` names models (or NAME/STEM of a glob); `overrides` ({"level": 1} or ["level=1"]) beat
    the file; `force` rebuilds outputs that are up to date; `check` writes nothing and reports
    stale outputs; `base_dir` anchors a dict config's relative paths (default: the working directory).
    """
    start = time.perf_counter()
    if jobs < 0:
        raise UsageError(f"--jobs {jobs}: expected 1 or more (0: one per CPU)")
    cfg = load_config(config, overrides=overrides, base_dir=base_dir)
    targets = cfg.select(only)
    hasher, manifests = Hasher(), {}
    results: list[ModelResult | None] = [None] * len(targets)
    todo: list[tuple[int, Target, dict, list[str]]] = []
    for i, t in enumerate(targets):
        manifest = manifests.setdefault(t.output.parent, Manifest(t.output.parent))
        entry = manifest.entries.get(t.output.name)
        try:
            fp = fingerprint(t, hasher)
            reasons = stale_reasons(entry, fp, t, hasher)
        except OSError as e:
            results[i] = _result(t, "error", message=f"cannot read inputs: {e}")
            continue
        if not reasons and not force:
            recorded = ("bytes_before", "bytes_after", "verification", "accuracy_drop")
            results[i] = _result(t, "up-to-date", **{k: entry.get(k) for k in recorded})
        elif check:
            results[i] = _result(t, "stale", reason="; ".join(reasons) or "forced (--force)")
        else:
            todo.append((i, t, fp, reasons or ["forced (--force)"]))
    if progress and todo:
        progress.planned([t for _, t, _, _ in todo])
    by_index = {i: (t, fp) for i, t, fp, _ in todo}
    jobs_list = [_Job(i, t.name, str(t.source), str(t.output), t.kwargs, t.force, "; ".join(reasons))
                 for i, t, _, reasons in todo]
    for i, res in _run(jobs_list, jobs or os.cpu_count() or 1, fail_fast, progress):
        t, fp = by_index[i]
        res.source, res.output = _label(t.source), _label(t.output)
        if res.status == "built":
            manifest = manifests[t.output.parent]
            summary = {"bytes_before": res.bytes_before, "bytes_after": res.bytes_after,
                       "verification": res.verification, "accuracy_drop": res.accuracy_drop}
            manifest.entries[t.output.name] = make_entry(t, fp, res.written, res.external_data, hasher, summary)
            manifest.save()
        res.written = [_label(pathlib.Path(p)) for p in res.written]
        results[i] = res
        if progress:
            progress.finished(res)
    return BuildResult(str(cfg.path) if cfg.path else None, [r for r in results if r is not None],
                       time.perf_counter() - start, check)


def _label(path: pathlib.Path) -> str:
    try:
        return str(path.relative_to(pathlib.Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _result(t: Target, status: str, **fields) -> ModelResult:
    return ModelResult(t.name, _label(t.source), _label(t.output), status, **fields)


def _run(jobs_list: list[_Job], jobs: int, fail_fast: bool, progress):
    """Yield (index, ModelResult) as models finish: in order in-process, or from worker processes."""
    if jobs <= 1 or len(jobs_list) <= 1:
        stop = False
        for job in jobs_list:
            res = _skipped(job) if stop else run_job(job, progress.step if progress else None)
            stop |= fail_fast and not res.ok
            yield job.index, res
        return
    ctx = multiprocessing.get_context("spawn")  # no fork of a parent holding threads (rich, ORT)
    with contextlib.ExitStack() as stack:
        events = stack.enter_context(ctx.Manager()).Queue() if progress else None
        pool = stack.enter_context(cf.ProcessPoolExecutor(max_workers=min(jobs, len(jobs_list)), mp_context=ctx))
        futures = {pool.submit(_run_job_in_worker, job, events): job for job in jobs_list}
        pending, stop = set(futures), False
        while pending:
            done, pending = cf.wait(pending, timeout=0.1, return_when=cf.FIRST_COMPLETED)
            _drain(events, progress)
            for future in sorted(done, key=lambda f: futures[f].index):
                job = futures[future]
                if future.cancelled():
                    res = _skipped(job)
                else:
                    try:
                        res = future.result()
                    except Exception as e:  # noqa: BLE001 - a dead worker (killed, out of memory) fails its model only
                        res = ModelResult(job.name, job.source, job.output, "error", reason=job.reason,
                                          message=f"worker process failed: {type(e).__name__}: {e}")
                if fail_fast and not res.ok and not stop:
                    stop = True
                    for other in pending:
                        other.cancel()
                yield job.index, res
        _drain(events, progress)


def _drain(events, progress) -> None:
    while events is not None:
        try:
            name, step = events.get_nowait()
        except (queue_module.Empty, OSError, EOFError):
            return
        progress.step(name, step)


def _skipped(job: _Job) -> ModelResult:
    return ModelResult(job.name, job.source, job.output, "skipped", reason=job.reason,
                       message="not started: an earlier model failed (--fail-fast)")


def _run_job_in_worker(job: _Job, events) -> ModelResult:
    return run_job(job, (lambda name, step: events.put((name, step))) if events is not None else None)


def run_job(job: _Job, step=None) -> ModelResult:
    """Optimize one model and write its output; every failure becomes the result's status."""
    from graphopt.api import optimize

    start = time.perf_counter()
    res = ModelResult(job.name, job.source, job.output, "error", reason=job.reason)
    notify = (lambda s: step(job.name, s)) if step else None
    if notify:
        notify("start")
    try:
        result = optimize(job.source, progress=notify, **job.kwargs)
        report = result.report
        v = report.verification
        res.verification = v.status if v else None
        res.bytes_before, res.bytes_after = report.file_bytes_before, report.file_bytes_after
        res.accuracy_drop = _accuracy_drop(report.sections)
        failed = v is not None and v.status == "failed"
        if failed:
            bad = [f"{c.name} (max abs diff {c.max_abs_diff:.3g})" for c in v.outputs if not c.ok]
            res.status = "failed"
            res.message = "verification failed: " + (", ".join(bad) or v.reason)
        if not failed or job.force:
            if notify:
                notify("save")
            res.written = [str(p) for p in result.save(job.output)]
            # The input and its external data: what OptimizeResult.save refuses to overwrite.
            res.external_data = sorted(str(p) for p in result._protect if p != pathlib.Path(job.source).resolve())
            res.status = "failed" if failed else "built"
        else:
            res.message += f"; {job.output} not written (set force = true to write it anyway)"
        res.warnings = list(report.warnings)
        res.report = report.to_dict()
    except (VerificationError, BudgetError) as e:
        res.status, res.message = "failed", str(e)
    except GraphoptError as e:
        res.status, res.message = "error", str(e)
    except Exception as e:  # noqa: BLE001 - one model's crash must not stop the others
        first = next((ln for ln in str(e).splitlines() if ln.strip()), "")
        res.message = f"internal error: {type(e).__name__}: {first} (rerun with --debug for the traceback)"
        res.traceback = traceback.format_exc()
    res.seconds = time.perf_counter() - start
    return res


def _accuracy_drop(sections: dict) -> float | None:
    """The accuracy drop a lossy stage measured, if any stage reports one."""
    for section in sections.values():
        if isinstance(section, dict) and isinstance(section.get("accuracy_drop"), (int, float)):
            return float(section["accuracy_drop"])
    return None
