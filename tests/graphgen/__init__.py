"""Random valid ONNX graphs for differential testing, in the spirit of NNSmith (a generator of our own).

`generate(seed)` builds one model from a seeded numpy generator: graph inputs (some dims
symbolic), then a random sequence of emitters, each adding one op or one idiom exporters
write (Conv-BatchNormalization-Relu, decomposed LayerNorm/Gelu/HardSwish, Shape->Gather->
Unsqueeze->Concat->Reshape, parallel 1x1 Convs from one tensor, Transpose sandwiches, If on a
constant, duplicated subexpressions...). Every value carries the sizes it has at run time and
which of its dims are symbolic in the model, so each op is built to type-check: attributes and
constants only use static dims, and a dynamic dim is copied (Reshape 0, Shape arithmetic),
never frozen. Values stay of order one (weights scaled by 1/sqrt(fan-in), logs and roots of
|x| + 1) so that float rounding cannot pass for a wrong rewrite.

The same seed gives the same model and feeds on every machine. `builder` holds the values
and the builder; the emitters are grouped in `elementwise`, `layers`, `tensors`, `reshaping`
and `control`; the table below weighs them and says which operands each accepts.
"""

from __future__ import annotations

__all__ = ["Generated", "generate", "OPSETS"]

import collections
import dataclasses

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh

from tests.graphgen.builder import F32, I64, Val, Builder, is4d, chan, last_static, small
from tests.graphgen.elementwise import unary, binary_const, binary_pair, layernorm_decomposed, layernorm, gelu_decomposed, hardswish_decomposed, softplus_mish
from tests.graphgen.layers import conv_transpose, batchnorm, conv_block, bn_then_conv, matmul, gemm, parallel, attention, unflatten_dense, instance_norm
from tests.graphgen.tensors import concat, split, slice_, gather, reduce, softmax, pad, pool, pad_then, resize, cast, where, depth_space
from tests.graphgen.reshaping import reshape, shape_reshape, shape_math, positional_range, transpose, transpose_sandwich, flatten, unsqueeze_squeeze, expand_tile, batch_dot
from tests.graphgen.control import if_, function_call, cse_duplicate


@dataclasses.dataclass
class Generated:
    seed: int
    model: onnx.ModelProto
    feeds: dict[str, np.ndarray]
    features: collections.Counter  # emitters used


