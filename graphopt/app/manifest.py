"""The build cache: a `.graphopt-manifest.json` in each output directory.

One entry per output file name records what the output was built from: the sha256 of the
source model, of each external data file it reads and of each data file a setting names
(`inputs`, ...), every effective setting (canonical JSON), graphopt's version, and the
sha256 of each file written (the model and its `.data`). An output is up to date while all
of these match. Content, not times: a fresh checkout (new mtimes, same bytes) rebuilds
nothing, while an edited, replaced or deleted output is rebuilt. The file holds no times
and no absolute paths, and a rebuild with the same inputs rewrites it byte for byte: commit
it beside the outputs and `graphopt build --check` can prove them current in CI.
"""

from __future__ import annotations

__all__ = ["MANIFEST_NAME", "Manifest", "Hasher", "sha256", "fingerprint", "stale_reasons", "make_entry"]

import hashlib
import json
import logging
import os
import pathlib

from graphopt.core.errors import InputError

logger = logging.getLogger(__name__)

MANIFEST_NAME = ".graphopt-manifest.json"
FORMAT = 1
_MISSING = object()


def sha256(path: pathlib.Path) -> str:
    """sha256 of a file, or of a directory's files (relative names and contents, in sorted order)."""
    digest = hashlib.sha256()
    if path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(file.relative_to(path).as_posix().encode() + b"\0" + sha256(file).encode())
        return digest.hexdigest()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Hasher:
    """sha256 of inputs, each file read once per build (sources and data are shared between targets)."""

    def __init__(self):
        self._memo: dict[pathlib.Path, str] = {}

    def __call__(self, path: pathlib.Path) -> str:
        path = path.resolve()
        if path not in self._memo:
            self._memo[path] = sha256(path)
        return self._memo[path]


class Manifest:
    """The entries of one output directory. Reading never creates anything; `save` is atomic."""

    def __init__(self, directory: pathlib.Path):
        self.directory = directory
        self.path = directory / MANIFEST_NAME
        self.entries: dict[str, dict] = self._read()

    def _read(self) -> dict[str, dict]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            logger.warning("%s: unreadable (%s); its outputs count as stale", self.path, e)
            return {}
        if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("outputs"), dict):
            logger.warning("%s: not a format-%d graphopt manifest; its outputs count as stale", self.path, FORMAT)
            return {}
        return data["outputs"]

    def save(self) -> None:
        text = json.dumps({"format": FORMAT, "outputs": self.entries}, indent=2, sort_keys=True) + "\n"
        tmp = self.path.with_name(f"{MANIFEST_NAME}.{os.getpid()}.tmp")  # same directory: os.replace is atomic
        try:
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise InputError(f"{self.path}: cannot write the build manifest ({e.strerror or e})") from e


def fingerprint(target, hasher: Hasher) -> dict:
    """What the cache key holds that can be computed before building."""
    import graphopt

    return {"source": hasher(target.source), "data": {k: hasher(p) for k, p in sorted(target.data_files.items())},
            "settings": target.settings, "graphopt": graphopt.__version__}


def stale_reasons(entry: dict | None, fp: dict, target, hasher: Hasher) -> list[str]:
    """Why `target`'s output must be rebuilt; empty when it is up to date."""
    if entry is None:
        return ["not built yet" if not target.output.exists() else "not in the manifest"]
    reasons = []
    if entry.get("graphopt") != fp["graphopt"]:
        reasons.append(f"graphopt version changed ({entry.get('graphopt')} -> {fp['graphopt']})")
    old = entry.get("settings", {})
    changed = sorted(k for k in {*old, *fp["settings"]} if old.get(k, _MISSING) != fp["settings"].get(k, _MISSING))
    if changed:
        reasons.append("settings changed: " + ", ".join(changed))
    if entry.get("source", {}).get("sha256") != fp["source"]:
        reasons.append("source changed")
    else:  # same model file, so the same external data files: are their bytes the same?
        for rel, digest in sorted(entry.get("external_data", {}).items()):
            path = target.source.parent / rel
            if _escapes(rel):  # a hand-edited manifest must not make a build read outside the model's folder
                reasons.append(f"external data {rel} is outside the model's folder")
            elif not path.is_file():
                reasons.append(f"external data {rel} missing")
            elif hasher(path) != digest:
                reasons.append(f"external data {rel} changed")
    for key, digest in fp["data"].items():
        if entry.get("data", {}).get(key) != digest:
            reasons.append(f"{key} data changed")
    written = entry.get("output", {})
    if target.output.name not in written:
        reasons.append("output not recorded")
    for name, digest in sorted(written.items()):
        path = target.output.parent / name
        if _escapes(name):
            reasons.append(f"output {name} is outside the output folder")
        elif not path.is_file():
            reasons.append(f"output {name} missing")
        elif sha256(path) != digest:
            reasons.append(f"output {name} modified since it was built")
    return reasons


def make_entry(target, fp: dict, written: list[str], external_data: list[str], hasher: Hasher,
               summary: dict) -> dict:
    """The manifest entry for an output just built from `fp`."""
    directory = target.output.parent
    return {
        "model": target.name,
        "source": {"path": pathlib.Path(os.path.relpath(target.source, directory)).as_posix(), "sha256": fp["source"]},
        "external_data": {pathlib.Path(os.path.relpath(p, target.source.parent)).as_posix(): hasher(pathlib.Path(p))
                          for p in sorted(external_data)},
        "data": fp["data"],
        "settings": fp["settings"],
        "graphopt": fp["graphopt"],
        "output": {pathlib.Path(os.path.relpath(p, directory)).as_posix(): sha256(pathlib.Path(p))
                   for p in sorted(written)},
        **summary,
    }


def _escapes(rel: str) -> bool:
    parts = pathlib.PurePosixPath(rel).parts
    return not rel or pathlib.PurePosixPath(rel).is_absolute() or ".." in parts or "\\" in rel
