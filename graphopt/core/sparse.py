"""Store zero-heavy weights as ONNX `sparse_initializer`s, and read them back.

onnx-ir has no sparse tensors (its deserializer drops `GraphProto.sparse_initializer`), so
the model stays dense in memory and sparsity is applied to the serialized proto when it
is written (`io.save(..., sparse=FORMAT)`); `densify_proto` undoes it on load.

What ONNX Runtime does with them (checked with onnxruntime 1.32, tests/test_sparse.py):

1. It loads `sparse_initializer`s and expands each to a dense initializer while it builds
   the graph: outputs equal the dense model's bit for bit. The file shrinks; inference does
   not get faster (ORT has no sparse CPU kernels for Conv/Gemm/MatMul) and memory does not
   fall: the peak while the session loads is higher, the sparse and dense copies coexisting
   (measured with `graphopt.core.bench`: a 16.8 MB MLP at 80% sparsity, 6.7 MB sparse, peaked at
   63 MB against 44 MB dense; same latency).
2. Indices: ONNX requires int64 (`onnx.checker`: "Sparse tensor indices must have INT64
   type"), ORT also accepts int32, int16 and int8. int64 costs 8 bytes per non-zero, so a
   float32 weight only shrinks above 2/3 sparsity; int32 from 1/2, int16 from 1/3.

Formats: `"ort"` stores linear indices in the narrowest signed type that holds the
tensor's largest index (smallest files; ONNX Runtime only, fails `onnx.checker`);
`"onnx"` uses int64 (what the ONNX spec allows). Either way a tensor is stored sparse only
where that is at least `min_saving` smaller than dense. onnx's shape inference does not
see sparse initializers' shapes, so `onnx.checker.check_model(full_check=True)` fails on
any model that has them (the plain checker passes with "onnx").
"""

from __future__ import annotations

__all__ = ["FORMATS", "SparseStats", "sparsify_proto", "densify_proto", "sparse_bytes", "index_dtype",
           "write_sparse", "load_densified", "has_unresolved_inputs", "held_missing_input_warnings"]

import contextlib
import dataclasses
import logging
import math
import os
import pathlib

import numpy as np
import onnx
import onnx_ir as ir
from onnx import numpy_helper

from graphopt.core.errors import UsageError

logger = logging.getLogger(__name__)

FORMATS = ("ort", "onnx")
# A sparse tensor can declare any shape in a few bytes; graphopt (and ORT) make it dense.
_MAX_DENSE_BYTES = 2 << 30
_OVERHEAD = 64  # bytes of protobuf framing a sparse tensor adds (names, dims, two TensorProtos)
_STORABLE = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
             onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT16, onnx.TensorProto.UINT16,
             onnx.TensorProto.INT32, onnx.TensorProto.INT64}


@dataclasses.dataclass
class SparseStats:
    """Per tensor stored sparse: elements, non-zeros, index type, dense and sparse bytes."""

    tensors: dict[str, dict] = dataclasses.field(default_factory=dict)

    @property
    def saved_bytes(self) -> int:
        return sum(t["dense_bytes"] - t["sparse_bytes"] for t in self.tensors.values())

    def to_dict(self) -> dict:
        return {"tensors_sparse": len(self.tensors), "bytes_saved": self.saved_bytes,
                "index_types": sorted({t["index_dtype"] for t in self.tensors.values()})}


def index_dtype(numel: int, fmt: str) -> np.dtype:
    """The index type for a tensor of `numel` elements in format `fmt` (linear indices)."""
    if fmt == "onnx":
        return np.dtype(np.int64)
    for dtype in (np.int8, np.int16, np.int32):
        if numel - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


def sparse_bytes(nnz: int, numel: int, itemsize: int, fmt: str) -> int:
    """Bytes a tensor takes stored sparse (values + linear indices + framing)."""
    return nnz * (itemsize + index_dtype(numel, fmt).itemsize) + _OVERHEAD


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise UsageError(f"--sparse-format {fmt!r}: choose one of {', '.join(FORMATS)}")


def sparsify_proto(proto: onnx.ModelProto, fmt: str = "ort", *, min_saving: float = 0.1,
                   min_bytes: int = 1024) -> SparseStats:
    """Move the main graph's initializers that are smaller sparse into `sparse_initializer` (in place).

    Skipped: initializers that are graph inputs (overridable), external-data tensors,
    tensors under `min_bytes`, and element types ORT cannot expand (strings, bool, 4-bit).
    """
    _check_format(fmt)
    graph = proto.graph
    inputs = {i.name for i in graph.input}
    stats = SparseStats()
    keep, moved = [], []
    for tensor in graph.initializer:
        sparse = None
        if (tensor.name not in inputs and tensor.data_type in _STORABLE and not tensor.external_data
                and tensor.data_location != onnx.TensorProto.EXTERNAL):
            sparse = _to_sparse(tensor, fmt, min_saving, min_bytes, stats)
        if sparse is None:
            keep.append(tensor)
        else:
            moved.append(sparse)
    if moved:
        del graph.initializer[:]
        graph.initializer.extend(keep)
        graph.sparse_initializer.extend(moved)
        if proto.ir_version < 4:  # sparse_initializer exists from IR v4 (ONNX 1.6)
            proto.ir_version = 4
        logger.info("%d initializers stored sparse (%s indices), %d bytes saved", len(moved), fmt, stats.saved_bytes)
    return stats


