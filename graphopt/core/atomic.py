"""Put a staged model (and its external data file) in place so that a kill at any moment leaves
the destination as the old complete model or the new complete one, never a mix.

A single file is one `os.replace`. A model with external data is two files, and two renames
are not one atomic step: a reader (or a kill) between them pairs the old model with the new
data. So the new data file never takes a name the current model reads:

1. The data file is `OUT.data` (`OUT` being the model's file name), or `OUT.1.data`,
   `OUT.2.data`, ... when the model now at `OUT` reads `OUT.data`: the first name no file at
   `OUT` mentions. The staged model already names it (`stage` asks `data_name`); if a
   concurrent writer took it meanwhile, the staged model is rewritten to another.
2. Under an exclusive lock on the destination folder (`flock`, released by the kernel if the
   process dies), the data file is renamed in (a name nobody reads yet), then the model is
   renamed over `OUT`: that rename is the commit point.
3. Still under the lock, data files of this family (`OUT.data`, `OUT.N.data`) that the new
   model does not read are removed: the old model's, and those a killed run left behind.
   The input's own data files (`protect`) are never removed.

Staging directories are named `.graphopt-<host>-<pid>-*`; `clean_stale` removes those of
processes that no longer run on this host (a kill -9 cannot clean up after itself).
Durability across a power cut (fsync) is not attempted; the protocol is about processes.
"""

from __future__ import annotations

__all__ = ["STAGING_PREFIX", "staging_dir", "data_name", "commit", "clean_stale"]

import contextlib
import hashlib
import logging
import mmap
import os
import pathlib
import re
import shutil
import socket
import tempfile
import time

import onnx

logger = logging.getLogger(__name__)

STAGING_PREFIX = ".graphopt-"
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]
_OWN = re.compile(re.escape(STAGING_PREFIX) + r"(?P<host>[0-9a-f]{6})-(?P<pid>\d+)-")
_LEGACY_AGE_S = 3600  # staging names without a pid (older graphopt): removed once this old


def staging_dir(folder: pathlib.Path) -> pathlib.Path:
    """A new private directory in `folder` whose name says which process owns it."""
    clean_stale(folder)
    return pathlib.Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{_HOST}-{os.getpid()}-", dir=folder))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def clean_stale(folder: pathlib.Path) -> None:
    """Remove staging directories and files in `folder` left by dead processes of this host."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        if not entry.name.startswith(STAGING_PREFIX) or entry.name == STAGING_PREFIX + "manifest.json":
            continue
        own = _OWN.match(entry.name)
        try:
            if own:
                if own["host"] != _HOST or _alive(int(own["pid"])):
                    continue
            elif time.time() - entry.stat(follow_symlinks=False).st_mtime < _LEGACY_AGE_S:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
            logger.debug("removed stale %s", entry.path)
        except OSError:
            continue


def _family(target: pathlib.Path) -> re.Pattern:
    return re.compile(re.escape(target.name) + r"(?:\.\d+)?\.data")


def _mentions(model_file: pathlib.Path, names: list[str]) -> set[str]:
    """The names among `names` whose bytes occur in `model_file` (a conservative 'it may read this')."""
    try:
        with open(model_file, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                return set()
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                # The location is a protobuf string: its length byte comes first, so OUT.data is not
                # mistaken for the tail of OUT.1.data.
                return {n for n in names if m.find(_varint(len(n.encode())) + n.encode()) >= 0}
    except (OSError, ValueError):
        return set()


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def data_name(target: pathlib.Path, avoid: set[str] = frozenset()) -> str:
    """The first of OUT.data, OUT.1.data, ... that the model now at `target` does not read."""
    candidates = [f"{target.name}.data"] + [f"{target.name}.{i}.data" for i in range(1, 64)]
    taken = _mentions(target, candidates) | set(avoid)
    return next(n for n in candidates if n not in taken)


@contextlib.contextmanager
def _locked(folder: pathlib.Path):
    """An exclusive lock on `folder` (writers to one folder commit one at a time)."""
    import fcntl

    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a file system without locks: still atomic per writer
            pass
        yield
    finally:
        os.close(fd)  # releases the lock


def _rewrite_location(model_file: pathlib.Path, old: str, new: str) -> None:
    proto = onnx.load(str(model_file), load_external_data=False)
    for tensor in onnx.external_data_helper._get_all_tensors(proto):
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value == old:
                entry.value = new
    tmp = model_file.with_name(model_file.name + ".tmp")
    onnx.save(proto, str(tmp))
    os.replace(tmp, model_file)


def commit(model_file: pathlib.Path, data_file: pathlib.Path | None, target: pathlib.Path,
           protect: set[pathlib.Path] = frozenset()) -> list[pathlib.Path]:
    """Move a staged model (and the data file it reads, which sits beside it) to `target`.

    Both staged files must be on `target`'s file system. Returns the files now in place.
    """
    folder = target.parent
    protected = {p.name for p in map(pathlib.Path.resolve, map(pathlib.Path, protect)) if p.parent == folder}
    with _locked(folder):
        written = [target]
        if data_file is not None:
            name = data_file.name
            if name in _mentions(target, [name]):  # a concurrent writer committed a model reading it
                name = data_name(target, protected)
                _rewrite_location(model_file, data_file.name, name)
            os.replace(data_file, folder / name)
            written.append(folder / name)
        os.replace(model_file, target)  # the commit point
        keep = {p.name for p in written} | protected
        family = _family(target)
        for entry in os.scandir(folder):
            if family.fullmatch(entry.name) and entry.name not in keep:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
    return written
