"""The bench stage of `graphopt.optimize` (`bench=True`): the final model, after any lossy stage,
timed against the original side by side on the target provider (`graphopt.core.bench`); the
ratios go to `report.sections["bench"]`."""

from __future__ import annotations

__all__ = ["run", "bench_section"]

import onnx_ir as ir

from graphopt.stages.context import Context


def run(model: ir.Model, ctx: Context) -> ir.Model:
    """Run when `bench` asks for it; the model is not changed."""
    target = ctx.options.target
    ctx.note("bench")
    ctx.sections["bench"] = bench_section(ctx.source, model, target.provider, target.threads, ctx.plan.feeds(),
                                          target.bench_runs)
    return model


def bench_section(original, optimized: ir.Model, provider: str, threads: int | None, feeds: dict,
                   runs: int) -> dict:
    """Original vs optimized, interleaved in one process: ratios (optimized / original) and figures."""
    from graphopt.core.bench import bench
    from graphopt.core.machine import describe_cpu

    result = bench([original, optimized], provider=provider, threads=threads, inputs=feeds,
                    runs=runs, warmup=3, init_repeats=2, names=["original", "optimized"])
    base, opt = result.models

    def pair(get, digits=4):
        values = {m.name: get(m) for m in (base, opt)}
        return {k: (round(v, digits) if isinstance(v, float) else v) for k, v in values.items()}

    def where(m):
        return "; ".join(f"{p} {sum(ops.values())} nodes" for p, ops in m.placement.items())

    section = {
        "provider": ", ".join(result.providers), "threads": threads or "ORT default", "runs": runs,
        "cpu": describe_cpu(result.environment), "inputs": result.inputs,
        "latency_ratio": round(opt.ratios["latency_p50"], 4),
        "latency_paired_ratio": round(opt.ratios["paired_median"], 4),
        "latency_paired_ci95": [round(x, 4) for x in opt.ratios["paired_ci95"]],
        "latency_p50_ms": pair(lambda m: m.latency_ms["p50"]),
        "memory_ratio": None if opt.ratios["peak_memory"] is None else round(opt.ratios["peak_memory"], 4),
        "peak_rss_bytes": pair(lambda m: m.memory.get("peak_bytes")),
        "session_create_ratio": round(opt.ratios["session_create"], 4),
        "session_create_ms": pair(lambda m: m.session_create_ms, 2),
        "placement": pair(where),
    }
    if result.warnings:
        section["notes"] = result.warnings
    return section
