"""Which values an integer or boolean graph input may take, read from the nodes that use it.

An input's values are followed through ops that move them unchanged (Cast, Reshape,
Unsqueeze, Concat, Slice, ...; an Add or Sub of a constant shifts them) to the nodes that
constrain them:

1. Indices: Gather/GatherElements/ScatterElements by the data dim on their axis,
   GatherND/ScatterND by the smallest leading data dim, OneHot by its constant depth.
   A BERT `token_type_ids` feeding a 2-row table gets [0, 2).
2. Compared with constants: `Equal(sr, 16000)` feeding an If picks 16000 (the first
   constant met), so the branch a real caller takes is the one that runs.
3. Shapes, lengths, counts and divisors (Tile/ConstantOfShape/Range/TopK/Slice/Pad/Resize
   inputs, RNN sequence lengths, Loop trip counts, Div/Mod divisors): small and positive,
   [1, 3). Some need a form: a Reshape target is [-1, 1, ...], an Expand target all ones,
   axes (Slice, Unsqueeze, reductions) 0, 1, 2, ..., Split sizes add up to the split dim of
   the data input. Float controls get a valid value: Resize/Upsample scales 2, Dropout
   ratio 0.5 (training_mode false), NonMaxSuppression thresholds 0.5 (IoU) and 0 (score).
4. Names: `*mask*` is 1 with a zero tail on every second row (padding), `position_ids`
   counts 0, 1, 2, ... along the last axis; both still within any bound from 1.
5. Anything else: [0, 4) for integers, {0, 1} for booleans; a Loop's `cond` input is true.
"""

from __future__ import annotations

__all__ = ["ValueRule", "value_rules"]

import dataclasses

import numpy as np
import onnx_ir as ir

from graphopt.core.patterns import attr_int, constant_array, is_default_domain, static_shape

DEFAULT_HIGH = 4


@dataclasses.dataclass
class ValueRule:
    """Integers drawn from [low, high) (or one of `choices`), and where the bound came from."""

    low: int = 0
    high: int = DEFAULT_HIGH
    choices: tuple = ()
    pattern: str = ""  # "mask", "positions", "true", "ones", "reshape", "split", "scales"
    why: str = ""
    split_of: tuple[str, int] | None = None  # (data input, axis): Split sizes add up to it, a grid starts with it

    def bound(self, high: int, why: str) -> None:
        if high < self.high or not self.why:
            self.high, self.why = max(high, self.low + 1), why

    def describe(self) -> str:
        if self.choices:
            text = f"one of {list(self.choices)}"
        elif self.pattern == "mask":
            text = "1 with a zero tail (mask)"
        elif self.pattern == "positions":
            text = "0, 1, 2, ... (positions)"
        elif self.pattern in ("true", "ones", "reshape", "split", "scales", "grid"):
            text = {"true": "true", "ones": "all ones", "reshape": "[-1, 1, ...]", "scales": "[1, ..., 2, 2]",
                    "grid": "[N of theta, 1, 4, ...]",
                    "split": f"sizes adding up to {self.split_of[0] if self.split_of else 'the'} dim"}[self.pattern]
        else:
            text = f"in [{self.low}, {self.high})"
        return f"{text}{f' ({self.why})' if self.why else ''}"


# Ops that pass an input's values on unchanged (as data), with the input positions that carry them.
_CARRY = {
    "Cast": (0,), "CastLike": (0,), "Identity": (0,), "Unsqueeze": (0,), "Squeeze": (0,), "Reshape": (0,),
    "Flatten": (0,), "Expand": (0,), "Transpose": (0,), "Slice": (0,), "Tile": (0,), "Concat": None,
    "Gather": (0,), "GatherElements": (0,), "Split": (0,), "Where": (1, 2), "Clip": (0,), "Abs": (0,),
    "Max": None, "Min": None,
}
_INDEXED = {"Gather": 1, "GatherElements": 1, "ScatterElements": 1, "Scatter": 1}
_SMALL = {
    "Tile": (1,), "ConstantOfShape": (0,), "Range": (0, 1, 2), "TopK": (1,),
    "Slice": (1, 2, 3, 4), "Pad": (1, 2, 3), "Split": (1,), "Resize": (3,), "Upsample": (1,), "RNN": (4,),
    "GRU": (4,), "LSTM": (4,), "Loop": (0,), "NonMaxSuppression": (2,), "Div": (1,), "Mod": (1,),
    "ReverseSequence": (1,), "CumSum": (1,), "Trilu": (1,), "OneHot": (1,),
}
_FORMS = {("Reshape", 1): "reshape", ("Expand", 1): "ones", ("Slice", 3): "positions", ("Unsqueeze", 1): "positions",
          ("Split", 1): "split", ("SplitToSequence", 1): "split", ("AffineGrid", 1): "grid"}
_AXES_INPUT = {"ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
               "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"}
_FORMS.update({("Resize", 2): "scales", ("Upsample", 1): "scales"})
_FLOAT_CHOICES = {("Dropout", 1): 0.5, ("Dropout", 2): 0,
                  ("NonMaxSuppression", 3): 0.5, ("NonMaxSuppression", 4): 0.0}


