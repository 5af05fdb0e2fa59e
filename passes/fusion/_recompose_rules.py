"""onnxscript rewrite rules for passes/fusion/recompose_ops.py (what each matches: that module's docstring).

Kept apart so that the pass can decide from the op types present whether any rule can match
before onnxscript (0.3 s of imports) is loaded.
"""

from __future__ import annotations

__all__ = ["rulesets"]

import logging
import math

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern
from onnxscript.rewriter._basics import MatchResult
from onnxscript.rewriter.rules.common._fuse_hardswish import fuse_hardswish_rules

from graphopt.core.patterns import attr_int, attr_ints, constant_array

logger = logging.getLogger(__name__)

_FLOATS = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE, ir.DataType.BFLOAT16)


def _scalar(value: ir.Value | None) -> float | None:
    a = constant_array(value)
    return float(a.reshape(-1)[0]) if a is not None and a.size == 1 and a.dtype.kind == "f" else None


def _close(value: ir.Value | None, expected: float, rtol: float = 1e-3) -> bool:
    got = _scalar(value)
    return got is not None and math.isclose(got, expected, rel_tol=rtol)


def _float_dtype(x: ir.Value, *constants: ir.Value | None) -> np.dtype | None:
    """x's float dtype; when x is not annotated, that of the float constants it is combined with
    (ONNX arithmetic needs equal types)."""
    if x.dtype is not None:
        return x.dtype.numpy() if x.dtype in _FLOATS else None
    for c in constants:
        a = constant_array(c)
        if a is not None and a.dtype.kind == "f":
            return a.dtype
    return None


def _const(op, array: np.ndarray) -> ir.Value:
    return op.Constant(value=ir.tensor(array))


def _mean(op, x, name: str):
    """ReduceMean over the last axis, or GlobalAveragePool (the last axis when x has rank 3)."""
    return pattern.OrValue([op.ReduceMean(x, _allow_other_inputs=True, _allow_other_attributes=True),
                            op.GlobalAveragePool(x)], name=name)


def _check_mean(mean: ir.Value, x: ir.Value, opset: int) -> str | None:
    node = mean.producer()
    rank = len(x.shape) if x.shape is not None else None
    if node.op_type == "GlobalAveragePool":
        return None if rank == 3 else "GlobalAveragePool is a last-axis mean only for rank 3"
    if attr_int(node, "keepdims", 1) != 1:
        return "ReduceMean without keepdims"
    if opset >= 18:
        axes = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
        axes = None if axes is None else [int(a) for a in axes.reshape(-1)]
    else:
        axes = attr_ints(node, "axes")
    if axes == [-1] or (rank is not None and axes == [rank - 1]):
        return None
    return f"ReduceMean over axes {axes}, not the last axis"


def _either(make, a, b):
    """make(a, b) or make(b, a): operand order of a commutative op, without onnxscript's
    `commute` (which multiplies a rule by 2 per commutative node: 320 LayerNorm variants, 3 s on BERT)."""
    return pattern.OrValue([make(a, b), make(b, a)])


