"""Does the latency ratio `graphopt optimize --quantize` reports hold up in an independent timing?

For each model: calibration data at its real input size (its sample `.npz`, perturbed into N
samples), `graphopt optimize --quantize MODE --calibration that.npz --json` (which measures
the float and quantized models side by side and reports `latency_ratio` and the input shapes
it timed at), then `graphopt bench float.onnx quantized.onnx --inputs one-sample.npz`, a
separate process timing both, interleaved. The table puts the two ratios side by side with
the bench's 95% interval: the report's figure should sit within it, up to the noise of two
separate runs on a shared machine.

    python tools/bench_report_timing.py [--zoo build/zoo] [--models torch_ts/unet_seg,...] [--runs 40]

Run from the repo root with graphopt installed (the models come from tools/export_*.py).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

DEFAULT_MODELS = {  # model: quantization mode (int8 needs calibration; BERT-style encoders run int8-dynamic too)
    "torch_ts/unet_seg": "int8",
    "torch_ts/yolo_like": "int8",
    "torch_ts/crnn_ocr": "int8",
    "torch_ts/resnet50": "int8",
    "torch_ts/hf_bert": "int8-dynamic",
}


def _samples(npz: pathlib.Path, count: int, seed: int = 0) -> tuple[dict, dict]:
    """(calibration arrays with `count` samples, one sample) from a zoo sample file."""
    with np.load(npz) as data:
        feeds = {k: data[k] for k in data.files if not k.startswith("expected_")}
    rng = np.random.default_rng(seed)
    calib = {}
    for name, array in feeds.items():
        one = array[:1]
        if np.issubdtype(array.dtype, np.floating):
            calib[name] = np.concatenate([one + 0.05 * rng.standard_normal(one.shape).astype(array.dtype)
                                          for _ in range(count)])
        else:
            calib[name] = np.concatenate([one] * count)
    return calib, {k: v[:1] for k, v in feeds.items()}


def _graphopt(*args) -> dict:
    proc = subprocess.run(["graphopt", *map(str, args), "--json"], capture_output=True, text=True)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"graphopt {' '.join(map(str, args))}: exit {proc.returncode}: {proc.stderr.strip()}")
    return json.loads(proc.stdout)


def measure(model: pathlib.Path, mode: str, work: pathlib.Path, runs: int, samples: int) -> dict:
    calib, one = _samples(model.with_suffix(".npz"), samples)
    np.savez(work / "calib.npz", **calib)
    np.savez(work / "one.npz", **one)
    floated, quantized = work / "float.onnx", work / f"{mode}.onnx"
    _graphopt("optimize", model, "-o", floated)
    report = _graphopt("optimize", model, "-o", quantized, "--quantize", mode, "--calibration", work / "calib.npz")
    section = report["quantization"]
    bench = _graphopt("bench", floated, quantized, "--inputs", work / "one.npz", "--runs", runs)
    other = bench["models"][1]["ratios"]
    return {"model": model.stem, "mode": mode, "report_ratio": section.get("latency_ratio"),
            "report_inputs": section.get("latency_inputs"), "bench_ratio": other["paired_median"],
            "bench_ci95": other["paired_ci95"], "bench_inputs": bench["inputs"], "cpu": bench.get("cpu", "")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", type=pathlib.Path, default=pathlib.Path("build/zoo"))
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--samples", type=int, default=8)
    args = parser.parse_args(argv)
    rows = []
    for name in args.models.split(","):
        model = args.zoo / f"{name}.onnx"
        if not model.exists():
            print(f"skip {name}: {model} not found (tools/export_*.py)", file=sys.stderr)
            continue
        with tempfile.TemporaryDirectory(prefix="graphopt-timing-") as tmp:
            rows.append(measure(model, DEFAULT_MODELS.get(name, "int8"), pathlib.Path(tmp), args.runs, args.samples))
        print(json.dumps(rows[-1]), file=sys.stderr)
    print("| model | mode | inputs timed | report ratio | bench ratio (95% CI) | inside |")
    print("|---|---|---|---:|---:|---|")
    for r in rows:
        lo, hi = r["bench_ci95"]
        ratio = r["report_ratio"]
        inside = "yes" if ratio is not None and lo <= ratio <= hi else "no"
        shapes = "; ".join(f"{k} {'x'.join(map(str, v))}" for k, v in (r["report_inputs"] or {}).items())
        print(f"| {r['model']} | {r['mode']} | {shapes} | {ratio} | {r['bench_ratio']:.3f} ({lo:.3f}-{hi:.3f}) "
              f"| {inside} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
