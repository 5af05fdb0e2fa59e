"""Run ``graphopt optimize --json`` on every bundled zoo model and tabulate what it did.

    . .venv/bin/activate && python tools/zoo_baseline.py [--models models/zoo] [--json out.json]

Per model: graphopt's exit code, its verification status and reason, the input shapes its
verification used, and, independently of graphopt, whether the optimized file still runs
on the model's realistic ``.npz`` sample in ONNX Runtime (default level) and how far its
outputs are from the framework's ``expected_*``. The last column is the one that counts:
a "passed" verification on inputs the model was never meant to see proves little.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def run_npz(onnx_path: Path, npz_path: Path) -> str:
    import onnxruntime as ort

    data = np.load(npz_path)
    feeds = {k: data[k] for k in data.files if not k.startswith("expected_")}
    try:
        so = ort.SessionOptions()
        so.log_severity_level = 4
        sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        got = sess.run(names, {i.name: feeds[i.name] for i in sess.get_inputs()})
    except Exception as e:  # noqa: BLE001 - the failure is the result
        return f"fails: {str(e).splitlines()[0][:160]}"
    diff = max(float(np.max(np.abs(g.astype(np.float64) - data[f"expected_{n}"]))) for n, g in zip(names, got))
    return f"runs, max diff {diff:.1e}"


def one(model: Path, tmp: Path) -> dict:
    out = tmp / model.name
    proc = subprocess.run(["graphopt", "optimize", str(model), "-o", str(out), "--json"],
                          capture_output=True, text=True, cwd=REPO)
    row = {"model": model.stem, "exit": proc.returncode}
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        row["status"] = "no JSON"
        row["reason"] = (proc.stderr.strip().splitlines() or [""])[-1][:300]
        return row
    ver = report.get("verification") or {}
    row["status"] = ver.get("status")
    row["reason"] = (ver.get("reason") or "")[:300]
    row["input_shapes"] = ver.get("input_shapes")
    row["nodes"] = f"{report.get('before', {}).get('nodes')} -> {report.get('after', {}).get('nodes')}"
    row["optimized_on_npz"] = run_npz(out, model.with_suffix(".npz")) if out.exists() else "no output written"
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=Path, default=REPO / "models" / "zoo")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [one(m, Path(tmp)) for m in sorted(args.models.glob("*.onnx"))]
    print("| model | exit | verification | nodes | input shapes used | reason | optimized model on the .npz |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        shapes = "; ".join(f"{k} {v}" for k, v in (r.get("input_shapes") or {}).items())
        print(f"| {r['model']} | {r['exit']} | {r['status']} | {r.get('nodes', '')} | {shapes} | "
              f"{r['reason'].replace('|', '/')} | {r.get('optimized_on_npz', '')} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    sys.exit(0)


if __name__ == "__main__":
    main()
