"""What the lossy stage varies: one builder per mode, each with `candidates` (layer decisions
the accuracy budget may revert), `build(applied)` (a new model with exactly those applied),
`section()` (its report fields) and `cost(name)` (what keeping one decision unapplied costs).

- `Int8Builder`: static int8 QDQ; candidates are the quantizable layers; activation ranges
  are calibrated once per tensor and reused by every build.
- `DynamicBuilder`: dynamic int8 MatMul/Gemm.
- `Fp16Builder`: float16; candidates are the nodes that would run in float16 (data
  movement excluded: it follows its neighbours). With data, tensors whose values pass half
  the float16 range keep their producers and consumers in float32.
"""

from __future__ import annotations

__all__ = ["Int8Builder", "DynamicBuilder", "Fp16Builder", "BUILDERS", "layer_cost"]

import math

import numpy as np
import onnx_ir as ir

from graphopt.core.calibrate import Dataset
from graphopt.core.ranges import collect_channel_means, collect_ranges
from graphopt.core.errors import UsageError
from graphopt.core.patterns import constant_array
from graphopt.passes.quantize.quantize_dynamic import QuantizeDynamicPass, dynamic_candidates
from graphopt.passes.quantize.quantize_fp16 import MOVES, ConvertFp16Pass, plan_fp16
from graphopt.passes.quantize.quantize_int8 import QuantizeInt8Pass
from graphopt.passes.quantize.quantize_plan import plan_int8
from graphopt.passes.quantize.quantize_scheme import resolve_scheme


class Int8Builder:
    """Static int8: candidates are the quantizable layers; `build(applied)` quantizes exactly those."""

    what = "layers"
    takes_data = True

    def __init__(self, model: ir.Model, options, calib: Dataset, note):
        self.model = model
        self.options = options
        self.calib = calib
        self.scheme, self.reason = resolve_scheme(options.int8_scheme)
        self.keep_float = set(options.keep_float)
        names = {n.name for n in model.graph}
        unknown = sorted(self.keep_float - names)
        if unknown:
            raise UsageError(f"--keep-float {unknown[0]!r} names no node of the model")
        plan = plan_int8(model, frozenset(self.keep_float))
        self.candidates = list(plan.layers)
        self.ranges: dict[str, tuple[float, float]] = {}
        self.warnings: list[str] = []
        self.notes: list[str] = []
        self.last = None
        self.speed_kept: list[str] = []
        note(f"calibrate {len(plan.range_keys())} tensors ({options.calibration_method})")
        self._calibrate(plan.range_keys())
        self.means: dict[str, np.ndarray] = {}
        if getattr(options, "bias_correction", True):
            axes = {p.node.inputs[0].name: (1 if p.node.op_type == "Conv" else -1) for p in plan.layers.values()
                    if p.node.op_type in ("Conv", "Gemm") and p.weight_index is not None}
            self.means = collect_channel_means(model, axes, calib)
        if not self.candidates:
            self.warnings.append("no layer to quantize (Conv/ConvTranspose/Gemm/MatMul with float32 weights)")
        if any(n.op_type == "ConvTranspose" for n in model.graph if n.name in self.candidates):
            self.notes.append("ConvTranspose has no int8 kernel in ORT's CPU EP: its weights shrink, it runs "
                              "dequantized")

    def keep_float_for_speed(self, names) -> None:
        """Layers placed float for speed (quantize_speed.py) leave the budget's candidates."""
        self.speed_kept = list(names)
        self.keep_float |= set(names)
        self.candidates = [c for c in self.candidates if c not in self.keep_float]

    def _calibrate(self, keys) -> None:
        missing = sorted(set(keys) - set(self.ranges))
        if missing:
            self.ranges.update(collect_ranges(self.model, missing, self.calib, method=self.options.calibration_method,
                                              percentile=self.options.percentile))

    def build(self, applied: frozenset[str]) -> ir.Model:
        exclude = frozenset(set(self.candidates) - set(applied)) | self.keep_float
        self._calibrate(plan_int8(self.model, exclude).range_keys())
        quantized = self.model.clone()
        self.last = QuantizeInt8Pass(self.ranges, self.scheme, exclude, input_means=self.means)(quantized)
        for name in self.last.bias_clamped:
            message = f"{name}: int32 bias clamped at its scale (input range tiny, weights large)"
            if message not in self.warnings:
                self.warnings.append(message)
        return quantized

    def describe(self) -> str:
        return f"int8 static QDQ, scheme {self.scheme.name}, calibration {self.options.calibration_method}"

    def section(self, result, evaluation) -> dict:
        applied = result.applied if result is not None else frozenset(self.candidates)
        calib = self.calib
        return {
            "mode": "int8 (static, QDQ)",
            "scheme": f"{self.scheme.name}: activations {np.dtype(self.scheme.activation).name} per tensor, "
                      f"weights {np.dtype(self.scheme.weight).name} per channel (+-{self.scheme.weight_qmax})",
            "scheme_reason": self.reason,
            "calibration": f"{calib.source}: {len(calib)} samples, {self.options.calibration_method}"
                           + (f" {self.options.percentile:g}%" if self.options.calibration_method == "percentile"
                              else ""),
            "layers_quantized": f"{len(applied)} of {len(self.candidates) + len(self.speed_kept)}",
            "tensors_quantized": (self.last.counters.get("tensors_quantized") if self.last else None),
            "activations_absorbed": (self.last.counters.get("activations_absorbed") if self.last else None),
        }

    def cost(self, name: str) -> dict:
        return layer_cost(self.model, name)


