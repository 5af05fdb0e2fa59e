"""Every pass, in one registry, and the named pipelines (levels) that order the lossless ones.

A pass lives in `graphopt.passes.<kind>.<name>` (kind: cleanup, shape, fusion, quantize, prune)
and its registry name is its module's stem; older names are aliases. Lossless passes run in the
pass pipeline (`stage="lossless"`, built from `PassOptions`); the lossy ones are built by their
stage (`graphopt.stages.compress`, `graphopt.stages.quantize`), which picks them by registry name.
Pipelines are data: each level is a list of pass names. A pass module is imported only when its
pass is built, so `graphopt passes` and the CLI start fast.
"""

from __future__ import annotations

__all__ = ["REGISTRY", "ALIASES", "LEVELS", "DEFAULT_LEVEL", "OPTION_PASSES", "level_names", "resolve", "pass_class"]

import importlib

from graphopt.core.errors import UsageError
from graphopt.core.pipeline import PassOptions, PassSpec


def pass_class(spec: PassSpec) -> type:
    """The pass class of `spec` (imports its module)."""
    return getattr(importlib.import_module(f"graphopt.passes.{spec.kind}.{spec.name}"), spec.cls)


def _spec(kind: str, name: str, cls: str, description: str, *, options=None, stage: str = "lossless",
          aliases: tuple[str, ...] = (), **flags) -> PassSpec:
    """A registry entry; `options` maps constructor arguments to getters on PassOptions (lossless)."""

    def factory(pass_options: PassOptions):
        if stage != "lossless":
            raise UsageError(f"pass {name!r} is lossy: the {stage} stage builds it ({description.split(': ')[0]})")
        kwargs = {arg: getter(pass_options) for arg, getter in (options or {}).items()}
        return getattr(importlib.import_module(f"graphopt.passes.{kind}.{name}"), cls)(**kwargs)

    return PassSpec(name, factory, description, kind=kind, cls=cls, stage=stage, aliases=aliases, **flags)


