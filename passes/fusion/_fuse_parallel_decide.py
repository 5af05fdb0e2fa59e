"""Whether a horizontal fusion pays: measured in ORT, cached by shape signature, or a cost model.

`MeasuredDecider` cuts the candidate out of the model with its direct consumers (so ORT's own
rewrites around it, such as the NCHWc layout of a following Conv, are part of what is timed),
builds the fused form with the very rewrite the pass applies, checks both give the same
outputs, and times them interleaved in one process on the target provider, sampling until
the evidence is conclusive (or three times the budget is spent). The candidate pays when the
median per-round ratio fused/separate is at least `min_gain` below 1 and its 95% bootstrap
interval lies entirely below 1: on a noisy machine, unclear means no. Decisions are cached by shape signature (op
kind, shapes, attributes, tail, consumers, provider, threads), so repeated blocks cost one
measurement.

`CostModelDecider` is the fast path without measuring (`--no-measure`): rules fitted to what
the measurements on ORT's CPU provider showed (see tools/bench_fusion.py, which prints both).

`WholeModelGuard` times the whole model with and without the accepted fusions, once, and
drops them all unless the fused model's median paired ratio is below 1: the subgraph timings
already showed each gain with confidence, but they cannot see every interaction (ORT's
attention fusion, memory planning), and level 3 must never be slower.

Symbolic dims are made concrete for timing: from the user's `--shape` when a graph input
with the same dim name was given, else 1 for a leading dim and `ASSUMED_DIM` elsewhere; the
report says which.
"""

from __future__ import annotations

__all__ = ["Decision", "MeasuredDecider", "CostModelDecider", "WholeModelGuard", "GuardVerdict", "describe",
           "extract", "signature", "clear_cache"]

import dataclasses
import logging
import math

import numpy as np
import onnx
import onnx_ir as ir

from graphopt.core.abtest import conclusive, faster, time_pair
from graphopt.core.bench import paired_ratio, resolve_provider
from graphopt.passes.fusion._fuse_parallel_candidates import Candidate, apply_all, constant_closure, find_candidates
from graphopt.passes.fusion._fuse_parallel_rewrite import apply_candidate

logger = logging.getLogger(__name__)

ASSUMED_DIM = 128
_CACHE: dict[tuple, "Decision"] = {}
_GUARD_LIMIT_BYTES = 1_500_000_000


@dataclasses.dataclass
class Decision:
    apply: bool
    gain: float | None  # 0.25: the fused form takes 25% less time; negative: slower
    method: str  # measured, cached, cost model, forced
    detail: str = ""
    ms_separate: float | None = None
    ms_fused: float | None = None


@dataclasses.dataclass
class GuardVerdict:
    keep: bool
    summary: str


def clear_cache() -> None:
    _CACHE.clear()


def describe(cand: Candidate, decision: Decision) -> dict:
    """One JSON-ready row of the report's candidate list."""
    return {
        "candidate": cand.name,
        "kind": cand.kind,
        "input": cand.input.name,
        "input_shape": cand.input_shape(),
        "members": [m.node.name for m in cand.members],
        "widths": cand.widths,
        "activation": cand.members[0].act.op_type if cand.members[0].act is not None else None,
        "gain": None if decision.gain is None else round(decision.gain, 4),
        "ms_separate": None if decision.ms_separate is None else round(decision.ms_separate, 4),
        "ms_fused": None if decision.ms_fused is None else round(decision.ms_fused, 4),
        "method": decision.method,
        "decision": "fused" if decision.apply else "rejected",
        "detail": decision.detail,
    }


# ----------------------------------------------------------------------------- shapes


def _dim_env(model: ir.Model, shapes: dict[str, list[int]] | None) -> dict[str, int]:
    """Symbolic dim name -> value, from the user's shapes of graph inputs."""
    env: dict[str, int] = {}
    for value in model.graph.inputs:
        given = (shapes or {}).get(value.name)
        if given is None or value.shape is None or len(value.shape) != len(given):
            continue
        for dim, n in zip(value.shape, given):
            if not isinstance(dim, int) and dim.value:
                env[str(dim.value)] = int(n)
    return env


