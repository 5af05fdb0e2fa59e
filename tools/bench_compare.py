"""`graphopt compare` over the export zoo: one report per network, and a summary of how far
graphopt optimize brings the exports of each network together.

    /work/venv/bin/python tools/bench_compare.py [--zoo build/zoo] [--nets resnet50,inception] [--runs 20]
                                                 [--level 2] [--out build/compare]

For every network with two or more exports under `<zoo>/<framework>/<net>.onnx` (first the
PyTorch TorchScript export when present: ratios and output agreement are relative to it),
writes `<out>/<net>.html` (self-contained, plots embedded) and `<out>/<net>.md`, and prints a
Markdown summary: exports, output agreement, node-count spread, leftover patterns, op-histogram
distance and latency spread, exported -> optimized. Without the zoo, it compares two
hand-built exports of one small conv net (tests/test_compare.py) so the tool always runs.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from graphopt.core.machine import describe_cpu  # noqa: E402
from graphopt.app.compare import compare  # noqa: E402
from graphopt.app.rendering.compare import write_report  # noqa: E402

FIRST = ["torch_ts", "torch_dynamo", "keras", "mxnet", "paddle"]


def exports(zoo: pathlib.Path, nets: list[str] | None) -> dict[str, list[pathlib.Path]]:
    found: dict[str, list[pathlib.Path]] = {}
    for path in sorted(zoo.glob("*/*.onnx")):
        if path.stem.endswith("_train") or (nets and path.stem not in nets):
            continue
        found.setdefault(path.stem, []).append(path)
    order = {fw: i for i, fw in enumerate(FIRST)}
    return {net: sorted(paths, key=lambda p: (order.get(p.parent.name, len(order)), p.parent.name))
            for net, paths in found.items() if len(paths) >= 2}


def summary_row(net: str, result) -> str:
    conv = result.convergence
    exp, opt = conv["exported"], conv.get("optimized") or {}

    def arrow(key, fmt):
        a, b = exp.get(key), opt.get(key)
        return "-" if a is None else fmt(a) + (f" -> {fmt(b)}" if b is not None else "")

    agree = []
    for m in result.optimized or result.exported:
        status = m.agreement.get("status", "-")
        agree.append("ok" if status == "agree" else status)
    distance = max(exp["histogram_distance"].values(), default=0)
    distance_after = max(opt.get("histogram_distance", {}).values(), default=0) if opt else None
    frameworks = ", ".join(m.name.split("/")[0] for m in result.exported)
    return (f"| {net} | {frameworks} | {', '.join(agree)} | {arrow('node_spread', lambda v: f'{v:.2f}x')} | "
            f"{arrow('leftovers', str)} | {distance}" + (f" -> {distance_after}" if distance_after is not None else "")
            + f" | {arrow('latency_spread', lambda v: f'{v:.2f}x')} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", default=str(ROOT / "build" / "zoo"))
    parser.add_argument("--nets", default=None, help="comma-separated network names")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--level", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=str(ROOT / "build" / "compare"))
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    found = exports(pathlib.Path(args.zoo), args.nets.split(",") if args.nets else None)
    tmp = None
    if not found:
        from tests.test_compare import make_exports

        tmp = tempfile.TemporaryDirectory(prefix="graphopt-compare-")
        found = {"small_cnn (hand-built)": make_exports(pathlib.Path(tmp.name))}
        print("no zoo exports found: comparing two hand-built exports of a small conv net")
    rows, env = [], None
    for net, paths in found.items():
        print(f"{net}: {', '.join(p.parent.name for p in paths)}", flush=True)
        result = compare(paths, level=args.level, runs=args.runs, threads=args.threads)
        env = result.bench["environment"]
        stem = net.split()[0]
        written = write_report(result, out / f"{stem}.html") + write_report(result, out / f"{stem}.md")
        print("  wrote " + ", ".join(str(p) for p in written if p.suffix in (".html", ".md")), flush=True)
        rows.append(summary_row(net, result))
    print()
    if env:
        print(describe_cpu(env))
    print(f"graphopt optimize level {args.level}; {args.runs} interleaved runs per model; a -> b: exported -> "
          "optimized; agreement: outputs of each optimized export vs the first export on the same inputs\n")
    print("| network | exports | agreement | node-count spread | leftover patterns | max op-histogram distance "
          "| latency spread |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
