"""N:M pattern pruning (2:4 by default): in every run of M consecutive weights along a layer's
reduction axis, keep the N largest in magnitude and zero the rest.

The pattern is what sparse tensor cores (NVIDIA Ampere and later, through TensorRT built
with sparsity enabled) run at up to twice the dense math rate. ONNX Runtime's CPU kernels
do not use it: on CPU it gives no speed, and at 2:4 the file does not shrink either (50%
zeros do not pay for their indices, see `graphopt.core.sparse`). The report says which layers
qualify; TensorRT still decides per layer at engine build time whether the sparse kernel
is faster.

1. The reduction axis: Conv weight [O, I/g, k...] axis 1 (runs of M input channels at each
   output channel and kernel position); ConvTranspose [I, O/g, k...] axis 0; Gemm op(B)'s K
   (axis 1 of B if transB, else 0); MatMul [.., K, N] axis -2.
2. A layer qualifies when that axis is a multiple of M (runs never straddle a row).
3. Rewrite: a new initializer with a fresh name; the node gets metadata
   `pkg.graphopt.sparsity_pattern = "N:M"` so later tools can find it.

Declines (listed in the result with the reason): reduction axis not a multiple of M,
non-constant or non-float weights, custom domains; subgraphs and functions are not visited.
"""

from __future__ import annotations

__all__ = ["PruneNMPass", "NMResult", "nm_layers", "nm_array", "parse_pattern"]

import dataclasses
import logging

import numpy as np
import onnx_ir as ir

from graphopt.core.errors import UsageError
from graphopt.core.patterns import attr_int, model_names
from graphopt.core.pipeline import CountedPassResult
from graphopt.passes.prune.prune_magnitude import layer_weight, set_weight

logger = logging.getLogger(__name__)

PATTERN_TAG = "pkg.graphopt.sparsity_pattern"


def parse_pattern(text: str) -> tuple[int, int]:
    """'2:4' -> (2, 4); N < M required."""
    try:
        n, m = (int(x) for x in str(text).split(":"))
    except ValueError:
        raise UsageError(f"--sparsity-pattern {text!r}: give N:M, e.g. 2:4") from None
    if not 0 < n < m:
        raise UsageError(f"--sparsity-pattern {text!r}: need 0 < N < M")
    return n, m


@dataclasses.dataclass
class NMResult(CountedPassResult):
    layers: dict[str, dict] = dataclasses.field(default_factory=dict)  # pruned: params, sparsity
    declined: dict[str, str] = dataclasses.field(default_factory=dict)  # node -> why


def reduction_axis(node: ir.Node, weight: np.ndarray) -> int:
    if node.op_type == "Conv":
        return 1
    if node.op_type == "ConvTranspose":
        return 0
    if node.op_type == "Gemm":
        return 1 if attr_int(node, "transB", 0) else 0
    return weight.ndim - 2  # MatMul


def nm_array(weight: np.ndarray, axis: int, n: int, m: int) -> np.ndarray:
    """Keep the n largest |w| of every m consecutive entries along `axis` (a multiple of m)."""
    moved = np.moveaxis(weight, axis, -1)
    runs = moved.reshape(-1, m)
    drop = np.argsort(np.abs(runs), axis=1, kind="stable")[:, : m - n]
    out = runs.copy()
    np.put_along_axis(out, drop, 0, axis=1)
    return np.moveaxis(out.reshape(moved.shape), -1, axis)


def nm_layers(model: ir.Model, n: int, m: int) -> tuple[list[str], dict[str, str]]:
    """(qualifying layer names, {declined layer: reason}) in graph order."""
    ok, declined = [], {}
    for node in model.graph:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        weight = layer_weight(node)
        if weight is None:
            declined[node.name] = "weight is not a constant float tensor"
            continue
        axis = reduction_axis(node, weight)
        if weight.shape[axis] % m:
            declined[node.name] = f"reduction axis has {weight.shape[axis]} elements, not a multiple of {m}"
            continue
        ok.append(node.name)
    return ok, declined


class PruneNMPass(ir.passes.InPlacePass):
    """Prune `layers` (default: every qualifying one) to the N:M pattern (see module doc)."""

    def __init__(self, n: int = 2, m: int = 4, layers: frozenset[str] | None = None):
        super().__init__()
        self.n, self.m, self.layers = n, m, layers

    def call(self, model: ir.Model) -> NMResult:
        result = NMResult(model, False, counters={"layers_nm": 0, "weights_zeroed": 0})
        ok, result.declined = nm_layers(model, self.n, self.m)
        wanted = set(ok) if self.layers is None else set(ok) & set(self.layers)
        taken = model_names(model)
        for node in list(model.graph):
            if node.name not in wanted:
                continue
            weight = layer_weight(node)
            pruned = nm_array(weight, reduction_axis(node, weight), self.n, self.m)
            zeroed = int(np.count_nonzero(pruned == 0) - np.count_nonzero(weight == 0))
            set_weight(node, 1, pruned, taken, f"{self.n}_{self.m}")
            node.metadata_props[PATTERN_TAG] = f"{self.n}:{self.m}"
            result.modified = True
            result.counters["layers_nm"] += 1
            result.counters["weights_zeroed"] += zeroed
            result.layers[node.name] = {"op": node.op_type, "params": int(weight.size),
                                        "sparsity": round(float(np.mean(pruned == 0)), 4)}
            logger.debug("%d:%d pruning of %s (%d weights zeroed)", self.n, self.m, node.name, zeroed)
        logger.info("%d:%d pruning: %d layers, %d declined", self.n, self.m, result.counters["layers_nm"],
                    len(result.declined))
        return result
