"""Refuse unsafe or invalid models when they are loaded, before any pass runs or any weight is read.

1. External data (`check_external_data`). Every tensor stored outside the model file must name a
   regular file inside the model's folder: no absolute location, no `..`, no symbolic link (onnx's
   checker refuses them even inside the folder; ORT and onnx-ir refuse those that leave it), no
   FIFO or device, no file with several hard links (onnx-ir refuses to read those). Its
   `offset`/`length` must fit the file and `length` must equal the tensor's size (ORT refuses a
   mismatch only when a session starts; onnx-ir reads past it). `ir.load` reads no weight, so this
   runs before any byte of external data is read.
2. Structure (`check_structure`). `onnx.checker.check_model(full_check=True)` runs first (one
   parse of a valid model). What it refuses is decided as ORT, which runs the model, decides:
   a graph that is only out of order is sorted (ORT sorts too), but undefined inputs and cycles
   are refused; graph inputs/outputs without a shape are checked again with an unknown shape
   (the checker wants one, ORT does not); anything else is refused if ONNX Runtime cannot load
   the model either (unknown default-domain ops, wrong attribute types, type mismatches, missing
   opset imports, recursive functions, nodes without outputs) and kept if it can (onnx infers
   some function bodies more strictly). ORT cannot judge a model with custom-domain ops, so
   there only the structural faults above are refused and the custom ops are left untouched.
   Names that are not valid UTF-8 (a bit flip protobuf passes) and duplicate node names (ORT
   refuses them, the checker does not) are checked on the IR.

Models given as protos or IR go through the same checks where a serialized form exists; the
checker reads a model file with external data without its weights, and a proto over 2 GB or a
file with both sparse initializers and external data only gets the checks on the IR.
"""

from __future__ import annotations

__all__ = ["check_external_data", "check_structure"]

import logging
import os
import pathlib
import stat

import onnx
import onnx_ir as ir

from graphopt.core.errors import InputError, first_line, ort_message

logger = logging.getLogger(__name__)

# Domains whose ops onnx's checker knows; a node in any other domain is a custom op.
_KNOWN_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "ai.onnx.preview.training"}
_PROTO_LIMIT = 2**31 - 1


def _graphs(model: ir.Model):
    graphs = [model.graph, *model.graph.subgraphs()]
    for function in model.functions.values():
        graphs += [function, *function.subgraphs()]
    return graphs


def _external_tensors(model: ir.Model):
    """(owner, tensor) for every external tensor: initializers and tensor attributes, subgraphs included."""
    for graph in _graphs(model):
        for name, value in getattr(graph, "initializers", {}).items():
            if isinstance(value.const_value, ir.ExternalTensor):
                yield f"initializer {name!r}", value.const_value
        for node in graph:
            for attr in node.attributes.values():
                if attr.type == ir.AttributeType.TENSOR:
                    tensors = [attr.value]
                elif attr.type == ir.AttributeType.TENSORS:
                    tensors = list(attr.value)
                else:
                    continue
                for t in tensors:
                    if isinstance(t, ir.ExternalTensor):
                        yield f"node {node.name or node.op_type!r} attribute {attr.name!r}", t


def check_external_data(model: ir.Model, path: pathlib.Path) -> None:
    """Raise InputError unless every external tensor reads a safe, large-enough file in `path`'s folder."""
    folder = os.path.realpath(path.parent)
    for owner, tensor in _external_tensors(model):
        location = tensor.location or ""
        where = f"{path}: external data of {owner} ({location!r})"
        posix, windows = pathlib.PurePosixPath(location), pathlib.PureWindowsPath(location)
        if not location or "\0" in location:
            raise InputError(f"{where}: empty or invalid location; re-save the model with its data")
        if posix.is_absolute() or windows.is_absolute() or windows.drive or ".." in posix.parts + windows.parts:
            raise InputError(f"{where}: refused, the location must be a plain relative path inside the "
                             "model's folder (no absolute path, no '..'); move the data beside the model and re-save")
        real = os.path.realpath(os.path.join(folder, location))
        if os.path.commonpath([real, folder]) != folder:
            raise InputError(f"{where}: refused, it resolves outside the model's folder (to {real}); "
                             "copy the data file into the folder instead of linking it")
        if real != os.path.normpath(os.path.join(folder, location)):
            raise InputError(f"{where}: refused, it is a symbolic link (onnx refuses those); "
                             "replace the link by the file itself")
        try:
            info = os.stat(real)
        except OSError:
            raise InputError(f"{where}: the external data file is missing (expected at {real})") from None
        if not stat.S_ISREG(info.st_mode):
            raise InputError(f"{where}: not a regular file; external data must be a plain file beside the model")
        if info.st_nlink > 1:
            raise InputError(f"{where}: the file has {info.st_nlink} hard links, which onnx-ir refuses to read; "
                             "replace the link by a copy (cp --no-preserve=links)")
        offset, length = tensor.offset or 0, tensor.length
        if offset < 0 or (length is not None and length < 0):
            raise InputError(f"{where}: negative offset or length; the model file is corrupt")
        if length is not None and length != tensor.nbytes:
            raise InputError(f"{where}: declares {length} bytes but a {tensor.dtype.name}{list(tensor.shape)} "
                             f"tensor needs {tensor.nbytes}; the model and its data do not match, re-export them")
        if offset + tensor.nbytes > info.st_size:
            raise InputError(f"{where}: truncated or mismatched data file ({info.st_size} bytes, the tensor needs "
                             f"bytes {offset}..{offset + tensor.nbytes}); copy the complete data file")