def concrete(shape: ir.Shape | None, env: dict[str, int]) -> tuple[list[int] | None, bool]:
    """(dims, assumed): symbolic dims from `env`, else 1 (leading) or ASSUMED_DIM. A named dim
    gets its value once and keeps it (`env` records it), so `seq` is the same size everywhere."""
    if shape is None:
        return None, False
    dims, assumed = [], False
    for i, d in enumerate(shape):
        if isinstance(d, int):
            dims.append(d)
        elif d.value and str(d.value) in env:
            dims.append(env[str(d.value)])
        else:
            n = 1 if i == 0 else ASSUMED_DIM
            if d.value:
                env[str(d.value)] = n
            dims.append(n)
            assumed = assumed or i > 0
    return dims, assumed


# ----------------------------------------------------------------------------- extraction


def _consumers(cand: Candidate, env: dict[str, int]) -> list[ir.Node]:
    """Direct consumers of the members' results whose other inputs are constants or float data."""
    finals = {id(m.final) for m in cand.members}
    out = []
    for member in cand.members:
        for node in member.final.consumers():
            if node in out or node.domain not in ("", "ai.onnx"):
                continue
            if any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in node.attributes.values()):
                continue
            ok = True
            for inp in node.inputs:
                if inp is None or id(inp) in finals or constant_closure(inp) is not None:
                    continue
                dims, _ = concrete(inp.shape, env)
                if dims is None or inp.dtype is None or not inp.dtype.is_floating_point():
                    ok = False
                    break
            if ok:
                out.append(node)
    return out


def signature(cand: Candidate, env: dict[str, int]) -> tuple:
    dims, _ = concrete(cand.input.shape, env)
    consumers = []
    for node in _consumers(cand, env):
        consumers.append((node.op_type, tuple(sorted((k, repr(a.value)) for k, a in node.attributes.items()
                                                     if a.type != ir.AttributeType.TENSOR)),
                          tuple(tuple(v.shape) if v is not None and v.shape is not None else None
                                for v in node.inputs)))
    tails = tuple(m.bias_add is not None for m in cand.members)
    return (cand.key, tuple(dims or ()), tuple(cand.widths), tails, tuple(consumers))


def extract(model: ir.Model, cand: Candidate, env: dict[str, int]) -> tuple[onnx.ModelProto, dict]:
    """The candidate, its tails and eligible consumers as a standalone model, with random feeds."""
    body: list[ir.Node] = []
    for m in cand.members:
        body += [n for n in (m.node, m.bias_add, m.act) if n is not None]
    consumers = _consumers(cand, env)
    nodes = body + consumers
    inside = {id(out) for n in nodes for out in n.outputs}
    const_nodes: list[ir.Node] = []
    initializers: dict[str, ir.Value] = {}
    graph_inputs: dict[str, ir.Value] = {}
    for node in nodes:
        for inp in node.inputs:
            if inp is None or id(inp) in inside or inp.name in initializers or inp.name in graph_inputs:
                continue
            closure = constant_closure(inp)
            if closure is None:
                graph_inputs[inp.name] = inp
                continue
            for c in closure:
                if c not in const_nodes:
                    const_nodes.append(c)
                for v in c.inputs:
                    if v is not None and v.const_value is not None:
                        initializers[v.name] = v
            if inp.const_value is not None:
                initializers[inp.name] = inp
    rng = np.random.default_rng(0)
    inputs, feeds = [], {}
    for name, value in graph_inputs.items():
        dims, _ = concrete(value.shape, env)
        if dims is None:
            raise ValueError(f"shape of {name!r} unknown")
        dtype = value.dtype.numpy()
        feeds[name] = rng.standard_normal(dims).astype(dtype)
        inputs.append(onnx.helper.make_tensor_value_info(name, value.dtype.value, dims))
    finals = [m.final for m in cand.members]
    outputs = [out for n in consumers for out in n.outputs]
    consumed = {id(inp) for n in consumers for inp in n.inputs}
    outputs += [f for f in finals if id(f) not in consumed or f.is_graph_output()]
    value_info = []  # weights computed by constant subgraphs need their shapes; ORT infers the rest
    for node in const_nodes:
        for out in node.outputs:
            dims, _ = concrete(out.shape, env)
            if out.dtype is not None and dims is not None and out not in outputs:
                value_info.append(onnx.helper.make_tensor_value_info(out.name, out.dtype.value, dims))
    tensors = []
    for name, value in initializers.items():
        proto = ir.serde.serialize_tensor(value.const_value)
        proto.name = name
        tensors.append(proto)
    graph = onnx.helper.make_graph(
        [ir.serde.serialize_node(n) for n in const_nodes + nodes], "candidate", inputs,
        [onnx.helper.make_tensor_value_info(o.name, o.dtype.value, None) for o in outputs], tensors,
        value_info=value_info)
    opsets = [onnx.helper.make_opsetid(d if d != "ai.onnx" else "", v) for d, v in model.opset_imports.items()]
    proto = onnx.helper.make_model(graph, opset_imports=opsets, ir_version=max(model.ir_version or 7, 7))
    return proto, feeds


