"""Fold an explicit zero Pad into the Conv after it (TensorFlow 'SAME' padding, as tf2onnx writes it).

tf2onnx turns a Keras `ZeroPadding2D` / asymmetric 'SAME' padding into `Pad -> Conv`; the
Conv's own `pads` attribute expresses the same thing. ONNX Runtime does this fusion itself
when it loads the model, so the gain is the node count and other runtimes, not ORT latency.

1. `Conv(Pad(x, pads, 0))` (also ConvInteger) with a constant-mode Pad whose pads are
   constant, non-negative and zero on the batch and channel axes, and a Conv with
   `auto_pad=NOTSET` -> `Conv(x)` with the pads added to its own. This is onnxscript's
   `FuseConvPad` rule; we add the guards below.

Declined: opsets before 11 (Pad holds its pads as an attribute there, which the rule does
not read), a Pad whose pads or value are graph inputs (the caller may override them),
reflect/edge modes, non-zero padding values, unknown input rank. A Pad that also feeds
another node is left alone (the rewrite removes the Pad). Bodies of If/Loop/Scan are rewritten too.
"""

from __future__ import annotations

__all__ = ["FusePadIntoConvPass"]

import logging

import onnx_ir as ir
from onnxscript.rewriter import pattern
from onnxscript.rewriter.rules.common._fuse_pad_into_conv import FuseConvIntegerPad, FuseConvPad

from graphopt.patterns import opset_version
from graphopt.pipeline import CountedPassResult

logger = logging.getLogger(__name__)


def _guarded(rule_class):
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


class FusePadIntoConvPass(ir.passes.InPlacePass):
    """Conv(Pad(x)) -> Conv(x) with the padding in the Conv's pads (opset >= 11)."""

    def call(self, model: ir.Model) -> CountedPassResult:
        if opset_version(model) < 11:
            return CountedPassResult(model, False, {})
        has_pad = any(n.op_type == "Pad" and n.domain in ("", "ai.onnx") for n in model.graph.all_nodes())
        if not has_pad:
            return CountedPassResult(model, False, {})
        rules = pattern.RewriteRuleSet([_guarded(FuseConvPad).rule(), _guarded(FuseConvIntegerPad).rule()])
        count = rules.apply_to_model(model)
        if count:
            logger.info("folded %d Pad nodes into Conv", count)
        return CountedPassResult(model, bool(count), {"pads_folded": count} if count else {})
