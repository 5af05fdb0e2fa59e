"""Constant folding of control flow: an If whose condition is constant becomes the branch it takes.

Private helper of `constant_folding` (case 7 there). ORT does the same when it loads a model
at ORT_ENABLE_BASIC and above, so a condition our folding made constant is inlined by ORT
anyway; inlining it here lets our folding see the branch's constants first. It matters for
more than speed: ORT then shape-infers the inlined branch with its constants known, and
rejects what the unoptimized session ran (onnx's AffineGrid expansion passes [1] tensors to
Range: `Input to 'Range' op should be scalars`), unless folding has removed them first.

Cases:
1. `If(c)` with `c` a constant of one element: the chosen branch's nodes move in front of
   the If (in order: they read only outer values and each other), its initializers become
   initializers of the If's graph, and each If output is replaced by the matching branch
   output. The other branch is dropped with the If.
2. An If output that is a graph output keeps its name (the branch value takes it). A
   branch output that cannot take it (an outer value, a graph input or output, one value
   returned twice) is forwarded through an Identity that does; `eliminate_noops` removes
   the Identities it can.
3. Declined: a condition that is not a one-element constant, a branch missing or with a
   different number of outputs than the If, custom domains.
"""

from __future__ import annotations

__all__ = ["inline_constant_if"]

import logging

import onnx_ir as ir

from graphopt.core import patterns

logger = logging.getLogger(__name__)


def inline_constant_if(node: ir.Node, taken: set[str]) -> list[ir.Node] | None:
    """Replace `If(constant)` by its chosen branch; the nodes now in its place, or None if declined."""
    if node.op_type != "If" or not patterns.is_default_domain(node) or not node.inputs or node.inputs[0] is None:
        return None
    cond = patterns.const_tensor(node.inputs[0])
    if cond is None or cond.size != 1:
        return None
    try:
        taken_branch = bool(cond.numpy().reshape(-1)[0])
    except Exception:  # noqa: BLE001 - unreadable data: not a condition we can decide
        return None
    attr = node.attributes.get("then_branch" if taken_branch else "else_branch")
    if attr is None or attr.is_ref() or attr.type != ir.AttributeType.GRAPH:
        return None
    branch, graph = attr.as_graph(), node.graph
    if len(branch.outputs) != len(node.outputs):
        return None

    branch_outputs = list(branch.outputs)
    branch.outputs.clear()  # the values leave the branch; a branch output keeps its graph otherwise
    moved = list(branch)
    for inner in moved:
        branch.remove(inner)
        graph.insert_before(node, inner)
    for name in list(branch.initializers):
        value = branch.initializers.pop(name)
        value.name = patterns.fresh_name(taken, name) if name in graph.initializers else name
        graph.register_initializer(value)

    claimed: set[int] = set()
    renames = []
    for out, new in zip(node.outputs, branch_outputs):
        if not out.uses() and not out.is_graph_output():
            continue
        if id(new) in claimed or new.graph is not graph or new.is_graph_input() or new.is_graph_output():
            # An outer value or one already used for another output: forward it under a new value.
            identity = ir.node("Identity", [new], name=patterns.fresh_name(taken, f"{node.name or 'If'}_out"))
            graph.insert_before(node, identity)
            moved.append(identity)
            new = identity.outputs[0]
            new.name = patterns.fresh_name(taken, out.name or "if_out")
        claimed.add(id(new))
        if new.type is None:
            new.type = out.type
        if new.shape is None and out.shape is not None:
            new.shape = out.shape.copy()
        if out.is_graph_output():
            renames.append((new, out.name))
        out.replace_all_uses_with(new, replace_graph_outputs=True)
    cond_value = node.inputs[0]
    graph.remove(node, safe=True)
    for new, name in renames:
        new.name = name  # the If output's name is free now
    patterns.drop_if_unused(cond_value)
    logger.debug("inlined If %s: %s branch, %d nodes", node.name, "then" if taken_branch else "else", len(moved))
    return moved
