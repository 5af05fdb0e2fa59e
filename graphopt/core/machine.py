"""What machine a benchmark ran on: the CPU, its cores and the SIMD features ORT's kernels use.

INT8 speed depends on them (VNNI or not), so every benchmark prints `describe_cpu` and
figures are compared only within one run. Without /proc/cpuinfo the flags are unknown and
the description says so.
"""

from __future__ import annotations

__all__ = ["cpu_info", "describe_cpu", "environment"]

import contextlib
import os
import pathlib
import platform

import onnxruntime as ort


def cpu_info() -> dict:
    """CPU model, logical cores usable by this process, and the SIMD features ORT's kernels use."""
    model, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError):
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key == "flags" and not flags:
                flags = set(value.split())
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    features = {
        "avx2": "avx2" in flags,
        "avx512f": "avx512f" in flags,
        "avx512_vnni": "avx512_vnni" in flags,
        "avx_vnni": "avx_vnni" in flags,
        "amx_int8": "amx_int8" in flags,
    } if flags else {}
    return {"cpu": model, "cores": cores, "features": features}


def environment() -> dict:
    return {**cpu_info(), "onnxruntime": ort.__version__, "python": platform.python_version(),
            "platform": platform.platform(terse=True)}


def describe_cpu(env: dict) -> str:
    feats = env.get("features") or {}
    if not feats:
        return f"CPU: {env['cpu']} ({env['cores']} cores; SIMD flags unknown: no /proc/cpuinfo)"
    yes = lambda k: "yes" if feats.get(k) else "no"  # noqa: E731
    return (f"CPU: {env['cpu']} ({env['cores']} cores) AVX2 {yes('avx2')}, AVX512F {yes('avx512f')}, "
            f"AVX512-VNNI {yes('avx512_vnni')}, AVX-VNNI {yes('avx_vnni')}")
