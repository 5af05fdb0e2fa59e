"""Fold an explicit Pad into the Conv or pooling op after it (TensorFlow 'SAME' and ZeroPadding2D).

tf2onnx writes Keras padding as `Pad -> Conv` / `Pad -> MaxPool`; the op's own `pads`
attribute says the same thing. ONNX Runtime folds Pad into Conv when it loads a model but
not into pooling: Keras Inception runs 7% faster (ORT CPU time) with its Pads folded.

1. `Conv(Pad(x, pads, 0))` (and ConvInteger): onnxscript's `FuseConvPad` rule -> the pads
   go into the Conv's `pads`.
2. `AveragePool(Pad(x, pads, 0))` without pads of its own -> `AveragePool(x, pads,
   count_include_pad=1)`: the zeros count in the average either way.
3. `MaxPool(Pad(x, pads, v))` with one output (no Indices) when v is -inf, or v is 0 and x
   is provably non-negative (it comes from Relu, Sigmoid, Softmax, Abs, Exp, Clip with a
   non-negative min, or pooling/Concat/reshaping of such values): a max over a window that
   holds a value >= 0 is the same with or without the zeros.

Required everywhere: opset >= 11 (Pad's pads as an input), constant-mode Pad, constant
pads that are non-negative and zero on batch and channel axes, a constant padding value
(not a graph input), auto_pad NOTSET, the Pad read by this node only, a known rank.
Pooling also needs: every resulting pad smaller than the kernel (ORT refuses the model
otherwise: "Pad should be smaller than kernel"), and with ceil_mode=1 no end padding from
the Pad (a last window starting in padded rows is dropped from pads, kept from data).
Bodies of If/Loop/Scan are rewritten too. Graph outputs are never a Pad we remove.
"""

from __future__ import annotations

__all__ = ["FusePadPass"]

import collections
import logging
import math

import numpy as np
import onnx_ir as ir

from graphopt.core.patterns import attr_int, attr_ints, constant_array, is_default_domain, opset_version, single_consumer
from graphopt.core.pipeline import CountedPassResult

logger = logging.getLogger(__name__)

_NON_NEGATIVE = {"Relu", "Sigmoid", "Softmax", "Abs", "Exp", "Softplus", "HardSigmoid"}
_KEEPS_SIGN = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Concat", "Reshape", "Transpose",
               "Flatten", "Squeeze", "Unsqueeze", "Identity", "Max", "Add", "Mul", "Split", "Slice"}


def _guarded(rule_class):
    from onnxscript.rewriter import pattern

    class Guarded(rule_class):
        def __init__(self):
            super().__init__()
            # Remove the matched Pad with the Conv (so it must have no other reader). onnxscript's
            # remove_nodes=False would instead sweep the whole model with RemoveUnusedNodesPass,
            # which deletes output-less custom ops.
            self.remove_nodes = True

        def check(self, context, x, pad, conv):
            result = pattern.MatchResult()
            if any(v is not None and v.is_graph_input() for v in pad.producer().inputs[1:]):
                return result.fail("pads or value are graph inputs: the caller may override them")
            return super().check(context, x, pad, conv)

    Guarded.__name__ = rule_class.__name__
    return Guarded


