"""Numeric settings checked once for the CLI, the API and build configs alike.

A NaN, an infinity, a negative tolerance or an absurd thread count is a usage error naming the
flag (exit 2), never a crash in a pass or a verification "failure" that is really a bad value.
"""

from __future__ import annotations

__all__ = ["check_number", "check_threads", "MAX_DIM"]

import math
import numbers
import os

from graphopt.core.errors import UsageError

MAX_DIM = 2**63 - 1  # ONNX dims are int64


def check_number(flag: str, value, *, minimum: float = 0.0, what: str = "a number") -> None:
    """UsageError unless `value` is None or a finite number >= `minimum`."""
    if value is None:
        return
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{flag} {value!r}: expected {what} >= {minimum:g}") from None
    if isinstance(value, bool) or not math.isfinite(number) or number < minimum:
        raise UsageError(f"{flag} {value}: expected {what} >= {minimum:g} (finite)")


def check_threads(threads, flag: str = "--threads") -> None:
    """UsageError unless `threads` is None or 1..max(64, 4 x CPUs): ORT starts one thread each."""
    if threads is None:
        return
    limit = max(64, 4 * (os.cpu_count() or 1))
    if isinstance(threads, bool) or not isinstance(threads, numbers.Integral) or not 1 <= threads <= limit:
        raise UsageError(f"{flag} {threads}: expected 1..{limit} ORT threads (this machine has "
                         f"{os.cpu_count()} CPUs), or leave it out for ORT's default")
