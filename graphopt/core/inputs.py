"""The input model: the shapes and values every run of a model uses.

Verification, the report's measurements, placement by speed, level-3 fusion decisions,
`bench`, `compare` and `build` all run a model on inputs; they all get them from here, so
what is proven and what is timed is the same thing, at sizes the model is used at.

Shapes. A dynamic dim (a symbol, an unnamed dim, or `-1` as Paddle writes it) takes, in order:
1. `--shape NAME=DIMS`;
2. the shape of given data (`--inputs`, or one sample of `--calibration`/`--eval`); a symbol
   fixed by one input is fixed on every input that names it;
3. a size that exercises the model (`graphopt.core.input_dims`): batch 1, 128 tokens, 224
   pixels (640 for detectors) rounded to the model's stride, one new token after a
   128-token past for decoders with a key/value cache, `a + b` dims evaluated.
Values: floats are standard normal; integers and booleans follow `graphopt.core.input_values`
(indices within their tables, `Equal` constants, small positive sizes, masks, positions).
Sequence inputs get two tensors, optional inputs a tensor.

When ONNX Runtime cannot run the model on these inputs, `graphopt.core.input_search` tries others.
Declared dims so large that the inputs could not fit in memory are refused up front.
"""

from __future__ import annotations

__all__ = ["InputModel", "InputSignature", "input_model", "sample_axes", "signatures"]

import dataclasses
import logging
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from graphopt.core.errors import InputError, UsageError
from graphopt.core.input_dims import (
    ROLE_SIZES, DimRole, classify, evaluate_expression, spatial_size,
)
from graphopt.core.input_values import ValueRule, value_rules

logger = logging.getLogger(__name__)

MAX_INPUT_BYTES = 4 << 30  # all generated inputs together
SEQUENCE_LENGTH = 2  # tensors in a generated sequence input


@dataclasses.dataclass(frozen=True)
class InputSignature:
    """A graph input: kind ("tensor", "sequence", "optional"), element dtype and declared dims.

    Dims are ints when static, the symbol's name when named, None when unnamed or `-1`."""

    name: str
    kind: str
    dtype: np.dtype
    dims: tuple[int | str | None, ...] | None

    @property
    def dynamic_axes(self) -> list[int]:
        return [i for i, d in enumerate(self.dims or ()) if not isinstance(d, int)]

    def describe(self) -> str:
        dims = "?" if self.dims is None else "x".join("?" if d is None else str(d) for d in self.dims)
        kind = "" if self.kind == "tensor" else f"{self.kind} of "
        return f"{kind}{self.dtype.name}[{dims}]"


def signatures(model: ir.Model) -> list[InputSignature]:
    """The model's real inputs (initializers listed as inputs excluded), in graph order."""
    out = []
    for value in model.graph.inputs:
        if value.name in model.graph.initializers:
            continue
        kind = {ir.SequenceType: "sequence", ir.OptionalType: "optional"}.get(type(value.type), "tensor")
        if kind == "optional" and isinstance(getattr(value.type, "elem_type", None), ir.SequenceType):
            kind = "optional sequence"
        try:
            dtype = np.dtype(value.dtype.numpy()) if value.dtype is not None else np.dtype(np.float32)
        except (TypeError, ValueError, AttributeError):  # string, float8, int4: no plain numpy type
            dtype = np.dtype(object) if value.dtype == ir.DataType.STRING else np.dtype(np.float32)
        dims = None
        if value.shape is not None:
            dims = tuple(d if isinstance(d, int) and d >= 0 else (None if isinstance(d, int) else d.value)
                         for d in value.shape)
        out.append(InputSignature(value.name, kind, dtype, dims))
    return out


