"""graphopt against its peers, side by side: tool time and memory, and ORT latency of what each tool writes.

    python tools/bench_peers.py [MODEL ...] [--reps 3] [--budget 20] [--json FILE] [--tools a,b]

Without MODEL: the onnx package's light zoo (backend/test/data/light), models/digits_cnn.onnx
and every build/zoo/**/*.onnx that exists.

1. Tool cost. Each tool runs as its own process on the same input (`graphopt optimize IN -o OUT`,
   `onnxsim IN OUT`, `onnxslim IN OUT`, `onnxoptimizer IN OUT`), repetitions interleaved
   (round r starts with tool r), whole-process wall time and peak RSS from wait4(2) in a
   small launcher process. The figure is the median over repetitions. graphopt runs with its default verification on
   (`graphopt`) and off (`graphopt-noverify`); peers run with their defaults.
2. Inference. In one process, one ONNX Runtime session per output plus the original (CPU,
   default graph optimization level, intra-op threads 2), on the same inputs (the model's
   .npz beside it, else random from the declared shapes, dynamic dims 1); after warm-up the
   sessions run interleaved, round by round, and each reports its median. Outputs are
   compared with the original's, so a tool that breaks a model shows up as `NO`. Thread-pool
   spinning is off in every session (`session.intra_op.allow_spinning=0`): with several
   sessions in one process, idle pools spinning would take the cores from the timed one.

Ratios: tool wall time / graphopt's, and latency / the original's. Nothing is asserted;
this prints what it measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort

REPO = pathlib.Path(__file__).resolve().parents[1]
BIN = pathlib.Path(sys.executable).parent


def _script(name: str) -> list[str]:
    path = BIN / name
    return [str(path)] if path.exists() else [name]


TOOLS: dict[str, object] = {
    "graphopt": lambda i, o: [*_script("graphopt"), "optimize", i, "-o", o],
    "graphopt-noverify": lambda i, o: [*_script("graphopt"), "optimize", i, "-o", o, "--no-verify"],
    "onnxsim": lambda i, o: [*_script("onnxsim"), i, o],
    "onnxslim": lambda i, o: [*_script("onnxslim"), i, o],
    "onnxoptimizer": lambda i, o: [*_script("onnxoptimizer"), i, o],
}


def default_models() -> list[pathlib.Path]:
    light = pathlib.Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    models = sorted(light.glob("*.onnx"))
    models.append(REPO / "models" / "digits_cnn.onnx")
    models += sorted((REPO / "build" / "zoo").glob("**/*.onnx"))
    return [m for m in models if m.exists()]


@dataclasses.dataclass
class ToolRun:
    wall_s: float
    peak_mb: float
    code: int
    message: str = ""


# Measures one command from a small process of its own. wait4() from this process would
# over-report: Linux starts a forked child's peak RSS at its parent's (the latency sessions
# make this process big), so the fork happens in a fresh interpreter instead.
_LAUNCHER = """
import json, os, sys, time
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - start
with open(sys.argv[1], "w") as f:
    json.dump({"wall": wall, "maxrss_kb": usage.ru_maxrss, "code": os.waitstatus_to_exitcode(status)}, f)
