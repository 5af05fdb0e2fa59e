"""Differential testing: random graphs (`tests.graphgen`) optimized at levels 1-3, compared in ORT.

For each generated graph: the full onnx checker and an ORT run (optimizations off) of the
original give the reference; a graph either fails there (counted, not held against us) or is
optimized with `graphopt.optimize(model, level=L, verify=False, measure=False)` for L in 1-3.
Each optimized model must pass `onnx.checker.check_model(full_check=True)` and give the
reference outputs in ORT with optimizations off and at ORT's default level (ORT_ENABLE_ALL).
Outcomes per level: "wrong" (outputs differ beyond verify's tolerances: rtol 1e-3, atol 1e-4
times the output's scale) or "broken" (optimize raised, the checker failed, the input model was
changed, or ORT cannot load or run the result). At ORT_ENABLE_ALL a difference counts only if
ORT gets the original right there too: ORT's own bugs at that level are not ours.

    python -m tests.differential --graphs 3000 --jobs 2      # figures: graphs, ops, wrong/broken per level
    python -m tests.differential --seed 1234 --minimize       # one graph, failures minimized and printed

Found so far (each fixed, with a regression test beside the pass's tests):
- fuse_pad: Pad folded into pooling with a pad reaching the kernel size (ORT refuses the model),
  or, with ceil_mode, padding the end (the output shrinks).
- recompose_ops: rewrites in an If body and in the main graph got the same onnxscript names
  (val_N): the checker rejects the model.
- fold_shapes (graphopt/shapes.py): float shape arithmetic computed in float64 (10 * 0.7 -> 6,
  ORT says 7), integer Mod with fmod=0 given C's sign, ReduceSum noop_with_empty_axes ignored.
- recompose_ops: the canonical LayerNorm (opset < 17) written after a Cast from double or ints,
  which ORT's LayerNormFusion takes in and then cannot load.
- noops, dedupe, cse: a training-mode BatchNormalization made to read one value twice (ORT
  computes it wrongly); fold_constants, fold_shapes: its parameters folded into initializers
  equal to another one, which ORT's default level then shares.
Not ours, and avoided by the generator: ORT's LayerNormFusion of a Pow-form LayerNorm right
after a Cast from double/float16 fails to load whatever graphopt does.
"""

from __future__ import annotations

__all__ = ["Outcome", "Problem", "check", "check_seed", "minimize", "LEVELS"]

import argparse
import collections
import dataclasses
import logging
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort

import graphopt
from tests.graphgen import generate

LEVELS = (1, 2, 3)
RTOL, ATOL = 1e-3, 1e-4  # graphopt/core/verify.py
OFF = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
DEFAULT = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
ORT_LEVELS = {OFF: "ORT_DISABLE_ALL", DEFAULT: "ORT_ENABLE_ALL"}


@dataclasses.dataclass
class Problem:
    level: int
    kind: str  # "wrong" or "broken"
    where: str  # optimize / checker / input / ORT_DISABLE_ALL / ORT_ENABLE_ALL
    detail: str

    def signature(self) -> tuple:
        """What a minimized graph must still show: the same failure, not another one."""
        return self.level, self.kind, self.where, self.detail.split(":")[0] if self.kind == "broken" else ""

    def __str__(self) -> str:
        return f"level {self.level}: {self.kind} ({self.where}): {self.detail}"


@dataclasses.dataclass
class Outcome:
    seed: int | None
    status: str  # "ran", or why the original is out of scope
    ops: collections.Counter
    problems: list[Problem]


def _session(model: onnx.ModelProto, level) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.log_severity_level = 4
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray], level=OFF) -> list[np.ndarray]:
    return _session(model, level).run(None, feeds)


def differs(ref: list[np.ndarray], got: list[np.ndarray]) -> str | None:
    """Why `got` is not `ref` (verify.py's rule), or None."""
    if len(ref) != len(got):
        return f"{len(got)} outputs, expected {len(ref)}"
    for i, (r, g) in enumerate(zip(ref, got)):
        r, g = np.asarray(r), np.asarray(g)
        if r.shape != g.shape or r.dtype != g.dtype:
            return f"output {i}: {g.dtype}{list(g.shape)} != {r.dtype}{list(r.shape)}"
        if r.size == 0:
            continue
        r64, g64 = r.astype(np.float64), g.astype(np.float64)
        finite = np.isfinite(r64) & np.isfinite(g64)
        if not np.array_equal(np.where(finite, 0, r64), np.where(finite, 0, g64), equal_nan=True):
            return f"output {i}: non-finite values differ"
        diff = np.abs(r64 - g64)[finite]
        scale = float(np.abs(r64[finite]).max(initial=0.0))
        tol = ATOL * max(1.0, scale) + RTOL * np.abs(r64[finite])
        if np.any(diff > tol):
            return f"output {i}: max abs diff {diff.max():.3g} (scale {scale:.3g})"
    return None