def sample_axes(sigs: Sequence[InputSignature]) -> dict[str, int | None]:
    """The axis samples stack along, per input; None for inputs without one (scalars, fixed settings).

    The batch axis is where the model's batch symbol sits (a name like `batch`, or the symbol
    at axis 0 of a rank >= 2 input, wherever else it appears: an LSTM state
    [layers, batch, hidden]); else axis 0, unless axis 0 is a static size above 1 and axis 1
    the input's only dynamic dim (an unnamed state layout)."""
    batch_symbols = {s.dims[0] for s in sigs if s.dims and len(s.dims) >= 2 and isinstance(s.dims[0], str)
                     and s.dims[0] and classify(s.dims[0], 0, len(s.dims), s.dtype, s.dims) is DimRole.BATCH}
    out: dict[str, int | None] = {}
    for sig in sigs:
        dims = sig.dims
        if not dims:
            out[sig.name] = None if dims is not None else 0
            continue
        named = next((i for i, d in enumerate(dims) if isinstance(d, str) and d
                      and (d in batch_symbols or classify(d, i, len(dims), sig.dtype, dims) is DimRole.BATCH)), None)
        if named is not None:
            out[sig.name] = named
        elif isinstance(dims[0], int) and dims[0] > 1 and sig.dynamic_axes == [1] and len(dims) >= 3:
            out[sig.name] = 1
        else:
            out[sig.name] = 0
    return out


