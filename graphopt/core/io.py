"""Load and save models: paths, protos or IR; external data; atomic writes; one-line errors.

Models load lazily through onnx-ir (external tensors are memory-mapped, so a model over
2 GB costs almost nothing to open). Saving writes into a private directory beside the
target and then renames into place (`graphopt.core.atomic`: a model and its data file are replaced
as one), so a crash or a kill never leaves a half-written output or a model paired with
the wrong data, and the input file (or its external data) is never the target.
"""

from __future__ import annotations

__all__ = ["load", "save", "stage", "Staged", "stage_scratch", "check_output_path", "model_size_bytes", "external_data_paths", "release_mapped", "EXTERNAL_DATA_THRESHOLD"]

import atexit
import collections
import logging
import os
import pathlib
import shutil
import stat
import tempfile
import weakref

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from graphopt.core import atomic, protowrite, sparse, validate
from graphopt.core.errors import InputError, UsageError

logger = logging.getLogger(__name__)

# Protobuf cannot serialize 2 GiB; leave headroom for the graph itself.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
_LOADED_WITH_EXTERNAL_DATA = "graphopt.loaded_with_external_data"
_MIN_IR_VERSION = 3


def load(source: str | os.PathLike | onnx.ModelProto | ir.Model) -> ir.Model:
    """Return an `ir.Model` for a path, a ModelProto or an IR model (copied, never mutated)."""
    if isinstance(source, ir.Model):
        return _negative_dims_as_dynamic(_forget_dropped_io(_copy_ir(source)))
    if isinstance(source, onnx.ModelProto):
        _check_versions(source.ir_version, source.opset_import, "<ModelProto>")
        model = _deserialize(source, "<ModelProto>")
        # External data of a bare proto is relative to a folder we do not know: the checker cannot look.
        validate.check_structure(model, "<ModelProto>", proto=None if _has_external(source) else _densified(source))
        return _negative_dims_as_dynamic(_forget_dropped_io(model))
    if isinstance(source, (str, os.PathLike)):
        return _negative_dims_as_dynamic(_forget_dropped_io(_load_path(pathlib.Path(source))))
    raise UsageError(f"cannot load a model from {type(source).__name__}: give a path, onnx.ModelProto or ir.Model")


class _DroppingCounter(collections.Counter):
    """A Counter that forgets a key when its count reaches zero."""

    def __setitem__(self, key, count):
        if count <= 0:
            self.pop(key, None)
        else:
            super().__setitem__(key, count)


def _forget_dropped_io(model: ir.Model) -> ir.Model:
    """Work around an onnx-ir leak: graph inputs/outputs keep every value ever listed.

    `ir.Graph.inputs` counts references per value in a Counter that keeps zero counts, so
    a value that was once a graph input stays referenced for the model's life. Shape
    inference lists every initializer as an input for a moment (onnx-ir's
    ShapeInferencePass, `graphopt.passes.shape._shapes`), so every original weight, with the memory map
    it was read through, outlived its replacement by a folded weight: 2 GB resident for a
    2.4 GB model. Values are forgotten at zero instead.
    """
    graphs = [model.graph, *model.graph.subgraphs()]
    for function in model.functions.values():
        graphs += [function, *function.subgraphs()]
    for graph in graphs:
        for values in (getattr(graph, "inputs", None), getattr(graph, "outputs", None)):
            counter = getattr(values, "_ref_counter", None)
            if isinstance(counter, collections.Counter) and not isinstance(counter, _DroppingCounter):
                values._ref_counter = _DroppingCounter(+counter)
    return model


