"""The optimize report: one dataclass, as data and JSON. Its renderers (rich tables, Markdown) are
`graphopt.app.rendering.report`."""

from __future__ import annotations

__all__ = ["Report", "jsonable"]

import dataclasses
import json

from graphopt.core.pipeline import PassStats
from graphopt.core.verify import VerifyResult


@dataclasses.dataclass
class Report:
    source: str
    level: int | None
    passes: list[PassStats]
    iterations: int
    before: dict
    after: dict
    file_bytes_before: int
    file_bytes_after: int | None
    verification: VerifyResult | None
    seconds: float
    output: str | None = None
    warnings: list[str] = dataclasses.field(default_factory=list)
    # Sections later stages add (quantization, pruning, bench), each a JSON-ready dict.
    sections: dict[str, dict] = dataclasses.field(default_factory=dict)

    @property
    def compression_ratio(self) -> float | None:
        if not self.file_bytes_after:
            return None
        return self.file_bytes_before / self.file_bytes_after

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "output": self.output,
            "level": self.level,
            "seconds": round(self.seconds, 4),
            "iterations": self.iterations,
            "passes": [p.to_dict() for p in self.passes],
            "before": self.before,
            "after": self.after,
            "file_bytes_before": self.file_bytes_before,
            "file_bytes_after": self.file_bytes_after,
            "compression_ratio": self.compression_ratio,
            "verification": self.verification.to_dict() if self.verification else None,
            "warnings": self.warnings,
            **self.sections,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=jsonable)


def jsonable(obj):
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, float):
        return obj
    return str(obj)
