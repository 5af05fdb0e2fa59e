"""Evaluation metrics and the accuracy budget, for any lossy transformation.

Metrics (`Evaluator`): with labels, top-1 accuracy of one output; without, agreement with a
reference (float) model on the same inputs: top-1 agreement for classifier outputs
([N, classes]), mean cosine similarity for other outputs. Scores are in points (0-100).
Every score also carries fidelity figures against the reference, per output: SNR in dB and
mean cosine similarity.

Budget (`fit_budget`) knows nothing about quantization. It takes:

- `candidates`: names of layer decisions that can each be applied or not (quantize this
  Conv, prune this MatMul, factor this Gemm);
- `build(applied)`: a model with exactly the decisions in `applied` applied;
- `evaluate(model)`: a `Score`.

It applies every decision; if the drop against the baseline exceeds the budget, it measures
each decision alone (its sensitivity: the drop with only that decision applied, ties broken by
fidelity), then reverts the most sensitive one at a time (a revert that wins nothing back is
undone at once) until the budget holds, and finally re-applies any reverted decision the
budget can afford after all. Reverting every decision is not a setting: if nothing else
holds, it raises `BudgetError` carrying the best result found.
"""

from __future__ import annotations

__all__ = ["Score", "Evaluator", "BudgetResult", "Step", "fit_budget", "make_session", "snr_db", "cosine"]

import dataclasses
import logging
import math
import os
import pathlib
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from graphopt.core.calibrate import Dataset, batch_size_for, input_specs
from graphopt.core.errors import BudgetError, InputError, UsageError

logger = logging.getLogger(__name__)

TOP1 = "top-1 accuracy"
TOP1_AGREEMENT = "top-1 agreement"
COSINE_AGREEMENT = "cosine agreement"
_EPS = 1e-9


# ---------------------------------------------------------------- metrics

def snr_db(reference: np.ndarray, got: np.ndarray) -> float:
    """Signal-to-noise ratio of `got` against `reference`, in dB (inf when equal)."""
    ref = reference.astype(np.float64).ravel()
    noise = float(np.sum((ref - got.astype(np.float64).ravel()) ** 2))
    signal = float(np.sum(ref ** 2))
    if noise == 0:
        return math.inf
    return 10 * math.log10(max(signal, 1e-30) / noise)


def cosine(reference: np.ndarray, got: np.ndarray) -> float:
    """Mean over samples (axis 0) of the cosine similarity of the flattened sample."""
    ref = reference.astype(np.float64).reshape(len(reference), -1)
    out = got.astype(np.float64).reshape(len(got), -1)
    dot = np.sum(ref * out, axis=1)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1)
    both_zero = norms == 0
    sims = np.where(both_zero, 1.0, dot / np.maximum(norms, 1e-30))
    return float(np.mean(sims))


def _is_classifier(array: np.ndarray) -> bool:
    squeezed = array.reshape(len(array), -1) if array.ndim >= 2 else array
    return array.ndim >= 2 and squeezed.shape[1] > 1 and all(d == 1 for d in array.shape[2:])


def _top1(array: np.ndarray) -> np.ndarray:
    if array.ndim == 1 and np.issubdtype(array.dtype, np.integer):
        return array
    return array.reshape(len(array), -1).argmax(axis=1)


@dataclasses.dataclass
class Score:
    """A model's score in points (higher is better) and its fidelity to the reference."""

    metric: str
    value: float
    samples: int
    output: str
    fidelity: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)

    @property
    def tiebreak(self) -> float:
        """The worst output SNR (dB): separates decisions with equal top-1."""
        values = [f["snr_db"] for f in self.fidelity.values() if "snr_db" in f]
        return min(values) if values else 0.0

    def to_dict(self) -> dict:
        return {"metric": self.metric, "value": round(self.value, 4), "samples": self.samples,
                "output": self.output,
                "fidelity": {k: {m: (round(v, 4) if math.isfinite(v) else None) for m, v in f.items()}
                             for k, f in self.fidelity.items()}}


def _join(chunks: list[np.ndarray], sizes: list[int]) -> np.ndarray:
    """Batches of one output as one array, joined on its batch axis: the first axis whose size is
    each batch's (a state output [layers, batch, hidden] joins on axis 1)."""
    if not chunks or not chunks[0].ndim:
        return np.stack(chunks)
    for axis in range(chunks[0].ndim):
        if all(c.ndim > axis and c.shape[axis] == n for c, n in zip(chunks, sizes)):
            return np.concatenate(chunks, axis=axis) if axis == 0 else np.moveaxis(
                np.concatenate(chunks, axis=axis), axis, 0)
    return np.concatenate(chunks)