def check_structure(model: ir.Model, where: str, *, file: pathlib.Path | None = None,
                    proto: onnx.ModelProto | None = None) -> None:
    """Raise InputError if `model` is not a valid ONNX model; sorts a graph that is merely out of order.

    The checker reads `proto` if given (external data not loaded), else `file`; ONNX Runtime,
    when it has to decide, loads `file` if given. With neither, or a proto over 2 GB, only the
    checks on the IR run.
    """
    _check_text(model, where)
    _check_node_names(model, where)
    if proto is not None and proto.ByteSize() > _PROTO_LIMIT:
        proto = None
    if proto is None and file is None:
        _refuse_undefined(model, where, None)
        return
    target = proto if proto is not None else str(file)
    error = _checker_error(target, where)  # the full check includes the plain one: one parse when valid
    if error is None:
        return
    if _SHAPELESS in str(error):  # a graph input/output with a type but no shape: ORT and onnx-ir take it
        target = _with_empty_shapes(proto if proto is not None else onnx.load(str(file), load_external_data=False))
        error = _checker_error(target, where)
        if error is None:
            return
    plain = _checker_error(target, where, full=False)
    if plain is not None and "topologically sorted" in str(plain):
        _sort_or_refuse(model, where, plain)  # undefined inputs and cycles are refused here
        target = _with_empty_shapes(ir.serde.serialize_model(model))  # rare: check what the passes will see
        error = _checker_error(target, where)
        if error is None:
            return
        plain = _checker_error(target, where, full=False)
    # The checker refuses it. ORT, which runs the model, decides; it cannot judge custom ops, so
    # there only structural faults of the default domain are refused (custom ops stay untouched).
    if _custom_domains(model):
        if plain is not None and any(p in str(plain) for p in _FATAL):
            raise InputError(f"{where}: invalid model: {first_line(plain)} (onnx.checker); fix or re-export it") \
                from plain
        logger.debug("%s: the checker refuses a model with custom ops (kept): %s", where, first_line(error))
        return
    refusal = _ort_refusal(file if file is not None else target)
    if refusal is None:
        logger.debug("%s: the checker refuses it but ONNX Runtime loads it (kept): %s", where, first_line(error))
        return
    shown = plain if plain is not None else error
    raise InputError(f"{where}: invalid model: {first_line(shown)} (ONNX Runtime: {refusal}); fix or re-export it") \
        from shown


_SHAPELESS = "Field 'shape' of 'type' is required but missing"
# What the checker reports for the faults of issue 15 that ORT cannot judge on a custom-op model.
_FATAL = ("No Op registered", "Mismatched attribute type", "Unrecognized attribute", "output size", "input size",
          "Cycle detected", "opset_import", "static single assignment", "Duplicate", "is not a registered",
          "Required attribute")


def _checker_error(target, where: str, full: bool = True) -> Exception | None:
    try:
        onnx.checker.check_model(target, full_check=full)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        return e
    except UnicodeDecodeError as e:  # the checker's message quotes a corrupt name
        raise InputError(f"{where}: invalid model: a name or string is not valid UTF-8 (a corrupt file?)") from e
    return None


