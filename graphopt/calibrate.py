"""Calibration and evaluation data, and the activation ranges that calibration measures.

Data sources (`load_data`):

1. An `.npz` with one array per graph input, samples along axis 0, and optionally `labels`.
2. A folder of `.npz` files (each one sample or batch, same keys as 1), or of `.npy` files
   for a single-input model (each file one sample, or a batch with the input's rank), or one
   sub-folder of `.npy` files per graph input name (files paired in sorted order).
   `labels.npy` or `labels.txt` in the folder gives labels, aligned with the sorted files.
3. A folder of images (PNG, JPEG, BMP, ...), read with Pillow and turned into tensors by a
   `Preprocess` spec (`resize`, `crop`, `scale`, `mean`, `std`, `layout`, `color`); without
   one, the model's input shape decides size, layout and channels, and pixels are scaled to
   [0, 1]. `labels.txt`/`labels.npy` as in 2.
4. `"random"` or `"random:N"`: N synthetic samples. Calibrating on noise gives ranges that
   say nothing about real inputs; the dataset carries a warning the report shows.
5. A `dict` of arrays, or a `Dataset`.

Every source is checked against the model's inputs: each graph input needs an array with
its dtype kind and static dims, every array must name a graph input (or be `labels`), and
all arrays hold the same number of samples. A mismatch is an `InputError` naming the file,
the input, and what was expected.

Ranges (`collect_ranges`) run the float model in ONNX Runtime with the wanted tensors as
extra outputs, batch by batch: `minmax` keeps the extremes; `percentile` and `entropy`
(KL divergence, the TensorRT method) take a second pass that histograms each tensor over
its min-max range and cut the tails.
"""

from __future__ import annotations

__all__ = [
    "Dataset",
    "InputSpec",
    "Preprocess",
    "RANGE_METHODS",
    "collect_channel_means",
    "collect_ranges",
    "input_specs",
    "load_data",
]

import dataclasses
import logging
import math
import os
import pathlib
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import onnx
import onnx_ir as ir

from graphopt.errors import InputError, UsageError

logger = logging.getLogger(__name__)

RANGE_METHODS = ("minmax", "percentile", "entropy")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff"}
DEFAULT_RANDOM_SAMPLES = 16
LABELS = "labels"


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """A graph input: name, numpy dtype and dims (int for static, None for dynamic)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...] | None

    def describe(self) -> str:
        dims = "?" if self.shape is None else "x".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.dtype.name}[{dims}]"


def input_specs(model: ir.Model) -> list[InputSpec]:
    """The model's real inputs (initializers listed as inputs excluded)."""
    specs = []
    for value in model.graph.inputs:
        if value.name in model.graph.initializers:
            continue
        dtype = np.dtype(value.dtype.numpy()) if value.dtype is not None else np.dtype(np.float32)
        shape = None if value.shape is None else tuple(d if isinstance(d, int) else None for d in value.shape)
        specs.append(InputSpec(value.name, dtype, shape))
    return specs


@dataclasses.dataclass
class Dataset:
    """Samples for every graph input (axis 0 is the sample axis), optional labels, provenance."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    source: str = "<arrays>"
    synthetic: bool = False
    notes: list[str] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values()))) if self.inputs else 0

    def head(self, n: int) -> "Dataset":
        if n >= len(self):
            return self
        return dataclasses.replace(self, inputs={k: v[:n] for k, v in self.inputs.items()},
                                   labels=None if self.labels is None else self.labels[:n])

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """Consecutive batches; the last one is shorter unless the model fixes the batch size."""
        for start in range(0, len(self), batch_size):
            yield {k: v[start:start + batch_size] for k, v in self.inputs.items()}

    def describe(self) -> dict:
        return {"source": self.source, "samples": len(self), "labels": self.labels is not None,
                "synthetic": self.synthetic}


def batch_size_for(specs: Sequence[InputSpec], wanted: int = 32) -> int:
    """The model's fixed batch size if its inputs declare one, else `wanted`."""
    for spec in specs:
        if spec.shape and spec.shape[0] is not None:
            return spec.shape[0]
    return wanted


# ---------------------------------------------------------------- loading

