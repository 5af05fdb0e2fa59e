"""`graphopt.build`: optimize every model of a config whose inputs, settings or graphopt changed.

    result = graphopt.build("graphopt.toml", jobs=4)
    for m in result:
        print(m.name, m.status, m.reason or m.message)
    sys.exit(result.exit_code)

Per model the status is one of: `built`; `up-to-date` (nothing changed since the manifest
recorded it, see graphopt.app.manifest); `failed` (verification or accuracy budget: the output is
not written unless the model sets `force = true`); `error` (the model could not be
optimized: unreadable file, a pass failed); `stale` (`check=True`: would be rebuilt);
`skipped` (`fail_fast=True` after a failure). One model's failure never stops the others
unless `fail_fast`. `exit_code` is 0 when every model is built or up to date, else 1; a bad
config raises ConfigError (exit code 2) before anything is read or written.

With `jobs > 1` models are optimized in worker processes (a fork server that imports graphopt
once, then forks a worker per slot: about as long as `import graphopt` to start, so it pays
off when models take longer than that); results keep config order. As with any
multiprocessing, a script calling build(jobs=N) needs an `if __name__ == "__main__":` guard.
Nothing here prints; a `progress` observer (see `BuildObserver`) hears what happens.
"""

from __future__ import annotations

__all__ = ["build", "BuildResult", "ModelResult", "BuildObserver"]

import dataclasses
import json
import os
import pathlib
import time
from typing import TYPE_CHECKING, Protocol

from graphopt.core.errors import UsageError

if TYPE_CHECKING:
    from graphopt.app.runner import ModelResult
    from graphopt.app.targets import Target

# `import graphopt` imports this module (graphopt.app.build is the function below), so what only a
# build needs (multiprocessing, config parsing, hashing: 70 ms) is imported by build().


def __getattr__(name: str):
    if name == "ModelResult":  # part of this module's interface
        from graphopt.app.runner import ModelResult

        return ModelResult
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
        from graphopt.core.report import jsonable

        return json.dumps(self.to_dict(), indent=2, default=jsonable)


class BuildObserver(Protocol):
    def planned(self, targets: list[Target]) -> None: ...  # the targets about to be optimized
    def step(self, name: str, step: str) -> None: ...  # "start", a pass name, "verify", "save"
    def finished(self, result: ModelResult) -> None: ...


def build(config=None, *, only=None, jobs: int = 1, check: bool = False, force: bool = False,
          fail_fast: bool = False, overrides=None, base_dir=None, progress: BuildObserver | None = None) -> BuildResult:
    """Build the models of `config` (a path, a dict, or None: ./graphopt.toml, else ./pyproject.toml).

    `only` names models (or NAME/STEM of a glob); `overrides` ({"level": 1} or ["level=1"]) beat
    the file; `force` rebuilds outputs that are up to date; `check` writes nothing and reports
    stale outputs; `base_dir` anchors a dict config's relative paths (default: the working directory).
    """
    from graphopt.app.manifest import Hasher, Manifest, fingerprint, make_entry, stale_reasons
    from graphopt.app.runner import Job, run_all
    from graphopt.app.targets import load_config

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
    jobs_list = [Job(i, t.name, str(t.source), str(t.output), t.kwargs, t.force, "; ".join(reasons), t.verify_optional)
                 for i, t, _, reasons in todo]
    for i, res in run_all(jobs_list, jobs or os.cpu_count() or 1, fail_fast, progress):
        t, fp = by_index[i]
        res.source, res.output = _label(t.source), _label(t.output)
        if res.status in ("built", "unverified"):
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
    from graphopt.app.runner import ModelResult

    return ModelResult(t.name, _label(t.source), _label(t.output), status, **fields)