EMITTERS = [
    ("unary", 10, lambda v: True, unary),
    ("binary_const", 8, lambda v: True, binary_const),
    ("binary_pair", 6, lambda v: True, binary_pair),
    ("conv_block", 10, lambda v: chan(v) and v.rank in (3, 4) and v.shape[1] <= 16, conv_block),
    ("bn_then_conv", 2, lambda v: chan(v) and v.rank in (3, 4), bn_then_conv),
    ("conv_transpose", 3, lambda v: is4d(v) and small(v), conv_transpose),
    ("batchnorm", 3, lambda v: v.rank >= 2 and v.static(1), batchnorm),
    ("matmul", 8, last_static, matmul),
    ("gemm", 4, lambda v: v.rank == 2, gemm),
    ("parallel", 5, lambda v: (is4d(v) or last_static(v)), parallel),
    ("layernorm_decomposed", 4, lambda v: last_static(v) and v.shape[-1] >= 2, layernorm_decomposed),
    ("layernorm", 3, lambda v: v.rank >= 2 and v.shape[-1] >= 2, layernorm),
    ("gelu_decomposed", 3, lambda v: True, gelu_decomposed),
    ("hardswish_decomposed", 2, lambda v: True, hardswish_decomposed),
    ("softplus_mish", 2, lambda v: True, softplus_mish),
    ("reshape", 6, lambda v: v.rank >= 1, reshape),
    ("shape_reshape", 4, lambda v: v.rank >= 3, shape_reshape),
    ("positional_range", 2, lambda v: v.rank >= 1, positional_range),
    ("shape_math", 4, lambda v: v.rank >= 1, shape_math),
    ("transpose", 4, lambda v: v.rank >= 2, transpose),
    ("transpose_sandwich", 4, lambda v: v.rank >= 2, transpose_sandwich),
    ("flatten", 3, lambda v: v.rank >= 1, flatten),
    ("unsqueeze_squeeze", 4, lambda v: True, unsqueeze_squeeze),
    ("concat", 4, lambda v: v.rank >= 1, concat),
    ("split", 4, lambda v: v.rank >= 1, split),
    ("slice", 4, lambda v: v.rank >= 1, slice_),
    ("gather", 3, lambda v: v.rank >= 1, gather),
    ("reduce", 5, lambda v: v.rank >= 1, reduce),
    ("softmax", 3, lambda v: v.rank >= 1, softmax),
    ("pad", 3, lambda v: v.rank >= 1, pad),
    ("pool", 4, lambda v: is4d(v), pool),
    ("pad_then", 3, lambda v: is4d(v), pad_then),
    ("resize", 2, lambda v: v.rank in (3, 4) and small(v), resize),
    ("cast", 3, lambda v: True, cast),
    ("where", 3, lambda v: True, where),
    ("expand_tile", 2, lambda v: small(v), expand_tile),
    ("if", 3, lambda v: True, if_),
    ("batch_dot", 2, lambda v: v.rank >= 3, batch_dot),
    ("function", 2, lambda v: True, function_call),
    ("cse_duplicate", 4, lambda v: True, cse_duplicate),
    ("attention", 2, lambda v: v.rank == 3, attention),
    ("unflatten_dense", 2, lambda v: v.rank == 3, unflatten_dense),
    ("instance_norm", 1, lambda v: chan(v), instance_norm),
    ("depth_space", 1, lambda v: is4d(v), depth_space),
]


_WEIGHTS = np.array([w for _, w, _, _ in EMITTERS], float)


def _start(b: Builder) -> None:
    kind = b.choice(["image", "image", "seq", "flat", "vol1d"])
    batch = int(b.choice([1, 2, 3]))
    if kind == "image":
        c, h, w = int(b.rng.integers(1, 9)), int(b.rng.integers(4, 11)), int(b.rng.integers(4, 11))
        names = ["N" if b.p(0.5) else None, None, "H" if b.p(0.25) else None, "W" if b.p(0.25) else None]
        shape = (batch, c, h, w)
    elif kind == "seq":
        shape = (batch, int(b.rng.integers(2, 9)), int(b.rng.integers(2, 17)))
        names = ["B" if b.p(0.5) else None, "T" if b.p(0.4) else None, None]
    elif kind == "vol1d":
        shape = (batch, int(b.rng.integers(1, 9)), int(b.rng.integers(4, 17)))
        names = ["N" if b.p(0.5) else None, None, "L" if b.p(0.3) else None]
    else:
        shape = (batch, int(b.rng.integers(2, 33)))
        names = ["B" if b.p(0.5) else None, None]
    b.features[f"start:{kind}"] += 1
    x = b.input(shape, names)
    b.push(x)
    if b.p(0.3):  # a second input of the same shape
        b.push(b.input(shape, names))


def generate(seed: int, steps: int | None = None) -> Generated:
    b = Builder(seed)
    _start(b)
    steps = steps if steps is not None else int(b.rng.integers(3, 16))
    done = attempts = 0
    while done < steps and attempts < steps * 8:
        attempts += 1
        name, _, pred, fn = EMITTERS[int(b.rng.choice(len(EMITTERS), p=_WEIGHTS / _WEIGHTS.sum()))]
        x = b.pick(pred)
        if x is None:
            continue
        mark = b.mark()
        result = fn(b, x)
        if result is None:  # declined: roll back whatever it started
            b.rollback(mark)
            continue
        b.push(*(result if isinstance(result, list) else [result]))
        done += 1
    return _finish(b)