_SPECS = [
    _spec("cleanup", "drop_initializer_inputs", "DropInitializerInputsPass",
          "Remove initializers from the graph inputs (IR v3 exports) so ORT may fold and fuse them.",
          options={"keep": lambda o: o.keep_initializer_inputs}, aliases=("initializer_inputs",)),
    _spec("cleanup", "keep_outputs", "KeepOutputsPass",
          "Keep only the graph outputs named by --outputs; what fed only the others becomes dead.",
          options={"outputs": lambda o: o.outputs}, aliases=("dead_outputs",)),
    _spec("cleanup", "eliminate_noops", "EliminateNoOpsPass",
          "Remove Identity, inference Dropout, same-type Cast, same-shape Reshape, identity Transpose, "
          "zero Pad, and Transpose/Reshape chains that cancel.", aliases=("noops",)),
    _spec("cleanup", "fold_constants", "FoldConstantsPass",
          "Evaluate nodes whose inputs are all constant, unless the result outgrows --fold-limit.",
          options={"size_limit_bytes": lambda o: o.fold_limit_bytes}, aliases=("constant_folding",)),
    _spec("fusion", "fold_batchnorm", "FoldBatchNormPass",
          "Fold inference BatchNormalization into the Conv/ConvTranspose/Gemm/MatMul before it, "
          "or into a Conv after it."),
    _spec("fusion", "fold_affine", "FoldAffineIntoWeightsPass",
          "Fold Mul/Add by constants after Conv/ConvTranspose/Gemm/MatMul into weights and bias."),
    _spec("cleanup", "dedupe_initializers", "DeduplicateInitializersPass",
          "Merge initializers with the same dtype, shape and bytes.", aliases=("dedupe",)),
    _spec("cleanup", "cse", "EliminateCommonSubexpressionsPass",
          "Merge nodes with the same op, inputs and attributes."),
    _spec("cleanup", "eliminate_dead_code", "EliminateDeadCodePass",
          "Remove nodes that reach no graph output, unused initializers, opsets and functions.",
          aliases=("dead_code",)),
    _spec("shape", "infer_shapes", "InferShapesPass",
          "Annotate values with onnx shape inference so later passes and ORT see shapes.",
          rewrites=False, aliases=("shape_inference",)),
    _spec("fusion", "fuse_parallel", "FuseParallelPass",
          "Merge parallel Conv/Gemm/MatMul reading one tensor (concatenated weights + Split) where "
          "timing both forms in ORT on the target provider shows it pays (a cost model with --no-measure).",
          options={"provider": lambda o: o.provider, "threads": lambda o: o.threads, "measure": lambda o: o.measure,
                   "shapes": lambda o: o.inputs.shapes if o.inputs is not None else o.shapes,
                   "feeds": lambda o: o.inputs.feeds() if o.inputs is not None else None}),
    # Exporter clean-ups (issue 7).
    _spec("cleanup", "training_leftovers", "TrainingLeftoversPass",
          "Report Dropout in training mode and BatchNormalization(training_mode=1); with --inference, "
          "convert them to inference form (outputs change).", options={"inference": lambda o: o.inference}),
    _spec("cleanup", "lift_constants", "LiftConstantsPass",
          "Turn Constant nodes (Paddle and TorchScript weights) into initializers, in bodies too."),
    _spec("shape", "fold_shapes", "FoldShapesPass",
          "Fold Shape/Size arithmetic of static dims; give Reshape constant shapes (0 copies a symbolic "
          "dim, -1 infers one): symbolic dims stay symbolic."),
    _spec("shape", "unflatten_matmul", "UnflattenMatMulPass",
          "Turn Reshape/Flatten -> MatMul/Gemm -> Reshape (tf2onnx Tensordot, MXNet Dense) into one "
          "MatMul over the leading dims, so ORT can fuse what follows."),
    _spec("fusion", "recompose_ops", "RecomposeOpsPass",
          "Re-compose decomposed LayerNorm, Gelu, HardSigmoid/HardSwish, Softplus, Mish into the ONNX op "
          "(or, before the op's opset, the form ORT fuses).",
          needs_ops=frozenset({"Sqrt", "Erf", "Log", "Tanh", "Clip", "HardSigmoid"})),  # see recompose_ops.TRIGGERS
    _spec("shape", "sink_transposes", "SinkTransposesPass",
          "Cancel Transpose pairs through element-wise/reduce/Pad/Concat/Resize chains; collapse "
          "Reshape-Transpose-Reshape (MXNet batch_dot) into one Transpose."),
    _spec("fusion", "fuse_pad", "FusePadPass",
          "Fold an explicit Pad into the Conv/AveragePool/MaxPool after it (tf2onnx SAME padding, "
          "ZeroPadding2D), opset 11+; MaxPool only where the padding cannot change the max.",
          needs_ops=frozenset({"Pad"})),
    _spec("shape", "set_input_shapes", "SetInputShapesPass",
          "Fix the input dims given with --shape in the model (runs first whenever --shape is given).",
          options={"shapes": lambda o: o.shapes}, aliases=("input_shapes",)),
    _spec("cleanup", "upgrade_opset", "UpgradeOpsetPass",
          "Convert to the default-domain opset given with --target-opset (onnx version converter); "
          "names the ops that block it.", options={"target": lambda o: o.target_opset}),
    # Lossy (opt-in): their stages build them, layer by layer under the accuracy budget.
    _spec("prune", "prune_channels", "PruneChannelsPass",
          "--sparsity S --structured: remove whole output channels of Conv/Gemm/MatMul and all that depends "
          "on them (residual Adds, Concats, BatchNormalization, depthwise groups).",
          stage="compress", aliases=("structured",)),
    _spec("prune", "prune_magnitude", "PruneMagnitudePass",
          "--sparsity S: zero the smallest weights of each layer (or below one global threshold); saved as "
          "sparse_initializer.", stage="compress", aliases=("sparsity", "magnitude")),
    _spec("prune", "prune_nm", "PruneNMPass",
          "--sparsity-pattern N:M: keep N of every M weights along the reduction axis (sparse tensor cores).",
          stage="compress", aliases=("sparsity-pattern", "nm")),
    _spec("prune", "low_rank", "FactorizeLowRankPass",
          "--low-rank R: factor Gemm/MatMul weights and Conv kernels by SVD where the MACs fall by 20% or more.",
          stage="compress", aliases=("low-rank",)),
    _spec("quantize", "quantize_int8", "QuantizeInt8Pass",
          "--quantize int8: static INT8 in QDQ form (per-channel weights, calibrated activations, int32 biases).",
          stage="quantize", aliases=("int8",)),
    _spec("quantize", "quantize_dynamic", "QuantizeDynamicPass",
          "--quantize int8-dynamic: int8 MatMul/Gemm weights, activations quantized at run time.",
          stage="quantize", aliases=("int8-dynamic",)),
    _spec("quantize", "quantize_fp16", "ConvertFp16Pass",
          "--quantize fp16: float16 weights and compute, float32 kept where values overflow half.",
          stage="quantize", aliases=("fp16",)),
]