def model_ops(model: onnx.ModelProto) -> collections.Counter:
    """Op types in the main graph, bodies and functions; a call of a local function counts as
    "<domain> function"."""
    ops: collections.Counter = collections.Counter()
    stack: list = [model.graph, *model.functions]
    while stack:
        graph = stack.pop()
        for node in graph.node:
            ops[node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain} function"] += 1
            stack.extend(a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH)
            stack.extend(g for a in node.attribute if a.type == onnx.AttributeProto.GRAPHS for g in a.graphs)
    return ops


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}"


def check(model: onnx.ModelProto, feeds: dict[str, np.ndarray], levels=LEVELS, seed: int | None = None) -> Outcome:
    """Optimize `model` at each level and compare with the original in ORT at both ORT levels."""
    ops = model_ops(model)
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:  # noqa: BLE001 - the generator made an invalid graph: out of scope, counted
        return Outcome(seed, f"invalid: {_first_line(e)}", ops, [])
    try:
        ref = run(model, feeds)
    except Exception as e:  # noqa: BLE001 - ORT cannot run the original: out of scope, counted
        return Outcome(seed, f"ORT cannot run: {_first_line(e)}", ops, [])
    if not all(np.all(np.isfinite(r)) for r in ref if np.asarray(r).dtype.kind == "f"):
        return Outcome(seed, "non-finite reference", ops, [])
    original_bytes = model.SerializeToString()
    at_default: list | None = None  # the original at ORT_ENABLE_ALL, computed when first needed
    problems = []
    for level in levels:
        try:
            optimized = graphopt.optimize(model, level=level, verify=False, measure=False).to_onnx()
        except Exception as e:  # noqa: BLE001 - any optimizer failure is the finding
            problems.append(Problem(level, "broken", "optimize", _first_line(e)))
            continue
        if model.SerializeToString() != original_bytes:
            problems.append(Problem(level, "broken", "input", "optimize changed the input model"))
            model = onnx.load_from_string(original_bytes)
        try:
            onnx.checker.check_model(optimized, full_check=True)
        except Exception as e:  # noqa: BLE001
            problems.append(Problem(level, "broken", "checker", _first_line(e)))
            continue
        for ort_level, ort_name in ORT_LEVELS.items():
            try:
                got = run(optimized, feeds, ort_level)
                why = differs(ref, got)
                kind = "wrong"
            except Exception as e:  # noqa: BLE001
                why, kind = f"ORT: {_first_line(e)}", "broken"
            if why is None:
                continue
            if ort_level != OFF:
                if at_default is None:
                    try:
                        at_default = [differs(ref, run(model, feeds, ort_level)) is None]
                    except Exception:  # noqa: BLE001 - ORT fails on the original too
                        at_default = [False]
                if not at_default[0]:
                    continue  # ORT gets the original wrong at this level: not ours
            problems.append(Problem(level, kind, ort_name, why))
    return Outcome(seed, "ran", ops, problems)


def check_seed(seed: int, levels=LEVELS) -> Outcome:
    generated = generate(seed)
    return check(generated.model, generated.feeds, levels, seed)


# --- minimization ------------------------------------------------------------------------------
def _prune(model: onnx.ModelProto, feeds: dict) -> tuple[onnx.ModelProto, dict]:
    """Drop nodes that reach no output, then initializers and inputs nothing reads."""
    graph = model.graph
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(node.input)
            for attr in node.attribute:  # outer names read inside bodies
                if attr.type == onnx.AttributeProto.GRAPH:
                    needed.update(_body_reads(attr.g))
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(reversed(keep))
    inits = [t for t in graph.initializer if t.name in needed]
    del out.graph.initializer[:]
    out.graph.initializer.extend(inits)
    inputs = [i for i in graph.input if i.name in needed]
    del out.graph.input[:]
    out.graph.input.extend(inputs)
    return out, {k: v for k, v in feeds.items() if k in needed}


def _body_reads(graph: onnx.GraphProto) -> set[str]:
    names = set()
    for node in graph.node:
        names.update(node.input)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                names.update(_body_reads(attr.g))
    return names


def _intermediates(model: onnx.ModelProto, feeds: dict) -> dict[str, tuple[onnx.ValueInfoProto, np.ndarray]]:
    """Every main-graph tensor value with an inferred type, and its value on `feeds`."""
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = {vi.name: vi for vi in inferred.graph.value_info if vi.type.HasField("tensor_type")}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    outputs = {o.name for o in model.graph.output}
    names = [n for node in model.graph.node for n in node.output if n in infos and n not in outputs]
    probe.graph.output.extend(infos[n] for n in names)
    try:
        values = run(probe, feeds)
    except Exception:  # noqa: BLE001 - cannot probe: no cuts
        return {}
    return {n: (infos[n], v) for n, v in zip(names, values[len(model.graph.output):])}