def _finish(b: Builder) -> Generated:
    computed = [v for v in b.pool if not v.is_input]
    if not computed:
        computed = [b.same("Identity", b.pool[0])]
    read = {name for node in b.nodes for name in node.input}
    outputs = [computed[-1]]
    for v in computed[:-1] + b.taps:
        if v in outputs or len(outputs) >= 6:
            continue
        if v.name not in read and b.p(0.6):
            outputs.append(v)  # a leaf: fewer dead branches (some stay)
        elif v.name in read and b.p(0.12):
            outputs.append(v)  # an intermediate value that is also a graph output
            b.features["intermediate_output"] += 1
    if b.p(0.08):  # an Identity of another output, as exporters write
        outputs.append(b.same("Identity", b.choice(outputs)))
        b.features["output:identity_of_output"] += 1
    if b.p(0.06):  # a graph input passed through
        outputs.append(b.choice([v for v in b.pool if v.is_input]))
        b.features["output:input"] += 1
    if b.p(0.08):  # a value computed from constants only: folding makes it an initializer output
        v = b.choice(b.pool)
        if not any(v.dyn) and b.p(0.5):
            outputs.append(b.op("Shape", [v.name], (v.rank,), (False,), I64))
        else:
            c = b.floats((3,), 1.0)
            outputs.append(b.op("Add", [c, b.floats((3,), 1.0)], (3,), (False,)))
        b.features["output:constant"] += 1
    if b.p(0.3):
        b.initializers.append(onh.from_array(b.rng.standard_normal((3,)).astype(np.float32), b.name("unused")))
        b.features["unused_initializer"] += 1
    def info(v: Val) -> onnx.ValueInfoProto:
        return oh.make_tensor_value_info(v.name, v.dtype, [None if d else s for s, d in zip(v.shape, v.dyn)])

    outs = [info(v) for v in outputs]
    inputs = list(b.inputs)
    floats = [t for t in b.initializers if t.data_type == F32 and t.name not in {o.name for o in outs}]
    if floats and b.p(0.1):  # initializers also listed as inputs (overridable; IR v3 exporters)
        for t in floats[:2]:
            inputs.append(oh.make_tensor_value_info(t.name, F32, list(t.dims)))
        b.features["initializer_inputs"] += 1
    graph = oh.make_graph(b.nodes, f"fuzz_{b.seed}", inputs, outs, b.initializers)
    if b.p(0.3):  # exporters' annotations of intermediate values (correct ones)
        graph.value_info.extend(info(v) for v in computed if v not in outputs and b.p(0.3))
        b.features["value_info"] += 1
    if b.p(0.2):  # exporters that name no node
        for node in graph.node:
            node.name = ""
        b.features["unnamed_nodes"] += 1
    opsets = [oh.make_opsetid("", b.opset)] + ([oh.make_opsetid("local", 1)] if b.functions else [])
    model = oh.make_model(graph, opset_imports=opsets, ir_version=oh.find_min_ir_version_for(opsets[:1]),
                          producer_name="graphgen", functions=b.functions)
    feeds = dict(b.feeds)
    if b.p(0.15):  # TensorFlow-style names: "model/.../x:0"
        model, feeds = _tf_names(model, feeds)
        b.features["tf_names"] += 1
    return Generated(b.seed, model, feeds, b.features)


def _tf_names(model: onnx.ModelProto, feeds: dict) -> tuple[onnx.ModelProto, dict]:
    """Every main-graph and body value renamed "model/<name>:0" (functions keep their own scope)."""
    def new(name: str) -> str:
        return f"model/{name}:0" if name else name

    def graph_(g: onnx.GraphProto) -> None:
        for vi in [*g.input, *g.output, *g.value_info]:
            vi.name = new(vi.name)
        for t in g.initializer:
            t.name = new(t.name)
        for node in g.node:
            node.input[:] = [new(n) for n in node.input]
            node.output[:] = [new(n) for n in node.output]
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    graph_(attr.g)
                elif attr.type == onnx.AttributeProto.TENSOR and node.op_type == "Constant":
                    attr.t.name = new(attr.t.name)

    graph_(model.graph)
    return model, {new(k): v for k, v in feeds.items()}