def _with_empty_shapes(proto: onnx.ModelProto) -> onnx.ModelProto:
    """`proto` with an unknown-rank shape on every tensor type that has none (what the checker wants)."""
    def fix(graph: onnx.GraphProto) -> None:
        for info in (*graph.input, *graph.output, *graph.value_info):
            if info.type.HasField("tensor_type") and not info.type.tensor_type.HasField("shape"):
                info.type.tensor_type.shape.SetInParent()
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    fix(attr.g)
                for g in attr.graphs:
                    fix(g)

    fix(proto.graph)
    return proto


def _strings(model: ir.Model):
    """Every name and text field of the model (what serializing it writes as protobuf strings)."""
    yield model.producer_name, model.producer_version, model.domain, model.doc_string
    yield from model.metadata_props.items()
    yield from model.opset_imports
    for graph in _graphs(model):
        yield graph.name, graph.doc_string
        yield from graph.metadata_props.items()
        for value in [*graph.inputs, *graph.outputs, *getattr(graph, "initializers", {}).values()]:
            yield value.name, value.doc_string
        for node in graph:
            yield node.name, node.op_type, node.domain, node.overload, node.doc_string
            yield from node.metadata_props.items()
            yield tuple(v.name for v in (*node.inputs, *node.outputs) if v is not None)
            for attr in node.attributes.values():
                yield attr.name, attr.ref_attr_name, attr.doc_string
                if attr.type == ir.AttributeType.STRING:
                    yield attr.value,
                elif attr.type == ir.AttributeType.STRINGS:
                    yield tuple(attr.value)


def _check_text(model: ir.Model, where: str) -> None:
    # Protobuf hands invalid UTF-8 in a proto2 string field through as bytes (or surrogates);
    # writing the model back fails on it deep inside onnx-ir, so a bit-flipped name is refused here.
    for group in _strings(model):
        for text in group:
            if isinstance(text, bytes):
                bad = text
            elif isinstance(text, str):
                try:
                    text.encode("utf-8")
                    continue
                except UnicodeEncodeError:
                    bad = text.encode("utf-8", "surrogateescape")
            else:
                continue
            shown = bad.decode("utf-8", "replace")
            raise InputError(f"{where}: invalid model: the name {shown!r} is not valid UTF-8 (a corrupt file?); "
                             "re-export it")


def _check_node_names(model: ir.Model, where: str) -> None:
    for graph in _graphs(model):
        seen = set()
        for node in graph:
            if node.name and node.name in seen:
                raise InputError(f"{where}: two nodes are named {node.name!r} (ONNX Runtime refuses that); "
                                 "give them unique names or re-export")
            seen.add(node.name)


def _refuse_undefined(model: ir.Model, where: str, error: Exception | None) -> None:
    for graph in _graphs(model):
        for node in graph:
            for value in node.inputs:
                if value is not None and _undefined(value, graph):
                    raise InputError(f"{where}: input {value.name!r} of node {node.name or node.op_type!r} is not "
                                     "defined by any node, input or initializer; fix or re-export it") from error


def _sort_or_refuse(model: ir.Model, where: str, error: Exception) -> None:
    _refuse_undefined(model, where, error)
    try:
        model.graph.sort()
        for function in model.functions.values():
            function.sort()
    except ValueError as e:  # onnx-ir: "Graph contains a cycle"
        raise InputError(f"{where}: the graph has a cycle ({first_line(error)}); fix or re-export it") from e
    logger.info("%s: nodes were out of order; sorted", where)


def _undefined(value: ir.Value, graph) -> bool:
    if value.producer() is not None or value.is_graph_input() or value.const_value is not None:
        return False
    # A subgraph may read its outer scopes; onnx-ir links those values, so only a value that
    # belongs to no graph (what its deserializer makes of a dangling name) is undefined.
    return value.name not in getattr(graph, "initializers", {}) and value.graph is None


def _custom_domains(model: ir.Model) -> set[str]:
    domains = set()
    for graph in _graphs(model):
        domains |= {n.domain for n in graph}
    return domains - _KNOWN_DOMAINS - {f.domain for f in model.functions.values()}


def _ort_refusal(source) -> str | None:
    """ONNX Runtime's reason for not loading the model, or None if it loads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    data = str(source) if isinstance(source, pathlib.Path) else source.SerializeToString()
    try:
        ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - any failure to load is ORT's verdict
        return ort_message(e)
    return None
