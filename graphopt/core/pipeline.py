"""The pass protocol, pass registry entries and the pipeline that runs them to a fixed point.

A pass is an `ir.passes.InPlacePass` (onnx-ir's own infrastructure); `Pipeline` says why its
loop is not onnx-ir's `PassManager`. A pass may return `CountedPassResult` to report named counters (MLIR-style pass
statistics); the pipeline adds timing and node counts to every pass it runs.
"""

from __future__ import annotations

__all__ = [
    "CountedPassResult",
    "PassOptions",
    "PassSpec",
    "PassStats",
    "Pipeline",
    "PipelineResult",
    "count_nodes",
]

import collections
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence

import onnx_ir as ir

from graphopt.core.errors import GraphoptError, UsageError

logger = logging.getLogger(__name__)

MAX_ITERATIONS = 8


@dataclasses.dataclass
class CountedPassResult(ir.passes.PassResult):
    """A PassResult that carries named counters, e.g. {"batchnorm_folded": 53}, and, for a pass
    with more to say (fuse_parallel's candidates and verdicts), `details`: its records so far."""

    counters: dict[str, int] = dataclasses.field(default_factory=dict)
    details: list[dict] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class PassOptions:
    """Settings a pass factory may read. One object per optimize() call."""

    outputs: list[str] | None = None  # graph outputs to keep; None keeps all
    fold_limit_bytes: int = 1 << 20  # largest constant that folding may create
    shapes: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    keep_initializer_inputs: bool = False
    inference: bool = False  # convert training-mode Dropout/BatchNormalization (changes outputs)
    target_opset: int | None = None  # default-domain opset to convert to first
    inputs: object = None  # graphopt.core.inputs.InputModel: the sizes and values passes that measure run at
    provider: str = "cpu"  # the ORT target passes that measure (fuse_parallel) time candidates on
    threads: int | None = None
    measure: bool = True  # False: such passes use a cost model instead of timing


@dataclasses.dataclass(frozen=True)
class PassSpec:
    """A registry entry: a named pass, how to build it from options, and what it is for."""

    name: str  # the stem of its module, graphopt.passes.<kind>.<name>
    factory: Callable[[PassOptions], ir.passes.PassBase]
    description: str
    # False for passes that annotate rather than rewrite (shape inference): their
    # `modified` does not keep the fixed-point loop going.
    rewrites: bool = True
    # Op types the pass can act on: when the model has none of them the pass is neither
    # built nor run (its module, and e.g. onnxscript's rewriter, is not even imported).
    # Empty: always run.
    needs_ops: frozenset[str] = frozenset()
    kind: str = ""  # its folder: cleanup, shape, fusion, quantize, prune
    cls: str = ""  # its class in that module
    stage: str = "lossless"  # lossless (the pipeline), compress or quantize (built by that stage)
    aliases: tuple[str, ...] = ()  # older names, accepted wherever a pass is named


@dataclasses.dataclass
class PassStats:
    name: str
    runs: int = 0
    modified_runs: int = 0
    seconds: float = 0.0
    nodes_removed: int = 0
    nodes_added: int = 0
    counters: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    details: list[dict] = dataclasses.field(default_factory=list)  # the last run's, when the pass keeps records

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "runs": self.runs,
            "modified_runs": self.modified_runs,
            "seconds": round(self.seconds, 6),
            "nodes_removed": self.nodes_removed,
            "nodes_added": self.nodes_added,
            "counters": dict(self.counters),
        }


@dataclasses.dataclass
class PipelineResult:
    model: ir.Model
    stats: list[PassStats]
    iterations: int


def count_nodes(model: ir.Model) -> int:
    """Nodes in the main graph, its subgraphs and its functions."""
    return sum(1 for _ in _all_nodes(model))


def _op_types(model: ir.Model) -> set[str]:
    return {node.op_type for node in _all_nodes(model)}


def _all_nodes(model: ir.Model):
    yield from model.graph.all_nodes()
    for function in model.functions.values():
        yield from function.all_nodes()


