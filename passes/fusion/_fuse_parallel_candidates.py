"""The candidates of horizontal fusion (`fuse_parallel`): which parallel Conv/Gemm/MatMul reading
one tensor can be merged (cases 1-6 and the declines of that module's docstring), and applying
a chosen set of them. Shared by the pass and by its decider (`_fuse_parallel_decide`), which
times the very rewrite the pass applies.
"""

from __future__ import annotations

__all__ = ["Candidate", "Member", "find_candidates", "apply_all", "constant_closure"]

import dataclasses
import logging

import numpy as np
import onnx_ir as ir

from graphopt.core.patterns import attr_int, attr_ints, fresh_name, is_default_domain, model_names
from graphopt.passes.fusion._fuse_parallel_rewrite import apply_candidate, bias_vector, constant_array, is_graph_input

logger = logging.getLogger(__name__)

ELEMENTWISE = {"Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip", "Gelu", "Erf", "Elu", "Selu", "Softplus",
               "Softsign", "HardSigmoid", "HardSwish", "Mish", "Exp", "Neg", "Abs", "ThresholdedRelu"}
_NOT_CONSTANT = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
                 "Bernoulli", "If", "Loop", "Scan"}
_MAX_CONST_NODES = 16  # a weight computed by a bigger constant subgraph is not worth chasing


@dataclasses.dataclass
class Member:
    node: ir.Node
    width: int  # output channels / columns
    bias_add: ir.Node | None = None  # MatMul: Add(y, b)
    bias_array: np.ndarray | None = None  # the bias of bias_add, as [width]
    act: ir.Node | None = None

    @property
    def final(self) -> ir.Value:
        return (self.act or self.bias_add or self.node).outputs[0]


@dataclasses.dataclass
class Candidate:
    kind: str  # Conv, MatMul, Gemm
    input: ir.Value
    members: list[Member]
    axis: int
    key: tuple  # what members share (attributes, dtype, activation)

    @property
    def widths(self) -> list[int]:
        return [m.width for m in self.members]

    @property
    def name(self) -> str:
        act = self.members[0].act
        kind = f"{self.kind}+{act.op_type}" if act is not None else self.kind
        return f"{len(self.members)}x{kind} on {self.input.name} -> {'+'.join(map(str, self.widths))}"

    def input_shape(self) -> list[int | str] | None:
        shape = self.input.shape
        return None if shape is None else [d if isinstance(d, int) else str(d) for d in shape]


# ----------------------------------------------------------------------------- constants


def constant_closure(value: ir.Value | None, depth: int = 0) -> list[ir.Node] | None:
    """The nodes computing `value` from constants alone ([] for an initializer), else None."""
    if value is None or is_graph_input(value) or depth > _MAX_CONST_NODES:
        return None
    if value.const_value is not None:
        return []
    node = value.producer()
    if node is None or not is_default_domain(node) or node.op_type in _NOT_CONSTANT:
        return None
    nodes: list[ir.Node] = []
    for inp in node.inputs:
        if inp is None:
            continue
        sub = constant_closure(inp, depth + 1)
        if sub is None:
            return None
        nodes += [n for n in sub if n not in nodes]
    return nodes + [node] if len(nodes) < _MAX_CONST_NODES else None


def _is_const(value: ir.Value | None) -> bool:
    return constant_closure(value) is not None


def _dims(value: ir.Value) -> list[int] | None:
    if value.shape is None or not all(isinstance(d, int) for d in value.shape):
        return None
    return list(value.shape)


# ----------------------------------------------------------------------------- matching


def _conv_key(node: ir.Node, w: list[int]) -> tuple | None:
    if attr_int(node, "group", 1) != 1 or len(w) < 3:
        return None
    spatial = len(w) - 2
    kernel = attr_ints(node, "kernel_shape") or w[2:]
    if list(kernel) != w[2:]:
        return None
    auto_pad = node.attributes["auto_pad"].as_string() if "auto_pad" in node.attributes else "NOTSET"
    return ("Conv", w[1], tuple(kernel), tuple(attr_ints(node, "strides") or [1] * spatial),
            tuple(attr_ints(node, "pads") or [0] * 2 * spatial), tuple(attr_ints(node, "dilations") or [1] * spatial),
            auto_pad)


def _gemm_key(node: ir.Node, w: list[int]) -> tuple | None:
    trans_b = attr_int(node, "transB", 0)
    alpha = node.attributes["alpha"].as_float() if "alpha" in node.attributes else 1.0
    beta = node.attributes["beta"].as_float() if "beta" in node.attributes else 1.0
    if len(w) != 2:
        return None
    return ("Gemm", attr_int(node, "transA", 0), trans_b, alpha, beta, w[1] if trans_b else w[0])


