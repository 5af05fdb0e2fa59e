"""Horizontal fusion: merge parallel Conv / Gemm / MatMul that read the same tensor, where it pays.

    X -> Conv(W1,b1) -> Relu -> A          X -> Conv(concat(W1,W2,W3), concat(b1,b2,b3)) -> Relu
    X -> Conv(W2,b2) -> Relu -> B   ==>       -> Split([C1,C2,C3], axis=1) -> A, B, C
    X -> Conv(W3,b3) -> Relu -> C

The math: each output channel of a Conv (each output column of a MatMul/Gemm) depends only on
its own weight slice, so stacking the weights along the output axis and splitting the result
computes exactly the same numbers. Element-wise tails commute with the split.

Cases:

1. Conv members: same kernel, strides, pads, dilations and auto_pad, group=1, constant weights
   (and bias) of one dtype; split on axis 1. Members without a bias get zeros.
2. MatMul members: X @ W with a constant 2-D W; split on the last axis. A following
   `Add(y, b)` with a constant bias that broadcasts along the last axis is merged as well
   (members without one get zeros).
3. Gemm members: same transA, transB, alpha and beta, constant B, C absent or a constant
   vector (broadcast); split on axis 1.
4. A following element-wise activation with the same op, attributes and constant operands on
   every member (Relu, Clip, Gelu, ...) is applied once, before the Split. (PRelu is not
   shared: its slope is per channel and would need stacking too.)
5. A Concat on the split axis that takes all the pieces, consecutively and in order, takes
   the merged tensor instead; the Split goes when nothing else uses it.
6. Weights that are the output of a constant subgraph (ConstantOfShape in the onnx zoo's
   Inception exports) are stacked by a Concat node, which ORT folds when it loads the model;
   weights that are arrays are stacked into one new initializer.

Each group is a candidate (`_fuse_parallel_candidates`); the pass asks `decide(candidate)` whether to apply it (see
`fuse_parallel_decide`: measured in ORT on the target provider, cached by shape signature,
or a cost model with `measure=False`) and reports every candidate with its gain and verdict.

Declined: members whose weights are graph inputs (the caller may feed them), or have unknown
shapes; group != 1; members that read X twice or at another input; groups of one; nodes in
If/Loop/Scan bodies and functions (the main graph only). Graph input and output names are
kept: a member's last value is replaced by the matching Split output, which takes its name.
"""

from __future__ import annotations

__all__ = ["FuseParallelPass", "FuseParallelResult", "Candidate", "Member", "find_candidates", "apply_candidate",
           "apply_all", "PROVENANCE_KEY"]

import dataclasses
import logging

import onnx_ir as ir

from graphopt.core.pipeline import CountedPassResult
from graphopt.passes.fusion._fuse_parallel_candidates import Candidate, Member, apply_all, find_candidates
from graphopt.passes.fusion._fuse_parallel_rewrite import PROVENANCE_KEY, apply_candidate

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class FuseParallelResult(CountedPassResult):
    candidates: list[dict] = dataclasses.field(default_factory=list)


# ----------------------------------------------------------------------------- the pass


class FuseParallelPass(ir.passes.InPlacePass):
    """Merge parallel Conv/Gemm/MatMul reading one tensor, for each candidate `decide` accepts.

    `decide(model, candidate) -> Decision` is injectable (tests force verdicts); by default
    candidates are timed in ORT on `provider` (`fuse_parallel_decide.MeasuredDecider`), or go
    to the cost model with `measure=False`. `guard(model, accepted) -> GuardVerdict` vetoes the
    accepted set as a whole (default when measuring: the whole model is timed with and without
    them; `guard=False` turns it off). `log`, when given, receives one dict per candidate (the
    report's detailed list), updated in place across the pipeline's iterations; each result's
    `details` is a copy of it.
    """

    def __init__(self, decide=None, *, guard=None, provider: str = "cpu", threads: int | None = None,
                 measure: bool = True, shapes: dict[str, list[int]] | None = None, log: list[dict] | None = None,
                 feeds: dict | None = None):
        from graphopt.passes.fusion import _fuse_parallel_decide as fpd

        self.decide = decide or (fpd.MeasuredDecider(provider, threads, shapes=shapes) if measure
                                 else fpd.CostModelDecider(provider, threads, shapes=shapes))
        if guard is None and decide is None and measure:
            guard = fpd.WholeModelGuard(provider, threads, shapes=shapes, feeds=feeds)
        self.guard = guard or None  # guard=False: no whole-model check
        self.log = log if log is not None else []
        self._counted: set[str] = set()

    def call(self, model: ir.Model) -> FuseParallelResult:
        from graphopt.passes.fusion._fuse_parallel_decide import describe

        candidates = find_candidates(model.graph)
        # Counters count each candidate once across the pipeline's iterations (the pipeline sums them);
        # a rejected candidate is found again on every run.
        new = [c for c in candidates if c.name not in self._counted]
        counters = {"candidates": len(new), "fused_groups": 0, "ops_merged": 0, "rejected": 0,
                    "activations_shared": 0, "splits_dropped": 0}
        if not candidates:
            return FuseParallelResult(model, False, counters=counters, details=[dict(e) for e in self.log])
        verdicts = [(c, self.decide(model, c)) for c in candidates]
        accepted = [c for c, d in verdicts if d.apply]
        entries = {id(c): describe(c, d) for c, d in verdicts}
        if accepted and self.guard is not None:
            verdict = self.guard(model, accepted)
            for c in accepted:
                entries[id(c)]["whole_model"] = verdict.summary
            if not verdict.keep:
                for c in accepted:
                    entries[id(c)]["decision"] = "rejected (whole model not faster)"
                accepted = []
        for key, n in apply_all(model, [c.name for c in accepted]).items():
            counters[key] += n
        fused = {id(c) for c in accepted}
        counters["rejected"] = sum(1 for c in new if id(c) not in fused)
        self._counted.update(c.name for c in candidates)
        self._record(list(entries.values()))
        if accepted:
            logger.info("fuse_parallel: %d of %d candidates fused", len(accepted), len(candidates))
        return FuseParallelResult(model, bool(accepted), counters=counters, candidates=list(entries.values()),
                                  details=[dict(e) for e in self.log])

    def _record(self, entries: list[dict]) -> None:
        """Add or update log entries; a cache hit repeating an earlier verdict keeps the measured entry."""
        index = {e["candidate"]: i for i, e in enumerate(self.log)}
        for entry in entries:
            i = index.get(entry["candidate"])
            if i is None:
                self.log.append(entry)
            elif not (entry["method"] == "cached" and entry["decision"] == self.log[i]["decision"]):
                self.log[i] = entry
