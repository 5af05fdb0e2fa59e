"""Summarize the export zoo as a Markdown table (stdlib only).

    python3 tools/export_report.py [--out build/zoo] [--ops 5]

Reads the ``<framework>/<net>.json`` files the export scripts write and
prints one row per export: status, node count, opset, max abs difference
between ONNX Runtime and the framework, whether batch 1 (and sequence 64)
also ran, and the most frequent ops. Failures print their first error line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "build" / "zoo"
FRAMEWORKS = ["torch_ts", "torch_dynamo", "keras", "mxnet", "paddle"]


def rows(root: Path, top: int):
    infos = [json.loads(p.read_text()) for p in sorted(root.glob("*/*.json"))]
    order = {f: i for i, f in enumerate(FRAMEWORKS)}
    infos.sort(key=lambda d: (order.get(d["framework"], 99), d["net"]))
    for d in infos:
        if "nodes" not in d:
            err = d.get("error", "").splitlines()[0][:160] if d.get("error") else ""
            yield [d["framework"], d["net"], d["status"], "", "", "", "", err]
            continue
        diff = d.get("max_abs_diff")
        diff_s = "n/a" if diff is None else f"{diff:.2g}"
        if d.get("max_abs_expected") is not None:
            diff_s += f" (of {d['max_abs_expected']:.3g})"
        ops = ", ".join(f"{k} {v}" for k, v in list(d["ops"].items())[:top])
        opset = d["opset"].get("ai.onnx", "?")
        status = d["status"] if d["status"] != "ok" else "ok"
        yield [d["framework"], d["net"], status, str(d["nodes"]), str(opset), diff_s,
               str(d.get("dynamic_ok", "")), ops + (f" | {d['error'][:120]}" if d.get("error") else "")]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--ops", type=int, default=5, help="how many of the most frequent ops to list")
    args = ap.parse_args()
    head = ["framework", "net", "status", "nodes", "opset", "max abs diff (max abs out)", "dynamic",
            f"top {args.ops} ops"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows(args.out, args.ops):
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
