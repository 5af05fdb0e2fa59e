"""Constant folding: evaluate nodes whose inputs are all constant, once, and store the results.

Math: a node y = f(c1, ..., cn) whose inputs c1..cn are all constants is replaced by the
initializer y* = f(c1, ..., cn). f is evaluated here with ONNX Runtime, the runtime the model
is deployed on, so the folded numbers are the ones ORT would have computed; when ORT cannot
run the node alone (an opset or type it lacks) onnx.reference evaluates it instead.

We do not use `onnxscript.optimizer.fold_constants`: besides folding it always runs partial
evaluators that trust shape annotations and bypass its `should_fold` hook (Reshape and Expand
become Identity, Dropout becomes Identity, If with a constant condition is inlined), its size
limits count elements rather than bytes, and it folds inside functions. This pass does one
thing.

Cases:
1. A default-domain node whose non-empty inputs are all constants (initializers that are not
   graph inputs, or outputs of Constant nodes) and at least one of whose outputs is used: it
   is evaluated, each output becomes a new initializer (fresh name) of the graph that owns the
   node, and the inputs nothing else uses (initializers, Constant nodes) are removed with it.
   Multi-output nodes (Split, TopK, ...) fold all their outputs at once.
2. An output that is also a graph output: the initializer takes the output's name, so the
   graph interface is unchanged (an initializer is a valid graph output in the main graph and
   in If/Loop/Scan bodies, for onnx.checker and ORT).
3. Declined, the result outgrows the file: the outputs would be larger than
   `size_limit_bytes` AND larger than the inputs the fold frees (inputs used only by this
   node). The output shape is predicted with onnx node-level shape inference before
   evaluating, so ConstantOfShape/Expand/Tile/Range/Resize of large shapes are never even
   materialized. Also declined, whatever the limit: a result that is a fill (uniform, over
   `patterns.FILL_MIN_BYTES` = 128 bytes) and larger than what it frees. ORT computes a
   fill at session start for nothing, the file would carry every element (the onnx light
   models build all their weights with ConstantOfShape). Passes that need such values
   read them with `patterns.fill_value`.
4. Declined, by op: nondeterministic ops (Random*, Multinomial, Bernoulli, Dropout),
   QuantizeLinear/DequantizeLinear/DynamicQuantizeLinear (the QDQ pairs carry the
   quantization), Constant itself (lifting is another pass), control flow and any node with a
   graph or reference attribute, nodes without inputs, ops of any non-default domain.
5. Declined, by value: non-tensor inputs or outputs (sequences, optionals, maps), string
   outputs, a result whose dtype differs from the declared one, or an evaluation that fails
   in both evaluators. The node is left as it was (debug log).
6. Dead nodes (no output used, none a graph output) are left to dead-code elimination.
7. An If whose condition is constant is replaced by the branch it takes
   (`constant_folding_if`), and the branch's nodes are folded in the same run. ORT inlines
   it anyway from ORT_ENABLE_BASIC up, and then rejects constant [1] tensors fed to Range.
8. Range is evaluated with its one-element inputs as scalars, as ORT's kernel reads them (its
   shape inference, which runs when all three are constants, refuses [1] tensors). When the
   result is too big to fold, such inputs are still replaced by scalar constants.
9. Declined: the parameters of a training-mode BatchNormalization. ORT 1.32 at its default
   level shares equal small initializers, and computes such a BN wrongly when two of its
   inputs are one buffer (a folded `mean * 1` bias next to `mean`).

Scope: the main graph, then every If/Loop/Scan body (outer constants count as constants
inside; the result is an initializer of the body that owns the node). Functions are left
intact: they cannot hold initializers and may be called with different attributes.
"""

from __future__ import annotations

__all__ = ["FoldConstantsPass"]

import collections
import logging

import numpy as np
import onnx
import onnx.reference
import onnx_ir as ir
import onnxruntime as ort

from graphopt.core import patterns
from graphopt.core.pipeline import CountedPassResult
from graphopt.passes.cleanup._fold_constants_if import inline_constant_if

logger = logging.getLogger(__name__)

_NEVER_FOLD = frozenset({
    "Constant",
    "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
    "Multinomial", "Bernoulli", "Dropout",
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
})
_SHAPE_DATA_LIMIT = 4096  # inputs up to this many elements are given to node shape inference


