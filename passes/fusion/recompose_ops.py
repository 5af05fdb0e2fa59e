"""Re-compose ops that exporters decompose, into the one ONNX op when the model's opset has it.

ONNX Runtime fuses only the decompositions it knows (the TorchScript forms); the forms
written by tf2onnx and MXNet run op by op. Measured on the zoo (ORT 1.32 CPU): Keras BERT
keeps 9 decomposed LayerNorms and 4 Gelus after ORT's own optimizer; MXNet BERT keeps the
bias of each LayerNorm outside the fusion. Rules (onnxscript pattern/check/rewrite):

1. LayerNorm, y = (x - mean) / sqrt(var + eps) * gamma + beta over the last axis, with the
   mean as ReduceMean(axis -1) or, for rank-3 x, GlobalAveragePool (tf2onnx); the square as
   Pow(d, 2) or Mul(d, d); the division as Div or Mul(Reciprocal); the bias added, or
   subtracted as its negation (MXNet), or absent; and the TensorFlow form
   x * m + (beta - mean * m) with m = gamma / sqrt(var + eps).
   Opset >= 17: one `LayerNormalization(x, gamma, beta, axis=-1, epsilon)`. Older opsets:
   the canonical decomposition ONNX Runtime fuses (ReduceMean, Sub, Pow 2, ReduceMean, Add,
   Sqrt, Div, Mul, Add); a match that is already canonical is left alone.
2. Gelu, 0.5 * x * (1 + erf(x / sqrt(2))) in any association, x / sqrt(2) also written
   x * 0.7071 (Keras). Opset >= 20: `Gelu(x)`. Older: the Div form ORT fuses, only when the
   match used the Mul form.
3. HardSigmoid / HardSwish from Clip(x + 3, 0, 6) / 6 (onnxscript's rules), opset >= 14.
4. Softplus from Log(Exp(x) + 1), and Mish from x * Tanh(Softplus(x)) at opset >= 18.

Declined (a `fail` reason each): constants that are not scalars of the expected value,
gamma/beta that are not constants of the normalized size, an axis other than the last,
ranks that are unknown where the form needs them, non-float types. Matched nodes whose
intermediate values are used elsewhere are never removed (onnxscript checks this).
Custom-domain ops are never matched. Bodies of If/Loop/Scan are rewritten too; functions
are rewritten only when they need no new initializer. Graph outputs keep their names.
onnxscript names new values and nodes per graph (`val_0`, `node_Div_1`), so a body and the
main graph rewritten in one run get the same names (the checker then rejects the model, "not
in SSA form"): after a rewrite, `patterns.make_names_unique` renames the duplicates (graph
inputs and outputs keep theirs).
"""

from __future__ import annotations

__all__ = ["RecomposeOpsPass", "TRIGGERS"]

import logging

import onnx_ir as ir

from graphopt.core.patterns import graphs_of, make_names_unique, opset_version
from graphopt.core.pipeline import CountedPassResult

logger = logging.getLogger(__name__)


# An op every match of a rule set contains (any one of them): without it the set cannot match.
# The pass's registry entry lists their union as `needs_ops`.
TRIGGERS = {"layernorm": {"Sqrt"}, "gelu": {"Erf"}, "softplus": {"Log"}, "mish": {"Tanh"},
            "hardswish": {"Clip", "HardSigmoid"}}


def _can_match(name: str, nodes: list[ir.Node]) -> bool:
    ops = {n.op_type for n in nodes}
    if name != "hardswish":
        return bool(TRIGGERS[name] & ops)
    # onnxscript's rules start from HardSigmoid or from Clip(x + 3): a Relu6 (Clip of a
    # Conv, every MobileNet) is not a candidate.
    return "HardSigmoid" in ops or any(
        n.op_type == "Clip" and n.inputs and n.inputs[0] is not None and n.inputs[0].producer() is not None
        and n.inputs[0].producer().op_type == "Add" for n in nodes)


def _nodes(model: ir.Model) -> list[ir.Node]:
    return [node for graph in graphs_of(model) for node in graph]


class RecomposeOpsPass(ir.passes.InPlacePass):
    """Re-compose LayerNorm, Gelu, HardSigmoid/HardSwish, Softplus and Mish (see the module docstring)."""

    def call(self, model: ir.Model) -> CountedPassResult:
        opset = opset_version(model)
        counters: dict[str, int] = {}
        if opset < 7:
            return CountedPassResult(model, False, counters)
        nodes = _nodes(model)
        if not any(_can_match(name, nodes) for name in TRIGGERS):
            return CountedPassResult(model, False, counters)
        from graphopt.passes.fusion._recompose_rules import rulesets  # onnxscript: only when a rule may match

        for name, ruleset in rulesets(opset).items():
            if not _can_match(name, _nodes(model)):  # re-read: an earlier set may have made one (Softplus)
                continue
            count = ruleset.apply_to_model(model)
            if count:
                counters[f"{name}_recomposed"] = count
        if counters:
            make_names_unique(model)
            logger.info("recomposed: %s", counters)
        return CountedPassResult(model, bool(counters), counters)
