"""The one options schema of `graphopt optimize`: every setting is declared here, once.

Each setting is a dataclass field with its flag, help and kind (`option(...)`), grouped by the
stage that reads it. From these declarations come

- the keyword arguments of `graphopt.optimize()` (its signature is built from the fields that
  say `api`; a field's name is the keyword, its annotation the keyword's type);
- the options of `graphopt optimize` (`typer_parameters`: the flag, its short form, the help;
  the kind says how the text is read: `list` is comma-separated, `shapes` is NAME=1x3x224x224
  repeatable);
- the keys of `graphopt.toml` (`graphopt.app.config.SETTINGS`: the flag without `--` is the
  key, the kind is what its value must be).

tests/test_options.py holds the three to each other. A setting that only the command line
has (`--require-verified`) or only the CLI and the build config have (`--force`) says so in
`where`.
"""

from __future__ import annotations

__all__ = ["Option", "option", "PipelineOptions", "VerifyOptions", "TargetOptions", "CompressOptions",
           "QuantizeOptions", "RunOptions", "OptimizeOptions", "GROUPS", "fields", "api_fields", "signature",
           "from_keywords", "KINDS"]

import dataclasses
import inspect
import os
from collections.abc import Sequence

import numpy as np  # named in annotations

KINDS = ("bool", "verify", "int", "float", "str", "number-or-str", "list", "path", "data", "shapes")
ALL = frozenset({"api", "cli", "config"})


@dataclasses.dataclass(frozen=True)
class Option:
    """How one setting is spelled and read: `flag` ("--fold-limit", or "--verify/--no-verify" for a
    switch with both forms); its long name without `--` is the config key."""

    flag: str
    help: str
    kind: str
    short: str | None = None
    where: frozenset[str] = ALL

    @property
    def key(self) -> str:
        return self.flag.split("/")[0][2:]


def option(default, flag: str, help: str, kind: str, *, short: str | None = None, where=ALL):  # noqa: A002 - typer's name
    if kind not in KINDS:
        raise ValueError(f"{flag}: unknown kind {kind!r}")
    spec = Option(flag, help, kind, short, frozenset(where))
    if isinstance(default, (list, dict, set)):
        raise ValueError(f"{flag}: use a tuple or None as default")
    return dataclasses.field(default=default, metadata={"option": spec})


@dataclasses.dataclass
class PipelineOptions:
    """The lossless stage: which passes run, and what they may do."""

    level: int | None = option(None, "--level", "0 none, 1 clean-up, 2 + vertical fusion [2], 3 + measured "
                                                "horizontal fusion.", "int", short="-O")
    passes: Sequence[str] | None = option(None, "--passes", "Comma-separated pass list replacing the level's.", "list")
    skip: Sequence[str] = option((), "--skip", "Comma-separated passes to leave out.", "list")
    outputs: Sequence[str] | None = option(None, "--outputs", "Keep only these graph outputs (comma-separated).",
                                           "list")
    shapes: dict[str, list[int]] | None = option(
        None, "--shape", "Fix input dims in the model, NAME=1x3x224x224 (repeatable); also the verification shape.",
        "shapes")
    inference: bool = option(False, "--inference", "Convert training-mode Dropout/BatchNormalization to inference "
                                                   "form (changes outputs; verified against the original converted "
                                                   "alike).", "bool")
    target_opset: int | None = option(None, "--target-opset", "Convert to this default-domain opset first (onnx "
                                                              "version converter); fails naming the ops that block it.",
                                      "int")
    fold_limit_mb: float = option(1.0, "--fold-limit", "Largest constant folding may create, in MB.", "float")
    keep_initializer_inputs: bool = option(False, "--keep-initializer-inputs",
                                           "Keep weights that are listed as graph inputs overridable.", "bool")


