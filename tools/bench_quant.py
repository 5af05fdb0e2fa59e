"""graphopt INT8 against ONNX Runtime's quantize_static and the float model, side by side.

    /work/venv/bin/python tools/bench_quant.py [--only digits,resnet50,mobilenetv2] [--threads 1]
        [--runs 40] [--calib 32] [--zoo build/zoo/torch_ts] [--schemes] [--json out.json]

For each model the float baseline is graphopt's level-2 output (BatchNormalization folded,
verified against the original). From it, with the same calibration data:

- `graphopt int8`: `--quantize int8` defaults (auto scheme, min-max, no budget, layers that
  run faster in float on this machine kept float: graphopt/stages/placement.py);
- `graphopt int8, all layers`: the same with every layer quantized (`--no-measure`);
- `ORT static`: `onnxruntime.quantization.quantize_static(quant_format=QDQ)` with its defaults;
- `ORT static tuned`: the same with per_channel=True, reduce_range=True, uint8 activations
  (what ORT's documentation recommends for AVX2 machines).

`float copy` is the float file again in a session of its own: its distance from 1.000x is
how far two identical models land apart in this run (weights placed differently in memory,
machine noise), so differences between variants smaller than that are not differences.

Accuracy: top-1 on the digits test split (labels); on the CNNs, whose weights are random,
top-1 agreement and output SNR against the float model on held-out noise inputs. Latency:
all variants of a model run interleaved in one process (graphopt.core.bench: each round in a
shuffled order, thread-pool spinning off), median ms and the median of per-round ratios to float.
`kernels` lists what ORT runs after its own QDQ fusion: float Conv/Gemm/MatMul left over
mean a QDQ pair ORT could not fuse. `--schemes` adds graphopt int8 under every scheme (all layers).
`--profile` adds ORT's own kernel times (its profiler) per layer kind for float and graphopt
int8: stem conv, 1x1 conv, depthwise conv, other conv, then other op types. The int8/float
ratio of each kind is what ORT's kernels give on this CPU; the sum of the per-kind minimums
bounds what any float/int8 mix of the same kernels could reach.

The CNNs are build/zoo/torch_ts/{resnet50,mobilenetv2}.onnx when the export zoo has them,
else ResNet-50-like and MobileNetV2-like models built here with onnx.helper (random weights).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import pathlib
import shutil
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import graphopt  # noqa: E402
from graphopt.core.accuracy import Evaluator  # noqa: E402
from graphopt.core.bench import paired_ratio, session_options, time_interleaved  # noqa: E402
from graphopt.core.machine import describe_cpu, environment  # noqa: E402
from graphopt.core.calibrate import Dataset  # noqa: E402
from graphopt.stages.quantize import LossyOptions, run_lossy  # noqa: E402

FLOAT_LAYERS = {"Conv", "FusedConv", "ConvTranspose", "Gemm", "FusedGemm", "MatMul", "FusedMatMul"}


# ---------------------------------------------------------------- own CNNs when the zoo is missing

class _Builder:
    def __init__(self, seed=0):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.n = [], [], 0

    def name(self, base):
        self.n += 1
        return f"{base}_{self.n}"

    def conv(self, x, cin, cout, k, stride=1, groups=1, gain=1.0):
        w = (self.rng.standard_normal((cout, cin // groups, k, k)) * gain * np.sqrt(2.0 / (cin // groups * k * k)))
        wn, bn, y = self.name("w"), self.name("b"), self.name("conv")
        self.inits += [numpy_helper.from_array(w.astype(np.float32), wn),
                       numpy_helper.from_array((self.rng.standard_normal(cout) * 0.05).astype(np.float32), bn)]
        self.nodes.append(helper.make_node("Conv", [x, wn, bn], [y], kernel_shape=[k, k], strides=[stride, stride],
                                           pads=[k // 2] * 4, group=groups, name=y))
        return y

    def op(self, op, inputs, **attrs):
        y = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [y], name=y, **attrs))
        return y

    def relu6(self, x):
        if "zero" not in [i.name for i in self.inits]:
            self.inits += [numpy_helper.from_array(np.float32(0), "zero"),
                           numpy_helper.from_array(np.float32(6), "six")]
        return self.op("Clip", [x, "zero", "six"])

    def head(self, x, cin):
        g = self.op("Flatten", [self.op("GlobalAveragePool", [x])])
        w = (self.rng.standard_normal((1000, cin)) * np.sqrt(1.0 / cin)).astype(np.float32)
        self.inits += [numpy_helper.from_array(w, "fc_w"), numpy_helper.from_array(np.zeros(1000, np.float32), "fc_b")]
        self.nodes.append(helper.make_node("Gemm", [g, "fc_w", "fc_b"], ["logits"], transB=1, name="fc"))

    def save(self, path):
        graph = helper.make_graph(self.nodes, path.stem, [helper.make_tensor_value_info(
            "input", TensorProto.FLOAT, ["batch", 3, 224, 224])], [helper.make_tensor_value_info(
                "logits", TensorProto.FLOAT, ["batch", 1000])], self.inits)
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
        return path


def own_resnet50(path: pathlib.Path) -> pathlib.Path:
    b = _Builder()
    x = b.op("MaxPool", [b.op("Relu", [b.conv("input", 3, 64, 7, 2)])], kernel_shape=[3, 3], strides=[2, 2],
             pads=[1, 1, 1, 1])
    cin = 64
    for width, blocks, stride in [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)]:
        for i in range(blocks):
            s = stride if i == 0 else 1
            y = b.op("Relu", [b.conv(x, cin, width, 1)])
            y = b.op("Relu", [b.conv(y, width, width, 3, s)])
            y = b.conv(y, width, width * 4, 1, gain=0.3)
            skip = b.conv(x, cin, width * 4, 1, s) if i == 0 else x
            x, cin = b.op("Relu", [b.op("Add", [y, skip])]), width * 4
    b.head(x, cin)
    return b.save(path)


def own_mobilenetv2(path: pathlib.Path) -> pathlib.Path:
    b = _Builder()
    x, cin = b.relu6(b.conv("input", 3, 32, 3, 2)), 32
    for t, c, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                       (6, 320, 1, 1)]:
        for i in range(n):
            stride, hidden, y = (s if i == 0 else 1), cin * t, x
            if t != 1:
                y = b.relu6(b.conv(y, cin, hidden, 1))
            y = b.relu6(b.conv(y, hidden, hidden, 3, stride, groups=hidden))
            y = b.conv(y, hidden, c, 1, gain=0.5)
            x, cin = (b.op("Add", [x, y]) if stride == 1 and cin == c else y), c
    x = b.relu6(b.conv(x, cin, 1280, 1))
    b.head(x, 1280)
    return b.save(path)


# ---------------------------------------------------------------- variants

def float_model(source: pathlib.Path, out: pathlib.Path, notes: list[str]) -> pathlib.Path:
    """graphopt level 2, verified; if verification fails, ORT's basic offline optimization (also folds BN)."""
    result = graphopt.optimize(source, level=2)
    if result.report.verification is None or result.report.verification.ok:
        result.save(out)
        return out
    notes.append(f"{source.name}: graphopt level 2 failed verification; float baseline is ORT basic-optimized")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(out)
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    return out


