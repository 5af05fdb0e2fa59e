"""A fuzz case: a recipe that builds its files in a case folder and the command line to run on them."""

from __future__ import annotations

import dataclasses
import pathlib
import random
from collections.abc import Callable

from tests.fuzz.harness import Paths

INPUTS_XFAIL = "input model: issue 14/15 item {}"


@dataclasses.dataclass
class Case:
    family: str
    name: str
    build: Callable[[Paths, random.Random], list[str]]  # writes the case's files; returns the argv
    expect: str = "any"  # "error": must exit 1/2; "ok": must exit 0; "any": either, judged
    expect_code: int | None = None
    error_codes: tuple[int, ...] = (1, 2)  # clean failures: one "error:" line
    lossy: bool = False
    fast: bool = False
    xfail: str | None = None
    subprocess: bool = False
    timeout: float | None = None
    check_output: bool = True
    allowed_out: tuple[str, ...] = ()
    output_name: str | None = "model.opt.onnx"  # None: the case writes no model
    runner: Callable | None = None  # replaces the plain run (kill cases)
    extra_check: Callable | None = None  # (verdict, paths) -> problem or None

    @property
    def id(self) -> str:
        return f"{self.family}/{self.name}"

    def source(self, paths: Paths) -> pathlib.Path:
        return paths.inp / "model.onnx"

    def output(self, paths: Paths) -> pathlib.Path | None:
        return paths.out / self.output_name if self.output_name else None

    def rng(self) -> random.Random:
        return random.Random(self.id)


def optimize_argv(paths: Paths, *flags) -> list[str]:
    return ["optimize", str(paths.inp / "model.onnx"), "-o", str(paths.out / "model.opt.onnx"), *map(str, flags)]


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def write_model(paths: Paths, proto_or_bytes) -> pathlib.Path:
    path = paths.inp / "model.onnx"
    data = proto_or_bytes if isinstance(proto_or_bytes, (bytes, bytearray)) else proto_or_bytes.SerializeToString()
    path.write_bytes(bytes(data))
    return path