class _LayerNorm(pattern.RewriteRuleClassBase):
    """Rule 1. `form`: "add", "sub" (negated bias, MXNet), "none" (no bias), "tf"; `swap`:
    the root's operands in the other order (a root cannot be an alternative)."""

    def __init__(self, form: str, opset: int, swap: bool = False):
        super().__init__(name=f"LayerNorm[{form}{'-swapped' if swap else ''}]")
        self.form, self.opset, self.swap = form, opset, swap

    def _root(self, make, a, b):
        return make(b, a) if self.swap else make(a, b)

    def pattern(self, op, x, eps, gamma, beta):
        mean = _mean(op, x, "mean")
        d = op.Sub(x, mean)
        sq = pattern.OrValue([op.Pow(d, _allow_other_inputs=True), op.Mul(d, d)], name="square")
        var = _mean(op, sq, "var")
        std = op.Sqrt(_either(op.Add, var, eps))
        if self.form == "tf":
            m = _either(op.Mul, op.Reciprocal(std), gamma)
            shift = pattern.OrValue([_either(op.Add, _either(op.Mul, op.Neg(mean), m), beta),
                                     op.Sub(beta, _either(op.Mul, mean, m))])
            return self._root(op.Add, _either(op.Mul, x, m), shift)
        n = pattern.OrValue([op.Div(d, std), _either(op.Mul, d, op.Reciprocal(std))], name="normalized")
        if self.form == "none":
            return self._root(op.Mul, n, gamma)
        y = _either(op.Mul, n, gamma)
        if self.form == "add":
            return self._root(op.Add, y, beta)
        return op.Sub(y, beta)

    def check(self, context, x, eps, gamma, beta=None, mean=None, var=None, square=None, normalized=None,
              **_) -> MatchResult:
        result = MatchResult()
        self._dtype = _float_dtype(x, eps, gamma)
        if self._dtype is None:
            return result.fail("input is not a float tensor")
        for m in (mean, var):
            why = _check_mean(m, x, self.opset)  # the square has x's shape
            if why:
                return result.fail(why)
        if self.form == "none" and _bias_follows(context.output_values[0]):
            return result.fail("a constant bias follows: the rule with bias takes the whole")
        if square is not None and square.producer().op_type == "Pow" and not _close(square.producer().inputs[1], 2.0):
            return result.fail("Pow exponent is not 2")
        self._eps = _scalar(eps)
        if self._eps is None:
            return result.fail("epsilon is not a constant scalar")
        depth = x.shape[-1] if x.shape is not None and isinstance(x.shape[-1], int) else None
        self._gamma = _param(gamma, depth)
        if self._gamma is None:
            return result.fail("gamma is not a constant of the normalized size")
        self._beta = None
        if self.form != "none":
            self._beta = _param(beta, depth if depth is not None else self._gamma.size)
            if self._beta is None:
                return result.fail("beta is not a constant of the normalized size")
            if self.form == "sub":
                self._beta = -self._beta
        self._canonical = (self.form in ("add", "none") and mean.producer().op_type == "ReduceMean"
                           and var.producer().op_type == "ReduceMean" and square.producer().op_type == "Pow"
                           and normalized.producer().op_type == "Div")
        if self.opset < 17 and self._canonical:
            return result.fail("already the form ONNX Runtime fuses (no LayerNormalization before opset 17)")
        if self.opset < 17 and _cast_from_other_than_float(x):
            # ORT 1.32's LayerNormFusion takes the Cast in, then has no kernel for its source
            # type (double, ints: the session fails to load at ORT_ENABLE_BASIC and up).
            return result.fail("x is a Cast from a type ORT's LayerNorm fusion cannot run")
        return result

    def rewrite(self, op, x, gamma, beta=None, **_):
        dtype = self._dtype
        g = self._gamma.astype(dtype)
        b = self._beta.astype(dtype) if self._beta is not None else None
        if self.opset >= 17:
            inputs = [x, _const(op, g)] + ([_const(op, b)] if b is not None else [])
            return op.LayerNormalization(*inputs, axis=-1, epsilon=self._eps)
        axes = {"axes": [-1]} if self.opset < 18 else {}
        extra = [_const(op, np.array([-1], np.int64))] if self.opset >= 18 else []
        mean = op.ReduceMean(x, *extra, keepdims=1, **axes)
        d = op.Sub(x, mean)
        var = op.ReduceMean(op.Pow(d, _const(op, np.array(2.0, dtype))), *extra, keepdims=1, **axes)
        std = op.Sqrt(op.Add(var, _const(op, np.array(self._eps, dtype))))
        y = op.Mul(op.Div(d, std), _const(op, g))
        return op.Add(y, _const(op, b)) if b is not None else y


def _cast_from_other_than_float(x: ir.Value) -> bool:
    node = x.producer()
    if node is None or node.op_type != "Cast" or not node.inputs or node.inputs[0] is None:
        return False
    return node.inputs[0].dtype not in (ir.DataType.FLOAT, ir.DataType.FLOAT16)


def _bias_follows(y: ir.Value) -> bool:
    users = [u.node for u in y.uses()]
    if len(users) != 1 or y.is_graph_output():
        return False
    node = users[0]
    if node.op_type not in ("Add", "Sub") or len(node.inputs) != 2:
        return False
    other = node.inputs[1] if node.inputs[0] is y else node.inputs[0]
    return constant_array(other) is not None and (node.op_type == "Add" or node.inputs[0] is y)


