"""Errors a user can cause. The CLI prints their message on one line and exits with `exit_code`."""

from __future__ import annotations

__all__ = ["BudgetError", "GraphoptError", "InputError", "UsageError", "VerificationError", "first_line", "ort_message"]

import re


class GraphoptError(Exception):
    """Base of every error caused by the user's input or settings."""

    exit_code = 2


class InputError(GraphoptError):
    """The model (or data) file cannot be used: missing, truncated, not ONNX, unsupported."""


class UsageError(GraphoptError):
    """A flag or setting is wrong (unknown pass name, malformed --shape, ...)."""


class VerificationError(GraphoptError):
    """The optimized model's outputs differ from the original's beyond tolerance."""

    exit_code = 1


class BudgetError(GraphoptError):
    """No setting of a lossy pass meets the user's accuracy budget."""

    exit_code = 1


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# ORT's C++ decorations: "[ONNXRuntimeError] : 1 : FAIL : ", "/onnxruntime_src/...cc:79 onnxruntime::F(args) ",
# "tensorprotoutils.cc:2080 ResolveExternalDataInfoForTensorProto ".
_ORT_NOISE = re.compile(r"\[ONNXRuntimeError\] : \d+ : \w+ : |Load model from .+? failed: ?"
                        r"|/onnxruntime_src/\S+:\d+ \S+?\(.*?\) (?=\[|\w)"
                        r"|\b\w+\.(?:cc|h|cpp):\d+ (?:\w+::)*\w+ ")


def first_line(e: BaseException | str) -> str:
    """The first non-blank line of an exception's message (third-party errors run long), or its type."""
    lines = [ln for ln in _ANSI.sub("", str(e)).splitlines() if ln.strip()]
    return lines[0].strip()[:300] if lines else type(e).__name__


def ort_message(e: BaseException | str) -> str:
    """An ONNX Runtime error as one readable line: no status prefix, C++ source locations or colours."""
    text = re.sub(r"[ \t]{2,}", " ", _ORT_NOISE.sub(" ", _ANSI.sub("", str(e))))
    return first_line(text.strip() or type(e).__name__)