class FoldConstantsPass(ir.passes.InPlacePass):
    """Replace nodes whose inputs are all constant by initializers holding their outputs."""

    def __init__(self, size_limit_bytes: int = 1 << 20):
        super().__init__()
        self.size_limit_bytes = size_limit_bytes

    def call(self, model: ir.Model) -> CountedPassResult:
        self._taken = patterns.model_names(model)
        self._opset = patterns.opset_version(model)
        self._ir_version = max(model.ir_version, 4)  # IR 3 would want the inputs listed as graph inputs
        self._inlined = self._scalarized = 0
        folded = self._fold_graph(model.graph)
        for subgraph in list(model.graph.subgraphs()):
            folded += self._fold_graph(subgraph)
        if folded and model.ir_version < 4:
            model.ir_version = 4  # IR 3 wants every initializer listed as a graph input
        if folded or self._inlined:
            logger.info("folded %d constant nodes, inlined %d If", folded, self._inlined)
        counters = {"nodes_folded": folded}
        if self._inlined:
            counters["if_inlined"] = self._inlined
        if self._scalarized:
            counters["range_inputs_made_scalar"] = self._scalarized
        return CountedPassResult(model, folded + self._inlined + self._scalarized > 0, counters=counters)

    def _fold_graph(self, graph: ir.Graph) -> int:
        count = 0
        pending = collections.deque(graph)
        while pending:
            node = pending.popleft()
            if node.graph is not graph:
                continue
            inlined = inline_constant_if(node, self._taken)
            if inlined is not None:
                pending.extendleft(reversed(inlined))  # fold the branch's nodes next, in order
                self._inlined += 1
            elif self._fold(node, graph):
                count += 1
        return count

    def _fold(self, node: ir.Node, graph: ir.Graph) -> bool:
        if not patterns.is_default_domain(node) or node.op_type in _NEVER_FOLD:
            return False
        if any(a.is_ref() or a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
               for a in node.attributes.values()):
            return False
        outputs = [v for v in node.outputs if v.name]
        if not any(v.uses() or v.is_graph_output() for v in outputs):
            return False
        if any(patterns.is_training_batchnorm(use.node) for v in outputs for use in v.uses()):
            return False  # case 9
        inputs = [v for v in node.inputs if v is not None]
        if not inputs:
            return False
        tensors = {}
        for v in inputs:
            tensor = patterns.const_tensor(v)
            if tensor is None:
                return False
            tensors[v] = tensor
        freed = sum(_nbytes(t) for v, t in tensors.items()
                    if not v.is_graph_output() and all(u.node is node for u in v.uses()))
        proto = self._single_node_model(node, tensors)
        predicted = _predicted_nbytes(proto, self._opset)
        if predicted is not None and (self._too_big(predicted, freed) or (
                node.op_type == "ConstantOfShape" and patterns.FILL_MIN_BYTES < predicted > freed)):
            logger.debug("not folding %s (%s): %d bytes predicted", node.name, node.op_type, predicted)
            self._scalar_range_inputs(node, graph, tensors)
            return False
        results = _evaluate(proto)
        if results is None or len(results) != len(outputs):
            logger.debug("not folding %s (%s): evaluation failed", node.name, node.op_type)
            return False
        new_tensors = []
        for value, array in zip(outputs, results):
            tensor = _to_tensor(array)
            if tensor is None or (value.dtype is not None and tensor.dtype != value.dtype):
                logger.debug("not folding %s (%s): unsupported result for %s", node.name, node.op_type, value.name)
                return False
            new_tensors.append(tensor)
        nbytes = sum(t.nbytes for t in new_tensors)
        if self._too_big(nbytes, freed) or (nbytes > freed and any(patterns.is_fill(a) for a in results)):
            logger.debug("not folding %s (%s): result too large, or a fill", node.name, node.op_type)
            self._scalar_range_inputs(node, graph, tensors)
            return False
        self._replace(node, graph, outputs, new_tensors, list(tensors))
        return True

    def _too_big(self, nbytes: int, freed: int) -> bool:
        return nbytes > self.size_limit_bytes and nbytes > freed

    def _scalar_range_inputs(self, node: ir.Node, graph: ir.Graph,
                             tensors: dict[ir.Value, ir.TensorProtocol]) -> None:
        """Case 8 when Range is not folded: its one-element constant inputs become scalars."""
        if node.op_type != "Range":
            return
        for i, value in enumerate(node.inputs):
            tensor = tensors.get(value)
            if tensor is None or tensor.size != 1 or not tensor.shape.dims:
                continue
            array = tensor.numpy().reshape(())
            scalar = patterns.add_initializer(graph, patterns.fresh_name(self._taken, f"{value.name}_scalar"),
                                              array, name_is_fresh=True)
            node.replace_input_with(i, scalar)
            patterns.drop_if_unused(value)
            logger.debug("Range %s: input %s is now the scalar %s", node.name, value.name, scalar.name)
            self._scalarized += 1

    def _single_node_model(self, node: ir.Node, tensors: dict[ir.Value, ir.TensorProtocol]) -> onnx.ModelProto:
        node_proto = ir.serde.serialize_node(node)
        node_proto.name = "fold"
        initializers = {}
        for i, value in enumerate(node.inputs[:len(node_proto.input)]):
            if value is not None:
                name = f"in{list(tensors).index(value)}"
                node_proto.input[i] = name
                initializers[name] = tensors[value]
        for i, value in enumerate(node.outputs[:len(node_proto.output)]):
            node_proto.output[i] = f"out{i}" if value.name else ""
        graph = onnx.GraphProto(name="fold", node=[node_proto])
        for name, tensor in initializers.items():
            tensor_proto = ir.serde.serialize_tensor(tensor)
            tensor_proto.name = name
            if node.op_type == "Range" and len(tensor_proto.dims) and tensor.size == 1:
                del tensor_proto.dims[:]  # case 8: ORT's kernel reads a [1] tensor as its scalar
            graph.initializer.append(tensor_proto)
        graph.output.extend(onnx.ValueInfoProto(name=o) for o in node_proto.output if o)
        return onnx.helper.make_model(graph, ir_version=self._ir_version,
                                      opset_imports=[onnx.helper.make_opsetid("", self._opset)])

    def _replace(self, node: ir.Node, graph: ir.Graph, outputs: list[ir.Value],
                 new_tensors: list[ir.Tensor], inputs: list[ir.Value]) -> None:
        new_values = []
        for value, tensor in zip(outputs, new_tensors):
            new = ir.Value(shape=ir.Shape(tensor.shape), type=ir.TensorType(tensor.dtype), const_value=tensor)
            value.replace_all_uses_with(new, replace_graph_outputs=True)
            new_values.append((value.name, new))
        graph.remove(node, safe=True)
        for old_name, new in new_values:
            new.name = old_name if new.is_graph_output() else patterns.fresh_name(self._taken, old_name)
            graph.register_initializer(new)
        logger.debug("folded %s (%s) into %s", node.name, node.op_type, [v.name for _, v in new_values])
        for value in inputs:
            patterns.drop_if_unused(value)