def value_rules(model: ir.Model) -> dict[str, ValueRule]:
    """A rule for every integer or boolean main-graph input (initializers listed as inputs excluded)."""
    rules = {}
    for value in model.graph.inputs:
        if value.name in model.graph.initializers or value.dtype is None or value.dtype == ir.DataType.STRING:
            continue
        if value.dtype.is_floating_point():
            rule = ValueRule()
            _follow(value, rule, integer=False)
            if rule.choices or rule.pattern or rule.why:  # a control input: scales, ratios, sizes
                rules[value.name] = rule
            elif "mask" in value.name.lower():  # float masks are added to scores or multiplied in
                rules[value.name] = ValueRule(pattern="mask", why="name")
            continue
        rule = ValueRule(high=2 if value.dtype == ir.DataType.BOOL else DEFAULT_HIGH)
        _follow(value, rule)
        name = value.name.lower()
        if "mask" in name and not rule.choices:
            rule.pattern = "mask"
        elif "position" in name and not rule.choices:
            rule.pattern = "positions"
        rules[value.name] = rule
    return rules


def _follow(start: ir.Value, rule: ValueRule, budget: int = 256, integer: bool = True) -> None:
    """Walk the uses of `start` through value-carrying ops, tightening `rule` at each constraint."""
    stack = [(start, 0)]
    seen = set()
    while stack and budget > 0:
        value, offset = stack.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        for use in value.uses():
            budget -= 1
            node, index = use.node, use.idx
            if not is_default_domain(node):
                continue
            op = node.op_type
            if op == "Loop" and index == 1:
                rule.pattern, rule.why = "true", "Loop condition"
                continue
            if op in _INDEXED and index == _INDEXED[op]:
                _bound_index(node, rule, offset)
            elif op in ("GatherND", "ScatterND") and index == 1:
                _bound_index_nd(node, rule, offset)
            elif op == "OneHot" and index == 0:
                depth = constant_array(node.inputs[1])
                if depth is not None and depth.size == 1:
                    rule.bound(int(depth.reshape(-1)[0]) - offset, f"{_what(node)} depth")
            elif op == "Equal" and not rule.choices:
                other = node.inputs[1 - index] if len(node.inputs) == 2 else None
                const = constant_array(other)
                if const is not None and const.size >= 1 and np.issubdtype(const.dtype, np.integer):
                    rule.choices = tuple(int(c) - offset for c in const.reshape(-1)[:4])
                    rule.why = f"compared with {rule.choices[0] + offset} by {_what(node)}"
            elif (op, index) in _FLOAT_CHOICES and not rule.choices:
                rule.choices, rule.why = (_FLOAT_CHOICES[op, index],), f"{_what(node)} input {index}"
            elif (op, index) in _FORMS or (op in _AXES_INPUT and index == 1):
                rule.pattern = _FORMS.get((op, index), "positions")
                rule.why = f"{_what(node)} input {index}"
                data = node.inputs[0]
                if rule.pattern in ("split", "grid") and data is not None and data.is_graph_input():
                    rule.split_of = (data.name, attr_int(node, "axis", 0) if rule.pattern == "split" else 0)
            elif op in _SMALL and index in _SMALL[op] and (integer or op not in ("Div", "Mod")):
                if rule.high > 3 or not rule.why:
                    rule.low, rule.high, rule.why = 1, 3, f"{_what(node)} takes it as a size"
            if op in ("Add", "Sub") and len(node.inputs) == 2:
                shift = constant_array(node.inputs[1 - index])
                if (shift is not None and shift.size == 1 and np.issubdtype(shift.dtype, np.integer)
                        and not (op == "Sub" and index == 1)):  # c - x reverses the order: not followed
                    step = int(shift.reshape(-1)[0]) * (1 if op == "Add" else -1)
                    stack.extend((out, offset + step) for out in node.outputs)
                continue
            carried = _CARRY.get(op, ())
            if carried is None or index in carried:
                stack.extend((out, offset) for out in node.outputs)


def _what(node: ir.Node) -> str:
    """`Gather 'emb/Gather_1'`, or `Gather on 'word_embeddings'` for an unnamed node."""
    if node.name:
        return f"{node.op_type} {node.name!r}"
    data = node.inputs[0] if node.inputs else None
    return f"{node.op_type} on {data.name!r}" if data is not None and data.name else node.op_type


def _dim(value: ir.Value | None, axis: int) -> int | None:
    """Dim `axis` of a value: from its annotation, else from its constant or ConstantOfShape."""
    if value is None:
        return None
    dims = list(value.shape) if value.shape is not None else []
    if not (dims and -len(dims) <= axis < len(dims) and isinstance(dims[axis], int)):
        dims = list(static_shape(value) or [])
    if not (dims and -len(dims) <= axis < len(dims)):
        return None
    d = dims[axis]
    return d if isinstance(d, int) and d > 0 else None


def _bound_index(node: ir.Node, rule: ValueRule, offset: int) -> None:
    axis = attr_int(node, "axis", 0)
    size = _dim(node.inputs[0], axis)
    if size is not None:
        rule.bound(size - offset, f"{_what(node)} indexes {size} rows")


def _bound_index_nd(node: ir.Node, rule: ValueRule, offset: int) -> None:
    data = node.inputs[0]
    batch_dims = attr_int(node, "batch_dims", 0)
    shape = static_shape(data) if data is not None else None
    if shape and len(shape) > batch_dims:
        size = min(shape[batch_dims:])
        rule.bound(size - offset, f"{_what(node)} indexes dims {list(shape)}")
