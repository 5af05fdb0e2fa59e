"""Merge initializers that hold the same tensor.

Cases, per graph (the main graph and each If/Loop/Scan body on its own):

1. Initializers with the same dtype, shape and bytes become one: every use of a duplicate
   is redirected to the first of them (in initializer order), and the duplicate goes.
   Only initializers that share dtype and shape with another one are read; those are
   told apart by 64 evenly spaced elements first, and only the ones that still match are
   hashed and compared byte for byte (hashing every same-shape ResNet weight took 0.3 s).
2. An initializer that is a graph output may be the one kept, and is never removed
   (its name is interface).

Refused:

3. Initializers that are also graph inputs (IR v3 exports): the caller may feed them, so
   they are not constants. Run `DropInitializerInputsPass` first.
4. Across graphs: a body initializer equal to an outer one is left alone (merging would
   turn it into an outer-scope reference; we keep bodies self-contained).
5. Tensors whose data cannot be read (missing external file) are skipped.
6. A merge that would give a training-mode BatchNormalization one value in two inputs
   (bias and running mean are both zeros in a fresh training export): ORT 1.32 computes
   that wrongly (`patterns.aliases_training_batchnorm`).

Why not `onnx_ir.passes.common.DeduplicateInitializersPass`: it skips tensors over 1024
elements by default (the weights worth merging), keys a dict on the full bytes of every
tensor, and logs a warning per initializer-input; the rule it applies is the same.
"""

from __future__ import annotations

__all__ = ["DeduplicateInitializersPass"]

import collections
import hashlib
import logging

import numpy as np
import onnx_ir as ir

from graphopt.core.patterns import aliases_training_batchnorm
from graphopt.core.pipeline import CountedPassResult

logger = logging.getLogger(__name__)


def _data(value: ir.Value):
    """The tensor's bytes as a buffer: a view where the tensor is in memory (no copy), else read."""
    tensor = value.const_value
    try:
        if tensor.dtype == ir.DataType.STRING:
            # length-prefixed, so ["ab", "c"] and ["a", "bc"] differ
            return b"".join(len(s).to_bytes(8, "little") + s for s in tensor.string_data())
        array = tensor.numpy()
        if array.dtype.hasobject:
            return tensor.tobytes()
        return np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    except (OSError, ValueError, TypeError) as e:  # unreadable external data: leave it alone
        logger.debug("cannot read initializer %s: %s", value.name, e)
        return None


def _dedupe_graph(graph: ir.Graph, counters: collections.Counter) -> None:
    by_meta: dict[tuple, list[ir.Value]] = collections.defaultdict(list)
    for init in graph.initializers.values():
        tensor = init.const_value
        if init.is_graph_input() or tensor is None:
            continue
        by_meta[(tensor.dtype, tuple(tensor.shape.numpy()))].append(init)

    # Only keys are kept per candidate, never its data: a group of same-shape weights of a big
    # model would otherwise be held in memory all at once (2 GB for 8 MatMuls of 8192x8192).
    for group in by_meta.values():
        if len(group) < 2:
            continue
        for candidates in _split(group, _sample):
            for same in _split(candidates, lambda data: hashlib.sha256(data).digest()):
                _merge(graph, same, counters)


def _split(values: list[ir.Value], key) -> list[list[ir.Value]]:
    """`values` grouped by `key(data)`; only groups of two or more (unreadable data: left out)."""
    groups: dict[bytes, list[ir.Value]] = collections.defaultdict(list)
    for value in values:
        data = _data(value)
        if data is not None:
            groups[key(data)].append(value)
    return [g for g in groups.values() if len(g) > 1]


def _sample(data, points: int = 64, width: int = 8) -> bytes:
    view = memoryview(data).cast("B")
    if len(view) <= points * width:
        return view.tobytes()
    step = len(view) // points
    return b"".join(view[i:i + width].tobytes() for i in range(0, step * points, step))


def _merge(graph: ir.Graph, same: list[ir.Value], counters: collections.Counter) -> None:
    # keep a graph output if there is one: it cannot go anyway
    keep = next((v for v in same if v.is_graph_output()), same[0])
    keep_data = _data(keep)
    for init in same:
        if init is keep or init.is_graph_output():
            continue
        data = _data(init)
        if data is None or not np.array_equal(np.frombuffer(data, np.uint8), np.frombuffer(keep_data, np.uint8)):
            continue
        if aliases_training_batchnorm(init, keep):
            continue  # ORT miscomputes a training BatchNormalization reading one value twice
        logger.debug("initializer %s duplicates %s", init.name, keep.name)
        init.replace_all_uses_with(keep)
        del graph.initializers[init.name]
        counters["initializers_merged"] += 1
        counters["bytes_saved"] += memoryview(data).nbytes


class DeduplicateInitializersPass(ir.passes.InPlacePass):
    """Merge initializers with the same dtype, shape and bytes, graph by graph."""

    def call(self, model: ir.Model) -> CountedPassResult:
        counters: collections.Counter = collections.Counter()
        for graph in model.graphs():
            _dedupe_graph(graph, counters)
        if counters:
            logger.info("merged %d duplicate initializers (%d bytes)", counters["initializers_merged"],
                        counters["bytes_saved"])
        return CountedPassResult(model, bool(counters), counters=dict(counters))
