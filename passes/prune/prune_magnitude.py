"""Unstructured magnitude pruning: zero the smallest weights of Conv/ConvTranspose/Gemm/MatMul.

1. Layers (`prunable_layers`): default-domain Conv, ConvTranspose, Gemm and MatMul of the
   main graph whose weight (input 1) is a float constant (initializer or Constant), not a
   graph input, with at least `min_params` elements.
2. Plan (`plan_magnitude`): `scope="layer"` prunes every layer to the target sparsity;
   `scope="global"` takes one magnitude threshold over all layers' weights (the
   per-layer sparsities then differ: layers with small weights lose more).
3. Rewrite: the `round(s * n)` smallest-magnitude weights of each planned layer become 0
   (weights already 0 count) in a new initializer with a fresh name; the old one is dropped
   when nothing else uses it, so a weight shared with a layer left out is not changed.

Declines (debug log): layers in a custom domain, in subgraphs or functions (not visited),
with non-float or non-constant weights, or smaller than `min_params`. Graph inputs,
outputs and node names are kept. Values stay dense in the IR: `graphopt.core.sparse` stores
them compactly when the model is saved. ONNX Runtime has no sparse CPU kernels, so this
shrinks files, not latency.
"""

from __future__ import annotations

__all__ = ["PruneMagnitudePass", "PruneResult", "plan_magnitude", "prunable_layers", "layer_weight", "set_weight"]

import dataclasses
import logging

import numpy as np
import onnx_ir as ir

from graphopt.core.patterns import constant_array, drop_if_unused, fresh_name, is_default_domain, model_names
from graphopt.core.pipeline import CountedPassResult

logger = logging.getLogger(__name__)

LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_FLOATS = (np.float32, np.float64, np.float16)
SCOPES = ("layer", "global")


@dataclasses.dataclass
class PruneResult(CountedPassResult):
    """Per pruned layer: elements and the sparsity reached (share of zeros)."""

    layers: dict[str, dict] = dataclasses.field(default_factory=dict)


def layer_weight(node: ir.Node) -> np.ndarray | None:
    """The constant float weight (input 1) of a default-domain Conv/ConvTranspose/Gemm/MatMul, else None."""
    if node.op_type not in LAYER_OPS or not is_default_domain(node) or len(node.inputs) < 2:
        return None
    array = constant_array(node.inputs[1])
    if array is None or array.dtype.type not in _FLOATS or array.ndim < 2:
        return None
    return array


def set_weight(node: ir.Node, index: int, array: np.ndarray, taken: set[str], tag: str) -> ir.Value:
    """Give `node` a new initializer `array` as input `index` (fresh name); drop the old one if unused."""
    old = node.inputs[index]
    name = fresh_name(taken, f"{old.name or node.name}_{tag}")
    value = ir.Value(name=name, const_value=ir.tensor(array, name=name), shape=ir.Shape(array.shape),
                     type=ir.TensorType(ir.DataType.from_numpy(array.dtype)))
    node.graph.register_initializer(value)
    node.replace_input_with(index, value)
    drop_if_unused(old)
    return value


def prunable_layers(model: ir.Model, min_params: int = 0) -> dict[str, np.ndarray]:
    """Node name -> weight of every layer this pass can prune (see module doc, case 1)."""
    layers = {}
    for node in model.graph:
        weight = layer_weight(node)
        if weight is None:
            continue
        if weight.size < min_params:
            logger.debug("prune: %s has %d weights (< %d), skipped", node.name, weight.size, min_params)
            continue
        layers[node.name] = weight
    return layers


def plan_magnitude(weights: dict[str, np.ndarray], sparsity: float, scope: str = "layer") -> dict[str, float]:
    """Target sparsity per layer (see module doc, case 2)."""
    if scope == "layer" or not weights:
        return {name: sparsity for name in weights}
    magnitudes = np.concatenate([np.abs(w.astype(np.float32)).ravel() for w in weights.values()])
    k = int(round(sparsity * magnitudes.size))
    if k == 0:
        return {name: 0.0 for name in weights}
    threshold = np.partition(magnitudes, k - 1)[k - 1]
    return {name: float(np.count_nonzero(np.abs(w) <= threshold)) / w.size for name, w in weights.items()}


def prune_array(weight: np.ndarray, sparsity: float) -> np.ndarray:
    """`weight` with its round(sparsity * n) smallest-magnitude entries set to 0."""
    k = int(round(sparsity * weight.size))
    if k <= 0:
        return weight
    flat = weight.reshape(-1).copy()
    order = np.argpartition(np.abs(flat), k - 1)[:k]
    flat[order] = 0
    return flat.reshape(weight.shape)


class PruneMagnitudePass(ir.passes.InPlacePass):
    """Zero the smallest weights: `plan` maps node names to sparsities (see `plan_magnitude`)."""

    def __init__(self, plan: dict[str, float]):
        super().__init__()
        self.plan = dict(plan)

    def call(self, model: ir.Model) -> PruneResult:
        result = PruneResult(model, False, counters={"layers_pruned": 0, "weights_zeroed": 0})
        taken = model_names(model)
        nodes = {n.name: n for n in model.graph}
        for name, sparsity in self.plan.items():
            node = nodes.get(name)
            weight = None if node is None else layer_weight(node)
            if weight is None:
                logger.debug("prune: %s is not a prunable layer of this model, skipped", name)
                continue
            pruned = prune_array(weight, sparsity)
            zeros = int(np.count_nonzero(pruned == 0))
            newly = zeros - int(np.count_nonzero(weight == 0))
            if newly > 0:
                set_weight(node, 1, pruned, taken, "pruned")
                result.modified = True
                result.counters["layers_pruned"] += 1
                result.counters["weights_zeroed"] += newly
                logger.debug("prune: %s to sparsity %.3f (%d weights zeroed)", name, zeros / weight.size, newly)
            result.layers[name] = {"op": node.op_type, "params": int(weight.size),
                                   "sparsity": round(zeros / weight.size, 4)}
        logger.info("magnitude pruning: %d layers, %d weights zeroed", result.counters["layers_pruned"],
                    result.counters["weights_zeroed"])
        return result
