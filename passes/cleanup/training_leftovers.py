"""Find what a training-mode export left in the graph; with `inference=True`, convert it.

Exporting in training mode (`torch.onnx.export(..., training=TRAINING)`, a Keras model
called with `training=True`) leaves ops that make every run random or batch-dependent:

1. `Dropout` with a `training_mode` input (opset 12+) that is True or not a constant, or
   with `is_test=0` (opset < 7): outputs are random.
2. `BatchNormalization` with `training_mode=1` (opset 14+), or with the running-statistics
   outputs wired up (opset 7-13), or with `is_test=0` (opset < 7): it normalizes each batch
   with that batch's own statistics, so a sample's output depends on the rest of its batch.

By default the pass only reports: one `logger.warning` naming the count and the first
nodes, and the counters `dropout_training` / `batchnorm_training`. It changes nothing,
because the fix changes the outputs.

With `inference=True` (`--inference`) it converts them to inference form: the Dropout's
`training_mode` input is dropped (or `is_test` set to 1), so it passes its input through
and `eliminate_noops` can remove it; BatchNormalization uses its running mean and variance
(`training_mode` removed, the extra outputs dropped). A BatchNormalization whose extra
outputs are used by another node or are graph outputs is kept and counted as
`batchnorm_training_kept` (the caller reads the updated statistics; the inference form
has none).

Scope: the main graph, If/Loop/Scan bodies and functions. Node and value names are kept;
graph inputs and outputs are unchanged. Custom-domain ops are never touched.
"""

from __future__ import annotations

__all__ = ["TrainingLeftoversPass"]

import collections
import logging

import onnx_ir as ir

from graphopt.core.patterns import attr_int, constant_array, graphs_of, is_default_domain, opset_version
from graphopt.core.pipeline import CountedPassResult

logger = logging.getLogger(__name__)


def _dropout_training(node: ir.Node, opset: int) -> bool:
    if opset < 7:
        return attr_int(node, "is_test", 0) == 0
    if len(node.inputs) < 3 or node.inputs[2] is None:
        return False
    mode = constant_array(node.inputs[2])
    if mode is None:
        return True  # a graph input or computed value: the caller may switch training on
    return bool(mode.reshape(-1)[0]) if mode.size else False


def _batchnorm_training(node: ir.Node, opset: int) -> bool:
    if opset < 7:
        return attr_int(node, "is_test", 0) == 0
    if opset >= 14:
        return attr_int(node, "training_mode", 0) == 1
    return any(out.name or out.uses() for out in node.outputs[1:])


def _extra_outputs_used(node: ir.Node) -> bool:
    return any(out.uses() or out.is_graph_output() for out in node.outputs[1:])


class TrainingLeftoversPass(ir.passes.InPlacePass):
    """Report training-mode Dropout/BatchNormalization; convert them when `inference` is set."""

    def __init__(self, inference: bool = False):
        super().__init__()
        self.inference = inference
        self._reported: set[int] = set()  # nodes already counted: the pipeline runs a pass repeatedly

    def call(self, model: ir.Model) -> CountedPassResult:
        counters: collections.Counter = collections.Counter()
        found: list[str] = []
        opset = opset_version(model)
        modified = False
        for graph in list(graphs_of(model)):
            for node in list(graph):
                if not is_default_domain(node) or id(node) in self._reported:
                    continue
                if node.op_type == "Dropout" and _dropout_training(node, opset):
                    self._reported.add(id(node))
                    counters["dropout_training"] += 1
                    found.append(f"Dropout {node.name or node.outputs[0].name}")
                    if self.inference:
                        self._dropout_to_inference(node, opset)
                        counters["dropout_converted"] += 1
                        modified = True
                elif node.op_type == "BatchNormalization" and _batchnorm_training(node, opset):
                    self._reported.add(id(node))
                    counters["batchnorm_training"] += 1
                    found.append(f"BatchNormalization {node.name or node.outputs[0].name}")
                    if not self.inference:
                        continue
                    if _extra_outputs_used(node):
                        logger.warning("BatchNormalization %s: its batch statistics outputs are used; "
                                       "kept in training mode", node.name)
                        counters["batchnorm_training_kept"] += 1
                        continue
                    self._batchnorm_to_inference(node, opset)
                    counters["batchnorm_converted"] += 1
                    modified = True
        if found:
            shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
            if self.inference:
                logger.warning("converted training-mode ops to inference form (outputs change): %s", shown)
            else:
                logger.warning("model was exported in training mode: %d training-mode ops (%s); outputs are "
                               "random or batch-dependent. Re-export in eval mode, or use --inference to "
                               "convert them", len(found), shown)
        return CountedPassResult(model, modified, dict(counters))

    @staticmethod
    def _dropout_to_inference(node: ir.Node, opset: int) -> None:
        if opset < 7:
            node.attributes["is_test"] = ir.AttrInt64("is_test", 1)
            return
        node.replace_input_with(2, None)
        # Drop trailing empty inputs so the node stays well-formed.
        while node.inputs and node.inputs[-1] is None:
            node.resize_inputs(len(node.inputs) - 1)
        logger.debug("Dropout %s: training_mode input dropped", node.name)

    @staticmethod
    def _batchnorm_to_inference(node: ir.Node, opset: int) -> None:
        node.attributes.pop("training_mode", None)
        if opset < 7:
            node.attributes["is_test"] = ir.AttrInt64("is_test", 1)
        node.resize_outputs(1)
        logger.debug("BatchNormalization %s: inference form", node.name)