"""


def run_measured(argv: list[str], timeout: float, log: pathlib.Path) -> ToolRun:
    """Run `argv`; its wall time and peak RSS (ru_maxrss of exactly that process tree's root)."""
    result = log.with_suffix(".json")
    result.unlink(missing_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", _LAUNCHER, str(result), *argv], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            return ToolRun(timeout, 0.0, -9, "killed (timeout)")
    if not result.exists():
        return ToolRun(0.0, 0.0, proc.returncode or -1, "launcher failed")
    measured = json.loads(result.read_text())
    code = measured["code"]
    message = ""
    if code != 0:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        message = (lines[-1] if lines else f"exit {code}")[:160]
        if code < 0:
            message = f"killed by signal {-code}"
    return ToolRun(measured["wall"], measured["maxrss_kb"] / 1024, code, message)


def _session(path: pathlib.Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # Idle sessions must not spin: their pools would steal the cores from the session being timed.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _inputs(model: pathlib.Path, session: ort.InferenceSession) -> dict[str, np.ndarray]:
    from graphopt.core.verify import runnable_inputs

    data = None
    npz = model.with_suffix(".npz")
    if npz.exists():
        with np.load(npz) as f:
            arrays = {k: f[k] for k in f.files}
        names = {a.name for a in session.get_inputs()}
        if names <= set(arrays):
            data = {k: arrays[k] for k in names}
    return runnable_inputs(model, data=data)[1]


def _agrees(ref: list[np.ndarray], got: list[np.ndarray]) -> tuple[bool, float]:
    worst = 0.0
    for r, g in zip(ref, got):
        r, g = np.asarray(r), np.asarray(g)
        if r.shape != g.shape or r.dtype != g.dtype:
            return False, float("inf")
        if r.size and np.issubdtype(r.dtype, np.number):
            diff = np.abs(r.astype(np.float64) - g.astype(np.float64))
            worst = max(worst, float(np.nanmax(diff)))
            scale = max(1.0, float(np.nanmax(np.abs(r))))
            if not np.allclose(g, r, rtol=1e-3, atol=1e-4 * scale, equal_nan=True):
                return False, worst
        elif not np.array_equal(r, g):
            return False, float("inf")
    return True, worst


def latencies(model: pathlib.Path, outputs: dict[str, pathlib.Path], threads: int, budget_s: float,
              max_runs: int, min_runs: int = 20) -> dict[str, dict]:
    """Median ORT latency of the original and of each output, sessions' runs interleaved."""
    sessions: dict[str, ort.InferenceSession] = {}
    results: dict[str, dict] = {}
    for name, path in {"original": model, **outputs}.items():
        try:
            sessions[name] = _session(path, threads)
        except Exception as e:  # noqa: BLE001 - a tool's output ORT cannot load is a result, not a crash
            results[name] = {"error": f"ORT cannot load: {str(e).splitlines()[0][:120]}"}
    if "original" not in sessions:
        return results
    feeds = _inputs(model, sessions["original"])
    reference = sessions["original"].run(None, feeds)
    per_run = {}
    for name, session in list(sessions.items()):
        try:
            start = time.perf_counter()
            got = session.run(None, feeds)
            per_run[name] = time.perf_counter() - start
            for _ in range(2):
                session.run(None, feeds)
        except Exception as e:  # noqa: BLE001
            results[name] = {"error": f"ORT cannot run: {str(e).splitlines()[0][:120]}"}
            del sessions[name]
            continue
        ok, diff = _agrees(reference, got)
        results[name] = {"agrees": ok, "max_abs_diff": diff}
    runs = int(max(min_runs, min(max_runs, budget_s / max(sum(per_run.values()), 1e-6))))
    names = list(sessions)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(runs):
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            sessions[name].run(None, feeds)
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["original"])
    for name in names:
        median = statistics.median(times[name])
        results[name].update(latency_ms=median * 1e3, latency_ratio=median / base, runs=runs)
    return results


def _model_stats(path: pathlib.Path) -> dict:
    proto = onnx.load(str(path), load_external_data=False)
    files = [path] + [path.parent / e.value for t in proto.graph.initializer for e in t.external_data
                      if e.key == "location"]
    return {"nodes": len(proto.graph.node), "mb": sum(f.stat().st_size for f in set(files) if f.exists()) / 1e6}


def bench_model(model: pathlib.Path, tools: list[str], reps: int, timeout: float, workdir: pathlib.Path,
                threads: int, budget_s: float, max_runs: int) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[ToolRun]] = {t: [] for t in tools}
    outputs = {t: workdir / f"{t}.onnx" for t in tools}
    for r in range(reps):
        for tool in tools[r % len(tools):] + tools[: r % len(tools)]:
            for stale in workdir.glob(f"{tool}.onnx*"):
                stale.unlink()
            argv = TOOLS[tool](str(model), str(outputs[tool]))
            runs[tool].append(run_measured(argv, timeout, workdir / f"{tool}.log"))
    row: dict = {"model": _label(model), "original": _model_stats(model), "tools": {}}
    ok_outputs = {}
    for tool in tools:
        good = [x for x in runs[tool] if x.code == 0]
        entry = {"code": runs[tool][-1].code, "message": next((x.message for x in runs[tool] if x.message), "")}
        if good:
            entry.update(wall_s=statistics.median(x.wall_s for x in good),
                         peak_mb=statistics.median(x.peak_mb for x in good),
                         walls=[round(x.wall_s, 3) for x in runs[tool]])
        if good and outputs[tool].exists():
            entry.update(_model_stats(outputs[tool]))
            if tool != "graphopt-noverify":  # same graph as graphopt's
                ok_outputs[tool] = outputs[tool]
        row["tools"][tool] = entry
    lat = latencies(model, ok_outputs, threads, budget_s, max_runs)
    row["original"].update(lat.pop("original", {}))
    for tool, info in lat.items():
        row["tools"][tool].update(info)
    base = row["tools"].get("graphopt", {}).get("wall_s")
    for entry in row["tools"].values():
        if base and "wall_s" in entry:
            entry["wall_vs_graphopt"] = entry["wall_s"] / base
    return row


def _label(model: pathlib.Path) -> str:
    try:
        return str(model.resolve().relative_to(REPO))
    except ValueError:
        return model.name


def _fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def render(rows: list[dict]) -> str:
    lines = ["| model | tool | wall s | x graphopt | peak MB | nodes | MB | ORT ms | x original | agrees |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for row in rows:
        o = row["original"]
        lines.append(f"| {row['model']} | original | | | | {o['nodes']} | {o['mb']:.2f} | "
                     f"{_fmt(o.get('latency_ms'), '.2f')} | 1.00 | |")
        for tool, e in row["tools"].items():
            if "wall_s" not in e:
                lines.append(f"| | {tool} | failed: {e.get('message') or 'exit ' + str(e['code'])} | | | | | | | |")
                continue
            agrees = e.get("error") or ("yes" if e.get("agrees") else ("NO" if "agrees" in e else ""))
            lines.append(
                f"| | {tool} | {e['wall_s']:.2f} | {_fmt(e.get('wall_vs_graphopt'), '.2f')} | {e['peak_mb']:.0f} | "
                f"{e.get('nodes', '-')} | {_fmt(e.get('mb'), '.2f')} | {_fmt(e.get('latency_ms'), '.2f')} | "
                f"{_fmt(e.get('latency_ratio'), '.3f')} | {agrees} |")
    return "\n".join(lines)


def summary(rows: list[dict]) -> dict:
    """Geometric means over the models every tool in the pair handled."""
    tools = sorted({t for r in rows for t in r["tools"]})
    out = {}
    for tool in tools:
        wall = [r["tools"][tool]["wall_vs_graphopt"] for r in rows if "wall_vs_graphopt" in r["tools"].get(tool, {})]
        lat = [r["tools"][tool]["latency_ratio"] for r in rows if "latency_ratio" in r["tools"].get(tool, {})]
        failed = [r["model"] for r in rows if tool in r["tools"] and "wall_s" not in r["tools"][tool]]
        broke = [r["model"] for r in rows if r["tools"].get(tool, {}).get("agrees") is False]
        slower = [r["model"] for r in rows if r["tools"].get(tool, {}).get("latency_ratio", 0) > 1.05]
        out[tool] = {
            "models": len(wall),
            "wall_vs_graphopt_geomean": float(np.exp(np.mean(np.log(wall)))) if wall else None,
            "wall_vs_graphopt_min": min(wall) if wall else None,
            "latency_vs_original_geomean": float(np.exp(np.mean(np.log(lat)))) if lat else None,
            "latency_vs_original_max": max(lat) if lat else None,
            "slower_than_original_over_5pct": slower,
            "failed": failed,
            "wrong_outputs": broke,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", type=pathlib.Path)
    parser.add_argument("--tools", default=",".join(TOOLS), help=f"comma-separated, from {', '.join(TOOLS)}")
    parser.add_argument("--reps", type=int, default=3, help="runs of each tool per model, interleaved")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per tool run")
    parser.add_argument("--threads", type=int, default=2, help="ORT intra-op threads")
    parser.add_argument("--budget", type=float, default=20.0, help="seconds of timed ORT runs per model")
    parser.add_argument("--max-runs", type=int, default=3000, help="most timed ORT rounds per model")
    parser.add_argument("--json", type=pathlib.Path, help="also write every figure here")
    parser.add_argument("--keep", type=pathlib.Path, help="keep the tools' outputs under this directory")
    args = parser.parse_args(argv)

    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = [t for t in tools if t not in TOOLS]
    if unknown:
        parser.error(f"unknown tool {unknown[0]!r}")
    models = args.models or default_models()
    root = args.keep or pathlib.Path(tempfile.mkdtemp(prefix="bench-peers-"))
    rows = []
    try:
        for i, model in enumerate(models, 1):
            print(f"[{i}/{len(models)}] {_label(model)}", file=sys.stderr, flush=True)
            workdir = root / _label(model).replace("/", "__").removesuffix(".onnx")
            rows.append(bench_model(model, tools, args.reps, args.timeout, workdir, args.threads,
                                    args.budget, args.max_runs))
            if not args.keep:
                shutil.rmtree(workdir, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(render(rows))
    totals = summary(rows)
    print()
    print("| tool | models | wall / graphopt (geomean) | min | ORT latency / original (geomean) | max | "
          "slower >5% | failed | wrong outputs |")
    print("|---|---:|---:|---:|---:|---:|---|---|---|")
    for tool, s in totals.items():
        print(f"| {tool} | {s['models']} | {_fmt(s['wall_vs_graphopt_geomean'], '.2f')} | "
              f"{_fmt(s['wall_vs_graphopt_min'], '.2f')} | {_fmt(s['latency_vs_original_geomean'], '.3f')} | "
              f"{_fmt(s['latency_vs_original_max'], '.3f')} | {', '.join(s['slower_than_original_over_5pct']) or '-'} | "
              f"{', '.join(s['failed']) or '-'} | {', '.join(s['wrong_outputs']) or '-'} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows, "summary": totals, "reps": args.reps,
                                         "threads": args.threads, "ort": ort.__version__}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