def fused_form(proto: onnx.ModelProto, input_name: str, n_members: int) -> onnx.ModelProto:
    """The extracted subgraph rewritten by the pass's own `apply_candidate`."""
    sub = ir.serde.deserialize_model(proto)
    matches = [c for c in find_candidates(sub.graph) if c.input.name == input_name and len(c.members) == n_members]
    if not matches:
        raise ValueError("candidate not found again in its extracted subgraph")
    taken = {v.name for n in sub.graph for v in n.outputs} | set(sub.graph.initializers) | {
        v.name for v in sub.graph.inputs}
    counter = [0]

    def names(base: str) -> str:
        name = base
        while name in taken:
            counter[0] += 1
            name = f"{base}_{counter[0]}"
        taken.add(name)
        return name

    apply_candidate(sub, matches[0], names)
    return ir.serde.serialize_model(sub)


# ----------------------------------------------------------------------------- measuring


class MeasuredDecider:
    """Time both forms of each candidate in ORT on the target provider; cache by signature."""

    def __init__(self, provider: str = "cpu", threads: int | None = None, *, shapes=None,
                 min_gain: float = 0.03, budget_s: float = 1.0, fallback=None):
        self.providers = resolve_provider(provider)
        self.threads = threads
        self.shapes = shapes
        self.min_gain = min_gain
        self.budget_s = budget_s
        self.fallback = fallback or CostModelDecider(provider, threads)

    def __call__(self, model: ir.Model, cand: Candidate) -> Decision:
        env = _dim_env(model, self.shapes)
        dims, assumed = concrete(cand.input.shape, env)
        if dims is None:
            decision = self.fallback(model, cand)
            return dataclasses.replace(decision, detail=f"input shape unknown: {decision.detail}")
        key = (tuple(self.providers), self.threads, self.min_gain, signature(cand, env))
        if key in _CACHE:
            return dataclasses.replace(_CACHE[key], method="cached")
        try:
            separate, feeds = extract(model, cand, env)
            fused = fused_form(separate, cand.input.name, len(cand.members))
            ta, tb, same = time_pair(separate.SerializeToString(), fused.SerializeToString(), feeds,
                                     self.providers, self.threads, budget_s=self.budget_s,
                                     decided=conclusive(self.min_gain))
        except Exception as e:  # noqa: BLE001 - a candidate we cannot time is simply not fused
            logger.debug("cannot measure %s: %s", cand.name, e)
            return Decision(False, None, "measured", f"not measurable: {str(e).splitlines()[0][:200]}")
        if not same:
            decision = Decision(False, None, "measured", "fused subgraph gave different outputs")
        else:
            apply, gain, evidence = faster(ta, tb, self.min_gain)
            note = f"assumed dims {dims}" if assumed else f"{dims}"
            decision = Decision(apply, gain, "measured", f"{len(ta)} paired runs at {note}; {evidence}",
                                float(np.median(ta)) * 1e3, float(np.median(tb)) * 1e3)
        logger.debug("%s: gain %s -> %s", cand.name, decision.gain, decision.apply)
        _CACHE[key] = decision
        return decision


