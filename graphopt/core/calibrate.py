"""Calibration and evaluation data: where the samples come from and whether they fit the model.

Data sources (`load_data`):

1. An `.npz` with one array per graph input, samples along the input's batch axis (axis 0,
   or the axis of the model's batch dim, e.g. axis 1 of an LSTM state `[layers, batch, hidden]`),
   and optionally `labels`. An input without a batch axis (a scalar such as a sample rate, a
   fixed-shape setting) is given once, as the model takes it, and shared by every sample.
2. A folder of `.npz` files (each one sample or batch, same keys as 1), or of `.npy` files
   for a single-input model (each file one sample, or a batch with the input's rank), or one
   sub-folder of `.npy` files per graph input name (files paired in sorted order).
   `labels.npy` or `labels.txt` in the folder gives labels, aligned with the sorted files.
3. A folder of images (PNG, JPEG, BMP, ...), read with Pillow and turned into tensors by a
   `Preprocess` spec (`resize`, `crop`, `scale`, `mean`, `std`, `layout`, `color`); without
   one, the model's input shape decides size, layout and channels, and pixels are scaled to
   [0, 1]. `labels.txt`/`labels.npy` as in 2.
4. `"random"` or `"random:N"`: N synthetic samples drawn by the input model
   (graphopt.core.inputs: realistic sizes, integers within what the model accepts). Calibrating on
   noise gives ranges that say nothing about real inputs; the dataset carries a warning the
   report shows.
5. A `dict` of arrays, or a `Dataset`.

Every source is checked against the model's inputs: each graph input needs an array with
its dtype kind and static dims, every array must name a graph input (or be `labels`), all
arrays hold the same number of samples, and float data holds no NaN or infinity (ranges and
scores from them are garbage). A mismatch is an `InputError` naming the file, the input, and
what was expected.

Activation ranges are measured in `graphopt.core.ranges`; images are read by `graphopt.core.images`.
"""

from __future__ import annotations

__all__ = [
    "Dataset",
    "InputSpec",
    "batch_size_for",
    "fixed_batch",
    "input_specs",
    "load_data",
]

import dataclasses
import logging
import os
import pathlib
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from graphopt.core.errors import InputError, UsageError, first_line

if TYPE_CHECKING:
    from graphopt.core.images import Preprocess

logger = logging.getLogger(__name__)

DEFAULT_RANDOM_SAMPLES = 16
LABELS = "labels"


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """A graph input: name, numpy dtype, dims (int for static, None for dynamic) and the axis
    samples stack along (None: the input has no batch axis and is shared by all samples)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...] | None
    batch_axis: int | None = 0

    def describe(self) -> str:
        dims = "?" if self.shape is None else "x".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.dtype.name}[{dims}]"


def input_specs(model: ir.Model) -> list[InputSpec]:
    """The model's real inputs (initializers listed as inputs excluded)."""
    from graphopt.core.inputs import sample_axes, signatures

    sigs = signatures(model)
    axes = sample_axes(sigs)
    return [InputSpec(s.name, s.dtype, None if s.dims is None else tuple(d if isinstance(d, int) else None
                                                                           for d in s.dims), axes[s.name])
            for s in sigs]