def non_negative(value: ir.Value | None, depth: int = 8) -> bool:
    """True when every element of `value` is provably >= 0 (never NaN-free proofs: NaN stays NaN)."""
    node = value.producer() if value is not None else None
    if node is None or depth == 0 or not is_default_domain(node):
        a = constant_array(value) if value is not None else None
        return a is not None and a.dtype.kind in "fiu" and bool(np.all(a >= 0))
    op = node.op_type
    if op in _NON_NEGATIVE:
        return True
    if op == "Clip":  # opset >= 11 here: min is an input
        low = constant_array(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
        return low is not None and bool(np.all(low >= 0))
    if op in _KEEPS_SIGN:
        data = node.inputs if op in ("Concat", "Max", "Add", "Mul") else node.inputs[:1]
        return all(v is not None and non_negative(v, depth - 1) for v in data)
    return False


def _pad_spec(pad: ir.Node, rank: int) -> tuple[list[int], float] | None:
    """Spatial pads (begins then ends) and the padding value of a foldable constant-mode Pad."""
    if len(pad.inputs) < 2 or (mode := pad.attributes.get("mode")) is not None and mode.as_string() != "constant":
        return None
    if any(v is not None and v.is_graph_input() for v in pad.inputs[1:]):
        return None
    pads = constant_array(pad.inputs[1])
    if pads is None:
        return None
    pads = [int(p) for p in pads.reshape(-1)]
    axes = list(range(rank))
    if len(pad.inputs) > 3 and pad.inputs[3] is not None:
        a = constant_array(pad.inputs[3])
        if a is None:
            return None
        axes = [int(x) % rank for x in a.reshape(-1)]
    full = [0] * (2 * rank)
    for i, axis in enumerate(axes):
        full[axis], full[axis + rank] = pads[i], pads[i + len(axes)]
    if any(p < 0 for p in full) or full[0] or full[1] or full[rank] or full[rank + 1]:
        return None
    value = 0.0
    if len(pad.inputs) > 2 and pad.inputs[2] is not None:
        v = constant_array(pad.inputs[2])
        if v is None or v.size != 1:
            return None
        value = float(v.reshape(-1)[0])
    return full[2:rank] + full[rank + 2:], value


def _rank_from_pads(pad: ir.Node) -> int | None:
    """Without an axes input, a Pad's pads hold two numbers per axis."""
    if len(pad.inputs) > 3 and pad.inputs[3] is not None:
        return None
    pads = constant_array(pad.inputs[1]) if len(pad.inputs) > 1 else None
    return pads.size // 2 if pads is not None and pads.size % 2 == 0 else None


def _fold_into_pool(pool: ir.Node) -> bool:
    x_pad = pool.inputs[0]
    pad = x_pad.producer() if x_pad is not None else None
    if pad is None or pad.op_type != "Pad" or not is_default_domain(pad) or single_consumer(x_pad) is not pool:
        return False
    x = pad.inputs[0]
    if x is None or pad.graph is not pool.graph:
        return False
    rank = len(x.shape) if x.shape is not None else _rank_from_pads(pad)
    spec = _pad_spec(pad, rank) if rank else None
    if spec is None or pool.attributes.get_string("auto_pad", "NOTSET") != "NOTSET":
        return False
    new_pads, value = spec
    old = attr_ints(pool, "pads") or [0] * len(new_pads)
    kernel = attr_ints(pool, "kernel_shape") or []
    merged = [a + b for a, b in zip(old, new_pads)]
    if len(kernel) * 2 != len(merged) or any(p >= kernel[i % len(kernel)] for i, p in enumerate(merged)):
        return False  # ORT: "Pad should be smaller than kernel"
    if attr_int(pool, "ceil_mode", 0) and any(new_pads[len(kernel):]):
        return False  # the output size would change
    if pool.op_type == "AveragePool":
        if value != 0.0 or any(old):
            return False
        pool.attributes["count_include_pad"] = ir.AttrInt64("count_include_pad", 1)
    else:
        if len(pool.outputs) > 1:
            return False  # Indices would point into the padded tensor
        if not (value == -math.inf or (value == 0.0 and non_negative(x))):
            return False
    pool.attributes["pads"] = ir.AttrInt64s("pads", merged)
    pool.replace_input_with(0, x)
    pad.graph.remove(pad, safe=True)
    logger.debug("Pad folded into %s %s", pool.op_type, pool.name)
    return True


def _fold_into_convs(model: ir.Model) -> int:
    # onnxscript is imported only here: it costs 0.3 s of start-up, and most models have no Pad -> Conv.
    from onnxscript.rewriter import pattern
    from onnxscript.rewriter.rules.common._fuse_pad_into_conv import FuseConvIntegerPad, FuseConvPad

    rules = pattern.RewriteRuleSet([_guarded(FuseConvPad).rule(), _guarded(FuseConvIntegerPad).rule()])
    return rules.apply_to_model(model)


class FusePadPass(ir.passes.InPlacePass):
    """Conv/AveragePool/MaxPool(Pad(x)) -> the op with the padding in its pads (opset >= 11)."""

    def call(self, model: ir.Model) -> CountedPassResult:
        counters: collections.Counter = collections.Counter()
        if opset_version(model) < 11:
            return CountedPassResult(model, False, {})
        pads = [n for n in model.graph.all_nodes() if n.op_type == "Pad" and is_default_domain(n)]
        if not pads:
            return CountedPassResult(model, False, {})
        if any(use.node.op_type in ("Conv", "ConvInteger") for pad in pads for use in pad.outputs[0].uses()):
            counters["pads_folded_into_conv"] = _fold_into_convs(model)
        for node in list(ir.traversal.RecursiveGraphIterator(model.graph)):
            if node.graph is not None and node.op_type in ("MaxPool", "AveragePool") and is_default_domain(node):
                if _fold_into_pool(node):
                    counters["pads_folded_into_pool"] += 1
        counters = +counters
        if counters:
            logger.info("fuse_pad: %s", dict(counters))
        return CountedPassResult(model, bool(counters), dict(counters))