def _negative_dims_as_dynamic(model: ir.Model) -> ir.Model:
    """`dim_value: -1` (Paddle's batch dim) means "any size": make it an unnamed dynamic dim.

    Read as an int, -1 looks static to every pass (a folded Shape would hold -1, which a
    Reshape then reads as "infer this dim"); as a dynamic dim it stays dynamic in the output."""
    for graph in (model.graph, *model.graph.subgraphs()):
        values = [*graph.inputs, *graph.outputs, *(o for node in graph for o in node.outputs)]
        for value in values:
            shape = value.shape
            if shape is not None and any(isinstance(d, int) and d < 0 for d in shape):
                value.shape = ir.Shape([ir.SymbolicDim(None) if isinstance(d, int) and d < 0 else d for d in shape])
    return model


def _copy_ir(model: ir.Model) -> ir.Model:
    if model_size_bytes(model) >= EXTERNAL_DATA_THRESHOLD:
        logger.info("model over 2 GB given as ir.Model: optimizing it in place")
        return model
    proto = ir.serde.serialize_model(model)
    copy = _deserialize(proto, "<ir.Model>")
    validate.check_structure(copy, "<ir.Model>", proto=None if _has_external(proto) else proto)
    # Serializing keeps an external tensor's location but not the directory it is relative
    # to: share the original (immutable) external tensors instead of unreadable copies.
    for graph, graph_copy in zip(model.graphs(), copy.graphs()):
        for name, value in graph_copy.initializers.items():
            source = graph.initializers.get(name)
            if source is not None and isinstance(source.const_value, ir.ExternalTensor):
                value.const_value = source.const_value
    if external_data_paths(copy):
        copy.meta[_LOADED_WITH_EXTERNAL_DATA] = True
    return copy


def _load_path(path: pathlib.Path) -> ir.Model:
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected an .onnx file")
    size = path.stat().st_size
    if size == 0:
        raise InputError(f"{path}: empty file, not an ONNX model")
    with open(path, "rb") as f:
        head = f.read(64)
    try:
        # onnx-ir warns about each undefined input; validate.check_structure names the first instead.
        with sparse.held_missing_input_warnings():
            model = ir.load(path)
            densified = None
            if sparse.has_unresolved_inputs(model):  # onnx-ir drops sparse_initializer: read them dense
                densified = sparse.load_densified(path)
                model = densified or model
    except DecodeError as e:
        raise InputError(_decode_failure(path, head)) from e
    except (OSError, ValueError, RuntimeError, TypeError) as e:
        raise InputError(f"{path}: cannot be read as ONNX ({_first_line(e)})") from e
    if model.graph is None or (not model.graph.outputs and not len(model.graph)):
        raise InputError(f"{path}: not an ONNX model (no graph found)")
    _check_versions(model.ir_version, model.opset_imports, str(path))
    validate.check_external_data(model, path)
    _inline_attribute_tensors(model)
    if densified is None:
        validate.check_structure(model, str(path), file=path)
    elif not external_data_paths(model):  # narrow sparse indices (graphopt's "ort" format) fail the checker
        proto = onnx.load(str(path))
        sparse.densify_proto(proto)
        validate.check_structure(model, str(path), file=path, proto=proto)
        del proto
    else:  # the checker would look for the data relative to the working directory
        validate.check_structure(model, str(path))
    if external_data_paths(model):
        model.meta[_LOADED_WITH_EXTERNAL_DATA] = True  # saved the same way, even once every weight changed
    return model


def _deserialize(proto: onnx.ModelProto, where: str) -> ir.Model:
    try:
        with sparse.held_missing_input_warnings():  # validate.check_structure names undefined inputs
            return ir.serde.deserialize_model(proto)
    except (ValueError, TypeError, KeyError, IndexError) as e:  # a corrupt field onnx-ir cannot represent
        raise InputError(f"{where}: cannot be read as ONNX ({_first_line(e)})") from e


def _inline_attribute_tensors(model: ir.Model) -> None:
    """Read external tensor attributes (checked) into memory: serializing writes attributes inline."""
    graphs = [model.graph, *model.graph.subgraphs()]
    for function in model.functions.values():
        graphs += [function, *function.subgraphs()]
    for graph in graphs:
        for node in graph:
            for name, attr in list(node.attributes.items()):
                if attr.type == ir.AttributeType.TENSOR and isinstance(attr.value, ir.ExternalTensor):
                    node.attributes[name] = ir.AttrTensor(name, ir.Tensor(attr.value.numpy().copy(),
                                                                          name=attr.value.name))
                    attr.value.release()