@dataclasses.dataclass
class Dataset:
    """Samples for every graph input, optional labels, provenance.

    `axes` gives the axis samples stack along per input (default 0); an input whose axis is
    None has no sample axis: the same array goes with every batch (a scalar setting). An input
    in `repeated` holds one sample that every sample shares (a zero state given once): it is
    repeated along its axis to each batch's size."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    source: str = "<arrays>"
    synthetic: bool = False
    notes: list[str] = dataclasses.field(default_factory=list)
    axes: dict[str, int | None] = dataclasses.field(default_factory=dict)
    repeated: frozenset[str] = frozenset()

    def axis(self, name: str) -> int | None:
        return self.axes.get(name, 0)

    def __len__(self) -> int:
        for name, array in self.inputs.items():
            axis = self.axis(name)
            if axis is not None and np.ndim(array) > axis and name not in self.repeated:
                return int(np.shape(array)[axis])
        return 1 if self.inputs else 0

    def _take(self, name: str, array: np.ndarray, start: int, stop: int) -> np.ndarray:
        axis = self.axis(name)
        if axis is None:
            return array
        if name in self.repeated:
            return np.repeat(array, min(stop, len(self)) - start, axis=axis)
        index = [slice(None)] * array.ndim
        index[axis] = slice(start, stop)
        return array[tuple(index)]

    def head(self, n: int) -> "Dataset":
        if n >= len(self):
            return self
        return dataclasses.replace(self, inputs={k: self._take(k, v, 0, n) for k, v in self.inputs.items()},
                                   labels=None if self.labels is None else self.labels[:n])

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """Consecutive batches; the last one is shorter unless the model fixes the batch size."""
        for start in range(0, len(self), batch_size):
            yield {k: self._take(k, v, start, start + batch_size) for k, v in self.inputs.items()}

    def first(self) -> dict[str, np.ndarray]:
        """One sample as the model takes it (what timing and placement run on)."""
        return next(self.batches(1))

    def describe(self) -> dict:
        return {"source": self.source, "samples": len(self), "labels": self.labels is not None,
                "synthetic": self.synthetic}


def batch_size_for(specs: Sequence[InputSpec], wanted: int = 32) -> int:
    """The model's fixed batch size if its inputs declare one, else `wanted`."""
    fixed = fixed_batch(specs)
    return wanted if fixed is None else fixed


def fixed_batch(specs: Sequence[InputSpec]) -> int | None:
    """The static size of the batch axis, if an input declares one."""
    for spec in specs:
        axis = spec.batch_axis
        if spec.shape and axis is not None and axis < len(spec.shape) and spec.shape[axis] is not None:
            return spec.shape[axis]
    return None


# ---------------------------------------------------------------- loading

def load_data(source, model: ir.Model | Sequence[InputSpec], *, purpose: str = "calibration",
              preprocess: "Preprocess | str | None" = None, limit: int | None = None,
              shapes: Mapping[str, Sequence[int]] | None = None, seed: int = 0, inputs=None) -> Dataset:
    """A checked `Dataset` for the model's inputs from any supported source (see module doc).

    `inputs` (a graphopt.core.inputs.InputModel) draws random data; else one is made from `model`."""
    specs = input_specs(model) if isinstance(model, ir.Model) else list(model)
    if isinstance(preprocess, str):
        from graphopt.core.images import Preprocess

        preprocess = Preprocess.parse(preprocess)
    if isinstance(source, Dataset):
        data = source
    elif isinstance(source, Mapping):
        arrays = {k: np.asarray(v) for k, v in source.items()}
        data = _from_arrays(arrays, f"<{purpose} arrays>")
    elif isinstance(source, str) and re.fullmatch(r"random(:\d+)?", source):
        count = int(source.split(":")[1]) if ":" in source else DEFAULT_RANDOM_SAMPLES
        data = _random(model, specs, count, shapes or {}, seed, purpose, inputs)
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
        raise InputError(f"{path}: not a readable .npz file ({first_line(e)})") from e


