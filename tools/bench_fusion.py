"""Level 3 (measured horizontal fusion) against level 2, on Inception v1/v2 and a BERT-style encoder.

    /work/venv/bin/python tools/bench_fusion.py [--runs 150] [--threads N] [--only inception_v1,bert]
                                                [--bert build/zoo/torch_ts/bert.onnx] [--json out.json]

For each model: optimize at level 2 and at level 3 (fuse_parallel timing every candidate in
ORT on this machine), verify both against the original, then time level 2 and level 3
interleaved in one process (graphopt.core.bench) and print the ratio with its 95% interval.
Then every fusion candidate with its measured gain, the decision, and what the cost model
(`--no-measure`) would have decided. Inception v1/v2 come from the onnx package
(`backend/test/data/light`, weights are ConstantOfShape fills); BERT is the export zoo's
(`build/zoo/torch_ts/bert.onnx` with its sample inputs) or, without the zoo, a BERT-style
encoder built here with onnx.helper. BERT runs at the zoo's sample shape (2x128) and at a
short query (1x16). A last, synthetic row (eight narrow MatMul heads concatenated in order)
shows a block shape where the fusion pays.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import graphopt  # noqa: E402
from graphopt.core.bench import bench  # noqa: E402
from graphopt.core.machine import describe_cpu, environment  # noqa: E402
from graphopt.passes.fusion.fuse_parallel import find_candidates  # noqa: E402
from graphopt.passes.fusion._fuse_parallel_decide import CostModelDecider  # noqa: E402

LIGHT = pathlib.Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def own_bert(path: pathlib.Path, layers: int = 4, d: int = 256, heads: int = 4, ffn: int = 1024,
             vocab: int = 30522) -> pathlib.Path:
    """A BERT-style encoder (post-LN, GELU) with dynamic [batch, sequence] inputs, weights seeded."""
    rng = np.random.default_rng(0)
    inits, nodes = {}, []

    def w(name, *shape, std=0.02):
        inits[name] = (rng.standard_normal(shape) * std).astype(np.float32)
        return name

    def const(name, array):
        inits[name] = np.asarray(array)
        return name

    def linear(x, name, cin, cout):
        nodes.append(helper.make_node("MatMul", [x, w(name + ".W", cin, cout)], [name + ".mm"]))
        nodes.append(helper.make_node("Add", [name + ".mm", w(name + ".b", cout)], [name]))
        return name

    def layernorm(x, name):
        inits[name + ".g"] = np.ones(d, np.float32)
        inits[name + ".b"] = np.zeros(d, np.float32)
        nodes.append(helper.make_node("LayerNormalization", [x, name + ".g", name + ".b"], [name], epsilon=1e-12,
                                      axis=-1))
        return name

    nodes.append(helper.make_node("Gather", [w("word", vocab, d), "input_ids"], ["emb"]))
    nodes.append(helper.make_node("Shape", ["input_ids"], ["ids_shape"], start=1, end=2))
    nodes.append(helper.make_node("Slice", [w("pos", 512, d), const("zero1", [0]), "ids_shape", const("ax0", [0])],
                                  ["pos_used"]))
    nodes.append(helper.make_node("Add", ["emb", "pos_used"], ["emb_pos"]))
    h = layernorm("emb_pos", "emb_ln")
    nodes += [helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
              helper.make_node("Unsqueeze", ["mask_f", const("ax12", [1, 2])], ["mask4"]),
              helper.make_node("Sub", [const("one", np.float32(1)), "mask4"], ["inv"]),
              helper.make_node("Mul", ["inv", const("neg", np.float32(-10000.0))], ["bias"])]
    split_heads = const("split_heads", [0, 0, heads, d // heads])
    merge_heads = const("merge_heads", [0, 0, d])
    scale = const("scale", np.float32(1 / np.sqrt(d // heads)))
    for i in range(layers):
        p = f"l{i}."
        q, k, v = (linear(h, p + n, d, d) for n in "qkv")
        for n, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])):
            nodes.append(helper.make_node("Reshape", [p + n, split_heads], [p + n + "4"]))
            nodes.append(helper.make_node("Transpose", [p + n + "4"], [p + n + "t"], perm=perm))
        nodes += [helper.make_node("MatMul", [p + "qt", p + "kt"], [p + "s"]),
                  helper.make_node("Mul", [p + "s", scale], [p + "ss"]),
                  helper.make_node("Add", [p + "ss", "bias"], [p + "sb"]),
                  helper.make_node("Softmax", [p + "sb"], [p + "a"], axis=-1),
                  helper.make_node("MatMul", [p + "a", p + "vt"], [p + "ctx"]),
                  helper.make_node("Transpose", [p + "ctx"], [p + "ctxt"], perm=[0, 2, 1, 3]),
                  helper.make_node("Reshape", [p + "ctxt", merge_heads], [p + "ctx3"])]
        o = linear(p + "ctx3", p + "o", d, d)
        nodes.append(helper.make_node("Add", [o, h], [p + "res1"]))
        h1 = layernorm(p + "res1", p + "ln1")
        f = linear(h1, p + "ffn1", d, ffn)
        nodes.append(helper.make_node("Gelu", [f], [p + "gelu"]))
        f2 = linear(p + "gelu", p + "ffn2", ffn, d)
        nodes.append(helper.make_node("Add", [f2, h1], [p + "res2"]))
        h = layernorm(p + "res2", p + "ln2")
    nodes.append(helper.make_node("Identity", [h], ["last_hidden_state"]))
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"])
    out = helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", d])
    graph = helper.make_graph(nodes, "bert", [ids, mask], [out],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], producer_name="graphopt-tools")
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def heads_net(path: pathlib.Path, seq: int = 8, d: int = 256, heads: int = 8) -> pathlib.Path:
    """A synthetic multi-head block where horizontal fusion should pay: LayerNorm, eight narrow
    MatMul+Add+Relu heads concatenated in order, an output projection."""
    rng = np.random.default_rng(2)
    inits = {"g": np.ones(d, np.float32), "b": np.zeros(d, np.float32),
             "Wo": (rng.standard_normal((d, d)) / np.sqrt(d)).astype(np.float32)}
    nodes = [helper.make_node("LayerNormalization", ["x", "g", "b"], ["h"], axis=-1)]
    for i in range(heads):
        inits[f"W{i}"] = (rng.standard_normal((d, d // heads)) / np.sqrt(d)).astype(np.float32)
        inits[f"b{i}"] = (rng.standard_normal(d // heads) * 0.1).astype(np.float32)
        nodes += [helper.make_node("MatMul", ["h", f"W{i}"], [f"m{i}"], name=f"head{i}"),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"]),
                  helper.make_node("Relu", [f"a{i}"], [f"r{i}"])]
    nodes += [helper.make_node("Concat", [f"r{i}" for i in range(heads)], ["cat"], axis=-1),
              helper.make_node("MatMul", ["cat", "Wo"], ["y"])]
    graph = helper.make_graph(nodes, "heads", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, seq, d])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, seq, d])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="graphopt-tools")
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def bert_inputs(batch: int, seq: int, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 30522, size=(batch, seq)).astype(np.int64)
    mask = np.ones((batch, seq), np.int64)
    mask[-1, seq * 3 // 4:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def cases(args) -> list[dict]:
    out = []
    for name in ("inception_v1", "inception_v2"):
        out.append({"name": name, "path": LIGHT / f"light_{name}.onnx", "inputs": None, "shapes": None})
    bert = pathlib.Path(args.bert) if args.bert else ROOT / "build" / "zoo" / "torch_ts" / "bert.onnx"
    if not bert.exists():
        bert = own_bert(ROOT / "build" / "bench" / "bert_own.onnx")
    for batch, seq in ((2, 128), (1, 16)):
        feeds = bert_inputs(batch, seq)
        out.append({"name": f"bert {batch}x{seq}", "path": bert, "inputs": feeds,
                    "shapes": {k: list(v.shape) for k, v in feeds.items()}})
    out.append({"name": "heads", "path": heads_net(ROOT / "build" / "bench" / "heads.onnx"), "inputs": None,
                "shapes": None})
    wanted = set(args.only.split(",")) if args.only else None
    return [c for c in out if wanted is None or c["name"].split()[0] in wanted]


def run_case(case: dict, args) -> dict:
    common = dict(shapes=case["shapes"], inputs=case["inputs"], threads=args.threads,
                  skip=args.skip.split(",") if args.skip else ())
    start = time.perf_counter()
    level2 = graphopt.optimize(case["path"], level=2, **common)
    t2 = time.perf_counter() - start
    start = time.perf_counter()
    level3 = graphopt.optimize(case["path"], level=3, **common)
    t3 = time.perf_counter() - start
    cost = CostModelDecider("cpu", args.threads)
    cost_verdicts = {c.name: cost(level2.model, c).apply for c in find_candidates(level2.model.graph)}
    candidates = []
    for name, entry in level3.report.sections.get("fuse_parallel", {}).items():
        cost_model = "fused" if cost_verdicts.get(name) else "rejected"
        candidates.append({"candidate": name, **entry, "cost_model": cost_model})
    same_graph = level2.report.after["op_histogram"] == level3.report.after["op_histogram"]
    result = bench([level2.model, level3.model], names=["level 2", "level 3"], inputs=case["inputs"],
                   threads=args.threads, runs=args.runs, warmup=5, init_repeats=3, memory=True)
    l2, l3 = result.models
    return {
        "model": case["name"], "inputs": result.inputs,
        "verify": f"{level2.report.verification.status}/{level3.report.verification.status}",
        "nodes": f"{level2.report.after['nodes']}/{level3.report.after['nodes']}",
        "candidates": len(candidates), "fused": sum(1 for c in candidates if c["decision"] == "fused"),
        "same_graph": same_graph, "optimize_s": [round(t2, 1), round(t3, 1)],
        "p50_ms": [round(l2.latency_ms["p50"], 3), round(l3.latency_ms["p50"], 3)],
        "ratio_p50": l3.ratios["latency_p50"], "paired": l3.ratios["paired_median"], "ci95": l3.ratios["paired_ci95"],
        "memory_ratio": l3.ratios["peak_memory"], "create_ratio": l3.ratios["session_create"],
        "candidate_list": candidates,
    }


def verdict(row: dict) -> str:
    lo, hi = row["ci95"]
    if row["same_graph"]:
        return "same graph (no candidate paid)"
    if hi < 1.0:
        return "faster"
    if lo > 1.0:
        return "SLOWER"
    return "no measurable difference"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=150)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--only", default=None, help="comma-separated: inception_v1,inception_v2,bert,heads")
    parser.add_argument("--bert", default=None, help="BERT .onnx [build/zoo/torch_ts/bert.onnx, else built here]")
    parser.add_argument("--skip", default=None, help="passes to leave out of both levels (comma-separated)")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args()
    env = environment()
    print(describe_cpu(env))
    print(f"onnxruntime {env['onnxruntime']}, CPUExecutionProvider, threads {args.threads or 'ORT default'}, "
          f"{args.runs} interleaved runs; ratio = level 3 / level 2 (< 1: level 3 faster)\n")
    rows = []
    for case in cases(args):
        row = run_case(case, args)
        rows.append(row)
        print(f"{row['model']}: done ({row['fused']}/{row['candidates']} candidates fused)", flush=True)
    print()
    header = ("model", "inputs", "verify", "nodes l2/l3", "fused", "optimize s l2/l3", "p50 ms l2", "p50 ms l3",
              "paired ratio", "95% CI", "memory", "verdict")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        inputs = ", ".join("x".join(map(str, v)) for v in r["inputs"].values())
        print(f"| {r['model']} | {inputs} | {r['verify']} | {r['nodes']} | {r['fused']}/{r['candidates']} | "
              f"{r['optimize_s'][0]}/{r['optimize_s'][1]} | {r['p50_ms'][0]:.2f} | {r['p50_ms'][1]:.2f} | "
              f"{r['paired']:.3f} | {r['ci95'][0]:.3f}-{r['ci95'][1]:.3f}"
              f" | {r['memory_ratio'] and round(r['memory_ratio'], 3)} | {verdict(r)} |")
    print("\ncandidates (measured on this machine; cost model = what --no-measure decides):")
    print("| model | candidate | gain | decision | cost model | evidence |")
    print("|---|---|---:|---|---|---|")
    for r in rows:
        for c in r["candidate_list"]:
            gain = "-" if c.get("gain") is None else f"{c['gain'] * 100:+.1f}%"
            print(f"| {r['model']} | {c['candidate']} | {gain} | {c['decision']} | "
                  f"{c['cost_model']} | {c.get('detail', '')} {c.get('whole_model', '')} |")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=2, default=str))


if __name__ == "__main__":
    main()