def load_data(source, model: ir.Model | Sequence[InputSpec], *, purpose: str = "calibration",
              preprocess: "Preprocess | str | None" = None, limit: int | None = None,
              shapes: Mapping[str, Sequence[int]] | None = None, seed: int = 0) -> Dataset:
    """A checked `Dataset` for the model's inputs from any supported source (see module doc)."""
    specs = input_specs(model) if isinstance(model, ir.Model) else list(model)
    if isinstance(preprocess, str):
        preprocess = Preprocess.parse(preprocess)
    if isinstance(source, Dataset):
        data = source
    elif isinstance(source, Mapping):
        arrays = {k: np.asarray(v) for k, v in source.items()}
        data = _from_arrays(arrays, f"<{purpose} arrays>")
    elif isinstance(source, str) and re.fullmatch(r"random(:\d+)?", source):
        count = int(source.split(":")[1]) if ":" in source else DEFAULT_RANDOM_SAMPLES
        data = _random(specs, count, shapes or {}, seed, purpose)
    elif isinstance(source, (str, os.PathLike)):
        data = _from_path(pathlib.Path(source), specs, preprocess)
    else:
        raise UsageError(f"{purpose} data: cannot read {type(source).__name__}; give a .npz path, a folder, "
                         "a dict of arrays or 'random'")
    data = _check(data, specs, purpose)
    if limit is not None and limit > 0:
        data = data.head(limit)
    return data


def _from_arrays(arrays: dict[str, np.ndarray], source: str) -> Dataset:
    labels = arrays.pop(LABELS, None)
    return Dataset(arrays, None if labels is None else np.asarray(labels), source)


def _from_path(path: pathlib.Path, specs: Sequence[InputSpec], preprocess: "Preprocess | None") -> Dataset:
    if not path.exists():
        raise InputError(f"{path}: no such data file or folder")
    if path.is_file():
        if path.suffix.lower() == ".npz":
            return _from_arrays(_read_npz(path), str(path))
        if path.suffix.lower() == ".npy" and len(specs) == 1:
            return Dataset({specs[0].name: _read_npy(path)}, None, str(path))
        raise InputError(f"{path}: unsupported data file; use an .npz with one array per graph input "
                         "(or a folder of .npy/.npz/images)")
    return _from_folder(path, specs, preprocess)


