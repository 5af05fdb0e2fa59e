"""Activation ranges and channel means measured by running the float model on calibration data.

`collect_ranges` runs the model in ONNX Runtime with the wanted tensors as extra outputs,
batch by batch (batches sized so the tapped tensors stay under TAP_BYTES):

1. `minmax` keeps the extremes of the finite values; an empty or all non-finite tensor gets
   the harmless unit range (0, 1).
2. `percentile` takes a second pass that histograms each tensor over its min-max range and
   cuts `(100 - p) / 2` percent from each tail (one tail for tensors that are never negative).
3. `entropy` (KL divergence, TensorRT's method) histograms |x| and picks the clipping
   threshold whose quantized distribution loses the least information.

`collect_channel_means` gives per-channel means (bias correction). Graph inputs are read
from the data itself; a model ORT cannot run, or data it rejects, is an `InputError`.
"""

from __future__ import annotations

__all__ = ["RANGE_METHODS", "TAP_BYTES", "collect_channel_means", "collect_ranges"]

import math
import pathlib
import tempfile
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import onnx
import onnx_ir as ir

from graphopt.core.calibrate import Dataset, fixed_batch, input_specs
from graphopt.core.errors import InputError, UsageError, first_line

RANGE_METHODS = ("minmax", "percentile", "entropy")


def collect_ranges(model: ir.Model, names: Sequence[str], data: Dataset, *, method: str = "minmax",
                   percentile: float = 99.999, num_bins: int = 2048, batch_size: int | None = None,
                   ) -> dict[str, tuple[float, float]]:
    """`{tensor name: (lo, hi)}` for float tensors of `model` measured on `data` (see module doc).

    Graph inputs are measured from the data directly; other names become extra outputs of a
    copy of the model run in ONNX Runtime.
    """
    if method not in RANGE_METHODS:
        raise UsageError(f"calibration method {method!r}: choose one of {', '.join(RANGE_METHODS)}")
    if not 0 < percentile <= 100:
        raise UsageError(f"percentile {percentile}: expected 0 < p <= 100")
    names = list(dict.fromkeys(names))
    if not names:
        return {}
    batch_size = batch_size or _tap_batch(model, names)
    with _TensorTap(model, names) as tap:
        lo = {n: math.inf for n in names}
        hi = {n: -math.inf for n in names}
        for values in tap.run(data, batch_size):
            for name, array in values.items():
                if array.size:
                    finite = array[np.isfinite(array)]
                    if finite.size:
                        lo[name] = min(lo[name], float(finite.min()))
                        hi[name] = max(hi[name], float(finite.max()))
        for name in names:
            if lo[name] == math.inf:  # empty or all non-finite: a harmless unit range
                lo[name], hi[name] = 0.0, 1.0
        if method == "minmax":
            return {n: (lo[n], hi[n]) for n in names}
        hists = {n: np.zeros(num_bins, dtype=np.int64) for n in names}
        for values in tap.run(data, batch_size):
            for name, array in values.items():
                hists[name] += _histogram(array, lo[name], hi[name], num_bins, method)
    result = {}
    for name in names:
        if method == "percentile":
            result[name] = _percentile_range(hists[name], lo[name], hi[name], percentile)
        else:
            result[name] = _entropy_range(hists[name], lo[name], hi[name])
    return result


def collect_channel_means(model: ir.Model, axes: Mapping[str, int], data: Dataset, *,
                          batch_size: int | None = None) -> dict[str, np.ndarray]:
    """`{tensor name: mean per channel}`: the mean over every axis but `axes[name]` (bias correction)."""
    if not axes:
        return {}
    batch_size = batch_size or _tap_batch(model, list(axes))
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    with _TensorTap(model, list(axes)) as tap:
        for values in tap.run(data, batch_size):
            for name, array in values.items():
                axis = axes[name] % array.ndim
                moved = np.moveaxis(array, axis, -1).reshape(-1, array.shape[axis]).astype(np.float64)
                sums[name] = sums.get(name, 0.0) + moved.sum(axis=0)
                counts[name] = counts.get(name, 0) + moved.shape[0]
    return {n: (sums[n] / max(counts[n], 1)).astype(np.float32) for n in sums}


TAP_BYTES = 256 << 20  # tapped tensors held per batch