class CostModelDecider:
    """Decide without measuring, from shapes alone.

    Fitted to interleaved timings on ORT's CPU provider (MLAS, spinning off; see
    tools/bench_fusion.py): merging MatMul/Gemm pays when the work per member is small, so the
    per-op cost dominates. Many narrow members (>= 4 of width <= 64, e.g. per-head
    projections) paid 30-60% with 1 or 2 threads. Few rows (batch x sequence <= `max_rows`)
    paid 3-20% with 2 threads, where each op is a dispatch to the thread pool, and nothing with
    `threads=1`. With many rows the GEMMs are compute-bound and the merged one was no faster
    (+-2%), sometimes slower (a 768x2304 weight: 9-17%). Merged Convs never paid reliably (the
    Split breaks ORT's NCHWc chains), so Conv candidates are declined. Providers that launch
    one kernel per node (CUDA, TensorRT, DirectML) gain from fewer launches: always merge.
    """

    def __init__(self, provider: str = "cpu", threads: int | None = None, *, max_rows: int = 32, narrow: int = 64,
                 many: int = 4, shapes: dict[str, list[int]] | None = None):
        self.threads = threads
        self.shapes = shapes  # the input model's: rows are counted at the sizes the model is used at
        self.provider = (provider or "cpu").lower()
        self.max_rows = max_rows
        self.narrow = narrow
        self.many = many

    def __call__(self, model: ir.Model, cand: Candidate) -> Decision:
        if self.provider not in ("cpu", "cpuexecutionprovider"):
            return Decision(True, None, "cost model", "accelerator: fewer kernel launches")
        if cand.kind == "Conv":
            return Decision(False, None, "cost model", "CPU: merged Conv + Split rarely pays (NCHWc reorders)")
        dims, _ = concrete(cand.input.shape, _dim_env(model, self.shapes))
        if cand.kind == "Gemm" and dims and cand.key[1]:  # transA: rows are the second dim
            rows = dims[-1]
        else:
            rows = math.prod(dims[:-1]) if dims else None
        if len(cand.members) >= self.many and max(cand.widths) <= self.narrow:
            return Decision(True, None, "cost model", f"{len(cand.members)} members of width <= {self.narrow}")
        if rows is not None and rows <= self.max_rows and self.threads != 1:
            return Decision(True, None, "cost model", f"{rows} rows: thread-pool dispatch per op dominates")
        return Decision(False, None, "cost model", f"{rows} rows: compute-bound, merging does not pay")


class WholeModelGuard:
    """Time the whole model with and without the accepted fusions; keep them only if faster."""

    def __init__(self, provider: str = "cpu", threads: int | None = None, *, shapes=None, budget_s: float = 4.0,
                 feeds: dict | None = None):
        self.providers = resolve_provider(provider)
        self.threads = threads
        self.shapes = shapes
        self.budget_s = budget_s
        self.feeds = feeds  # the input model's (graphopt.core.inputs): integers the model accepts
        self._seen: dict[tuple, GuardVerdict] = {}

    def __call__(self, model: ir.Model, accepted: list[Candidate]) -> GuardVerdict:
        from graphopt.core.io import model_size_bytes

        if model_size_bytes(model) > _GUARD_LIMIT_BYTES:
            return GuardVerdict(True, "whole model not timed (over 1.5 GB)")
        names = tuple(c.name for c in accepted)
        key = (id(model), names)
        if key in self._seen:
            return self._seen[key]
        separate = ir.serde.serialize_model(model)
        copy = ir.serde.deserialize_model(separate)
        apply_all(copy, list(names))
        fused = ir.serde.serialize_model(copy)
        env = _dim_env(model, self.shapes)
        names = {v.name for v in model.graph.inputs if v.name not in model.graph.initializers}
        feeds = ({k: v for k, v in self.feeds.items() if k in names}
                 if self.feeds is not None and names <= set(self.feeds) else _whole_feeds(model, env))
        try:
            ta, tb, same = time_pair(separate.SerializeToString(), fused.SerializeToString(), feeds,
                                     self.providers, self.threads, budget_s=self.budget_s, min_runs=5,
                                     decided=conclusive(0.0))
        except Exception as e:  # noqa: BLE001 - keep the subgraph verdicts if the whole model cannot run
            verdict = GuardVerdict(True, f"whole model not timed ({str(e).splitlines()[0][:160]})")
        else:
            stats = paired_ratio(ta, tb)
            lo, hi = stats["ci95"]
            keep = same and stats["median"] < 1.0
            why = "" if same else ", outputs differ"
            verdict = GuardVerdict(keep, f"whole model {stats['median']:.3f}x (95% CI {lo:.3f}-{hi:.3f}) over "
                                         f"{len(ta)} paired runs{why}: {'kept' if keep else 'dropped'}")
        self._seen[key] = verdict
        return verdict


def _whole_feeds(model: ir.Model, env: dict[str, int]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feeds = {}
    for value in model.graph.inputs:
        if value.name in model.graph.initializers:
            continue
        dims, _ = concrete(value.shape, env)
        dtype = value.dtype.numpy()
        dims = dims or []
        if np.issubdtype(dtype, np.floating):
            feeds[value.name] = rng.standard_normal(dims).astype(dtype)
        else:
            feeds[value.name] = rng.integers(0, 2, size=dims).astype(dtype)
    return feeds