def graphopt_int8(fp32: pathlib.Path, out: pathlib.Path, calib: Dataset, threads: int, scheme="auto",
                  speed: bool = True) -> pathlib.Path:
    """`--quantize int8` as a user gets it, placement by speed measured at the bench's thread count."""
    result = run_lossy(graphopt.load(fp32), LossyOptions("int8", calibration=calib, int8_scheme=scheme, measure=False,
                                                         place_for_speed=speed, threads=threads))
    graphopt.save(result.model, out)
    kept = result.section.get("speed_placement")
    if speed and kept:
        print(f"   {out.name}: {kept}", file=sys.stderr)
    return out


def ort_static(fp32: pathlib.Path, out: pathlib.Path, calib: Dataset, tuned: bool) -> pathlib.Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{k: v[i:i + 1] for k, v in calib.inputs.items()} for i in range(len(calib))])

        def get_next(self):
            return next(self.items, None)

    kwargs = dict(per_channel=True, reduce_range=True, activation_type=QuantType.QUInt8) if tuned else {}
    with contextlib.redirect_stdout(io.StringIO()):
        quantize_static(str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ, **kwargs)
    return out


def kernels(path: pathlib.Path, threads: int) -> collections.Counter:
    with tempfile.TemporaryDirectory() as tmp:
        options = session_options(threads)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(pathlib.Path(tmp) / "k.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return collections.Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)


def _conv_kind(weight_shape, group: int) -> str:
    """stem: 3 input channels; dw: one input channel per group; 1x1; conv: anything else."""
    if group > 1 and weight_shape[1] == 1:
        return "depthwise conv"
    if weight_shape[1] == 3:
        return "stem conv"
    return "1x1 conv" if list(weight_shape[2:]) == [1, 1] else "other conv"


def layer_profile(path: pathlib.Path, float_path: pathlib.Path, feeds: dict, threads: int, runs: int) -> dict:
    """ms per run of ORT's kernels, by layer kind (Conv kinds from the float model's weights)."""
    float_model = onnx.load(str(float_path))
    inits = {t.name: list(t.dims) for t in float_model.graph.initializer}
    kind_by_node = {}
    for node in float_model.graph.node:
        if node.op_type == "Conv" and node.input[1] in inits:
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            kind_by_node[node.name] = _conv_kind(inits[node.input[1]], group)
    with tempfile.TemporaryDirectory() as tmp:
        options = session_options(threads)
        options.enable_profiling = True
        options.profile_file_prefix = str(pathlib.Path(tmp) / "profile")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for _ in range(runs):
            session.run(None, feeds)
        events = json.loads(pathlib.Path(session.end_profiling()).read_text())
    per_kind: collections.Counter = collections.Counter()
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        op = event["args"]["op_name"]
        kind = op
        if op == "QLinearConv":  # ORT keeps the float Conv's node name
            kind = kind_by_node.get(event["name"].split("_token_")[0], "other conv")
        elif op in ("Conv", "FusedConv"):  # NCHWc renames nodes: classify by the weight's shape
            shapes = [next(iter(d.values())) for d in event["args"].get("input_type_shape", [])]
            weight = shapes[1] if len(shapes) > 1 and len(shapes[1]) == 4 else None
            depthwise = weight is not None and weight[1] == 1 and weight[0] > 1
            kind = _conv_kind(weight, 2 if depthwise else 1) if weight else "other conv"
        per_kind[kind] += event["dur"] / 1e3 / runs
    return dict(per_kind)


def accuracy(path: pathlib.Path, evaluator: Evaluator) -> dict:
    score = evaluator(graphopt.load(path))
    snr = min(f["snr_db"] for f in score.fidelity.values())
    return {"metric": score.metric, "value": score.value, "snr_db": snr}


def latency(paths: dict[str, pathlib.Path], feeds: dict, threads: int, runs: int) -> dict:
    sessions = {k: ort.InferenceSession(str(p), session_options(threads), providers=["CPUExecutionProvider"])
                for k, p in paths.items()}
    runners = [(lambda s=s: s.run(None, feeds)) for s in sessions.values()]
    times = time_interleaved(runners, runs, warmup=3)
    base = times[0]
    out = {}
    for name, t in zip(sessions, times):
        ratio = paired_ratio(base, t) if t is not base else None
        out[name] = {"ms": float(np.median(t) * 1e3),
                     "ratio": 1.0 if ratio is None else ratio["median"],
                     "ci95": None if ratio is None else ratio.get("ci95")}
    return out


def data_for(name: str, fp32: pathlib.Path, n_calib: int) -> tuple[Dataset, Dataset]:
    if name == "digits":
        calib, test = (np.load(ROOT / "models" / f"digits_{s}.npz") for s in ("calib", "test"))
        return (Dataset({"input": calib["input"][:n_calib] if n_calib else calib["input"]}, source="digits_calib.npz"),
                Dataset({"input": test["input"]}, test["labels"], source="digits_test.npz"))
    rng = np.random.default_rng(0)
    shape = (3, 224, 224)
    return (Dataset({"input": rng.standard_normal((n_calib, *shape)).astype(np.float32)}, source="noise"),
            Dataset({"input": rng.standard_normal((32, *shape)).astype(np.float32)}, source="noise"))


def run_model(name: str, source: pathlib.Path, args, work: pathlib.Path, notes: list[str]) -> dict:
    print(f"== {name}: {source}", file=sys.stderr)
    fp32 = float_model(source, work / f"{name}.fp32.onnx", notes)
    calib, test = data_for(name, fp32, args.calib if name != "digits" else 0)
    shutil.copyfile(fp32, work / f"{name}.fp32.copy.onnx")
    variants = {"float (level 2)": fp32,
                "float copy": work / f"{name}.fp32.copy.onnx",  # same file, own session: the noise floor
                "graphopt int8": graphopt_int8(fp32, work / f"{name}.graphopt.onnx", calib, args.threads),
                "graphopt int8, all layers": graphopt_int8(fp32, work / f"{name}.all.onnx", calib, args.threads,
                                                           speed=False),
                "ORT static": ort_static(fp32, work / f"{name}.ort.onnx", calib, tuned=False),
                "ORT static tuned": ort_static(fp32, work / f"{name}.ort_tuned.onnx", calib, tuned=True)}
    if args.schemes:
        for scheme in ("u8s8", "u8s8-reduced", "u8u8", "s8s8"):
            variants[f"graphopt int8 {scheme}"] = graphopt_int8(fp32, work / f"{name}.{scheme}.onnx", calib,
                                                                args.threads, scheme, speed=False)
    evaluator = Evaluator(test, graphopt.load(fp32), batch_size=16)
    rows = {k: {"accuracy": accuracy(p, evaluator), "file_bytes": p.stat().st_size} for k, p in variants.items()}
    for k, p in variants.items():
        ops = kernels(p, args.threads)
        rows[k]["float_layers"] = sum(n for op, n in ops.items() if op in FLOAT_LAYERS) if not k.startswith("float") \
            else None
        rows[k]["qdq_left"] = ops["QuantizeLinear"] + ops["DequantizeLinear"]
    runs = args.runs or (300 if name == "digits" else 40)
    feeds = {k: v[:1] for k, v in test.inputs.items()}
    for k, v in latency(variants, feeds, args.threads, runs).items():
        rows[k]["latency"] = v
    profile = None
    if args.profile:
        profile = {k: layer_profile(variants[k], fp32, feeds, args.threads, runs)
                   for k in ("float (level 2)", "graphopt int8")}
    return {"profile": profile, "model": name, "source": str(source), "calibration": f"{calib.source}, {len(calib)} samples",
            "evaluation": f"{test.source}, {len(test)} samples", "runs": runs, "rows": rows}


def markdown(results: list[dict], env: dict, args) -> str:
    lines = [f"{describe_cpu(env)}; ORT {ort.__version__}; {args.threads} thread(s); batch 1; "
             "latency = median of interleaved runs, ratio = median per-round ratio to float", ""]
    for res in results:
        lines += [f"### {res['model']} ({res['calibration']}; eval {res['evaluation']}; {res['runs']} runs)", "",
                  "| variant | accuracy | SNR dB | latency ms | vs float | float layers left | Q/DQ left | size |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name, row in res["rows"].items():
            acc = row["accuracy"]
            metric = "top-1" if acc["metric"] == "top-1 accuracy" else "agree"
            snr = "inf" if not np.isfinite(acc["snr_db"]) else f"{acc['snr_db']:.1f}"
            left = "-" if row["float_layers"] is None else row["float_layers"]
            lines.append(f"| {name} | {acc['value']:.2f}% {metric} | {snr} | {row['latency']['ms']:.3f} | "
                         f"{row['latency']['ratio']:.3f}x | {left} | {row['qdq_left']} | "
                         f"{row['file_bytes'] / 1024:.0f} KB |")
        lines.append("")
        if res.get("profile"):
            lines += _profile_table(res["profile"])
    return "\n".join(lines)


def _profile_table(profile: dict) -> list[str]:
    f, q = profile["float (level 2)"], profile["graphopt int8"]
    lines = ["ORT kernel time by layer kind (its profiler, ms per run):", "",
             "| kind | float ms | int8 ms | int8/float |", "|---|---:|---:|---:|"]
    for kind in sorted(set(f) | set(q), key=lambda k: -max(f.get(k, 0), q.get(k, 0))):
        a, b = f.get(kind, 0.0), q.get(kind, 0.0)
        ratio = f"{b / a:.2f}" if a and b else "-"
        lines.append(f"| {kind} | {a:.3f} | {b:.3f} | {ratio} |".replace("| 0.000 |", "| - |"))
    total_f, total_q = sum(f.values()), sum(q.values())
    convs = [k for k in set(f) | set(q) if k.endswith("conv")]
    best = sum(min(f.get(k, 0.0), q.get(k, 0.0)) or max(f.get(k, 0.0), q.get(k, 0.0)) for k in convs)
    best += sum(v for k, v in q.items() if k not in convs)
    lines += [f"| total | {total_f:.3f} | {total_q:.3f} | {total_q / total_f:.2f} |", "",
              f"Each conv kind at its faster precision (int8 overheads kept): {best / total_f:.2f}x float.", ""]
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="digits,resnet50,mobilenetv2")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=0, help="timed rounds [300 digits, 40 CNNs]")
    parser.add_argument("--calib", type=int, default=32, help="calibration samples for the CNNs")
    parser.add_argument("--zoo", type=pathlib.Path, default=ROOT / "build" / "zoo" / "torch_ts")
    parser.add_argument("--schemes", action="store_true", help="also graphopt int8 under every scheme")
    parser.add_argument("--profile", action="store_true", help="ORT kernel time per layer kind, float vs int8")
    parser.add_argument("--json", type=pathlib.Path)
    args = parser.parse_args(argv)
    notes: list[str] = []
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-quant-") as tmp:
        work = pathlib.Path(tmp)
        for name in [n.strip() for n in args.only.split(",") if n.strip()]:
            if name == "digits":
                source = ROOT / "models" / "digits_cnn.onnx"
            elif (args.zoo / f"{name}.onnx").exists():
                source = args.zoo / f"{name}.onnx"
            else:
                source = {"resnet50": own_resnet50, "mobilenetv2": own_mobilenetv2}[name](work / f"{name}.onnx")
                notes.append(f"{name}: no export in {args.zoo}; built here with onnx.helper (random weights)")
            results.append(run_model(name, source, args, work, notes))
    env = environment()
    print(markdown(results, env, args))
    for note in notes:
        print(f"note: {note}")
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "threads": args.threads, "results": results,
                                         "notes": notes}, indent=2, default=str))


if __name__ == "__main__":
    main()
