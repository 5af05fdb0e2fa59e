"""Convert the model to another default-domain opset (`--target-opset N`) with onnx's version converter.

Opt-in: it runs first when the user asks for a target opset, so that the other passes
(and `recompose_ops`, which needs opset 17 for LayerNormalization and 20 for Gelu) see
the new opset.

1. The model is converted by `onnx.version_converter.convert_version`, which adapts each
   op (attributes that became inputs, renamed or replaced ops) including If/Loop/Scan
   bodies; custom-domain ops and functions pass through. The IR version is raised if the
   new opset needs it.
2. Large weights never go through the converter: initializers over 1 KiB are swapped for
   placeholders before serialization and put back afterwards, so a model over 2 GB
   converts and weights are not copied.
3. When the converter fails, each op type is converted alone to name the ops that block
   the conversion; the pass raises `OpsetConversionError` with them (the CLI prints one
   line and exits 2) and the model is unchanged.

A target equal to the model's opset changes nothing. Graph input/output names are kept
(the converter keeps them); values it adds get names unused in the model.
"""

from __future__ import annotations

__all__ = ["UpgradeOpsetPass", "OpsetConversionError"]

import logging

import onnx
import onnx.version_converter
import onnx_ir as ir

from graphopt.core.errors import UsageError
from graphopt.core.patterns import opset_version
from graphopt.core.pipeline import CountedPassResult

logger = logging.getLogger(__name__)

_PLACEHOLDER = "graphopt-upgrade-placeholder"
_BIG_BYTES = 1024


class OpsetConversionError(UsageError):
    """The version converter cannot take this model to the requested opset."""


class UpgradeOpsetPass(ir.passes.InPlacePass):
    """Convert the default-domain opset to `target` with onnx.version_converter."""

    def __init__(self, target: int | None = None):
        super().__init__()
        self.target = target

    def call(self, model: ir.Model) -> CountedPassResult:
        if self.target is None:
            return CountedPassResult(model, False, {})
        current = opset_version(model)
        if current == self.target:
            return CountedPassResult(model, False, {})
        newest = onnx.defs.onnx_opset_version()
        if not 7 <= self.target <= newest:
            raise UsageError(f"--target-opset {self.target}: onnx {onnx.__version__} converts to opsets 7..{newest}")
        stash = _stash_weights(model)
        try:
            proto = ir.serde.serialize_model(model)
        finally:
            _restore(model, stash)
        try:
            converted = onnx.version_converter.convert_version(proto, self.target)
        except Exception as e:
            raise OpsetConversionError(_blocked_message(model, current, self.target, e)) from e
        new = ir.serde.deserialize_model(converted)
        _restore(new, stash)
        model.graph = new.graph
        model.functions.clear()
        model.functions.update(new.functions)
        model.ir_version = max(model.ir_version or 0, new.ir_version or 0,
                               _min_ir_version(self.target))
        logger.info("converted opset %d -> %d", current, self.target)
        return CountedPassResult(model, True, {f"opset_{current}_to_{self.target}": 1})


def _stash_weights(model: ir.Model) -> dict[str, ir.TensorProtocol]:
    """Replace large initializer tensors with external placeholders; return the originals by name."""
    stash: dict[str, ir.TensorProtocol] = {}
    names_seen: set[str] = set()
    for graph in model.graphs():
        for name, value in graph.initializers.items():
            tensor = value.const_value
            if name in names_seen:
                stash.pop(name, None)  # ambiguous name across graphs: leave both in place
                continue
            names_seen.add(name)
            if tensor is None or tensor.nbytes <= _BIG_BYTES or isinstance(tensor, ir.StringTensor):
                continue
            stash[name] = tensor
            value.const_value = ir.ExternalTensor(_PLACEHOLDER, 0, tensor.nbytes, tensor.dtype,
                                                  shape=ir.Shape(tensor.shape), name=name)
    return stash


def _restore(model: ir.Model, stash: dict[str, ir.TensorProtocol]) -> None:
    for graph in model.graphs():
        for name, value in graph.initializers.items():
            tensor = value.const_value
            if name in stash and isinstance(tensor, ir.ExternalTensor) and str(tensor.location) == _PLACEHOLDER:
                value.const_value = stash[name]


def _min_ir_version(opset: int) -> int:
    """The lowest IR version whose release includes default-domain `opset` (onnx.helper.VERSION_TABLE)."""
    versions = [row[1] for row in onnx.helper.VERSION_TABLE if row[2] >= opset]
    return min(versions) if versions else onnx.IR_VERSION


def _blocked_message(model: ir.Model, current: int, target: int, error: Exception) -> str:
    blockers = []
    for op_type, node in _one_node_per_op(model).items():
        try:
            onnx.version_converter.convert_version(_single_node_model(node, current), target)
        except Exception as e:  # noqa: BLE001 - any failure of the one-node model names a blocker
            blockers.append(f"{op_type} ({_first_line(e)})")
    detail = "; ".join(blockers) if blockers else _first_line(error)
    return f"--target-opset {target}: cannot convert from opset {current}: blocked by {detail}"


def _one_node_per_op(model: ir.Model) -> dict[str, ir.Node]:
    found: dict[str, ir.Node] = {}
    for node in model.graph.all_nodes():
        if node.domain in ("", "ai.onnx") and node.op_type not in found:
            found[node.op_type] = node
    return found


def _single_node_model(node: ir.Node, opset: int) -> onnx.ModelProto:
    """The node alone, its inputs as typed graph inputs (constants kept: some adapters read them)."""
    proto = ir.serde.serialize_node(node)
    del proto.input[:]
    inputs, inits = [], []
    for i, value in enumerate(node.inputs):
        if value is None:
            proto.input.append("")
            continue
        name = f"in{i}"
        proto.input.append(name)
        tensor = value.const_value
        if tensor is not None and tensor.nbytes <= _BIG_BYTES:
            t = ir.serde.serialize_tensor(tensor)
            t.name = name
            inits.append(t)
        dtype = value.dtype.value if value.dtype is not None else onnx.TensorProto.FLOAT
        inputs.append(onnx.helper.make_tensor_value_info(name, dtype, None))
    del proto.output[:]
    proto.output.extend(f"out{i}" for i in range(len(node.outputs)))
    outputs = [onnx.helper.make_tensor_value_info(f"out{i}", onnx.TensorProto.UNDEFINED, None)
               for i in range(len(node.outputs))]
    graph = onnx.helper.make_graph([proto], "one_node", inputs, outputs, initializer=inits)
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    text = lines[0] if lines else type(e).__name__
    return text.rsplit(": ", 1)[-1][:160] if "Assertion" in text else text[:160]