@dataclasses.dataclass
class InputModel:
    """Concrete shapes and value rules for every graph input, and why each was chosen."""

    signatures: list[InputSignature]
    shapes: dict[str, list[int]]
    why: dict[str, str]
    rules: dict[str, ValueRule]
    data: dict[str, object] = dataclasses.field(default_factory=dict)  # given arrays, fed as they are
    roles: dict[str, list[DimRole | None]] = dataclasses.field(default_factory=dict)
    seed: int = 0
    tried: list[str] = dataclasses.field(default_factory=list)

    def feeds(self, seed: int | None = None) -> dict[str, object]:
        rng = np.random.default_rng(self.seed if seed is None else seed)
        out = {}
        for sig in self.signatures:
            if sig.name in self.data:
                out[sig.name] = self.data[sig.name]
                continue
            shape = self.shapes[sig.name]
            rule = self.rules.get(sig.name)
            if rule is not None and rule.pattern == "split":
                out[sig.name] = self._split_sizes(sig, shape, rule)
            elif rule is not None and rule.pattern == "grid":  # AffineGrid size: [N of theta, C, H, W...]
                grid = np.full(shape, 4, dtype=np.int64)
                if grid.size and rule.split_of and self.shapes.get(rule.split_of[0]):
                    grid.reshape(-1)[:2] = [self.shapes[rule.split_of[0]][0], 1][: grid.size]
                out[sig.name] = grid.astype(sig.dtype)
            elif sig.kind.endswith("sequence"):
                out[sig.name] = [_draw(rng, sig.dtype, shape, rule) for _ in range(SEQUENCE_LENGTH)]
            else:
                out[sig.name] = _draw(rng, sig.dtype, shape, rule)
        return out

    def _split_sizes(self, sig: InputSignature, shape: list[int], rule: ValueRule) -> np.ndarray:
        """Split sizes that add up to the split dim of the data input: near-equal parts."""
        parts = shape[0] if shape else 1
        total = parts
        if rule.split_of and rule.split_of[0] in self.shapes:
            dims = self.shapes[rule.split_of[0]]
            if dims and -len(dims) <= rule.split_of[1] < len(dims):
                total = dims[rule.split_of[1]]
        sizes = np.full(max(parts, 1), total // max(parts, 1))
        sizes[: total % max(parts, 1)] += 1
        return sizes.reshape(shape).astype(sig.dtype) if shape else np.array(total, dtype=sig.dtype)

    def describe(self) -> dict[str, dict]:
        """Per input: the shape used, why, and for integer inputs the values."""
        out = {}
        for sig in self.signatures:
            item = {"shape": list(self.shapes.get(sig.name, [])), "why": self.why.get(sig.name, "")}
            rule = self.rules.get(sig.name)
            if rule is not None and sig.name not in self.data:
                item["values"] = rule.describe()
            if sig.kind != "tensor":
                item["kind"] = sig.kind
            out[sig.name] = item
        return out

    def explain(self, names=None) -> str:
        """`input 1x256 (batch 1; samples: 256); sr scalar (one of [16000] ...)` for notes and warnings."""
        parts = []
        for name, item in self.describe().items():
            if names is not None and name not in names:
                continue
            why = "; ".join(filter(None, [item.get("why"), item.get("values")]))
            parts.append(f"{name} {_show(item['shape'])}" + (f" ({why})" if why else ""))
        return "; ".join(parts)

    def summary(self) -> str:
        """`input_ids 1x128 (sequence 128 tokens), pixel 1x3x224x224 (given)` for one-line messages."""
        return ", ".join(f"{s.name} {'x'.join(map(str, self.shapes.get(s.name, []))) or 'scalar'}"
                         for s in self.signatures)

    def nbytes(self) -> int:
        total = 0
        for sig in self.signatures:
            count = int(np.prod(self.shapes.get(sig.name, []), dtype=np.float64))
            total += count * max(sig.dtype.itemsize, 1) * (SEQUENCE_LENGTH if sig.kind.endswith("sequence") else 1)
        return total

def _draw(rng: np.random.Generator, dtype: np.dtype, shape: list[int], rule: ValueRule | None):
    if np.dtype(dtype) == np.dtype(object):
        return np.full(shape, "a", dtype=object)
    if rule is not None and rule.pattern == "mask":
        mask = np.ones(shape, dtype=np.float64)
        if len(shape) >= 2 and shape[-1] >= 4:
            mask[1::2, ..., -(shape[-1] // 4):] = 0  # every second row padded, as in a real batch
        return mask.astype(dtype)
    if rule is not None and rule.pattern == "positions":
        positions = np.broadcast_to(np.arange(shape[-1] if shape else 1), shape) if shape else np.array(0)
        return np.minimum(positions, rule.high - 1).astype(dtype)
    if rule is not None and rule.pattern in ("true", "ones"):
        return np.ones(shape, dtype=dtype)
    if rule is not None and rule.pattern == "scales":  # batch and channels kept, spatial dims doubled
        scales = np.ones(shape, dtype=np.float64)
        scales.reshape(-1)[-2:] = 2.0
        return scales.astype(dtype)
    if rule is not None and rule.pattern == "reshape":
        target = np.ones(shape, dtype=np.int64)
        target.reshape(-1)[:1] = -1
        return target.astype(dtype)
    if rule is not None and rule.choices:
        return np.full(shape, rule.choices[0]).astype(dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if np.issubdtype(dtype, np.integer):
        low, high = (rule.low, rule.high) if rule is not None else (0, 4)
        return rng.integers(low, max(high, low + 1), size=shape).astype(dtype)
    if np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.complexfloating):
        if rule is not None and rule.why:  # a size or count carried in a float
            return rng.integers(rule.low, max(rule.high, rule.low + 1), size=shape).astype(dtype)
        return rng.standard_normal(shape).astype(dtype)
    return np.zeros(shape, dtype=dtype)


def input_model(model: ir.Model, *, shapes: Mapping[str, Sequence[int]] | None = None,
                data: Mapping[str, object] | None = None, seed: int = 0) -> InputModel:
    """Shapes and value rules for every input of `model` (see the module docstring)."""
    sigs = signatures(model)
    by_name = {s.name: s for s in sigs}
    shapes = dict(shapes or {})
    data = dict(data or {})
    for name in shapes:
        if name not in by_name:
            raise UsageError(f"--shape names {name!r}, which is not a graph input (inputs: "
                             f"{', '.join(by_name) or 'none'})")
    for name in data:
        if name not in by_name:
            raise InputError(f"input data has an array {name!r}, which is not a graph input (inputs: "
                             f"{', '.join(by_name) or 'none'})")
    symbols: dict[str, int] = {}
    concrete: dict[str, list[int | None]] = {}
    why: dict[str, str] = {}
    # 1-2: given shapes and data fix dims, and the symbols they name.
    for sig in sigs:
        given, source = shapes.get(sig.name), "--shape"
        if sig.name in data:
            given, source = _shape_of(data[sig.name]), "given data"
        if given is None:
            continue
        given = [int(d) for d in given]
        if sig.dims is not None and sig.kind == "tensor" and len(given) != len(sig.dims):
            raise InputError(f"{source} for {sig.name!r} has rank {len(given)} ({_show(given)}), but the graph "
                             f"input is {sig.describe()}")
        for d, declared in zip(given, sig.dims or ()):
            if _is_symbol(declared):
                symbols.setdefault(declared, d)
        concrete[sig.name], why[sig.name] = given, source
    # 3: roles and sizes for the rest; a symbol keeps one value wherever it appears.
    has_cache = any(_by_cache_name(s.name) for s in sigs)
    roles: dict[str, list[DimRole | None]] = {}
    symbol_roles: dict[str, DimRole] = {}
    sized: dict[DimRole, int] = {}
    totals: list[tuple[InputSignature, int]] = []
    for sig in sigs:
        if sig.name in concrete:
            continue
        if sig.dims is None:  # rank unknown: a scalar is the safest guess for a control input
            concrete[sig.name], why[sig.name] = [], "rank not declared: scalar"
            continue
        dims: list[int | None] = []
        sig_roles: list[DimRole | None] = []
        reasons = []
        for axis, declared in enumerate(sig.dims):
            role = None
            if isinstance(declared, int):
                size = declared
            elif _is_symbol(declared) and declared in symbols:
                size = symbols[declared]
                role = symbol_roles.get(declared)  # the fallback search resizes every dim of a symbol at once
                reasons.append(f"{declared}: {size} as on another input")
            else:
                role = classify(declared, axis, len(sig.dims), sig.dtype, sig.dims)
                if role is DimRole.SEQUENCE and has_cache and not _by_cache_name(sig.name):
                    role = DimRole.NEW_TOKENS
                if role is DimRole.TOTAL:
                    totals.append((sig, axis))
                    size = None
                else:
                    if role is DimRole.SPATIAL:
                        size, reason = spatial_size(model, _input_value(model, sig.name))
                    else:
                        size, reason = ROLE_SIZES[role], _ROLE_REASON[role]
                    sized[role] = size
                    if _is_symbol(declared):
                        symbols[declared] = size
                        symbol_roles[declared] = role
                    reasons.append(f"{_axis_name(declared, axis)}: {reason}")
            dims.append(size)
            sig_roles.append(role)
        roles[sig.name] = sig_roles
        concrete[sig.name] = dims
        why[sig.name] = "; ".join(dict.fromkeys(reasons)) or "declared"
    for sig, axis in totals:  # `past + sequence` dims, once their parts are known
        declared = sig.dims[axis]
        size = evaluate_expression(declared, symbols) if isinstance(declared, str) else None
        if size is None:
            size = sized.get(DimRole.PAST, 0) + sized.get(DimRole.NEW_TOKENS, sized.get(DimRole.SEQUENCE, 1))
        concrete[sig.name][axis] = size
        if _is_symbol(declared):
            symbols.setdefault(declared, size)
        note = f"{_axis_name(declared, axis)}: {size}, past + new length"
        why[sig.name] = note if why[sig.name] == "declared" else f"{why[sig.name]}; {note}"
    final = {name: [int(d) for d in dims] for name, dims in concrete.items()}
    plan = InputModel(sigs, final, why, value_rules(model), data, roles, seed)
    _refuse_huge(plan)
    return plan


def _is_symbol(declared) -> bool:
    """A named dim that is a plain symbol (not `a + b`)."""
    return isinstance(declared, str) and bool(declared) and not any(op in declared for op in "+-*/")


_ROLE_REASON = {
    DimRole.BATCH: "batch 1",
    DimRole.SEQUENCE: "128 tokens",
    DimRole.NEW_TOKENS: "1 new token (the model takes a key/value cache)",
    DimRole.PAST: "128 cached tokens",
    DimRole.CHANNELS: "3 channels",
    DimRole.FEATURES: "256",
}


def _by_cache_name(name: str) -> bool:
    lowered = name.lower()
    return any(k in lowered for k in ("past", "cache", "present")) and "mask" not in lowered


def _axis_name(declared, axis: int) -> str:
    return f"{declared!s}" if isinstance(declared, str) and declared else f"dim {axis}"


def _input_value(model: ir.Model, name: str) -> ir.Value:
    return next(v for v in model.graph.inputs if v.name == name)


def _shape_of(item) -> list[int] | None:
    if isinstance(item, np.ndarray):
        return list(item.shape)
    if isinstance(item, (list, tuple)) and item and isinstance(item[0], np.ndarray):
        return list(item[0].shape)
    return None


def _show(dims) -> str:
    return "x".join(str(d) for d in dims) or "scalar"


def _refuse_huge(plan: InputModel) -> None:
    need = plan.nbytes()
    if need <= MAX_INPUT_BYTES:
        return
    biggest = max(plan.signatures, key=lambda s: np.prod(plan.shapes.get(s.name, []), dtype=np.float64))
    raise InputError(f"input {biggest.name!r} at {_show(plan.shapes[biggest.name])} ({biggest.describe()} declared) "
                     f"needs {_human(need)} of memory; give a smaller --shape {biggest.name}=... or real data with "
                     "--inputs")


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if n < 1024 or unit == "EiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} EiB"