class Pipeline:
    """Runs pass specs in order, repeating the list until no rewriting pass changes the model.

    A pass whose last run changed nothing is not run again until some pass has changed the
    model since (passes are deterministic: same model in, nothing to do again), so the
    confirming last round costs only what changed in the round before.

    Each pass runs through onnx-ir's own `PassBase.__call__` (its in-place check, pre- and
    postconditions); the loop around them is not onnx-ir's `PassManager`, which repeats the
    whole list each step until a step changes nothing. Three things this loop does that it
    cannot, and that set graphopt's run time and fixed point: (1) it skips a pass that has
    nothing to do since its last run (PassManager runs every pass every step: on a ResNet-50
    the confirming round alone would cost the whole list again); (2) a pass whose ops the model
    lacks (`PassSpec.needs_ops`) is neither built nor imported (onnxscript's rewriter takes a
    third of a second to import); (3) a pass that only annotates (shape inference,
    `rewrites=False`) does not keep the loop going. What PassManager adds on failure, the names
    of the passes that ran before the one that failed, this loop adds too; the statistics
    (`PassStats`, MLIR-style) are kept per pass around each call.
    """

    def __init__(self, specs: Sequence[PassSpec], options: PassOptions | None = None,
                 max_iterations: int = MAX_ITERATIONS):
        self.specs = list(specs)
        self.options = options or PassOptions()
        self.max_iterations = max_iterations
        self._built: dict[str, ir.passes.PassBase] = {}

    def _pass(self, spec: PassSpec) -> ir.passes.PassBase:
        if spec.name not in self._built:
            self._built[spec.name] = spec.factory(self.options)
        return self._built[spec.name]

    def run(self, model: ir.Model, progress: Callable[[str], None] | None = None) -> PipelineResult:
        stats = {spec.name: PassStats(spec.name) for spec in self.specs}
        state = _LoopState()
        iterations = 0
        while iterations < self.max_iterations:
            iterations += 1
            if not self._round(model, stats, state, progress):
                break
        else:
            logger.warning("pipeline did not reach a fixed point in %d iterations", self.max_iterations)
        return PipelineResult(model, list(stats.values()), iterations)

    def _round(self, model: ir.Model, stats: dict[str, PassStats], state: _LoopState, progress) -> bool:
        """One pass over the list; whether a rewriting pass changed the model."""
        changed = False
        ops = _op_types(model)
        for spec in self.specs:
            if state.idle_at.get(spec.name) == state.version:
                continue
            if spec.needs_ops and not spec.needs_ops & ops:
                state.idle_at[spec.name] = state.version
                continue
            if progress:
                progress(spec.name)
            if self._run_one(spec, self._pass(spec), model, stats[spec.name], state.ran):
                state.version += 1
                ops = _op_types(model)
                changed |= spec.rewrites
            else:
                state.idle_at[spec.name] = state.version
        return changed

    @staticmethod
    def _run_one(spec: PassSpec, pass_: ir.passes.PassBase, model: ir.Model, stat: PassStats,
                 ran: list[str]) -> bool:
        before = {id(n) for n in _all_nodes(model)}
        start = time.perf_counter()
        try:
            result = pass_(model)
        except (ir.passes.InvariantError, GraphoptError):
            raise  # a user's error (bad --shape, blocked --target-opset) keeps its one-line message
        except Exception as e:
            after = f" after {', '.join(dict.fromkeys(ran))}" if ran else " (the first pass run)"
            raise ir.passes.PassError(f"pass {spec.name!r} failed{after}: {e}") from e
        ran.append(spec.name)
        stat.seconds += time.perf_counter() - start
        if result.model is not model:
            raise ir.passes.PassError(f"pass {spec.name!r} must rewrite the model in place")
        after = {id(n) for n in _all_nodes(model)}
        stat.runs += 1
        stat.modified_runs += int(result.modified)
        stat.nodes_removed += len(before - after)
        stat.nodes_added += len(after - before)
        stat.counters.update(getattr(result, "counters", {}) or {})
        stat.details = list(getattr(result, "details", None) or stat.details)
        return bool(result.modified)


@dataclasses.dataclass
class _LoopState:
    version: int = 0  # bumped by every modifying run, annotations included
    idle_at: dict[str, int] = dataclasses.field(default_factory=dict)  # pass -> version at its last idle run
    ran: list[str] = dataclasses.field(default_factory=list)  # passes run so far, in order, for error messages


def select(available: dict[str, PassSpec], level_names: Sequence[str],
           passes: Sequence[str] | None = None, skip: Sequence[str] = (),
           aliases: dict[str, str] | None = None) -> list[PassSpec]:
    """Resolve --passes/--skip against the registry: `passes` replaces the level's list.
    `aliases` maps older names to registry names; only lossless passes run in a pipeline."""
    aliases = aliases or {}
    names = [aliases.get(n, n) for n in (list(passes) if passes else list(level_names))]
    skip = {aliases.get(n, n) for n in skip}
    unknown = [n for n in [*names, *sorted(skip)] if n not in available]
    if unknown:
        raise UsageError(f"unknown pass {unknown[0]!r}; known passes: {', '.join(sorted(available))}")
    lossy = next((available[n] for n in names if available[n].stage != "lossless"), None)
    if lossy is not None:
        raise UsageError(f"--passes {lossy.name}: a lossy pass runs in the {lossy.stage} stage, not the pipeline "
                         f"({lossy.description.split(': ')[0]})")
    return [available[n] for n in names if n not in skip]