def minimize(model: onnx.ModelProto, feeds: dict, signature: tuple, budget: int = 400) -> tuple[onnx.ModelProto, dict]:
    """A smaller graph that still shows the problem with `signature` (greedy, by cuts and bypasses)."""
    level = signature[0]
    calls = 0

    def fails(candidate, candidate_feeds) -> bool:
        nonlocal calls
        calls += 1
        outcome = check(candidate, candidate_feeds, levels=(level,))
        return any(p.signature() == signature for p in outcome.problems)

    model, feeds = _prune(model, feeds)
    progress = True
    while progress and calls < budget:
        progress = False
        # 1. One graph output at a time.
        if len(model.graph.output) > 1:
            for out in list(model.graph.output):
                candidate = onnx.ModelProto()
                candidate.CopyFrom(model)
                del candidate.graph.output[:]
                candidate.graph.output.append(out)
                candidate, cfeeds = _prune(candidate, feeds)
                if fails(candidate, cfeeds):
                    model, feeds, progress = candidate, cfeeds, True
                    break
        # 2. Cut: an intermediate value becomes a graph input fed with its value (latest first).
        values = _intermediates(model, feeds)
        for name in reversed(list(values)):
            if calls >= budget:
                break
            info, value = values[name]
            candidate = onnx.ModelProto()
            candidate.CopyFrom(model)
            for node in candidate.graph.node:
                if name in node.output:
                    node.output[list(node.output).index(name)] = name + "_cut"
            candidate.graph.input.append(info)
            candidate, cfeeds = _prune(candidate, {**feeds, name: value})
            if len(candidate.graph.node) < len(model.graph.node) and fails(candidate, cfeeds):
                model, feeds, progress = candidate, cfeeds, True
                values = {}
                break
        # 3. Bypass: a node whose first input has its output's type and shape goes.
        values = _intermediates(model, feeds) if progress else values
        infos = {**{i.name: i for i in model.graph.input}, **{n: vi for n, (vi, _) in values.items()}}
        for node in list(model.graph.node):
            if calls >= budget or len(node.output) != 1 or not node.input or node.input[0] not in infos \
                    or node.output[0] not in infos:
                continue
            if infos[node.input[0]].type != infos[node.output[0]].type:
                continue
            candidate = onnx.ModelProto()
            candidate.CopyFrom(model)
            kept = [n for n in candidate.graph.node if n.name != node.name or list(n.output) != list(node.output)]
            for n in kept:
                for i, inp in enumerate(n.input):
                    if inp == node.output[0]:
                        n.input[i] = node.input[0]
            del candidate.graph.node[:]
            candidate.graph.node.extend(kept)
            candidate, cfeeds = _prune(candidate, feeds)
            if fails(candidate, cfeeds):
                model, feeds, progress = candidate, cfeeds, True
                break
    return model, feeds


# --- figures ---------------------------------------------------------------------------------------
def _tally(outcomes: list[Outcome], seconds: float, levels) -> str:
    ran = [o for o in outcomes if o.status == "ran"]
    skipped = collections.Counter(o.status.split(":")[0] for o in outcomes if o.status != "ran")
    ops: collections.Counter = collections.Counter()
    for o in ran:
        ops.update(o.ops)
    lines = [f"graphs generated: {len(outcomes)}; ORT could run: {len(ran)} "
             f"(out of scope: {dict(skipped) or 'none'}); {seconds:.0f} s",
             f"ops covered: {len(ops)}: " + ", ".join(f"{op} {n}" for op, n in ops.most_common())]
    for level in levels:
        problems = [p for o in ran for p in o.problems if p.level == level]
        wrong = {o.seed for o in ran for p in o.problems if p.level == level and p.kind == "wrong"}
        broken = {o.seed for o in ran for p in o.problems if p.level == level and p.kind == "broken"}
        lines.append(f"level {level}: wrong {len(wrong)}, broken {len(broken)} graphs ({len(problems)} findings)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.differential", description=__doc__.split("\n\n")[0])
    parser.add_argument("--graphs", type=int, default=200)
    parser.add_argument("--start", type=int, default=0, help="first seed")
    parser.add_argument("--seed", type=int, help="check this one seed only")
    parser.add_argument("--levels", default="1,2,3")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--minimize", action="store_true", help="minimize and print each failing graph")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    levels = tuple(int(v) for v in args.levels.split(","))
    seeds = [args.seed] if args.seed is not None else list(range(args.start, args.start + args.graphs))
    start = time.perf_counter()
    if args.jobs > 1:
        import concurrent.futures
        import functools

        with concurrent.futures.ProcessPoolExecutor(args.jobs) as pool:
            outcomes = list(pool.map(functools.partial(check_seed, levels=levels), seeds, chunksize=8))
    else:
        outcomes = [check_seed(seed, levels) for seed in seeds]
    seconds = time.perf_counter() - start
    failing = [o for o in outcomes if o.problems]
    for o in failing:
        for p in o.problems:
            print(f"seed {o.seed}: {p}")
    print(_tally(outcomes, seconds, levels))
    if args.minimize:
        for o in failing:
            generated = generate(o.seed)
            small, feeds = minimize(generated.model, generated.feeds, o.problems[0].signature())
            print(f"\n# seed {o.seed}, {o.problems[0]}: {len(generated.model.graph.node)} -> "
                  f"{len(small.graph.node)} nodes; inputs {[(k, v.shape) for k, v in feeds.items()]}")
            print(onnx.printer.to_text(small))
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