def _read_npz(path: pathlib.Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (ValueError, OSError, EOFError) as e:
        raise InputError(f"{path}: not a readable .npz file ({_line(e)})") from e


def _read_npy(path: pathlib.Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InputError(f"{path}: not a readable .npy file ({_line(e)})") from e


def _folder_labels(folder: pathlib.Path) -> np.ndarray | None:
    if (folder / "labels.npy").exists():
        return _read_npy(folder / "labels.npy")
    if (folder / "labels.txt").exists():
        lines = [ln.strip() for ln in (folder / "labels.txt").read_text().splitlines() if ln.strip()]
        try:
            return np.array([int(ln) for ln in lines], dtype=np.int64)
        except ValueError as e:
            raise InputError(f"{folder / 'labels.txt'}: expected one integer class index per line") from e
    return None


def _from_folder(folder: pathlib.Path, specs: Sequence[InputSpec], preprocess: "Preprocess | None") -> Dataset:
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(("labels.", ".")))
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    kinds = {p.suffix.lower() for p in files}
    labels = _folder_labels(folder)
    if files and kinds <= {".npz"}:
        parts = [_read_npz(p) for p in files]
        keys = set(parts[0])
        for p, part in zip(files, parts):
            if set(part) != keys:
                raise InputError(f"{p}: has arrays {sorted(part)}, but {files[0].name} has {sorted(keys)}")
        arrays = {k: np.concatenate([_as_batch(part[k], specs, k, p) for p, part in zip(files, parts)])
                  for k in keys if k != LABELS}
        if LABELS in keys:
            labels = np.concatenate([np.atleast_1d(part[LABELS]) for part in parts])
        return Dataset(arrays, labels, str(folder))
    if files and kinds <= {".npy"}:
        if len(specs) != 1:
            raise InputError(f"{folder}: .npy files feed a single-input model; this model has inputs "
                             f"{', '.join(s.name for s in specs)}: use one sub-folder per input name or .npz files")
        arrays = {specs[0].name: np.concatenate([_as_batch(_read_npy(p), specs, specs[0].name, p) for p in files])}
        return Dataset(arrays, labels, str(folder))
    if files and kinds <= IMAGE_SUFFIXES:
        return _from_images(folder, files, specs, preprocess, labels)
    if not files and subdirs:
        names = {s.name for s in specs}
        if {d.name for d in subdirs} >= names:
            arrays = {}
            for d in subdirs:
                if d.name not in names:
                    continue
                inner = sorted(d.glob("*.npy"))
                if not inner:
                    raise InputError(f"{d}: no .npy files")
                arrays[d.name] = np.concatenate([_as_batch(_read_npy(p), specs, d.name, p) for p in inner])
            return Dataset(arrays, labels, str(folder))
        raise InputError(f"{folder}: sub-folders {', '.join(d.name for d in subdirs)} do not name the graph inputs "
                         f"({', '.join(sorted(names))})")
    if not files:
        raise InputError(f"{folder}: empty data folder")
    raise InputError(f"{folder}: mixes file types ({', '.join(sorted(kinds))}); use only .npz, only .npy "
                     "or only images")


def _as_batch(array: np.ndarray, specs: Sequence[InputSpec], name: str, path: pathlib.Path) -> np.ndarray:
    """A file holds one sample (rank one less than the input) or a batch (same rank)."""
    spec = next((s for s in specs if s.name == name), None)
    if spec is not None and spec.shape is not None and array.ndim == len(spec.shape) - 1:
        return array[None]
    if array.ndim == 0:
        raise InputError(f"{path}: '{name}' is a scalar; expected a sample or a batch")
    return array


def _random(specs: Sequence[InputSpec], count: int, shapes: Mapping[str, Sequence[int]], seed: int,
            purpose: str) -> Dataset:
    """`count` noise samples (rounded up to the model's fixed batch); dynamic dims are 1 unless `shapes` says."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for spec in specs:
        given = shapes.get(spec.name)
        dims = list(given) if given else [1 if d is None else d for d in (spec.shape or (None,))]
        fixed = spec.shape[0] if spec.shape and spec.shape[0] is not None else 1
        total = -(-count // fixed) * fixed
        shape = [total, *dims[1:]]
        if np.issubdtype(spec.dtype, np.floating):
            arrays[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif spec.dtype == np.bool_:
            arrays[spec.name] = rng.integers(0, 2, size=shape).astype(np.bool_)
        else:
            arrays[spec.name] = rng.integers(0, 4, size=shape).astype(spec.dtype)
    note = (f"{purpose} data is RANDOM ({count} samples of noise): ranges and accuracy from it say nothing "
            "about real inputs; give real data")
    logger.warning(note)
    return Dataset(arrays, None, "random", synthetic=True, notes=[note])


def _check(data: Dataset, specs: Sequence[InputSpec], purpose: str) -> Dataset:
    where = data.source
    names = [s.name for s in specs]
    unknown = sorted(set(data.inputs) - set(names))
    missing = [n for n in names if n not in data.inputs]
    if missing:
        has = ", ".join(sorted(data.inputs)) or "nothing"
        raise InputError(f"{where}: no array for graph input '{missing[0]}' ({purpose} data has: {has}; "
                         f"graph inputs: {', '.join(names)})")
    if unknown:
        raise InputError(f"{where}: array '{unknown[0]}' matches no graph input (graph inputs: {', '.join(names)}; "
                         f"only '{LABELS}' may be extra)")
    inputs = {}
    counts = {}
    for spec in specs:
        array = np.asarray(data.inputs[spec.name])
        inputs[spec.name] = _check_array(array, spec, where, data.notes)
        counts[spec.name] = len(inputs[spec.name])
    if len(set(counts.values())) > 1:
        detail = ", ".join(f"{k}: {v}" for k, v in counts.items())
        raise InputError(f"{where}: inputs hold different sample counts ({detail})")
    count = next(iter(counts.values()), 0)
    if count == 0:
        raise InputError(f"{where}: {purpose} data holds no samples")
    labels = data.labels
    if labels is not None:
        labels = np.asarray(labels)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise InputError(f"{where}: '{LABELS}' must be a 1-D integer array of class indices, "
                             f"got {labels.dtype.name}{list(labels.shape)}")
        if len(labels) != count:
            raise InputError(f"{where}: {len(labels)} labels for {count} samples")
    return dataclasses.replace(data, inputs=inputs, labels=labels)


def _check_array(array: np.ndarray, spec: InputSpec, where: str, notes: list[str]) -> np.ndarray:
    want = spec.dtype
    if array.dtype != want:
        same_kind = (np.issubdtype(array.dtype, np.floating) and np.issubdtype(want, np.floating)) or (
            np.issubdtype(array.dtype, np.integer) and np.issubdtype(want, np.integer))
        if not same_kind:
            raise InputError(f"{where}: '{spec.name}' is {array.dtype.name}, but the graph input is {want.name}; "
                             f"convert the data (e.g. arr.astype(np.{want.name}))")
        note = f"{where}: '{spec.name}' converted from {array.dtype.name} to {want.name}"
        logger.info(note)
        array = array.astype(want)
    if spec.shape is not None:
        if array.ndim != len(spec.shape):
            raise InputError(f"{where}: '{spec.name}' has shape {list(array.shape)}, but the graph input is "
                             f"{spec.describe()} (rank {len(spec.shape)}, samples along axis 0)")
        for axis, (got, dim) in enumerate(zip(array.shape, spec.shape)):
            if axis == 0 or dim is None:
                continue
            if got != dim:
                raise InputError(f"{where}: '{spec.name}' has shape {list(array.shape)}, but the graph input is "
                                 f"{spec.describe()} (dim {axis} is {got}, expected {dim})")
        if spec.shape[0] is not None and len(array) % spec.shape[0]:
            raise InputError(f"{where}: '{spec.name}' holds {len(array)} samples, not a multiple of the model's "
                             f"fixed batch size {spec.shape[0]}")
    return np.ascontiguousarray(array)


# ---------------------------------------------------------------- images

@dataclasses.dataclass
class Preprocess:
    """How an image becomes a tensor: resize -> center crop -> scale -> (x - mean) / std -> layout.

    Text form (CLI `--preprocess`): comma-separated `key=value`, lists separated by `/`:
    `resize=256,crop=224,mean=0.485/0.456/0.406,std=0.229/0.224/0.225,layout=nchw,color=rgb`.
    `resize=N` scales the shorter side to N, `resize=HxW` resizes exactly; `scale` defaults
    to 1/255. Unset keys come from the model's input shape.
    """

    resize: tuple[int, ...] | None = None
    crop: tuple[int, int] | None = None
    scale: float = 1 / 255
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: str | None = None  # "nchw" or "nhwc"
    color: str | None = None  # "rgb", "bgr" or "gray"

    @classmethod
    def parse(cls, text: str) -> "Preprocess":
        result = cls()
        for item in filter(None, (t.strip() for t in text.split(","))):
            key, sep, value = item.partition("=")
            key = key.strip().lower()
            try:
                if not sep:
                    raise ValueError
                if key == "resize":
                    result.resize = tuple(int(v) for v in value.lower().split("x"))
                    if len(result.resize) not in (1, 2):
                        raise ValueError
                elif key == "crop":
                    dims = [int(v) for v in value.lower().split("x")]
                    result.crop = (dims[0], dims[-1])
                elif key == "scale":
                    num, _, den = value.partition("/")
                    result.scale = float(num) / float(den or 1)
                elif key in ("mean", "std"):
                    setattr(result, key, tuple(float(v) for v in value.split("/")))
                elif key == "layout" and value.lower() in ("nchw", "nhwc"):
                    result.layout = value.lower()
                elif key == "color" and value.lower() in ("rgb", "bgr", "gray"):
                    result.color = value.lower()
                else:
                    raise ValueError
            except ValueError:
                raise UsageError(f"--preprocess {item!r}: expected resize=N|HxW, crop=HxW, scale=X, "
                                 "mean=a/b/c, std=a/b/c, layout=nchw|nhwc, color=rgb|bgr|gray") from None
        if any(s == 0 for s in result.std):
            raise UsageError("--preprocess std: values must be non-zero")
        return result

    def describe(self) -> str:
        parts = []
        if self.resize:
            parts.append("resize=" + "x".join(map(str, self.resize)))
        if self.crop:
            parts.append(f"crop={self.crop[0]}x{self.crop[1]}")
        parts.append(f"scale={self.scale:g}")
        parts.append("mean=" + "/".join(f"{m:g}" for m in self.mean))
        parts.append("std=" + "/".join(f"{s:g}" for s in self.std))
        parts.append(f"layout={self.layout}")
        parts.append(f"color={self.color}")
        return ",".join(parts)


def _resolve(pre: Preprocess, spec: InputSpec, folder: pathlib.Path) -> Preprocess:
    pre = dataclasses.replace(pre)
    shape = spec.shape
    if shape is None or len(shape) != 4:
        raise InputError(f"{folder}: images feed a 4-D input; '{spec.name}' is {spec.describe()}")
    if pre.layout is None:
        if shape[1] in (1, 3):
            pre.layout = "nchw"
        elif shape[3] in (1, 3):
            pre.layout = "nhwc"
        else:
            raise InputError(f"{folder}: cannot tell the layout of '{spec.name}' {spec.describe()}; "
                             "give --preprocess layout=nchw or layout=nhwc")
    channels = shape[1] if pre.layout == "nchw" else shape[3]
    height, width = (shape[2], shape[3]) if pre.layout == "nchw" else (shape[1], shape[2])
    if pre.color is None:
        pre.color = "gray" if channels == 1 else "rgb"
    if pre.crop is None and pre.resize is None:
        if height is None or width is None:
            raise InputError(f"{folder}: '{spec.name}' has dynamic height/width; give --preprocess resize=HxW")
        pre.resize = (height, width)
    return pre


def _from_images(folder: pathlib.Path, files: list[pathlib.Path], specs: Sequence[InputSpec],
                 preprocess: Preprocess | None, labels: np.ndarray | None) -> Dataset:
    if len(specs) != 1:
        raise InputError(f"{folder}: images feed a single-input model; this one has "
                         f"{', '.join(s.name for s in specs)}")
    try:
        from PIL import Image
    except ImportError as e:
        raise InputError(f"{folder}: reading images needs Pillow (pip install pillow), or convert them to an "
                         ".npz yourself") from e
    spec = specs[0]
    pre = _resolve(preprocess or Preprocess(), spec, folder)
    samples = []
    for path in files:
        try:
            with Image.open(path) as img:
                img = img.convert("L" if pre.color == "gray" else "RGB")
                img = _resize_crop(img, pre, Image)
                array = np.asarray(img, dtype=np.float32)
        except (OSError, ValueError) as e:
            raise InputError(f"{path}: not a readable image ({_line(e)})") from e
        if array.ndim == 2:
            array = array[:, :, None]
        if pre.color == "bgr":
            array = array[:, :, ::-1]
        mean = np.asarray(pre.mean, dtype=np.float32)
        std = np.asarray(pre.std, dtype=np.float32)
        if mean.size not in (1, array.shape[2]) or std.size not in (1, array.shape[2]):
            raise UsageError(f"--preprocess mean/std: give 1 or {array.shape[2]} values")
        array = (array * pre.scale - mean) / std
        if pre.layout == "nchw":
            array = array.transpose(2, 0, 1)
        samples.append(array.astype(spec.dtype if np.issubdtype(spec.dtype, np.floating) else np.float32))
    data = Dataset({spec.name: np.stack(samples)}, labels, str(folder),
                   notes=[f"images preprocessed with {pre.describe()}"])
    return data


def _resize_crop(img, pre: Preprocess, Image):
    if pre.resize:
        if len(pre.resize) == 1:
            short = pre.resize[0]
            w, h = img.size
            ratio = short / min(w, h)
            img = img.resize((max(1, round(w * ratio)), max(1, round(h * ratio))), Image.BILINEAR)
        else:
            img = img.resize((pre.resize[1], pre.resize[0]), Image.BILINEAR)
    if pre.crop:
        ch, cw = pre.crop
        w, h = img.size
        if ch > h or cw > w:
            raise InputError(f"crop {ch}x{cw} is larger than the resized image {h}x{w}; raise resize")
        left, top = (w - cw) // 2, (h - ch) // 2
        img = img.crop((left, top, left + cw, top + ch))
    return img


# ---------------------------------------------------------------- ranges

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
    specs = input_specs(model)
    fixed = next((s.shape[0] for s in specs if s.shape and s.shape[0] is not None), None)
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
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        try:
            if proto.ByteSize() < (1 << 31) - (1 << 26):
                source = proto.SerializeToString()
            else:
                self._tmp = tempfile.TemporaryDirectory(prefix="graphopt-calib-")
                source = str(pathlib.Path(self._tmp.name) / "tap.onnx")
                onnx.save(proto, source, save_as_external_data=True, location="tap.data")
            self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - ORT raises several unrelated types; one message for all
            raise InputError(f"ONNX Runtime cannot run the model for calibration: {_line(e)}") from e
        return self

    def run(self, data: Dataset, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        for feeds in data.batches(batch_size):
            values = {n: feeds[n] for n in self.from_data}
            if self.tapped:
                try:
                    outs = self.session.run(self.tapped, feeds)
                except Exception as e:  # noqa: BLE001
                    raise InputError(f"{data.source}: ONNX Runtime failed on the calibration data: {_line(e)}") from e
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


def _line(e: BaseException) -> str:
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return lines[0][:300] if lines else type(e).__name__
