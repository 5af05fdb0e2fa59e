"""Benchmark graphopt's compression: structured channel pruning and low-rank factorization.

    /work/venv/bin/python tools/bench_compress.py [--models digits,resnet,bert,mlp] [--runs 15]
        [--threads 1] [--json out.json]

For each model: the level-2 (lossless) optimized model is the baseline; every setting
(structured sparsity 0.3/0.5/0.7, low-rank energy 0.9/0.95/0.99) runs the compression stage
without an accuracy budget, and all variants of one model are timed *interleaved in one
process* (`graphopt.core.bench`, p50 ratios to the baseline). Columns: MACs (FLOPs = 2x), file size,
latency ratio with its paired 95% interval, and quality: top-1 accuracy on held-out labels
(digits), else agreement with the baseline's outputs (top-1 agreement for classifiers,
cosine for hidden states), plus the output's mean cosine similarity and SNR against the
baseline (the telling figures for the random-weight exports, whose top-1 barely depends
on the input). MACs count dynamic dims as 1 (bert: per token).

Models:
- digits: models/digits_cnn.onnx, accuracy on models/digits_test.npz (450 labelled samples).
- resnet: build/zoo/torch_ts/resnet50.onnx (seeded random weights: agreement, not accuracy),
  the 2 sample images + 14 random ones, latency at batch 1.
- bert: build/zoo/torch_ts/bert.onnx (4 layers, hidden 256; seeded random weights), the
  sample batch + 6 random token sequences, latency at batch 1 x 128 tokens.
- mlp: a Gemm-heavy 4-layer MLP (1024 wide, GELU) built here whose weights have power-law
  spectra s_i ~ i^-0.75, as trained layers have and random ones do not; 64 rows per run.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import onnx  # noqa: E402
import onnx.helper as oh  # noqa: E402
from onnx import numpy_helper  # noqa: E402

import graphopt  # noqa: E402
from graphopt.core.bench import bench  # noqa: E402
from graphopt.stages.compress import CompressOptions, run_compress, saved_bytes  # noqa: E402

SETTINGS = [("structured", 0.3), ("structured", 0.5), ("structured", 0.7),
            ("low_rank", 0.9), ("low_rank", 0.95), ("low_rank", 0.99)]


def power_law_mlp(width: int = 1024, layers: int = 4, exponent: float = 0.75, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        u, _ = np.linalg.qr(rng.standard_normal((width, width)))
        v, _ = np.linalg.qr(rng.standard_normal((width, width)))
        s = np.arange(1, width + 1, dtype=np.float64) ** -exponent
        w = (u * (s / s[0] * 2.0)) @ v.T
        inits += [numpy_helper.from_array(w.astype(np.float32), f"w{i}"),
                  numpy_helper.from_array((0.01 * rng.standard_normal(width)).astype(np.float32), f"b{i}")]
        out = "y" if i == layers - 1 else f"h{i}"
        nodes.append(oh.make_node("Gemm", [x, f"w{i}", f"b{i}"], [out if i == layers - 1 else f"g{i}"], name=f"fc{i}"))
        if i < layers - 1:
            nodes.append(oh.make_node("Gelu", [f"g{i}"], [out], name=f"gelu{i}"))
        x = out
    graph = oh.make_graph(nodes, "power_law_mlp", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["rows", width])],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["rows", width])], inits)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 20)], ir_version=9)


def model_specs(names: list[str]) -> list[dict]:
    rng = np.random.default_rng(0)
    specs = []
    if "digits" in names:
        data = dict(np.load(REPO / "models/digits_test.npz"))
        specs.append({"name": "digits (CNN, residual)", "source": REPO / "models/digits_cnn.onnx", "eval": data,
                      "feeds": {"input": data["input"][:1]}})
    if "resnet" in names:
        path = REPO / "build/zoo/torch_ts/resnet50.onnx"
        sample = np.load(path.with_suffix(".npz"))["input"]
        images = np.concatenate([sample, rng.standard_normal((14, 3, 224, 224)).astype(np.float32)])
        specs.append({"name": "resnet50 (torch_ts)", "source": path, "eval": {"input": images},
                      "feeds": {"input": sample[:1]}})
    if "bert" in names:
        path = REPO / "build/zoo/torch_ts/bert.onnx"
        sample = dict(np.load(path.with_suffix(".npz")))
        ids = np.concatenate([sample["input_ids"], rng.integers(1000, 30000, (6, sample["input_ids"].shape[1]))])
        mask = np.concatenate([sample["attention_mask"], np.ones((6, ids.shape[1]), sample["attention_mask"].dtype)])
        specs.append({"name": "bert (torch_ts)", "source": path,
                      "eval": {"input_ids": ids.astype(sample["input_ids"].dtype), "attention_mask": mask},
                      "feeds": {"input_ids": sample["input_ids"][:1], "attention_mask": sample["attention_mask"][:1]}})
    if "mlp" in names:
        specs.append({"name": "mlp (Gemm-heavy, power-law spectra)", "source": power_law_mlp(),
                      "eval": {"x": rng.standard_normal((64, 1024)).astype(np.float32)},
                      "feeds": {"x": rng.standard_normal((64, 1024)).astype(np.float32)}})
    return specs


def run_model(spec: dict, runs: int, threads: int | None) -> list[dict]:
    start = time.perf_counter()
    base = graphopt.optimize(spec["source"], verify=False).model
    rows = [{"setting": "baseline (level 2)", "model": base}]
    for kind, value in SETTINGS:
        options = CompressOptions(eval=spec["eval"], measure=False, channel_multiple=8,
                                  **({"sparsity": value, "structured": True} if kind == "structured"
                                     else {"low_rank": value}))
        result = run_compress(base, options)
        section = result.section
        detail = section.get("structured") or section.get("low_rank") or {}
        changed = detail.get("groups_pruned") or detail.get("layers_factored")
        rows.append({"setting": f"{kind.replace('_', '-')} {value}", "model": result.model, "section": section,
                     "changed": changed})
    for row in rows:
        from graphopt.core.analysis import analyze

        info = analyze(row["model"])
        row["macs"] = info["macs"]
        row["params"] = info["parameters"]
        row["file_bytes"] = saved_bytes(row["model"], None)
    measured = bench([r["model"] for r in rows], inputs=spec["feeds"], runs=runs, warmup=3, init_repeats=1,
                     memory=False, placement=False, threads=threads, names=[r["setting"] for r in rows])
    for row, m in zip(rows, measured.models):
        row["latency_ms"] = m.latency_ms["p50"]
        row["latency_ratio"] = m.ratios["latency_p50"]
        row["latency_ci95"] = m.ratios["paired_ci95"]
    from graphopt.core.accuracy import Evaluator
    from graphopt.core.calibrate import load_data

    evaluator = Evaluator(load_data(spec["eval"], base, purpose="evaluation"), base)
    for row in rows:
        score = evaluator(row["model"])
        fidelity = next(iter(score.fidelity.values()))
        row.update(metric=score.metric, quality=score.value, cosine=fidelity["cosine"], snr=fidelity["snr_db"])
    print(f"[{spec['name']}: {time.perf_counter() - start:.0f} s]", file=sys.stderr)
    return rows


def table(name: str, rows: list[dict]) -> str:
    base = rows[0]
    lines = [f"### {name}", "",
             f"quality: {base['metric']}; latency: p50, interleaved, ratio to the baseline (paired 95% CI)", "",
             "| setting | changed | MACs | MACs ratio | params | file | file ratio | latency ms | latency ratio | quality "
             "| output cosine | SNR dB |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ci = r["latency_ci95"]
        lines.append(f"| {r['setting']} | {r.get('changed') or '-'} | {r['macs'] / 1e6:.1f}M | "
                     f"{r['macs'] / base['macs']:.3f} | {r['params'] / 1e6:.2f}M | {r['file_bytes'] / 1e6:.2f} MB | "
                     f"{r['file_bytes'] / base['file_bytes']:.3f} | {r['latency_ms']:.2f} | "
                     f"{r['latency_ratio']:.3f} ({ci[0]:.2f}-{ci[1]:.2f}) | {r['quality']:.2f} | {r['cosine']:.4f} | "
                     f"{r['snr']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits,resnet,bert,mlp")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1, help="ORT intra-op threads (0: ORT default)")
    parser.add_argument("--json", type=pathlib.Path)
    args = parser.parse_args(argv)
    results = {}
    for spec in model_specs(args.models.split(",")):
        rows = run_model(spec, args.runs, args.threads or None)
        print(table(spec["name"], rows) + "\n", flush=True)
        results[spec["name"]] = [{k: v for k, v in r.items() if k not in ("model", "section")} for r in rows]
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
