"""Shape inference: annotate values with the shapes and types onnx shape inference finds.

onnx's C++ shape inference with `data_prop=False`: data propagation evaluates
shape-computing subgraphs and used over 5 GB on a 1-D float[1e8] model (REUSE.md), while the
shapes it adds are the ones constant folding already makes static. As in onnx-ir's
`ShapeInferencePass`, inference runs on a proto of the model stripped of every main-graph
initializer over 1 KB (onnx-ir's `call_onnx_api`: inference only needs their types and
shapes), so models over 2 GB work and no weight is read or copied.

We merge the result ourselves instead of calling `ShapeInferencePass`: its merge assigns
`value.dtype`, which turns a value whose inferred type is seq(tensor(float)) or
optional(...) into tensor(float); ORT then rejects the model (8 onnx conformance models:
test_if_opt, test_loop16_seq_none, the SequenceMap expansions). We copy the whole inferred
type and the shape.

Cases:
1. Values whose shape or dtype inference learns (or changes) are updated; the counter
   `shapes_inferred` counts them, main graph and If/Loop/Scan bodies (functions are left
   intact; onnx inference does not specialize them).
2. Non-strict mode: a node inference cannot handle (custom domain, unknown op) leaves its
   outputs unknown and inference continues past it.
3. Declined, inference fails (type error, malformed model, a graph still over 2 GB after
   stripping, e.g. huge Constant nodes or subgraph initializers): a warning is logged, the
   model is left exactly as it was, and the result says modified=False. The pipeline never
   fails because of shape inference.

4. Symbolic dims onnx invents for dims it cannot name (`unk__N`) are not kept: a dim keeps
   a name only if the model already used that name (its inputs' `batch`, an exporter's
   annotations), otherwise it is written as unknown. The invented names assert equalities
   the original never declared, and ORT acts on them: on a BERT encoder with dynamic dims
   they made ORT 1.32 fuse Add + LayerNormalization into SkipLayerNormalization, whose CPU
   kernel is 2-3x slower than what it replaces (torch_ts BERT 1.01x -> 0.99x the original,
   MXNet BERT 0.93x -> 0.88x, tools/bench_exports.py).

5. A dynamic dim of a main-graph input that has no name gets one of its own, `<input>_d<axis>`
   (made unique in the model), before inference, which carries it to every value it reaches.
   Each name belongs to one input and axis, so no equality the model does not state is
   asserted; what ORT learns is that values downstream of one input dim share it, and it
   plans memory better for it: MXNet exports leave every dim unnamed, and their ResNet-50 ran
   0.778x the original unnamed, 0.765x named (onnxslim names them the same way). Dims the
   model named, and the dims of subgraph and function inputs, are left as they are.

The pass never rewrites nodes, values, names or weights; `passes/__init__.py` registers it
with `rewrites=False` so its annotations do not keep the fixed-point loop going.
"""

from __future__ import annotations

__all__ = ["InferShapesPass"]

import logging

import onnx
import onnx_ir as ir
from onnx_ir.passes.common import _c_api_utils  # the >2 GB-safe proto round trip of ShapeInferencePass

from graphopt.core.pipeline import CountedPassResult

logger = logging.getLogger(__name__)


class InferShapesPass(ir.passes.InPlacePass):
    """Run onnx shape inference (no data propagation) and store the results on the IR values."""

    def call(self, model: ir.Model) -> CountedPassResult:
        before = _annotations(model)
        try:
            named = _name_anonymous_input_dims(model)
            inferred = _c_api_utils.call_onnx_api(_infer, model)
            _merge(model, ir.serde.deserialize_model(inferred), _dim_names(model))
        except Exception as e:  # noqa: BLE001 - inference is an annotation: never fail the pipeline
            logger.warning("shape inference failed, model left unchanged: %s", e)
            _restore(model, before)
            return CountedPassResult(model, False, counters={"shapes_inferred": 0})
        for name in named:
            logger.debug("named a dynamic input dim %s", name)
        after = _annotations(model)
        changed = sum(1 for key, annotation in after.items() if before.get(key) != annotation)
        for key, annotation in after.items():
            if before.get(key) != annotation:
                logger.debug("inferred %s: %s %s", key[1], annotation[1], annotation[0])
        if changed:
            logger.info("shape inference annotated %d values", changed)
        return CountedPassResult(model, changed > 0,
                                 counters={"shapes_inferred": changed, "input_dims_named": len(named)})


def _name_anonymous_input_dims(model: ir.Model) -> list[str]:
    """Case 5: a name of its own for every unnamed dynamic dim of a main-graph input."""
    taken = _dim_names(model)
    named = []
    for value in model.graph.inputs:
        if value.shape is None or value.name in model.graph.initializers:
            continue
        dims = list(value.shape)
        for axis, dim in enumerate(dims):
            if isinstance(dim, ir.SymbolicDim) and dim.value is None:
                name, k = f"{value.name}_d{axis}", 1
                while name in taken:
                    name, k = f"{value.name}_d{axis}_{k}", k + 1
                taken.add(name)
                named.append(name)
                dims[axis] = ir.SymbolicDim(name)
        if dims != list(value.shape):
            value.shape = ir.Shape(dims)
    return named


def _infer(proto: onnx.ModelProto) -> onnx.ModelProto:
    return onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=False, data_prop=False)


def _merge(model: ir.Model, inferred: ir.Model, known_dims: set[str]) -> None:
    """Copy inferred types (whole: tensor, sequence, optional) and shapes onto the model's values."""
    for graph, inferred_graph in zip(model.graphs(), inferred.graphs()):
        inferred_values = ir.convenience.create_value_mapping(inferred_graph)
        for name, value in ir.convenience.create_value_mapping(graph).items():
            new = inferred_values.get(name)
            if new is None:
                continue
            if new.type is not None and new.type != value.type:
                value.type = new.type
            shape = _without_invented_dims(new.shape, known_dims)
            if shape is not None and shape != value.shape:
                value.shape = shape


def _dim_names(model: ir.Model) -> set[str]:
    """The symbolic dim names the model itself uses (case 4)."""
    return {d.value for v in _values(model) if v.shape is not None
            for d in v.shape if isinstance(d, ir.SymbolicDim) and d.value is not None}


def _without_invented_dims(shape: ir.Shape | None, known_dims: set[str]) -> ir.Shape | None:
    """The inferred shape with invented names unnamed (onnx keeps the names a value already had)."""
    if shape is None:
        return None
    return ir.Shape([None if isinstance(d, ir.SymbolicDim) and d.value not in known_dims else d for d in shape])


def _values(model: ir.Model):
    for graph in [model.graph, *model.graph.subgraphs()]:
        yield from graph.inputs
        yield from graph.initializers.values()
        for node in graph:
            yield from node.outputs


def _annotations(model: ir.Model) -> dict[tuple[int, str], tuple]:
    return {(id(v), v.name): (v.shape, v.type, v) for v in _values(model)}


def _restore(model: ir.Model, before: dict[tuple[int, str], tuple]) -> None:
    """Put back every annotation a failed merge may have half-written."""
    for shape, type_, value in before.values():
        if value.type != type_:
            value.type = type_
        if value.shape != shape:
            value.shape = shape
