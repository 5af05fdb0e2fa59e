"""The one object the stages of `graphopt.optimize` share: the settings, the input model, and what
each stage leaves for the next and for the report.

`options` is a `graphopt.app.options.OptimizeOptions`; a stage reads its own group
(`ctx.options.quantize.calibration`). A stage's `run(model, ctx)` returns the model the next
stage starts from (the same object when it changed nothing).
"""

from __future__ import annotations

__all__ = ["Context"]

import dataclasses
import pathlib
import time
from collections.abc import Callable

import onnx_ir as ir

from graphopt.core.pipeline import PassStats
from graphopt.core.verify import VerifyResult


@dataclasses.dataclass
class Context:
    source: object  # the model as the caller gave it: a path, an onnx.ModelProto or an ir.Model
    options: object  # graphopt.app.options.OptimizeOptions
    progress: Callable[[str], None] | None = None
    start: float = dataclasses.field(default_factory=time.perf_counter)
    protect: set[pathlib.Path] = dataclasses.field(default_factory=set)  # the input's files: never overwritten
    plan: object = None  # graphopt.core.inputs.InputModel: what every run of the model is fed
    level: int | None = None
    before: dict = dataclasses.field(default_factory=dict)  # analysis of the input
    after: dict = dataclasses.field(default_factory=dict)  # analysis of the current result
    file_bytes_before: int = 0
    file_bytes_after: int | None = None
    passes: list[PassStats] = dataclasses.field(default_factory=list)
    iterations: int = 0
    verification: VerifyResult | None = None
    staged: object = None  # graphopt.core.io.Staged: the verified lossless file, moved into place by save()
    warnings: list[str] = dataclasses.field(default_factory=list)
    sections: dict[str, dict] = dataclasses.field(default_factory=dict)  # report sections, by stage
    budget: float | None = None  # accuracy points the lossy stages still may spend
    sparse_format: str | None = None  # set by pruning: zero-heavy weights are saved as sparse_initializer
    compressed: object = None  # graphopt.stages.compress.CompressResult, scored again after quantization
    input_model: ir.Model | None = None  # the model as loaded, before any pass

    def note(self, step: str) -> None:
        if self.progress:
            self.progress(step)

    @property
    def lossless_failed(self) -> bool:
        return self.verification is not None and self.verification.status == "failed"