def _to_sparse(tensor: onnx.TensorProto, fmt: str, min_saving: float, min_bytes: int,
               stats: SparseStats) -> onnx.SparseTensorProto | None:
    dims = list(tensor.dims)
    numel = int(np.prod(dims, dtype=np.int64)) if dims else 1
    if numel == 0:
        return None
    itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    dense = numel * itemsize
    if dense < min_bytes:
        return None
    array = numpy_helper.to_array(tensor).reshape(-1)
    nz = np.flatnonzero(array)  # -0.0 is zero; NaN is kept
    size = sparse_bytes(len(nz), numel, itemsize, fmt)
    if size > dense * (1 - min_saving):
        return None
    idx_type = index_dtype(numel, fmt)
    values = numpy_helper.from_array(array[nz], tensor.name)
    indices = numpy_helper.from_array(nz.astype(idx_type), f"{tensor.name}_indices")
    stats.tensors[tensor.name] = {"numel": numel, "nnz": int(len(nz)), "index_dtype": idx_type.name,
                                  "dense_bytes": dense, "sparse_bytes": size}
    return onnx.helper.make_sparse_tensor(values, indices, dims)


def densify_proto(proto: onnx.ModelProto) -> int:
    """Turn every `sparse_initializer` (main graph) back into a dense initializer, in place.

    Accepts linear ([NNZ]) and coordinate ([NNZ, rank]) indices of any integer type.
    Returns the number of tensors expanded.
    """
    graph = proto.graph
    dense = []
    for sparse in graph.sparse_initializer:
        dims = tuple(sparse.dims)
        values = numpy_helper.to_array(sparse.values).reshape(-1)
        indices = numpy_helper.to_array(sparse.indices).astype(np.int64)
        numel = math.prod(dims)
        if any(d < 0 for d in dims) or numel * values.itemsize > _MAX_DENSE_BYTES:
            raise ValueError(f"sparse initializer {sparse.values.name!r}: dims {list(dims)} would take "
                             f"{numel * values.itemsize / 2**30:.3g} GiB dense (at most {_MAX_DENSE_BYTES >> 30} GiB)")
        if indices.ndim == 2:
            if indices.shape[1:] != (len(dims),) or np.any((indices < 0) | (indices >= np.array(dims, np.int64))):
                raise ValueError(f"sparse initializer {sparse.values.name!r}: coordinates outside its shape {list(dims)}")
            indices = np.ravel_multi_index(tuple(indices.T), dims) if len(indices) else indices.reshape(-1)
        # A corrupt file must be a clear error, not an IndexError (or a silent wrap-around of -1).
        if indices.ndim != 1 or len(indices) != len(values) or np.any((indices < 0) | (indices >= numel)):
            raise ValueError(f"sparse initializer {sparse.values.name!r}: {len(values)} values with indices outside "
                             f"its {numel} elements (or not one per value)")
        out = np.zeros(numel, dtype=values.dtype)
        out[indices] = values
        dense.append(numpy_helper.from_array(out.reshape(dims), sparse.values.name))
    if dense:
        del graph.sparse_initializer[:]
        graph.initializer.extend(dense)
    return len(dense)


def write_sparse(model: ir.Model, path: pathlib.Path, fmt: str, data_name: str | None = None) -> SparseStats:
    """Serialize `model`, store what pays as sparse, write it to `path` (weights over 1 KB to
    `data_name` beside it when given; sparse tensors stay inside the model file)."""
    _check_format(fmt)
    proto = ir.serde.serialize_model(model)
    stats = sparsify_proto(proto, fmt)
    if data_name is None:
        onnx.save_model(proto, str(path))
    else:
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name, size_threshold=1024)
        (path.parent / data_name).touch()  # every weight may have gone sparse: the data file still exists
    return stats


def has_unresolved_inputs(model: ir.Model) -> bool:
    """True if a main-graph node reads a named value nothing defines: what onnx-ir leaves of a
    `sparse_initializer` (its deserializer skips them)."""
    graph = model.graph
    for node in graph:
        for value in node.inputs:
            if (value is not None and value.name and value.producer() is None and not value.is_graph_input()
                    and value.const_value is None and value.name not in graph.initializers):
                return True
    return False


def load_densified(path: str | os.PathLike) -> ir.Model | None:
    """The model at `path` with its sparse initializers made dense, or None if it has none."""
    proto = onnx.load(str(path), load_external_data=False)
    if not densify_proto(proto):
        return None
    model = ir.serde.deserialize_model(proto)
    ir.external_data.set_base_dir(model.graph, os.path.dirname(os.path.abspath(path)))
    return model


class _Hold(logging.Filter):
    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if "cannot be found in any scope" in record.getMessage():
            self.records.append(record)
            return False
        return True


@contextlib.contextmanager
def held_missing_input_warnings():
    """Hold onnx-ir's "cannot be found in any scope" warnings while loading; yields a callback
    that re-emits them (call it when the missing values were not sparse initializers)."""
    serde_logger = logging.getLogger("onnx_ir.serde")
    hold = _Hold()
    serde_logger.addFilter(hold)

    def release():
        serde_logger.removeFilter(hold)
        records, hold.records = hold.records, []
        for record in records:
            serde_logger.handle(record)

    try:
        yield release
    finally:
        serde_logger.removeFilter(hold)
