"""The rewrite passes and the named pipelines (levels) that order them.

Pipelines are data: each level is a list of pass names. A pass module is imported only
when its pass is built, so `graphopt passes` and the CLI start fast.
"""

from __future__ import annotations

__all__ = ["REGISTRY", "LEVELS", "DEFAULT_LEVEL", "OPTION_PASSES", "level_names"]

import importlib

from graphopt.core.pipeline import PassOptions, PassSpec


def _lazy(module: str, cls: str, **option_args):
    """A factory that imports `graphopt.passes.<module>` and builds `cls`, passing selected options."""

    def factory(options: PassOptions):
        pass_class = getattr(importlib.import_module(f"graphopt.passes.{module}"), cls)
        kwargs = {arg: getter(options) for arg, getter in option_args.items()}
        return pass_class(**kwargs)

    return factory


_SPECS = [
    PassSpec("drop_initializer_inputs",
             _lazy("cleanup.drop_initializer_inputs", "DropInitializerInputsPass",
                   keep=lambda o: o.keep_initializer_inputs),
             "Remove initializers from the graph inputs (IR v3 exports) so ORT may fold and fuse them."),
    PassSpec("keep_outputs", _lazy("cleanup.keep_outputs", "KeepOutputsPass", outputs=lambda o: o.outputs),
             "Keep only the graph outputs named by --outputs; what fed only the others becomes dead."),
    PassSpec("eliminate_noops", _lazy("cleanup.eliminate_noops", "EliminateNoOpsPass"),
             "Remove Identity, inference Dropout, same-type Cast, same-shape Reshape, identity Transpose, "
             "zero Pad, and Transpose/Reshape chains that cancel."),
    PassSpec("fold_constants",
             _lazy("cleanup.fold_constants", "FoldConstantsPass", size_limit_bytes=lambda o: o.fold_limit_bytes),
             "Evaluate nodes whose inputs are all constant, unless the result outgrows --fold-limit."),
    PassSpec("fold_batchnorm", _lazy("fusion.fold_batchnorm", "FoldBatchNormPass"),
             "Fold inference BatchNormalization into the Conv/ConvTranspose/Gemm/MatMul before it, "
             "or into a Conv after it."),
    PassSpec("fold_affine", _lazy("fusion.fold_affine", "FoldAffineIntoWeightsPass"),
             "Fold Mul/Add by constants after Conv/ConvTranspose/Gemm/MatMul into weights and bias."),
    PassSpec("dedupe_initializers", _lazy("cleanup.dedupe_initializers", "DeduplicateInitializersPass"),
             "Merge initializers with the same dtype, shape and bytes."),
    PassSpec("cse", _lazy("cleanup.cse", "EliminateCommonSubexpressionsPass"),
             "Merge nodes with the same op, inputs and attributes."),
    PassSpec("eliminate_dead_code", _lazy("cleanup.eliminate_dead_code", "EliminateDeadCodePass"),
             "Remove nodes that reach no graph output, unused initializers, opsets and functions."),
    PassSpec("infer_shapes", _lazy("shape.infer_shapes", "InferShapesPass"),
             "Annotate values with onnx shape inference so later passes and ORT see shapes.",
             rewrites=False),
    PassSpec("fuse_parallel",
             _lazy("fusion.fuse_parallel", "FuseParallelPass", provider=lambda o: o.extra.get("provider", "cpu"),
                   threads=lambda o: o.extra.get("threads"), measure=lambda o: o.extra.get("measure", True),
                   shapes=lambda o: o.inputs.shapes if o.inputs is not None else o.shapes,
                   feeds=lambda o: o.inputs.feeds() if o.inputs is not None else None,
                   log=lambda o: o.extra.setdefault("fuse_parallel", [])),
             "Merge parallel Conv/Gemm/MatMul reading one tensor (concatenated weights + Split) where "
             "timing both forms in ORT on the target provider shows it pays (a cost model with --no-measure)."),
]

# Exporter clean-ups (issue 7).
_SPECS += [
    PassSpec("training_leftovers", _lazy("cleanup.training_leftovers", "TrainingLeftoversPass", inference=lambda o: o.inference),
             "Report Dropout in training mode and BatchNormalization(training_mode=1); with --inference, "
             "convert them to inference form (outputs change)."),
    PassSpec("lift_constants", _lazy("cleanup.lift_constants", "LiftConstantsPass"),
             "Turn Constant nodes (Paddle and TorchScript weights) into initializers, in bodies too."),
    PassSpec("fold_shapes", _lazy("shape.fold_shapes", "FoldShapesPass"),
             "Fold Shape/Size arithmetic of static dims; give Reshape constant shapes (0 copies a symbolic "
             "dim, -1 infers one): symbolic dims stay symbolic."),
    PassSpec("unflatten_matmul", _lazy("shape.unflatten_matmul", "UnflattenMatMulPass"),
             "Turn Reshape/Flatten -> MatMul/Gemm -> Reshape (tf2onnx Tensordot, MXNet Dense) into one "
             "MatMul over the leading dims, so ORT can fuse what follows."),
    PassSpec("recompose_ops", _lazy("fusion.recompose_ops", "RecomposeOpsPass"),
             "Re-compose decomposed LayerNorm, Gelu, HardSigmoid/HardSwish, Softplus, Mish into the ONNX op "
             "(or, before the op's opset, the form ORT fuses).",
             needs_ops=frozenset({"Sqrt", "Erf", "Log", "Tanh", "Clip", "HardSigmoid"})),  # see recompose_ops.TRIGGERS
    PassSpec("sink_transposes", _lazy("shape.sink_transposes", "SinkTransposesPass"),
             "Cancel Transpose pairs through element-wise/reduce/Pad/Concat/Resize chains; collapse "
             "Reshape-Transpose-Reshape (MXNet batch_dot) into one Transpose."),
    PassSpec("fuse_pad", _lazy("fusion.fuse_pad", "FusePadPass"),
             "Fold an explicit Pad into the Conv/AveragePool/MaxPool after it (tf2onnx SAME padding, "
             "ZeroPadding2D), opset 11+; MaxPool only where the padding cannot change the max.",
             needs_ops=frozenset({"Pad"})),
    PassSpec("set_input_shapes", _lazy("shape.set_input_shapes", "SetInputShapesPass", shapes=lambda o: o.shapes),
             "Fix the input dims given with --shape in the model (runs first whenever --shape is given)."),
    PassSpec("upgrade_opset", _lazy("cleanup.upgrade_opset", "UpgradeOpsetPass", target=lambda o: o.target_opset),
             "Convert to the default-domain opset given with --target-opset (onnx version converter); "
             "names the ops that block it."),
]
# Passes the API puts in front of any level when their option is given (not in any level).
OPTION_PASSES = {"upgrade_opset": lambda o: o.target_opset is not None, "set_input_shapes": lambda o: bool(o.shapes)}

REGISTRY: dict[str, PassSpec] = {spec.name: spec for spec in _SPECS}

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
    from graphopt.core.errors import UsageError

    if level not in LEVELS:
        raise UsageError(f"--level {level}: choose one of {', '.join(map(str, sorted(LEVELS)))}")
    return LEVELS[level]