@dataclasses.dataclass
class VerifyOptions:
    """Verification of the lossless result against the original in ONNX Runtime."""

    inputs: str | os.PathLike | dict[str, np.ndarray] | None = option(
        None, "--inputs", ".npz with one array per graph input.", "path")
    verify: bool = option(True, "--verify/--no-verify", 'Compare outputs with the original in ORT (config: true, '
                                                        'false or "optional": an unverifiable model is built, marked '
                                                        'unverified).', "verify")
    rtol: float = option(1e-3, "--rtol", "Relative tolerance of verification.", "float")
    atol: float = option(1e-4, "--atol", "Absolute tolerance, scaled by max(1, |output|).", "float")


@dataclasses.dataclass
class TargetOptions:
    """The ORT target that measuring steps time on, and the bench stage."""

    provider: str = option("cpu", "--provider", "ORT execution provider to measure on: "
                                                "cpu|cuda|tensorrt|openvino|dml|coreml.", "str")
    threads: int | None = option(None, "--threads", "ORT intra-op threads when measuring [ORT default].", "int")
    measure: bool = option(True, "--measure/--no-measure", "Time candidate rewrites in ORT on the target: level-3 "
                                                           "fusions (else a cost model), int8 layers kept float where "
                                                           "that runs faster (else all int8).", "bool")
    bench: bool = option(False, "--bench", "Time original vs optimized in ORT; ratios go to the report.", "bool")
    bench_runs: int = option(30, "--bench-runs", "Timed runs per model with --bench.", "int")

    @property
    def requested(self) -> bool:  # the bench stage
        return self.bench


@dataclasses.dataclass
class CompressOptions:
    """The compress stage: pruning and low-rank factorization (lossy, opt-in)."""

    sparsity: float | None = option(None, "--sparsity", "Prune this share of weights by magnitude (file shrinks; no "
                                                        "CPU speed-up), or of channels with --structured (FLOPs and "
                                                        "latency fall).", "float")
    structured: bool = option(False, "--structured", "With --sparsity: remove whole channels (Conv/Gemm/MatMul "
                                                     "outputs and all that depends on them: residual Adds, Concats, "
                                                     "BN, depthwise groups).", "bool")
    sparsity_pattern: str | None = option(None, "--sparsity-pattern", "N:M pattern pruning, e.g. 2:4 (TensorRT "
                                                                      "sparse tensor cores; no CPU speed-up).", "str")
    low_rank: float | str | None = option(None, "--low-rank", "SVD-factor Gemm/MatMul/Conv where MACs fall: energy "
                                                              "kept (0.95) or rank ratio (rank:0.25).", "number-or-str")
    sparsity_scope: str = option("layer", "--sparsity-scope", "Unstructured: layer (each layer to S) | global (one "
                                                              "magnitude threshold).", "str")
    prune_criterion: str = option("l1", "--prune-criterion", "Channel importance: l1 | l2 (weight norms) | bn "
                                                             "(BatchNorm gamma of the original model).", "str")
    channel_multiple: int = option(8, "--channel-multiple", "Round kept channel counts to a multiple of this (fast "
                                                            "SIMD kernels).", "int")
    sparse_format: str = option("ort", "--sparse-format", "Pruned weights saved as sparse_initializer: ort (narrow "
                                                          "indices, ONNX Runtime only) | onnx (int64 indices, the ONNX "
                                                          "spec).", "str")

    @property
    def requested(self) -> bool:  # the compress stage
        return self.sparsity is not None or bool(self.sparsity_pattern) or self.low_rank is not None