def _nbytes(tensor: ir.TensorProtocol) -> int:
    if tensor.dtype == ir.DataType.STRING:
        return sum(len(s) for s in tensor.string_data())
    return tensor.nbytes


def _predicted_nbytes(proto: onnx.ModelProto, opset: int) -> int | None:
    """Bytes of the node's outputs according to onnx node-level shape inference, if known."""
    node = proto.graph.node[0]
    types, data = {}, {}
    for init in proto.graph.initializer:
        types[init.name] = onnx.helper.make_tensor_type_proto(init.data_type, list(init.dims))
        if int(np.prod(init.dims)) <= _SHAPE_DATA_LIMIT:
            data[init.name] = init
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, node.domain)
        inferred = onnx.shape_inference.infer_node_outputs(schema, node, types, data)
    except Exception:  # noqa: BLE001 - any inference failure means "size unknown"
        return None
    total = 0
    for name in (o for o in node.output if o):
        tensor_type = inferred[name].tensor_type if name in inferred else None
        if tensor_type is None or not tensor_type.HasField("shape"):
            return None
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
        if None in dims or tensor_type.elem_type in (onnx.TensorProto.UNDEFINED, onnx.TensorProto.STRING):
            return None
        total += int(np.prod(dims, dtype=np.int64) * ir.DataType(tensor_type.elem_type).itemsize)
    return total


def _evaluate(proto: onnx.ModelProto) -> list | None:
    """Run the single-node model with ORT (optimizations off), else with onnx.reference."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return session.run(None, {})
    except Exception as e:  # noqa: BLE001 - ORT lacks the kernel/opset: try the reference
        logger.debug("ORT could not evaluate %s: %s", proto.graph.node[0].op_type, e)
    try:
        return onnx.reference.ReferenceEvaluator(proto).run(None, {})
    except Exception as e:  # noqa: BLE001 - neither evaluator: leave the node
        logger.debug("onnx.reference could not evaluate %s: %s", proto.graph.node[0].op_type, e)
        return None


def _to_tensor(array) -> ir.Tensor | None:
    if not isinstance(array, np.ndarray) or array.dtype.kind in "OUS":
        return None
    try:
        return ir.tensor(array)
    except Exception:  # noqa: BLE001 - a dtype onnx-ir cannot wrap
        return None
