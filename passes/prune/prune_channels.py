"""Structured (channel) pruning: remove whole output channels of Conv/ConvTranspose/Gemm/MatMul
layers, and every tensor slice that depends on them, so the network gets really smaller.

1. Groups: `graphopt.passes.prune.prune_groups.analyze_channels` finds the channel dependency groups
   (channels that a residual Add, a Mul or a Concat ties together are one group) and the
   groups that cannot be pruned, with the reason.
2. Importance of channel j of a group: the sum over the group's producing layers of the
   norm of their weight slice for j (`criterion` "l1" or "l2"), each layer's norms divided
   by their mean so that layers weigh alike; "bn" uses |gamma| of the BatchNormalization
   that followed the layer before it was folded, where `bn_scales` has it (else L1).
3. Each selected group keeps round((1 - sparsity) * C) channels, at least one, rounded up
   to a multiple of `round_to` when C is larger than it (vector kernels like multiples of 8);
   the most important ones, in their original order.
4. Rewrite: every recorded slice (weights along input and output channel axes, biases,
   BatchNormalization parameters, element-wise constants, depthwise weights), the `group`
   of depthwise Convs, Reshape targets that name the channel dim, and the shape
   annotations of the affected values. New initializers get fresh names; shared weights
   are never cut in place.

Graph inputs and outputs never change (channels that reach them are blocked). Only the
main graph is visited; a value used inside a subgraph blocks its channels.
"""

from __future__ import annotations

__all__ = ["PruneChannelsPass", "ChannelsResult", "CRITERIA", "keep_count", "channel_importance"]

import dataclasses
import logging

import numpy as np
import onnx_ir as ir

from graphopt.core.patterns import constant_array, model_names
from graphopt.core.pipeline import CountedPassResult
from graphopt.passes.prune.prune_groups import ChannelGroup, DependencyGraph, analyze_channels
from graphopt.passes.prune.prune_magnitude import set_weight

logger = logging.getLogger(__name__)

CRITERIA = ("l1", "l2", "bn")


@dataclasses.dataclass
class ChannelsResult(CountedPassResult):
    groups: dict[str, dict] = dataclasses.field(default_factory=dict)  # pruned: channels before/after, layers
    blocked: dict[str, str] = dataclasses.field(default_factory=dict)  # group -> why it cannot be pruned


def keep_count(channels: int, sparsity: float, round_to: int = 1) -> int:
    keep = max(1, channels - int(round(channels * sparsity)))
    if round_to > 1 and channels > round_to:  # round up: never remove more than asked
        keep = min(channels, -(-keep // round_to) * round_to)
    return keep


def channel_importance(dep: DependencyGraph, group: ChannelGroup, criterion: str = "l1",
                       bn_scales: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Per-channel importance of a group (module doc, case 2)."""
    total = np.zeros(group.size)
    for sid in group.spaces:
        space = dep.spaces[sid]
        scale = (bn_scales or {}).get(space.producer.name) if criterion == "bn" else None
        if scale is not None and scale.shape == (group.size,):
            score = np.abs(scale.astype(np.float64))
        else:
            weight = constant_array(space.producer.inputs[1]).astype(np.float64)
            rows = np.moveaxis(weight, space.weight_axis, 0).reshape(group.size, -1)
            score = np.sqrt(np.sum(rows ** 2, axis=1)) if criterion == "l2" else np.sum(np.abs(rows), axis=1)
        mean = float(score.mean())
        total += score / mean if mean > 0 else score
    return total


class PruneChannelsPass(ir.passes.InPlacePass):
    """Prune `sparsity` of the channels of every prunable group, or of `groups` only (see module doc)."""

    def __init__(self, sparsity: float, groups: frozenset[str] | None = None, criterion: str = "l1",
                 round_to: int = 1, bn_scales: dict[str, np.ndarray] | None = None):
        super().__init__()
        self.sparsity, self.groups, self.criterion = sparsity, groups, criterion
        self.round_to, self.bn_scales = round_to, bn_scales

    def call(self, model: ir.Model) -> ChannelsResult:
        result = ChannelsResult(model, False, counters={"groups_pruned": 0, "channels_removed": 0})
        dep = analyze_channels(model)
        keep: dict[int, np.ndarray] = {}
        for name, group in dep.groups.items():
            if group.blocked:
                result.blocked[name] = group.blocked
                continue
            if self.groups is not None and name not in self.groups:
                continue
            count = keep_count(group.size, self.sparsity, self.round_to)
            if count >= group.size:
                continue
            score = channel_importance(dep, group, self.criterion, self.bn_scales)
            keep[dep.root(group.spaces[0])] = np.sort(np.argsort(-score, kind="stable")[:count])
            result.groups[name] = {"channels": group.size, "kept": count, "layers": group.producers}
            result.counters["groups_pruned"] += 1
            result.counters["channels_removed"] += group.size - count
            logger.debug("prune channels: group %s %d -> %d", name, group.size, count)
        if keep:
            _apply(model, dep, keep)
            result.modified = True
        logger.info("channel pruning: %d groups pruned, %d blocked", len(result.groups), len(result.blocked))
        return result


def _apply(model: ir.Model, dep: DependencyGraph, keep: dict[int, np.ndarray]) -> None:
    roots = set(keep)
    taken = model_names(model)
    cuts: dict[tuple[int, int], tuple[ir.Node, int, dict[int, np.ndarray]]] = {}
    for s in dep.slices:
        if dep.touches(s.layout, roots):
            entry = cuts.setdefault((id(s.node), s.index), (s.node, s.index, {}))
            entry[2][s.axis] = dep.positions(s.layout, keep)
    for node, index, axes in cuts.values():
        array = constant_array(node.inputs[index])
        for axis, positions in axes.items():
            array = np.take(array, positions, axis=axis)
        set_weight(node, index, np.ascontiguousarray(array), taken, "pruned")
    for node, entry, layout in dep.reshapes:
        if dep.touches(layout, roots):
            target = constant_array(node.inputs[1]).copy()
            target.reshape(-1)[entry] = len(dep.positions(layout, keep))
            set_weight(node, 1, target, taken, "pruned")
    for node, layout in dep.depthwise:
        if dep.touches(layout, roots):
            node.attributes["group"] = ir.AttrInt64("group", len(dep.positions(layout, keep)))
    for value, layout in dep.layouts:
        if value.shape is not None and dep.touches(layout, roots) and len(value.shape) == layout.rank:
            dims = list(value.shape)
            dims[layout.axis] = len(dep.positions(layout, keep))
            value.shape = ir.Shape(dims)