def make_session(model, *, optimize: bool = True, threads: int = 0, providers=None):
    """An ORT session for a path, ModelProto or ir.Model, with ORT's full optimizations by
    default (lossy models are scored as they will run: fused int8 kernels, not emulation)."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # errors reach the user as one line, not ORT's log
    if threads:
        options.intra_op_num_threads = threads
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    providers = providers or ["CPUExecutionProvider"]
    if isinstance(model, (str, os.PathLike)):
        return ort.InferenceSession(str(model), options, providers=providers)
    proto = ir.serde.serialize_model(model) if isinstance(model, ir.Model) else model
    if proto.ByteSize() < (1 << 31) - (1 << 26):
        return ort.InferenceSession(proto.SerializeToString(), options, providers=providers)
    with tempfile.TemporaryDirectory(prefix="graphopt-eval-") as tmp:
        path = pathlib.Path(tmp) / "model.onnx"
        onnx.save(proto, path, save_as_external_data=True, location="model.data")
        return ort.InferenceSession(str(path), options, providers=providers)


class Evaluator:
    """Scores models on one dataset against one reference model (see module doc)."""

    def __init__(self, data: Dataset, reference, *, output: str | None = None, batch_size: int | None = None,
                 threads: int = 0):
        self.data = data
        self.threads = threads
        reference_model = reference if isinstance(reference, ir.Model) else None
        specs = input_specs(reference_model) if reference_model is not None else []
        self.batch_size = batch_size or batch_size_for(specs, 8)  # ORT holds a batch of activations
        self.reference = self.run(reference)
        names = list(self.reference)
        if output is not None and output not in self.reference:
            raise UsageError(f"--eval-output {output!r} is not a graph output (outputs: {', '.join(names)})")
        self.output = output or names[0]
        ref = self.reference[self.output]
        if data.labels is not None:
            if len(ref) != len(data.labels) or not (_is_classifier(ref) or ref.ndim == 1):
                raise InputError(f"{data.source}: labels need a classifier output [samples, classes]; "
                                 f"output '{self.output}' has shape {list(ref.shape)}")
            self.metric = TOP1
        else:
            self.metric = TOP1_AGREEMENT if _is_classifier(ref) else COSINE_AGREEMENT
        self.baseline = self.score(self.reference)
        self.evaluations = 0

    def run(self, model) -> dict[str, np.ndarray]:
        session = make_session(model, threads=self.threads)
        names = [o.name for o in session.get_outputs()]
        chunks: dict[str, list[np.ndarray]] = {n: [] for n in names}
        sizes = []
        try:
            for start, feeds in zip(range(0, len(self.data), self.batch_size), self.data.batches(self.batch_size)):
                sizes.append(min(self.batch_size, len(self.data) - start))
                for name, value in zip(names, session.run(names, feeds)):
                    chunks[name].append(np.asarray(value))
        except Exception as e:
            raise InputError(f"{self.data.source}: ONNX Runtime failed on the evaluation data: {e}") from e
        return {n: _join(c, sizes) for n, c in chunks.items()}

    def score(self, outputs: dict[str, np.ndarray]) -> Score:
        got = outputs[self.output]
        ref = self.reference[self.output]
        if self.metric == TOP1:
            value = 100.0 * float(np.mean(_top1(got) == self.data.labels))
        elif self.metric == TOP1_AGREEMENT:
            value = 100.0 * float(np.mean(_top1(got) == _top1(ref)))
        else:
            value = 100.0 * cosine(ref, got)
        fidelity = {}
        for name, reference in self.reference.items():
            same = name in outputs and reference.shape == outputs[name].shape
            if same and np.issubdtype(reference.dtype, np.floating):
                fidelity[name] = {"snr_db": snr_db(reference, outputs[name]),
                                  "cosine": cosine(reference, outputs[name])}
        return Score(self.metric, value, len(self.data), self.output, fidelity)

    def __call__(self, model) -> Score:
        self.evaluations += 1
        return self.score(self.run(model))


# ---------------------------------------------------------------- budget

@dataclasses.dataclass
class Step:
    action: str  # "apply all", "revert X", "re-apply X"
    applied: int
    score: float
    drop: float

    def to_dict(self) -> dict:
        return {"action": self.action, "applied": self.applied, "score": round(self.score, 4),
                "drop": round(self.drop, 4)}


@dataclasses.dataclass
class BudgetResult:
    applied: frozenset[str]
    kept: list[str]  # candidates left unapplied, most sensitive first
    score: Score
    baseline: Score
    model: Any
    sensitivity: dict[str, float] = dataclasses.field(default_factory=dict)  # drop with only this applied
    recovered: dict[str, float] = dataclasses.field(default_factory=dict)  # points won back by reverting it
    steps: list[Step] = dataclasses.field(default_factory=list)
    evaluations: int = 0

    @property
    def drop(self) -> float:
        return self.baseline.value - self.score.value


def fit_budget(candidates: Sequence[str], build: Callable[[frozenset[str]], Any], evaluate: Callable[[Any], Score],
               baseline: Score, max_drop: float | None, *, what: str = "decisions", kept_as: str = "unapplied",
               progress: Callable[[str], None] | None = None) -> BudgetResult:
    """Apply as many `candidates` as the budget allows (see module doc)."""
    candidates = list(dict.fromkeys(candidates))
    everything = frozenset(candidates)
    model = build(everything)
    score = evaluate(model)
    result = BudgetResult(everything, [], score, baseline, model, evaluations=1,
                          steps=[Step("apply all", len(everything), score.value, baseline.value - score.value)])
    if max_drop is None or _within(result.drop, max_drop) or not candidates:
        if max_drop is not None and not _within(result.drop, max_drop):
            raise _budget_error(result, max_drop, what, len(candidates), kept_as)
        return result
    if progress:
        progress(f"sensitivity of {len(candidates)} {what}")
    ranking = {}
    for name in candidates:
        alone = evaluate(build(frozenset({name})))
        result.evaluations += 1
        result.sensitivity[name] = baseline.value - alone.value
        ranking[name] = (baseline.value - alone.value, -alone.tiebreak)
        logger.debug("sensitivity %s: drop %.3f, snr %.1f dB", name, *ranking[name])
    order = sorted(candidates, key=lambda n: ranking[n], reverse=True)
    applied = set(candidates)
    best = current = result
    for name in order:
        if len(applied) == 1:
            break
        trial = frozenset(applied - {name})
        model = build(trial)
        score = evaluate(model)
        gain = score.value - current.score.value
        current.evaluations += 1
        if gain <= 0:  # reverting it bought nothing: keep it applied and try the next one
            current.steps.append(Step(f"revert {name}: no gain, kept", len(applied), score.value,
                                      baseline.value - score.value))
            continue
        applied = set(trial)
        current = dataclasses.replace(current, applied=trial, kept=[*current.kept, name], score=score, model=model)
        current.recovered[name] = gain
        current.steps.append(Step(f"revert {name}", len(applied), score.value, baseline.value - score.value))
        if progress:
            progress(f"kept {len(current.kept)} of {len(candidates)} {what} {kept_as}: drop {current.drop:.2f}")
        if current.drop < best.drop:
            best = current
        if _within(current.drop, max_drop):
            return _reapply(current, build, evaluate, max_drop)
    best = dataclasses.replace(best, steps=current.steps, evaluations=current.evaluations)
    raise _budget_error(best, max_drop, what, len(candidates), kept_as)


def _within(drop: float, max_drop: float) -> bool:
    return drop <= max_drop + _EPS


def _reapply(result: BudgetResult, build, evaluate, max_drop: float) -> BudgetResult:
    """Re-apply reverted decisions while the budget holds, the ones that won back least first
    (a decision may only have hurt next to another that is now reverted)."""
    for name in sorted(result.kept, key=lambda n: result.recovered.get(n, 0.0)):
        applied = frozenset(result.applied | {name})
        model = build(applied)
        score = evaluate(model)
        result.evaluations += 1
        drop = result.baseline.value - score.value
        result.steps.append(Step(f"re-apply {name}", len(applied), score.value, drop))
        if _within(drop, max_drop):
            result = dataclasses.replace(result, applied=applied, kept=[k for k in result.kept if k != name],
                                         score=score, model=model)
            result.recovered.pop(name, None)
    return result


def _budget_error(best: BudgetResult, max_drop: float, what: str, total: int, kept_as: str) -> BudgetError:
    error = BudgetError(
        f"no setting meets --max-accuracy-drop {max_drop:g}: the best keeps {len(best.kept)} of {total} {what} "
        f"{kept_as} and drops {best.drop:.2f} points of {best.score.metric} "
        f"({best.baseline.value:.2f} -> {best.score.value:.2f}); raise the budget or give more calibration data")
    error.best = best
    return error
