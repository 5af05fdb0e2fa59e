"""Running the models of a build: in this process, or in worker processes, one ModelResult each.

`run_job` optimizes one model and writes its output; every failure becomes the result's
status (`failed` for verification or an accuracy budget, `error` for anything else, with
the traceback kept for --debug), so one model never stops the others. `run_all` yields
results as models finish; with more than one job, workers fork from a server that imported
graphopt once, and each worker's pass-by-pass progress comes back over a queue.
"""

from __future__ import annotations

__all__ = ["ModelResult", "Job", "OK_STATUSES", "run_job", "run_all"]

import concurrent.futures as cf
import dataclasses
import multiprocessing
import pathlib
import queue as queue_module
import time
import traceback

from graphopt.core.errors import BudgetError, GraphoptError, VerificationError

OK_STATUSES = ("built", "up-to-date", "unverified")


@dataclasses.dataclass
class ModelResult:
    name: str
    source: str
    output: str
    status: str  # built | up-to-date | unverified | failed | error | stale | skipped
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
class Job:
    index: int
    name: str
    source: str
    output: str
    kwargs: dict
    force: bool
    reason: str
    verify_optional: bool = False  # an unverifiable model is built as "unverified" instead of failing


def run_all(jobs_list: list[Job], jobs: int, fail_fast: bool, progress):
    """Yield (index, ModelResult) as models finish: in order in-process, or from worker processes."""
    if jobs <= 1 or len(jobs_list) <= 1:
        stop = False
        for job in jobs_list:
            res = _skipped(job) if stop else run_job(job, progress.step if progress else None)
            stop |= fail_fast and not res.ok
            yield job.index, res
        return
    ctx = _context()
    events = ctx.Queue() if progress else None
    with cf.ProcessPoolExecutor(max_workers=min(jobs, len(jobs_list)), mp_context=ctx,
                                initializer=_init_worker, initargs=(events,)) as pool:
        futures = {pool.submit(_run_job_in_worker, job): job for job in jobs_list}
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


def _skipped(job: Job) -> ModelResult:
    return ModelResult(job.name, job.source, job.output, "skipped", reason=job.reason,
                       message="not started: an earlier model failed (--fail-fast)")


def _context():
    """Workers never fork the parent (it may hold rich's and ORT's threads). With forkserver they
    fork from a server that imported graphopt once, instead of each paying the import (seconds)."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["graphopt.app.api", "graphopt.app.build"])
        return ctx
    return multiprocessing.get_context("spawn")


_events = None  # the worker's queue back to the parent's progress observer


def _init_worker(events) -> None:
    global _events
    _events = events


def _run_job_in_worker(job: Job) -> ModelResult:
    events = _events
    return run_job(job, (lambda name, step: events.put((name, step))) if events is not None else None)


def run_job(job: Job, step=None) -> ModelResult:
    """Optimize one model and write its output; every failure becomes the result's status."""
    from graphopt.app.api import optimize

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
        unverified = v is not None and v.status == "skipped"
        if failed:
            bad = [f"{c.name} (max abs diff {c.max_abs_diff:.3g})" for c in v.outputs if not c.ok]
            res.status = "failed"
            res.message = "verification failed: " + (", ".join(bad) or v.reason)
        elif unverified and not job.verify_optional:
            failed = True
            res.status = "failed"
            res.message = f'not verified: {v.reason}; set verify = "optional" to build it unverified'
        if not failed or job.force:
            if notify:
                notify("save")
            res.written = [str(p) for p in result.save(job.output)]
            # The input and its external data: what OptimizeResult.save refuses to overwrite.
            res.external_data = sorted(str(p) for p in result._protect if p != pathlib.Path(job.source).resolve())
            res.status = "failed" if failed else "unverified" if unverified else "built"
            if unverified:
                res.message = f"not verified: {v.reason}"
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