def _param(value: ir.Value | None, depth: int | None) -> np.ndarray | None:
    """gamma/beta as a 1-D array of the normalized size (leading 1-dims dropped), else None."""
    a = constant_array(value)
    if a is None or a.dtype.kind != "f":
        return None
    if a.ndim > 1 and any(d != 1 for d in a.shape[:-1]):
        return None
    a = a.reshape(-1)
    if depth is not None and a.size == 1 and depth > 1:
        a = np.broadcast_to(a, (depth,)).copy()
    if depth is not None and a.size != depth:
        return None
    return a if a.size > 1 or depth == 1 else None


class _Gelu(pattern.RewriteRuleClassBase):
    """Rule 2. `order`: where the 0.5 sits: "x" (0.5*x)*a, "a" x*(a*0.5), "out" (x*a)*0.5."""

    def __init__(self, order: str, opset: int):
        super().__init__(name=f"Gelu[{order}]")
        self.order, self.opset = order, opset

    def pattern(self, op, x, s, one, half):
        scaled = pattern.OrValue([op.Div(x, s), op.Mul(x, s)], name="scaled")
        a = op.Add(op.Erf(scaled), one)
        if self.order == "x":
            return op.Mul(op.Mul(x, half), a)
        if self.order == "a":
            return op.Mul(x, op.Mul(a, half))
        return op.Mul(op.Mul(x, a), half)

    def check(self, context, x, s, one, half, scaled, **_) -> MatchResult:
        result = MatchResult()
        self._dtype = _float_dtype(x, s, half)
        if self._dtype is None:
            return result.fail("input is not a float tensor")
        divides = scaled.producer().op_type == "Div"
        if not _close(s, math.sqrt(2.0) if divides else 1 / math.sqrt(2.0)):
            return result.fail("not x / sqrt(2)")
        if not (_close(one, 1.0) and _close(half, 0.5)):
            return result.fail("constants are not 1 and 0.5")
        if self.opset < 20 and divides:
            return result.fail("already a form ONNX Runtime fuses (no Gelu before opset 20)")
        return result

    def rewrite(self, op, x, **_):
        if self.opset >= 20:
            return op.Gelu(x)
        dtype = self._dtype
        t = op.Div(x, _const(op, np.array(math.sqrt(2.0), dtype)))
        a = op.Add(op.Erf(t), _const(op, np.array(1.0, dtype)))
        return op.Mul(op.Mul(x, a), _const(op, np.array(0.5, dtype)))


class _Softplus(pattern.RewriteRuleClassBase):
    """Rule 4: Log(Exp(x) + 1) -> Softplus(x)."""

    def pattern(self, op, x, one):
        return op.Log(_either(op.Add, op.Exp(x), one))

    def check(self, context, x, one, **_) -> MatchResult:
        result = MatchResult()
        if _float_dtype(x, one) is None:
            return result.fail("input is not a float tensor")
        return result if _close(one, 1.0, 1e-6) else result.fail("not Exp(x) + 1")

    def rewrite(self, op, x, **_):
        return op.Softplus(x)


class _Mish(pattern.RewriteRuleClassBase):
    """Rule 4: x * Tanh(Softplus(x)) -> Mish(x)."""

    def __init__(self, swap: bool = False):
        super().__init__(name=f"Mish{'[swapped]' if swap else ''}")
        self.swap = swap

    def pattern(self, op, x):
        t = op.Tanh(op.Softplus(x))
        return op.Mul(t, x) if self.swap else op.Mul(x, t)

    def rewrite(self, op, x):
        return op.Mish(x)


def rulesets(opset: int) -> dict[str, pattern.RewriteRuleSet]:
    sets = {
        "layernorm": [_LayerNorm.rule(form, opset, swap) for form in ("add", "sub", "tf", "none")
                      for swap in ((False, True) if form != "sub" else (False,))],
        "gelu": [_Gelu.rule(order, opset) for order in ("x", "a", "out")],
        "softplus": [_Softplus.rule()],
    }
    if opset >= 18:
        sets["mish"] = [_Mish.rule(False), _Mish.rule(True)]
    if opset >= 14:
        sets["hardswish"] = list(fuse_hardswish_rules().rules)  # already commuted
    return {name: pattern.RewriteRuleSet(rules, commute=name == "gelu") for name, rules in sets.items()}