def _tap_batch(model: ir.Model, names: Sequence[str], most: int = 16) -> int:
    """A batch whose tapped tensors fit TAP_BYTES (unknown dims count as 64), or the model's fixed batch."""
    fixed = fixed_batch(input_specs(model))
    if fixed is not None:
        return fixed
    values = {v.name: v for v in model.graph.inputs}
    values.update({o.name: o for node in model.graph for o in node.outputs})
    per_sample = 0
    for name in names:
        shape = values[name].shape if name in values else None
        dims = list(shape)[1:] if shape is not None else [1 << 16]
        per_sample += 4 * math.prod(d if isinstance(d, int) else 64 for d in dims)
    return max(1, min(most, TAP_BYTES // max(per_sample, 1)))


class _TensorTap:
    """A session over a copy of the model that also outputs the tapped tensors."""

    def __init__(self, model: ir.Model, names: Sequence[str]):
        self.model = model
        self.names = list(names)
        self._tmp = None

    def __enter__(self) -> "_TensorTap":
        import onnxruntime as ort

        graph_inputs = {v.name for v in self.model.graph.inputs}
        self.from_data = [n for n in self.names if n in graph_inputs]
        tapped = [n for n in self.names if n not in graph_inputs]
        proto = ir.serde.serialize_model(self.model)
        existing = {o.name for o in proto.graph.output}
        for name in tapped:
            if name not in existing:
                proto.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
        self.tapped = tapped
        options = ort.SessionOptions()
        options.log_severity_level = 4  # errors reach the user as one line, not ORT's log
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        try:
            if proto.ByteSize() < (1 << 31) - (1 << 26):
                source = proto.SerializeToString()
            else:
                self._tmp = tempfile.TemporaryDirectory(prefix="graphopt-calib-")
                source = str(pathlib.Path(self._tmp.name) / "tap.onnx")
                onnx.save(proto, source, save_as_external_data=True, location="tap.data")
            self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise InputError(f"ONNX Runtime cannot run the model for calibration: {first_line(e)}") from e
        return self

    def run(self, data: Dataset, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        for feeds in data.batches(batch_size):
            values = {n: feeds[n] for n in self.from_data}
            if self.tapped:
                try:
                    outs = self.session.run(self.tapped, feeds)
                except Exception as e:
                    raise InputError(f"{data.source}: ONNX Runtime failed on the calibration data: {first_line(e)}") from e
                values.update(zip(self.tapped, outs))
            yield {k: np.asarray(v, dtype=np.float32) for k, v in values.items()}

    def __exit__(self, *exc) -> None:
        self.session = None
        if self._tmp is not None:
            self._tmp.cleanup()


def _histogram(array: np.ndarray, lo: float, hi: float, bins: int, method: str) -> np.ndarray:
    array = array[np.isfinite(array)].ravel()
    if method == "entropy" or lo >= 0:
        top = max(abs(lo), abs(hi)) or 1.0
        return np.histogram(np.abs(array), bins=bins, range=(0.0, top))[0]
    return np.histogram(array, bins=bins, range=(lo, hi if hi > lo else lo + 1.0))[0]


def _percentile_range(hist: np.ndarray, lo: float, hi: float, percentile: float) -> tuple[float, float]:
    total = hist.sum()
    if total == 0:
        return lo, hi
    cdf = np.cumsum(hist) / total
    if lo >= 0:
        top = max(abs(lo), abs(hi)) or 1.0
        edges = np.linspace(0.0, top, len(hist) + 1)
        idx = int(np.searchsorted(cdf, percentile / 100.0))
        return lo, float(min(hi, edges[min(idx + 1, len(hist))]))
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, len(hist) + 1)
    tail = (100.0 - percentile) / 200.0
    left = int(np.searchsorted(cdf, tail))
    right = int(np.searchsorted(cdf, 1.0 - tail))
    return float(max(lo, edges[left])), float(min(hi, edges[min(right + 1, len(hist))]))


def _entropy_range(hist: np.ndarray, lo: float, hi: float) -> tuple[float, float]:
    """KL-optimal clipping threshold of |x|: 256 levels for one-signed tensors, 128 for two-signed."""
    top = max(abs(lo), abs(hi)) or 1.0
    levels = 256 if lo >= 0 else 128
    threshold = top * _kl_threshold_bin(hist, levels) / len(hist)
    return (max(lo, -threshold), min(hi, threshold))


def _kl_threshold_bin(hist: np.ndarray, levels: int) -> int:
    """The bin count i (>= levels) whose clipped distribution, squeezed into `levels` bins, loses
    the least information (TensorRT's calibration)."""
    hist = hist.astype(np.float64)
    if len(hist) > 1:
        hist[0] = hist[1]  # the spike of exact zeros (Relu, padding, background) says nothing about the range
    n = len(hist)
    if n <= levels or hist.sum() == 0:
        return n
    best, best_i = math.inf, n
    step = max(1, (n - levels) // 512)
    suffix = np.concatenate([np.cumsum(hist[::-1])[::-1], [0.0]])
    for i in range(levels, n + 1, step):
        p = hist[:i].copy()
        p[-1] += suffix[i]
        edges = np.linspace(0, i, levels + 1).astype(np.int64)
        edges = np.unique(edges)
        sums = np.add.reduceat(hist[:i], edges[:-1])
        nonzero = hist[:i] > 0
        counts = np.add.reduceat(nonzero.astype(np.float64), edges[:-1])
        per_bin = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
        q = np.repeat(per_bin, np.diff(edges)) * nonzero
        p_sum, q_sum = p.sum(), q.sum()
        if q_sum == 0:
            continue
        p /= p_sum
        q /= q_sum
        mask = p > 0
        kl = float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))
        if kl < best:
            best, best_i = kl, i
    return best_i