@dataclasses.dataclass
class QuantizeOptions:
    """The quantize stage (with placement by speed); data and budget are shared with compress."""

    quantize: str | None = option(None, "--quantize", "Lossy stage after the lossless passes: int8 | int8-dynamic "
                                                      "| fp16.", "str", short="-q")
    calibration: str | os.PathLike | None = option(
        None, "--calibration", "int8 calibration data: .npz (one array per input), folder of .npy/.npz/images, or "
                               "'random[:N]' (smoke tests only).", "data")
    eval: str | os.PathLike | None = option(None, "--eval", "Evaluation data (.npz/folder); with 'labels': top-1 "
                                                            "accuracy, else agreement with the float model.", "path")
    max_accuracy_drop: float | None = option(None, "--max-accuracy-drop", "Budget in points (top-1 or agreement): "
                                                                          "layers go back to float until it holds; "
                                                                          "exit 1 if it cannot.", "float")
    calibration_method: str = option("minmax", "--calibration-method", "minmax | percentile | entropy.", "str")
    calibration_samples: int | None = option(None, "--calibration-samples", "Use the first N samples.", "int")
    preprocess: str | None = option(None, "--preprocess", "Image folders: resize=256,crop=224,mean=a/b/c,std=a/b/c,"
                                                          "layout=nchw,color=rgb.", "str")
    keep_io_types: bool = option(True, "--keep-io-types/--no-keep-io-types",
                                 "fp16: keep float32 graph inputs and outputs.", "bool")
    int8_scheme: str = option("auto", "--int8-scheme", "auto | u8s8 | u8s8-reduced | u8u8 | s8s8 (auto picks for "
                                                       "this CPU).", "str")
    keep_float: Sequence[str] = option((), "--keep-float", "Node names never quantized (comma-separated).", "list")
    eval_output: str | None = option(None, "--eval-output", "Graph output scored [first output].", "str")
    quantize_measure: bool = option(True, "--quantize-measure/--no-quantize-measure",
                                    "Measure float-vs-quantized latency and memory for the report.", "bool")

    @property
    def requested(self) -> bool:  # the quantize stage
        return bool(self.quantize)


@dataclasses.dataclass
class RunOptions:
    """What a command-line or build run does with the result (not optimize() keywords)."""

    force: bool = option(False, "--force", "Write the output even if verification fails (still exit 1).", "bool",
                         where={"cli", "config"})
    require_verified: bool = option(False, "--require-verified", "Fail (exit 1, nothing written) when the model "
                                                                 "cannot be verified, e.g. ONNX Runtime cannot run "
                                                                 "the original on any input tried.", "bool",
                                    where={"cli"})


GROUPS = {"pipeline": PipelineOptions, "verify": VerifyOptions, "target": TargetOptions,
          "compress": CompressOptions, "quantize": QuantizeOptions, "run": RunOptions}


@dataclasses.dataclass
class OptimizeOptions:
    """All settings of one optimize() call, by stage (each stage reads its group)."""

    pipeline: PipelineOptions = dataclasses.field(default_factory=PipelineOptions)
    verify: VerifyOptions = dataclasses.field(default_factory=VerifyOptions)
    target: TargetOptions = dataclasses.field(default_factory=TargetOptions)
    compress: CompressOptions = dataclasses.field(default_factory=CompressOptions)
    quantize: QuantizeOptions = dataclasses.field(default_factory=QuantizeOptions)
    run: RunOptions = dataclasses.field(default_factory=RunOptions)


def fields(where: str | None = None) -> list[tuple[str, dataclasses.Field, Option]]:
    """(group, field, option) for every setting, in declaration order; `where`: api, cli or config."""
    out = []
    for group, cls in GROUPS.items():
        for f in dataclasses.fields(cls):
            spec = f.metadata["option"]
            if where is None or where in spec.where:
                out.append((group, f, spec))
    return out


def api_fields() -> dict[str, tuple[str, dataclasses.Field, Option]]:
    return {f.name: (group, f, spec) for group, f, spec in fields("api")}


def signature(model_param: inspect.Parameter, progress_param: inspect.Parameter) -> inspect.Signature:
    """optimize()'s signature: the model, every `api` setting as a keyword with its default, progress."""
    params = [model_param]
    for _, f, _ in fields("api"):
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
                                        annotation=f.type))
    return inspect.Signature([*params, progress_param])


def from_keywords(keywords: dict) -> OptimizeOptions:
    """optimize()'s keyword arguments as an OptimizeOptions (a misspelled one is a TypeError, as Python's)."""
    known = api_fields()
    groups: dict[str, dict] = {name: {} for name in GROUPS}
    for name, value in keywords.items():
        if name not in known:
            raise TypeError(f"optimize() got an unexpected keyword argument {name!r}")
        groups[known[name][0]][name] = value
    return OptimizeOptions(**{name: GROUPS[name](**values) for name, values in groups.items()})
