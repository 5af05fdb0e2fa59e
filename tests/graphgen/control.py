"""Emitters: If with small bodies, model-local functions, duplicated subexpressions."""

from __future__ import annotations

__all__ = ["body_chain", "if_", "function_call", "cse_duplicate"]

import math

import numpy as np
import onnx
import onnx.helper as oh

from tests.graphgen.builder import F32, I64, BOOL, Val, Builder, i64, chan, last_static
from tests.graphgen.elementwise import SAFE_UNARY, binary_const, activation, layernorm_decomposed, gelu_decomposed
from tests.graphgen.layers import conv, batchnorm


def body_chain(b: Builder, x: Val, steps: int) -> Val:
    """Shape-preserving idioms for an If branch (fusions inside bodies, outer weights read inside)."""
    v = x
    for _ in range(steps):
        kind = b.choice(["unary", "const", "act", "gelu", "conv", "bn", "layernorm", "matmul"])
        if kind == "conv" and chan(v) and v.rank in (3, 4):
            y = conv(b, v, pointwise=True, group=1, out_ch=v.shape[1])
            v = batchnorm(b, y) if b.p(0.5) else y
        elif kind == "bn" and v.rank >= 2 and v.static(1):
            v = batchnorm(b, v)
        elif kind == "layernorm" and last_static(v) and v.shape[-1] >= 2:
            v = layernorm_decomposed(b, v)
        elif kind == "matmul" and last_static(v):
            k = v.shape[-1]
            v = b.same("MatMul", v, b.floats((k, k), 1 / math.sqrt(k)))
            v = b.same("Add", v, b.floats((k,), 0.3)) if b.p(0.5) else v
        elif kind == "gelu":
            v = gelu_decomposed(b, v)
        elif kind == "act":
            v = activation(b, v)
        else:
            v = binary_const(b, v) if kind == "const" else b.same(b.choice(SAFE_UNARY[:-1]), v)
    return v


def if_(b: Builder, x: Val) -> Val:
    """If with small bodies; a constant condition half the time (inlined by fold_constants)."""
    kind = b.choice(["const", "input", "shape"])
    if kind == "const":
        cond = b.const(np.array(b.p(0.5)), "cond")
    elif kind == "input":
        cond = b.input((), [], BOOL).name
    else:  # a test on x's shape (AffineGrid's expansion): constant once shapes fold, if static
        axis = int(b.rng.integers(x.rank)) if x.rank else None
        probe = b.op("Size", [x.name], (), (), I64) if axis is None or b.p(0.3) else b.op(
            "Gather", [b.op("Shape", [x.name], (x.rank,), (False,), I64).name, i64(b, axis)], (), (), I64, axis=0)
        ref = int(np.prod(x.shape)) if probe.name.startswith("size") else x.shape[axis]
        cond = b.op(b.choice(["Equal", "Greater"]), [probe.name, i64(b, ref + int(b.choice([0, -1, 1])))], (), (),
                    BOOL).name
    b.features[f"If:{kind}"] += 1
    branches = []
    for tag in ("then", "else"):
        saved = b.enter_body()
        v = body_chain(b, x, int(b.rng.integers(0 if tag == "else" else 1, 4)))
        if v.name == x.name:  # a body may not return an outer value directly
            v = b.same("Identity", x)
        nodes, inits = b.leave_body(saved)
        dims = [None if d else s for s, d in zip(x.shape, x.dyn)]
        branches.append(oh.make_graph(nodes, b.name(tag), [], [oh.make_tensor_value_info(v.name, F32, dims)], inits))
    out = b.node("If", [cond], then_branch=branches[0], else_branch=branches[1])[0]
    return Val(out, x.shape, x.dyn)


def function_call(b: Builder, x: Val) -> Val | None:
    """A call of a model-local function whose body is a short idiom chain (its constants are
    Constant nodes: a function holds no initializers and sees no outer value)."""
    if len(b.functions) >= 3:
        return None
    saved = b.enter_body()
    b.in_function = True
    param = Val(b.name("fx"), x.shape, x.dyn)
    v = body_chain(b, param, int(b.rng.integers(1, 4)))
    if v.name == param.name:
        v = b.same("Identity", v)
    nodes, inits = b.leave_body(saved)
    b.in_function = False
    assert not inits
    name = b.name("f")
    b.functions.append(oh.make_function("local", name, [param.name], [v.name], nodes,
                                        opset_imports=[oh.make_opsetid("", b.opset)]))
    b.features["function"] += 1
    out = b.node(name, [x.name], domain="local")[0]
    return Val(out, x.shape, x.dyn)


def cse_duplicate(b: Builder, x: Val) -> Val | None:
    """Re-emit an earlier node with the same inputs and attributes (common subexpression)."""
    if not b.pure:
        return None
    proto, val = b.choice(b.pure)
    dup = onnx.NodeProto()
    dup.CopyFrom(proto)
    dup.name = b.name(f"n_dup_{proto.op_type}")
    del dup.output[:]
    dup.output.append(b.name(f"dup_{proto.op_type.lower()}"))
    b.nodes.append(dup)
    b.features["cse_duplicate"] += 1
    return Val(dup.output[0], val.shape, val.dyn, val.dtype)
