"""Remove what no graph output depends on.

Cases:

1. A node none of whose outputs is used (by a node, in this graph or a nested one) or is
   an output of its graph is removed, whatever its domain. The sweep walks each graph in
   reverse, so whole dead chains go in one run. It covers the main graph, If/Loop/Scan
   bodies (a body is visited when its node is live) and functions.
2. An initializer that is not used, not a graph input and not a graph output is removed,
   in the main graph and in subgraphs.
3. Functions no node calls (`RemoveUnusedFunctionsPass`) and opset imports no node uses
   (`RemoveUnusedOpsetsPass`) are removed.

Refused:

4. A node with no outputs at all is kept: ONNX ops are pure, so an op that produces nothing
   can only exist for a side effect (a custom print or write op).
5. Graph inputs, graph outputs, subgraph inputs/outputs (positional) and the optional
   outputs of live nodes are kept. Dead outputs are `KeepOutputsPass`'s job.

We do not call `RemoveUnusedNodesPass` itself because it also deletes nodes with no outputs
(case 4); the sweep is the same reverse walk.
"""

from __future__ import annotations

__all__ = ["EliminateDeadCodePass"]

import logging

import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedFunctionsPass, RemoveUnusedOpsetsPass

from graphopt.core.pipeline import CountedPassResult

logger = logging.getLogger(__name__)


def _is_dead(node: ir.Node) -> bool:
    if not node.outputs:
        return False  # case 4: kept for its side effect
    return all(not out.uses() and not out.is_graph_output() for out in node.outputs)


def _sweep(graph: ir.Graph | ir.Function, counters: dict[str, int]) -> None:
    """Remove dead nodes (reverse order), then recurse into the bodies of live nodes."""
    for node in reversed(list(graph)):
        if _is_dead(node):
            logger.debug("removing dead node %s (%s)", node.name, node.op_type)
            _detach_bodies(node)
            graph.remove(node, safe=True)
            counters["nodes_removed"] += 1
            continue
        for attr in node.attributes.values():
            if attr.is_ref():
                continue
            if attr.type == ir.AttributeType.GRAPH:
                _sweep_graph(attr.as_graph(), counters)
            elif attr.type == ir.AttributeType.GRAPHS:
                for sub in attr.as_graphs():
                    _sweep_graph(sub, counters)


def _detach_bodies(node: ir.Node) -> None:
    """Drop the uses that a dead node's bodies hold on outer values, so their producers die too."""
    for attr in node.attributes.values():
        if attr.is_ref() or attr.type not in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
            continue
        for sub in [attr.as_graph()] if attr.type == ir.AttributeType.GRAPH else attr.as_graphs():
            for inner in ir.traversal.RecursiveGraphIterator(sub):
                for i in range(len(inner.inputs)):
                    inner.replace_input_with(i, None)


def _sweep_graph(graph: ir.Graph, counters: dict[str, int]) -> None:
    _sweep(graph, counters)
    # After the nodes: an initializer may have lost its last user above.
    for init in list(graph.initializers.values()):
        if not (init.uses() or init.is_graph_input() or init.is_graph_output()):
            logger.debug("removing unused initializer %s", init.name)
            del graph.initializers[init.name]
            counters["initializers_removed"] += 1


class EliminateDeadCodePass(ir.passes.InPlacePass):
    """Remove dead nodes, unused initializers, unused functions and unused opset imports."""

    def call(self, model: ir.Model) -> CountedPassResult:
        counters = {"nodes_removed": 0, "initializers_removed": 0, "functions_removed": 0,
                    "opsets_removed": 0}
        _sweep_graph(model.graph, counters)
        functions_before = len(model.functions)
        RemoveUnusedFunctionsPass()(model)
        counters["functions_removed"] = functions_before - len(model.functions)
        for function in model.functions.values():
            _sweep(function, counters)

        opsets_before = _count_opsets(model)
        RemoveUnusedOpsetsPass()(model)
        counters["opsets_removed"] = opsets_before - _count_opsets(model)

        modified = any(counters.values())
        if modified:
            logger.info("dead code: %s", counters)
        return CountedPassResult(model, modified, counters={k: v for k, v in counters.items() if v})


def _count_opsets(model: ir.Model) -> int:
    return len(model.opset_imports) + sum(len(f.opset_imports) for f in model.functions.values())