def _read_npy(path: pathlib.Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InputError(f"{path}: not a readable .npy file ({first_line(e)})") from e


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
    from graphopt.core.images import IMAGE_SUFFIXES, from_images

    if files and kinds <= IMAGE_SUFFIXES:
        array, note = from_images(folder, files, specs, preprocess)
        return Dataset({specs[0].name: array}, labels, str(folder), notes=[note])
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
        return np.expand_dims(array, spec.batch_axis or 0)
    if array.ndim == 0:
        raise InputError(f"{path}: '{name}' is a scalar; expected a sample or a batch")
    return array


def _random(model, specs: Sequence[InputSpec], count: int, shapes: Mapping[str, Sequence[int]], seed: int,
            purpose: str, inputs=None) -> Dataset:
    """`count` noise samples drawn by the input model (realistic sizes and integer values)."""
    from graphopt.core.inputs import input_model

    if inputs is None:
        inputs = input_model(model if isinstance(model, ir.Model) else _interface(specs), shapes=shapes)
    axes = {s.name: s.batch_axis for s in specs}
    per_draw = fixed_batch(specs) or 1
    draws = [inputs.feeds(seed=seed * 100003 + i) for i in range(-(-count // per_draw))]
    arrays = {}
    for spec in specs:
        axis = axes.get(spec.name)
        if axis is None or np.ndim(draws[0][spec.name]) <= axis:
            arrays[spec.name] = draws[0][spec.name]
            axes[spec.name] = None
        else:
            arrays[spec.name] = np.concatenate([d[spec.name] for d in draws], axis=axis)
    note = (f"{purpose} data is RANDOM ({count} samples of noise): ranges and accuracy from it say nothing "
            "about real inputs; give real data")
    logger.warning(note)
    return Dataset(arrays, None, "random", synthetic=True, notes=[note], axes=axes)


def _interface(specs: Sequence[InputSpec]) -> ir.Model:
    """A model with these inputs and nothing else, for the input model to plan from."""
    values = [ir.Value(name=s.name, type=ir.TensorType(ir.DataType.from_numpy(s.dtype)),
                       shape=None if s.shape is None else ir.Shape(list(s.shape)))
              for s in specs]
    return ir.Model(ir.Graph(values, [], nodes=[]), ir_version=8)


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
    inputs, counts, axes = {}, {}, {}
    for spec in specs:
        array = np.asarray(data.inputs[spec.name])
        axis = data.axes.get(spec.name, spec.batch_axis) if data.synthetic else spec.batch_axis
        if axis is not None and array.ndim <= axis:
            axis = None
        inputs[spec.name] = _check_array(array, spec, axis, where)
        axes[spec.name] = axis
        if axis is not None:
            counts[spec.name] = array.shape[axis]
    # An input given for one sample while the others hold more is shared by all of them: a
    # fixed-shape setting as the model takes it, or a zero state given once (repeated per batch).
    majority = max(counts.values(), default=0)
    repeated = set()
    for spec in specs:
        if spec.name not in counts or counts[spec.name] == majority:
            continue
        if spec.shape is not None and all(d is not None for d in spec.shape) and \
                tuple(inputs[spec.name].shape) == spec.shape:
            axes[spec.name] = None
            del counts[spec.name]
        elif counts[spec.name] == 1:
            repeated.add(spec.name)
            del counts[spec.name]
    if len(set(counts.values())) > 1:
        detail = ", ".join(f"{k}: {v} along axis {axes[k]}" for k, v in counts.items())
        raise InputError(f"{where}: inputs hold different sample counts ({detail})")
    count = next(iter(counts.values()), 1 if inputs else 0)
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
    return dataclasses.replace(data, inputs=inputs, labels=labels, axes=axes, repeated=frozenset(repeated))


def _check_array(array: np.ndarray, spec: InputSpec, sample_axis: int | None, where: str) -> np.ndarray:
    want = spec.dtype
    if array.dtype != want:
        same_kind = (np.issubdtype(array.dtype, np.floating) and np.issubdtype(want, np.floating)) or (
            np.issubdtype(array.dtype, np.integer) and np.issubdtype(want, np.integer))
        if not same_kind:
            raise InputError(f"{where}: '{spec.name}' is {array.dtype.name}, but the graph input is {want.name}; "
                             f"convert the data (e.g. arr.astype(np.{want.name}))")
        logger.info("%s: '%s' converted from %s to %s", where, spec.name, array.dtype.name, want.name)
        array = array.astype(want)
    if spec.shape is not None:
        along = "no sample axis" if sample_axis is None else f"samples along axis {sample_axis}"
        if array.ndim != len(spec.shape):
            raise InputError(f"{where}: '{spec.name}' has shape {list(array.shape)}, but the graph input is "
                             f"{spec.describe()} (rank {len(spec.shape)}, {along})")
        for axis, (got, dim) in enumerate(zip(array.shape, spec.shape)):
            if axis == sample_axis or dim is None:
                continue
            if got != dim:
                raise InputError(f"{where}: '{spec.name}' has shape {list(array.shape)}, but the graph input is "
                                 f"{spec.describe()} (dim {axis} is {got}, expected {dim})")
        fixed = spec.shape[sample_axis] if sample_axis is not None else None
        if fixed is not None and array.shape[sample_axis] % fixed:
            raise InputError(f"{where}: '{spec.name}' holds {array.shape[sample_axis]} samples, not a multiple of "
                             f"the model's fixed batch size {fixed}")
    if array.dtype.kind in "fc" and array.size and not np.isfinite(array).all():
        bad = int(array.size - np.isfinite(array).sum())
        raise InputError(f"{where}: '{spec.name}' holds {bad} NaN or infinite value(s); ranges and scores from "
                         "them are meaningless: clean the data")
    return np.require(array, requirements="C")  # ascontiguousarray would make a 0-d array 1-d