def _member(node: ir.Node, x: ir.Value) -> tuple[tuple, Member] | None:
    """(merge key, member) for a node that may merge with others reading `x`, else None."""
    if not is_default_domain(node) or node.op_type not in ("Conv", "MatMul", "Gemm"):
        return None
    inputs = list(node.inputs)
    if len(inputs) < 2 or inputs[0] is not x or x in inputs[1:] or len(node.outputs) != 1:
        return None
    weight = inputs[1]
    w = _dims(weight) if weight is not None else None
    if w is None or not _is_const(weight) or weight.dtype is None or weight.dtype != x.dtype:
        return None
    if node.op_type == "Conv":
        key = _conv_key(node, w)
        width = w[0]
        if len(inputs) > 2 and inputs[2] is not None and not _is_const(inputs[2]):
            return None
    elif node.op_type == "MatMul":
        key = ("MatMul", w[0]) if len(w) == 2 else None
        width = w[-1]
    else:
        key = _gemm_key(node, w)
        width = w[0] if attr_int(node, "transB", 0) else w[-1]
        c = inputs[2] if len(inputs) > 2 else None
        if c is not None and bias_vector(c, width) is None:
            return None
    if key is None:
        return None
    return (*key, str(x.dtype)), Member(node, width)


def _single_user(value: ir.Value) -> ir.Node | None:
    if value.is_graph_output():
        return None
    users = list(value.consumers())
    return users[0] if len(users) == 1 and sum(1 for _ in value.uses()) == 1 else None


def _attach_tail(member: Member, kind: str) -> tuple:
    """Find the member's bias Add (MatMul) and element-wise activation; return the activation key."""
    value = member.node.outputs[0]
    user = _single_user(value)
    if kind == "MatMul" and user is not None and user.op_type == "Add" and is_default_domain(user):
        other = user.inputs[1] if user.inputs[0] is value else user.inputs[0]
        bias = bias_vector(other, member.width) if other is not None and other is not value else None
        if bias is not None and bias.dtype == member.node.inputs[0].dtype.numpy():
            member.bias_add, member.bias_array = user, bias
            value = user.outputs[0]
            user = _single_user(value)
    if user is None or user.op_type not in ELEMENTWISE or not is_default_domain(user) or user.inputs[0] is not value:
        return ()
    extra = []
    for inp in user.inputs[1:]:
        array = constant_array(inp) if inp is not None else None
        if inp is not None and array is None:
            return ()
        extra.append(None if array is None else (array.dtype.str, array.shape, array.tobytes()))
    attrs = tuple(sorted((k, repr(a.value)) for k, a in user.attributes.items()))
    member.act = user
    return (user.op_type, attrs, tuple(extra))


def find_candidates(graph: ir.Graph) -> list[Candidate]:
    """Groups of two or more mergeable nodes per read tensor, in graph order."""
    values = [*graph.inputs, *(out for node in graph for out in node.outputs)]
    order = {id(n): i for i, n in enumerate(graph)}
    candidates = []
    for x in values:
        groups: dict[tuple, list[Member]] = {}
        seen = set()
        for node in x.consumers():
            if id(node) in seen or node.graph is not graph:  # uses inside If/Loop bodies stay
                continue
            seen.add(id(node))
            found = _member(node, x)
            if found is None:
                continue
            key, member = found
            act_key = _attach_tail(member, key[0])
            groups.setdefault((*key, act_key), []).append(member)
        for key, members in groups.items():
            if len(members) < 2:
                continue
            members.sort(key=lambda m: order[id(m.node)])
            kind = key[0]
            candidates.append(Candidate(kind, x, members, 1 if kind != "MatMul" else -1, key))
    return candidates


def apply_all(model: ir.Model, names: list[str]) -> dict[str, int]:
    """Apply the candidates called `names`, in order. Candidates are found again after each
    rewrite: one candidate's input may be another's result, which the rewrite replaced by a Split
    output (that keeps the name, so the candidate's name still finds it)."""
    taken = model_names(model)
    counters: dict[str, int] = {}
    for name in names:
        cand = next((c for c in find_candidates(model.graph) if c.name == name), None)
        if cand is None:
            logger.debug("candidate %s no longer found", name)
            continue
        for key, n in apply_candidate(model, cand, lambda base: fresh_name(taken, base)).items():
            counters[key] = counters.get(key, 0) + n
        logger.debug("fused %s", name)
    return counters
