"""INT8 number formats: which scheme suits the CPU, and the arithmetic of scales and zero points.

A scheme fixes the activation type (asymmetric, per tensor) and the weight type (symmetric,
per output channel):

- `u8s8`: uint8 activations, int8 weights in [-127, 127]. For VNNI (AVX512-VNNI, AVX-VNNI)
  and ARM, where int8 dot products do not saturate.
- `u8s8-reduced`: uint8 activations, int8 weights in [-64, 64]. For AVX2 without VNNI: ORT's
  u8s8 kernels use VPMADDUBSW, whose int16 sum of two u8*s8 products saturates above 32767
  (255*127*2 = 64770 can); 255*64*2 = 32640 never does.
- `u8u8`: uint8 activations, uint8 weights with zero point 128. No saturation and full
  weight range, but ORT's u8u8 kernels are slower.
- `s8s8`: int8 activations and weights. For accelerators that want signed activations; ORT
  on x86 converts the activations back to uint8.

Depthwise Conv weights keep the full [-127, 127] in every scheme: ORT runs them in its
depthwise kernel, which does not saturate (measured: 255*127*9 and
255*127*25 come out exact), while pointwise and dense layers go through the GEMM kernels.

`auto` picks `u8s8` where the CPU has VNNI or is ARM, else `u8s8-reduced`. Measured on an
AVX2 EPYC without VNNI (tools/bench_quant.py, one thread): u8s8 saturates (a 3x3 Conv of 16
channels at full scale came out at 51% of its value; the digits model drops 2.9 points of
top-1, MobileNetV2's output SNR falls from 36 to 22 dB); `u8s8-reduced` runs at u8s8 speed;
`u8u8` is 1.4x slower on ResNet-50 and 1.5x on MobileNetV2; `s8s8` 1.7x (ORT's s8-to-u8
rewrite leaves 20 of ResNet-50's Conv layers in float).
"""

from __future__ import annotations

__all__ = ["Int8Scheme", "SCHEMES", "resolve_scheme", "cpu_features", "activation_params",
           "quantize_weight", "quantize_bias"]

import dataclasses
import functools
import pathlib
import platform

import numpy as np


@dataclasses.dataclass(frozen=True)
class Int8Scheme:
    name: str
    activation: type  # np.uint8 or np.int8
    weight: type  # np.int8 or np.uint8
    weight_qmax: int  # symmetric magnitude of the weight grid
    depthwise_qmax: int = 127  # depthwise Conv runs in ORT's own kernel, which never saturates

    @property
    def activation_range(self) -> tuple[int, int]:
        return (0, 255) if self.activation is np.uint8 else (-128, 127)

    @property
    def weight_zero_point(self) -> int:
        return 128 if self.weight is np.uint8 else 0


SCHEMES = {
    "u8s8": Int8Scheme("u8s8", np.uint8, np.int8, 127),
    "u8s8-reduced": Int8Scheme("u8s8-reduced", np.uint8, np.int8, 64),
    "u8u8": Int8Scheme("u8u8", np.uint8, np.uint8, 127),
    "s8s8": Int8Scheme("s8s8", np.int8, np.int8, 127),
}


@functools.lru_cache(maxsize=1)
def cpu_features() -> frozenset[str]:
    """CPU flags from /proc/cpuinfo (Linux x86), or the machine name elsewhere."""
    machine = platform.machine().lower()
    if machine in ("arm64", "aarch64") or machine.startswith("arm"):
        return frozenset({"arm"})
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def resolve_scheme(name: str = "auto") -> tuple[Int8Scheme, str]:
    """The scheme and a one-line reason for it."""
    if name != "auto":
        if name not in SCHEMES:
            from graphopt.core.errors import UsageError

            raise UsageError(f"int8 scheme {name!r}: choose auto or one of {', '.join(SCHEMES)}")
        return SCHEMES[name], "chosen by the user"
    flags = cpu_features()
    if "arm" in flags:
        return SCHEMES["u8s8"], "ARM CPU: int8 dot products do not saturate"
    if flags & {"avx512_vnni", "avx_vnni", "avx512vnni"}:
        return SCHEMES["u8s8"], "CPU has VNNI: u8s8 does not saturate"
    if "avx2" in flags:
        return SCHEMES["u8s8-reduced"], ("AVX2 without VNNI: u8s8 kernels can saturate (VPMADDUBSW); 7-bit "
                                         "weights avoid it at full u8s8 speed")
    return SCHEMES["u8s8-reduced"], "unknown CPU: 7-bit weights are safe on every int8 kernel"


def activation_params(lo: float, hi: float, scheme: Int8Scheme) -> tuple[np.float32, np.integer]:
    """Asymmetric per-tensor scale and zero point; the range always contains 0, so zero
    padding is exact and a range starting at 0 has zero point qmin (Relu is then free)."""
    qmin, qmax = scheme.activation_range
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    span = hi - lo
    if not np.isfinite(span) or span <= 1e-12:
        span = 1.0 if not np.isfinite(span) or span == 0 else span
    scale = np.float32(span / (qmax - qmin))
    if scale <= 0 or not np.isfinite(scale):
        scale = np.float32(1.0)
    zero_point = int(np.clip(np.round(qmin - lo / float(scale)), qmin, qmax))
    return scale, scheme.activation(zero_point)


def quantize_weight(weight: np.ndarray, axis: int | None, scheme: Int8Scheme, depthwise: bool = False
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Symmetric quantization, per channel along `axis` (None: per tensor); a depthwise Conv
    weight uses the scheme's `depthwise_qmax`.

    Returns (quantized weight, float32 scales, zero points); scales and zero points are 1-D
    along `axis`, or scalars.
    """
    w = weight.astype(np.float32)
    qmax = scheme.depthwise_qmax if depthwise else scheme.weight_qmax
    if axis is None:
        amax = np.array(np.abs(w).max(initial=0.0), dtype=np.float32)
        shape = ()
    else:
        axis = axis % w.ndim
        reduce = tuple(i for i in range(w.ndim) if i != axis)
        amax = np.abs(w).max(axis=reduce, initial=0.0).astype(np.float32) if reduce else np.abs(w)
        shape = [1] * w.ndim
        shape[axis] = w.shape[axis]
    scale = np.where(amax > 0, amax / qmax, np.float32(1.0)).astype(np.float32)
    q = np.clip(np.round(w / scale.reshape(shape)), -qmax, qmax)
    zp = scheme.weight_zero_point
    q = (q + zp).astype(scheme.weight)
    zero_points = np.full(scale.shape, zp, dtype=scheme.weight)
    return q, scale, zero_points


def quantize_bias(bias: np.ndarray, input_scale: float, weight_scale: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, bool]:
    """Bias as int32 with scale input_scale * weight_scale (what integer kernels accumulate in).
    Returns (int32 bias, float32 scales, whether any value had to be clamped)."""
    scale = (np.float32(input_scale) * weight_scale.astype(np.float32)).astype(np.float32)
    scale = np.where(scale > 0, scale, np.float32(1e-12)).astype(np.float32)
    q = np.round(bias.astype(np.float64) / scale.astype(np.float64))
    limit = np.iinfo(np.int32).max
    clamped = bool(np.any(np.abs(q) > limit))
    return np.clip(q, -limit, limit).astype(np.int32), scale, clamped