def layer_cost(model: ir.Model, name: str) -> dict:
    """Op, MACs (share of the model's) and float weight bytes of one node: what keeping it costs."""
    nodes = {n.name: n for n in model.graph}
    node = nodes[name]
    total = sum(_macs(n) for n in model.graph) or 1
    macs = _macs(node)
    weight = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
    return {"op": node.op_type, "macs": macs, "macs_share": round(macs / total, 4),
            "weight_bytes": int(weight.nbytes) if weight is not None else 0}


def _dims(value: ir.Value | None) -> list[int] | None:
    if value is None or value.shape is None:
        return None
    return [d if isinstance(d, int) else 1 for d in value.shape]


def _macs(node: ir.Node) -> int:
    """Multiply-accumulates of a Conv/ConvTranspose/Gemm/MatMul from annotated shapes (0 if unknown)."""
    if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or len(node.inputs) < 2:
        return 0
    x, w, y = _dims(node.inputs[0]), _dims(node.inputs[1]), _dims(node.outputs[0])
    if not (x and w and y):
        return 0
    if node.op_type == "Conv":
        return math.prod(y) * math.prod(w[1:])
    if node.op_type == "ConvTranspose":
        return math.prod(x) * math.prod(w[1:])
    k = x[-1]
    return math.prod(y) * k


class DynamicBuilder:
    """Lossy-stage builder: candidates are the qualifying MatMul/Gemm nodes."""

    what = "layers"
    takes_data = False

    def __init__(self, model: ir.Model, options):
        self.model = model
        self.scheme, self.reason = resolve_scheme(options.int8_scheme)
        self.keep_float = set(options.keep_float)
        self.candidates = [n for n in dynamic_candidates(model) if n not in self.keep_float]
        self.warnings: list[str] = [] if self.candidates else ["no MatMul/Gemm with a constant 2-D float32 weight"]
        self.notes: list[str] = []

    def build(self, applied: frozenset[str]) -> ir.Model:
        quantized = self.model.clone()
        QuantizeDynamicPass(self.scheme, frozenset(set(self.candidates) - set(applied)) | self.keep_float)(quantized)
        return quantized

    def describe(self) -> str:
        return f"int8 dynamic, weights per column, scheme {self.scheme.name}"

    def section(self, result, evaluation) -> dict:
        applied = result.applied if result is not None else frozenset(self.candidates)
        return {"mode": "int8-dynamic (activations quantized per run, weights per column)",
                "scheme": f"{self.scheme.name}: weights int8 +-{self.scheme.weight_qmax}",
                "scheme_reason": self.reason,
                "layers_quantized": f"{len(applied)} of {len(self.candidates)}"}

    def cost(self, name: str) -> dict:
        return layer_cost(self.model, name)


class Fp16Builder:
    """Float16; see module doc."""

    what = "nodes"
    takes_data = True
    overflow = 32768.0  # half of float16's range: products and sums downstream still fit
    scan_samples = 8

    def __init__(self, model: ir.Model, options, calib: Dataset | None, note):
        self.model = model
        self.keep_io_types = options.keep_io_types
        self.keep_float = set(options.keep_float)
        self.warnings: list[str] = []
        self.notes = ["on ONNX Runtime's CPU EP float16 is mostly for size: few CPU kernels take float16, so "
                      "ORT casts around them; the latency figures show what it costs here"]
        self.unsafe: set[str] = set()
        self.scanned = False
        if calib is not None:
            names = [o.name for n in model.graph for o in n.outputs if o.dtype == ir.DataType.FLOAT]
            note(f"scan {len(names)} tensors for float16 overflow")
            ranges = collect_ranges(model, names, calib.head(self.scan_samples), method="minmax", batch_size=1)
            self.unsafe = {n for n, (lo, hi) in ranges.items() if max(abs(lo), abs(hi)) > self.overflow}
            self.scanned = True
        else:
            self.notes.append("no data: float16 overflow checked on weights only (give --calibration or --eval "
                              "to check activations)")
        self.plan, self.bad_inits = plan_fp16(model, frozenset(self.keep_float), frozenset(self.unsafe))
        ops = {n.name: n.op_type for n in model.graph}
        self.candidates = [n for n, reason in self.plan.items() if reason is None and ops[n] not in MOVES]
        self.last = None

    def build(self, applied: frozenset[str]) -> ir.Model:
        exclude = frozenset(set(self.candidates) - set(applied)) | self.keep_float
        converted = self.model.clone()
        self.last = ConvertFp16Pass(self.keep_io_types, exclude, self.unsafe)(converted)
        return converted

    def describe(self) -> str:
        return f"fp16, io {'float32' if self.keep_io_types else 'float16'}"

    def section(self, result, evaluation) -> dict:
        reasons: dict[str, int] = {}
        kept = self.last.kept_fp32 if self.last else {}
        for reason in kept.values():
            key = reason.split(":")[0]
            reasons[key] = reasons.get(key, 0) + 1
        counters = self.last.counters if self.last else {}
        return {"mode": "fp16 (float16 weights and compute)",
                "io_types": "float32 (kept)" if self.keep_io_types else "float16",
                "nodes_fp16": counters.get("nodes_fp16"),
                "nodes_kept_fp32": counters.get("nodes_kept_fp32"),
                "kept_fp32_reasons": reasons,
                "casts_inserted": counters.get("casts_inserted"),
                "unsafe_initializers_kept_fp32": {k: v for k, v in self.bad_inits.items()},
                "tensors_over_range": sorted(self.unsafe) if self.scanned else "not scanned (no data)"}

    def cost(self, name: str) -> dict:
        return layer_cost(self.model, name)


# One builder per quantize pass, by registry name (graphopt.passes.REGISTRY; `--quantize` names them by alias).
BUILDERS = {"quantize_int8": Int8Builder, "quantize_dynamic": DynamicBuilder, "quantize_fp16": Fp16Builder}