def _has_external(proto: onnx.ModelProto) -> bool:
    return any(onnx.external_data_helper.uses_external_data(t)
               for t in onnx.external_data_helper._get_all_tensors(proto))


def _densified(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The proto the checker reads: sparse initializers (narrow ORT indices fail it) made dense."""
    if not proto.graph.sparse_initializer:
        return proto
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    try:
        sparse.densify_proto(copy)
    except ValueError as e:
        raise InputError(f"<ModelProto>: {_first_line(e)}") from e
    return copy


def _decode_failure(path: pathlib.Path, head: bytes) -> str:
    # A ModelProto starts with field 1 (ir_version, varint tag 0x08) or another known field tag;
    # a file that starts like one but does not parse was cut short.
    if head[:1] in (b"\x08", b"\x12", b"\x1a", b"\x22", b"\x2a", b"\x32", b"\x3a", b"\x42"):
        return f"{path}: truncated or corrupt ONNX file (protobuf parse failed)"
    return f"{path}: not an ONNX file (protobuf parse failed)"


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _check_versions(ir_version: int, opsets, where: str) -> None:
    if ir_version > onnx.IR_VERSION or ir_version < _MIN_IR_VERSION:
        raise InputError(
            f"{where}: unsupported IR version {ir_version} "
            f"(graphopt supports {_MIN_IR_VERSION}..{onnx.IR_VERSION}; upgrade onnx or re-export)"
        )
    if isinstance(opsets, dict):
        default = opsets.get("", opsets.get("ai.onnx"))
    else:
        default = next((o.version for o in opsets if o.domain in ("", "ai.onnx")), None)
    newest = onnx.defs.onnx_opset_version()
    if default is not None and default > newest:
        raise InputError(f"{where}: opset {default} is newer than this onnx package knows ({newest})")


def _tensors(model: ir.Model):
    for graph in (model.graph, *model.graph.subgraphs()):
        for value in graph.initializers.values():
            if value.const_value is not None:
                yield value.const_value


def external_data_paths(model: ir.Model) -> set[pathlib.Path]:
    """The external data files a loaded model reads from."""
    return {
        (pathlib.Path(t.base_dir) / t.location).resolve()
        for t in _tensors(model)
        if isinstance(t, ir.ExternalTensor)
    }


def model_size_bytes(model: ir.Model) -> int:
    """Bytes held by initializers (what decides whether external data is needed)."""
    return sum(t.nbytes for t in _tensors(model))


class Staged:
    """A model written beside its target but not yet in place: `commit()` moves it there
    (`graphopt.core.atomic`: readers and kills see the old model or the new one, with its data, never
    a mix); `discard()`, garbage collection or exit deletes it otherwise. `path` is a complete
    model file meanwhile (verification runs on it, so the file that lands is the file that was
    checked)."""

    def __init__(self, staging: pathlib.Path, targets: list[pathlib.Path], protect=frozenset()):
        self.targets = targets
        self.path = staging / targets[0].name
        self._staging = staging
        self._protect = set(protect)
        self._cleanup = weakref.finalize(self, shutil.rmtree, staging, True)

    def commit(self) -> list[pathlib.Path]:
        data = self._staging / self.targets[1].name if len(self.targets) > 1 else None
        try:
            return atomic.commit(self.path, data, self.targets[0], self._protect)
        except OSError as e:
            raise InputError(f"{self.targets[0]}: cannot write output ({_first_line(e)})") from e
        finally:
            self.discard()

    def move_to(self, path: str | os.PathLike, protect: set[pathlib.Path] = frozenset()) -> list[pathlib.Path]:
        """Commit a single-file model to another path than the one staged for; across file
        systems it is copied beside `path` first, so the final step is still a rename."""
        if len(self.targets) != 1:
            raise ValueError("a model with external data names its data file inside: save it again instead")
        target = check_output_path(path, protect)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            source = self.path
            if os.stat(source).st_dev != os.stat(target.parent).st_dev:
                local = atomic.staging_dir(target.parent)
                self._cleanup.detach()
                self._cleanup = weakref.finalize(self, _remove_all, [self._staging, local])
                source = local / target.name
                shutil.copyfile(self.path, source)
            return atomic.commit(source, None, target, protect)
        except OSError as e:
            raise InputError(f"{target}: cannot write output ({_first_line(e)})") from e
        finally:
            self.discard()

    def discard(self) -> None:
        self._cleanup()


def _remove_all(paths: list[pathlib.Path]) -> None:
    for p in paths:
        shutil.rmtree(p, True)


def check_output_path(path: str | os.PathLike, protect: set[pathlib.Path] = frozenset()) -> pathlib.Path:
    """The resolved output path; UsageError if it is an input file (under any name, hard links
    included) or exists as something a rename would wrongly replace (a device, a FIFO, a folder)."""
    target = pathlib.Path(path).resolve()
    _refuse_protected([target], protect)
    try:
        info = os.stat(target)
    except OSError:
        return target
    if not stat.S_ISREG(info.st_mode):
        kind = ("a folder" if stat.S_ISDIR(info.st_mode) else "a FIFO" if stat.S_ISFIFO(info.st_mode)
                else "a device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode) else "not a regular file")
        raise UsageError(f"{target}: output exists and is {kind}; graphopt writes a model file only over a "
                         "regular file, choose another path with -o")
    return target


def _refuse_protected(targets: list[pathlib.Path], protect: set[pathlib.Path]) -> None:
    protected = {p.resolve() for p in protect}
    for t in targets:
        if t in protected or any(_same_file(t, p) for p in protected):
            raise UsageError(f"{t}: refusing to overwrite the input; choose another output path")


def _same_file(a: pathlib.Path, b: pathlib.Path) -> bool:
    try:
        return os.path.samefile(a, b)  # hard links: one file under two names
    except OSError:
        return False


def stage_scratch(model: ir.Model) -> Staged:
    """Write `model` into a private folder of the temp dir (to verify it; `move_to` puts it in place)."""
    try:
        folder = atomic.staging_dir(pathlib.Path(tempfile.gettempdir()))
    except OSError as e:
        raise InputError(f"{tempfile.gettempdir()}: cannot write a temporary model ({_first_line(e)})") from e
    return stage(model, folder / "optimized.onnx", _staging=folder)


def stage(model: ir.Model, path: str | os.PathLike, *, external_data: bool | None = None,
          protect: set[pathlib.Path] = frozenset(), sparse_format: str | None = None,
          _staging: pathlib.Path | None = None) -> Staged:
    """Write `model` next to `path` for a later `commit()`; the arguments are those of `save`."""
    target = check_output_path(path, protect)
    if external_data is None:
        external_data = (model_size_bytes(model) >= EXTERNAL_DATA_THRESHOLD or bool(external_data_paths(model))
                         or bool(model.meta.get(_LOADED_WITH_EXTERNAL_DATA)))
    data_name = None
    if external_data:
        _refuse_protected([target.parent / f"{target.name}.data"], protect)
        data_name = atomic.data_name(target, {p.name for p in protect if p.resolve().parent == target.parent})
    targets = [target] + ([target.parent / data_name] if data_name else [])
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staged = Staged(_staging or atomic.staging_dir(target.parent), targets, protect)
    except OSError as e:
        raise InputError(f"{target}: cannot write output ({_first_line(e)})") from e
    try:
        if sparse_format:
            sparse.write_sparse(model, staged.path, sparse_format, data_name)
        elif external_data:
            ir.save(model, staged.path, external_data=data_name)
            if model_size_bytes(model) >= EXTERNAL_DATA_THRESHOLD:
                _spill(model, staged.path, data_name)
        else:
            protowrite.write_inline(model, staged.path)
    except BaseException as e:
        staged.discard()
        if isinstance(e, OSError):
            raise InputError(f"{target}: cannot write output ({_first_line(e)})") from e
        raise
    finally:
        release_mapped(model)
    return staged


def save(model: ir.Model, path: str | os.PathLike, *, external_data: bool | None = None,
         protect: set[pathlib.Path] = frozenset(), sparse_format: str | None = None) -> list[pathlib.Path]:
    """Write `model` atomically to `path`; return the files written.

    `external_data=None` chooses: weights go to `<name>.data` when the model is too big for
    one protobuf or when it was loaded with external data. `protect` lists files that must
    not be replaced (the input model and its data). `sparse_format` ("ort" or "onnx", see
    `graphopt.core.sparse`) stores zero-heavy weights as `sparse_initializer` where that is smaller.
    """
    return stage(model, path, external_data=external_data, protect=protect, sparse_format=sparse_format).commit()


_SPILL_MIN_BYTES = 1 << 20
_spill_dir: pathlib.Path | None = None


def _spill(model: ir.Model, saved: pathlib.Path, data_name: str) -> None:
    """Point a big model's in-memory weights at a private copy of the data just written.

    Folding rewrites weights, and the new ones live in memory: for a model over 2 GB that
    is the whole model, held while ONNX Runtime loads the result for verification (2x the
    model's size resident). Once written they are read back lazily from disk instead; the
    copy (kernel-side, beside the process's other temporary files) outlives the staging
    directory and is deleted with the model or at exit.
    """
    global _spill_dir
    graph = model.graph
    in_memory = {name: v for name, v in graph.initializers.items()
                 if v.const_value is not None and not isinstance(v.const_value, ir.ExternalTensor)
                 and v.const_value.nbytes >= _SPILL_MIN_BYTES}
    if not in_memory:
        return
    where = {}
    for t in onnx.load(str(saved), load_external_data=False).graph.initializer:
        info = {e.key: e.value for e in t.external_data}
        if t.name in in_memory and info.get("location") == data_name and "length" in info:
            where[t.name] = (int(info.get("offset", 0)), int(info["length"]))
    if not where:
        return
    if _spill_dir is None or not _spill_dir.is_dir():
        _spill_dir = pathlib.Path(tempfile.mkdtemp(prefix="graphopt-spill-"))
        atexit.register(shutil.rmtree, _spill_dir, True)
    fd, name = tempfile.mkstemp(suffix=".data", dir=_spill_dir)
    os.close(fd)
    spill = pathlib.Path(name)
    shutil.copyfile(saved.parent / data_name, spill)  # sendfile/copy_file_range: no user-space copy
    weakref.finalize(model, _unlink_quietly, spill)
    for tensor_name, (offset, length) in where.items():
        value = in_memory[tensor_name]
        tensor = value.const_value
        value.const_value = ir.ExternalTensor(spill.name, offset, length, tensor.dtype, shape=tensor.shape,
                                              name=tensor_name, base_dir=str(spill.parent))
    logger.debug("%d in-memory weights now read from %s", len(where), spill)


def _unlink_quietly(path: pathlib.Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def release_mapped(model: ir.Model) -> None:
    """Unmap the external tensors read so far (saving reads them all).

    Each `ir.ExternalTensor` keeps its memory map open once read, and every page read
    counts toward resident memory until then: for a model over 2 GB that is the whole
    model, held while ONNX Runtime loads it again for verification. The data stays in the
    page cache and is mapped again on the next read.
    """
    for tensor in _tensors(model):
        if isinstance(tensor, ir.ExternalTensor):
            try:
                tensor.release()
            except BufferError:  # a numpy view of the map is still alive: keep it
                pass