# Passes the API puts in front of any level when their option is given (not in any level).
OPTION_PASSES = {"upgrade_opset": lambda o: o.target_opset is not None, "set_input_shapes": lambda o: bool(o.shapes)}

REGISTRY: dict[str, PassSpec] = {spec.name: spec for spec in _SPECS}
ALIASES: dict[str, str] = {alias: spec.name for spec in _SPECS for alias in spec.aliases}


def resolve(name: str, stage: str | None = None) -> PassSpec:
    """The registry entry called `name` (or an alias of it); with `stage`, it must run in that stage."""
    spec = REGISTRY.get(name) or REGISTRY.get(ALIASES.get(name, ""))
    if spec is None:
        raise UsageError(f"unknown pass {name!r}; `graphopt passes` lists them: {', '.join(REGISTRY)}")
    if stage is not None and spec.stage != stage:
        raise UsageError(f"pass {spec.name!r} runs in the {spec.stage} stage, not the {stage} one: "
                         f"{spec.description.split(': ')[0]}")
    return spec

_CLEANUP = ["drop_initializer_inputs", "keep_outputs", "eliminate_noops", "fold_constants",
            "dedupe_initializers", "cse", "eliminate_dead_code", "infer_shapes"]
_FUSION = ["fold_batchnorm", "fold_affine"]

LEVELS: dict[int, list[str]] = {
    0: [],
    1: _CLEANUP,
    2: _CLEANUP[:4] + _FUSION + _CLEANUP[4:],
    3: _CLEANUP[:4] + _FUSION + _CLEANUP[4:] + ["fuse_parallel"],  # level 2 + measured horizontal fusion
}
DEFAULT_LEVEL = 2

# Where the exporter clean-ups sit in every non-empty level (by name, so the lists above stay
# readable): training leftovers are reported first; constants are lifted once weights are no
# longer inputs; shape arithmetic folds after constant folding.
_PLACE = [("training_leftovers", "before", "drop_initializer_inputs"),
          ("lift_constants", "after", "drop_initializer_inputs"),
          ("fold_shapes", "after", "fold_constants"),
          ("unflatten_matmul", "after", "fold_shapes"),
          ("sink_transposes", "after", "unflatten_matmul")]
# Fusions: level 2 and up (after shape inference, so patterns see ranks and types).
_PLACE_FUSION = [("recompose_ops", "after", "infer_shapes"), ("fuse_pad", "after", "fold_batchnorm")]


def _placed(names: list[str]) -> list[str]:
    names = list(names)
    fusion = "fold_batchnorm" in names
    for new, where, anchor in _PLACE + (_PLACE_FUSION if fusion else []):
        if names and anchor in names and new not in names:
            names.insert(names.index(anchor) + (where == "after"), new)
    return names


LEVELS = {level: _placed(names) for level, names in LEVELS.items()}


def level_names(level: int) -> list[str]:
    if level not in LEVELS:
        raise UsageError(f"--level {level}: choose one of {', '.join(map(str, sorted(LEVELS)))}")
    return LEVELS[level]
