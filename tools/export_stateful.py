"""A stateful voice-activity detector (Silero VAD's interface), exported three ways.

    /work/venv-export/bin/python tools/export_stateful.py [--size tiny|full] [--out DIR]

One network, one set of random weights:

    input [batch, samples] float32 audio, state [2, batch, 128] float32 (LSTM h and c),
    sr int64 scalar (0-d)  ->  output [batch, 1] speech probability, stateN [2, batch, 128]

``sr == 16000`` selects the 16 kHz front end (reflect pad, STFT as a strided Conv with a
Hann-windowed DFT basis, magnitude, conv), anything else the 8 kHz one (half the window);
a shared conv tail, time mean, LSTM cell on the state, and a sigmoid head follow.

* ``stateful_vad_ts``     ``torch.jit.script`` + ``torch.onnx.export(dynamo=False)``, opset 17:
                          the Python ``if`` on sr becomes an ONNX ``If``; inputs (input, state, sr)
* ``stateful_vad_dynamo`` ``torch.cond`` + ``torch.onnx.export(dynamo=True)``, opset 18: ``If`` too
* ``stateful_vad_helper`` written node by node with ``onnx.helper`` (ONNX ``LSTM`` op, gates
                          reordered from torch's i,f,g,o to ONNX's i,o,f,c), opset 17, inputs in a
                          different order: (sr, state, input)

The sample is 512 samples at 16 kHz with the zero state, as the first call of a stream.
After the three exports, ``agreement`` in each ``.json`` gives the max abs difference
between the three ORT runs at 16 kHz and at 8 kHz (256 samples).
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from zoo.realistic import finish, model_path, parse_args, versions

NAMES = ["stateful_vad_ts", "stateful_vad_dynamo", "stateful_vad_helper"]
VERSIONS = versions("torch", "onnxscript", "onnx", "onnxruntime")
HIDDEN = 128  # the state layout [2, batch, 128] is the interface, at every size
SIZES = {"tiny": dict(n_fft=128, channels=32), "full": dict(n_fft=256, channels=128)}


class Front(nn.Module):
    """Reflect pad, STFT magnitude (a strided Conv1d with a fixed DFT basis), conv + ReLU."""

    def __init__(self, n_fft: int, channels: int):
        super().__init__()
        self.pad, self.bins = n_fft // 2, n_fft // 2 + 1
        k = np.arange(self.bins)[:, None] * np.arange(n_fft)[None, :] * 2 * np.pi / n_fft
        window = np.hanning(n_fft + 1)[:-1]
        basis = np.concatenate([np.cos(k), -np.sin(k)]) * window
        self.stft = nn.Conv1d(1, 2 * self.bins, n_fft, n_fft // 2, bias=False)
        with torch.no_grad():
            self.stft.weight.copy_(torch.from_numpy(basis[:, None, :].astype(np.float32)))
        self.conv = nn.Conv1d(self.bins, channels, 3, padding=1)

    def forward(self, x):
        spec = self.stft(F.pad(x.unsqueeze(1), (self.pad, self.pad), mode="reflect"))
        mag = torch.sqrt(spec[:, : self.bins] ** 2 + spec[:, self.bins:] ** 2)
        return torch.relu(self.conv(mag))


class VadCore(nn.Module):
    def __init__(self, n_fft: int, channels: int):
        super().__init__()
        self.front16, self.front8 = Front(n_fft, channels), Front(n_fft // 2, channels)
        self.tail = nn.Sequential(nn.Conv1d(channels, channels, 3, 2, 1), nn.ReLU(),
                                  nn.Conv1d(channels, channels, 3, 2, 1), nn.ReLU())
        self.cell = nn.LSTMCell(channels, HIDDEN)
        self.head = nn.Linear(HIDDEN, 1)

    def encode16(self, x):
        return self.tail(self.front16(x)).mean(-1)

    def encode8(self, x):
        return self.tail(self.front8(x)).mean(-1)

    def step(self, feat, state):
        h, c = self.cell(feat, (state[0], state[1]))
        return torch.sigmoid(self.head(torch.relu(h))), torch.stack([h, c])


class VadScript(nn.Module):
    def __init__(self, core: VadCore):
        super().__init__()
        self.core = core

    def forward(self, input, state, sr):
        if bool(sr == 16000):
            feat = self.core.encode16(input)
        else:
            feat = self.core.encode8(input)
        return self.core.step(feat, state)


class VadCond(VadScript):
    def forward(self, input, state, sr):
        feat = torch.cond(sr == 16000, self.core.encode16, self.core.encode8, (input,))
        return self.core.step(feat, state)


def audio(rng, batch, samples, sr):
    """A voiced tone with vibrato under an envelope, plus noise, in [-1, 1]."""
    t = np.arange(samples) / sr
    out = []
    for _ in range(batch):
        f0 = rng.uniform(100, 220)
        tone = sum(np.sin(2 * np.pi * f0 * k * t + np.sin(2 * np.pi * 5 * t)) / k for k in range(1, 6))
        env = np.sin(np.pi * np.arange(samples) / samples) ** 2
        out.append(0.3 * env * tone + 0.01 * rng.standard_normal(samples))
    return np.clip(np.stack(out), -1, 1).astype(np.float32)


def feeds_for(rng, batch, sr, state=None):
    samples = 512 if sr == 16000 else 256  # Silero's chunk: 32 ms at either rate
    if state is None:
        state = np.zeros((2, batch, HIDDEN), np.float32)
    return {"input": audio(rng, batch, samples, sr), "state": state, "sr": np.array(sr, np.int64)}


def export_ts(core, feeds, path):
    scripted = torch.jit.script(VadScript(core).eval())
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(scripted, tuple(torch.from_numpy(v) for v in feeds.values()), str(path), dynamo=False,
                          opset_version=17, input_names=["input", "state", "sr"], output_names=["output", "stateN"],
                          dynamic_axes={"input": {0: "batch", 1: "samples"}, "state": {1: "batch"},
                                        "output": {0: "batch"}, "stateN": {1: "batch"}})
    return "torch.jit.script + torch.onnx.export(dynamo=False)"


def export_dynamo(core, feeds, path):
    # From a batch-1 example torch.export specializes batch to 1 without a word (state [2, 1, 128]),
    # so the example has two streams.
    example = {**feeds, "input": np.repeat(feeds["input"], 2, 0), "state": np.repeat(feeds["state"], 2, 1)}
    batch, samples = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("samples", min=256, max=16000)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(VadCond(core).eval(), tuple(torch.from_numpy(v) for v in example.values()),
                                 dynamo=True, opset_version=18, input_names=["input", "state", "sr"],
                                 output_names=["output", "stateN"], external_data=False,
                                 dynamic_shapes={"input": {0: batch, 1: samples}, "state": {1: batch}, "sr": None})
    prog.save(str(path), external_data=False)
    return "torch.cond + torch.onnx.export(dynamo=True)"


def export_helper(core, feeds, path):
    """The same network as ONNX nodes written by hand; inputs ordered (sr, state, input)."""
    inits, nodes = {}, []

    def const(name, arr):
        inits[name] = numpy_helper.from_array(np.ascontiguousarray(arr), name)
        return name

    def w(t):
        return t.detach().numpy()

    def node(op, ins, outs, **attrs):
        nodes.append(helper.make_node(op, ins, outs, name=f"{op}_{len(nodes)}", **attrs))
        return outs[0]

    def front(tag, mod: Front, sub):
        """Branch body; reads ``input`` and the initializers from the outer graph."""
        def n(op, ins, out, **attrs):
            sub.append(helper.make_node(op, ins, [f"{tag}/{out}"], name=f"{tag}/{op}_{len(sub)}", **attrs))
            return f"{tag}/{out}"

        p = mod.pad
        x = n("Unsqueeze", ["input", const("axis1", np.array([1], np.int64))], "x")
        x = n("Pad", [x, const(f"{tag}.pads", np.array([0, 0, p, 0, 0, p], np.int64))], "padded", mode="reflect")
        spec = n("Conv", [x, const(f"{tag}.stft", w(mod.stft.weight))], "spec", strides=[p], kernel_shape=[2 * p])
        halves = [f"{tag}/re", f"{tag}/im"]
        sub.append(helper.make_node("Split", [spec, const(f"{tag}.split", np.array([mod.bins] * 2, np.int64))],
                                    halves, name=f"{tag}/Split", axis=1))
        sq = [n("Mul", [h, h], f"{h.split('/')[1]}2") for h in halves]
        mag = n("Sqrt", [n("Add", sq, "power")], "mag")
        wb = [const(f"{tag}.conv.w", w(mod.conv.weight)), const(f"{tag}.conv.b", w(mod.conv.bias))]
        x = n("Relu", [n("Conv", [mag, *wb], "conv", pads=[1, 1], kernel_shape=[3])], "front")
        for i in (0, 2):
            conv = core.tail[i]
            x = n("Relu", [n("Conv", [x, const(f"tail.{i}.w", w(conv.weight)), const(f"tail.{i}.b", w(conv.bias))],
                             f"tail{i}", pads=[1, 1], strides=[2], kernel_shape=[3])], f"tail{i}_relu")
        feat = n("ReduceMean", [x], "feat", axes=[-1], keepdims=0)
        out = helper.make_tensor_value_info(feat, TensorProto.FLOAT, None)
        return helper.make_graph(sub, f"{tag}_branch", [], [out])

    cond = node("Equal", ["sr", const("sr16k", np.array(16000, np.int64))], ["is_16k"])
    node("If", [cond], ["feat"], then_branch=front("sr16k", core.front16, []),
         else_branch=front("sr8k", core.front8, []))
    def order(t):  # torch's gate order i, f, g, o -> ONNX's i, o, f, c
        i, f, g, o = np.split(t, 4)
        return np.concatenate([i, o, f, g])

    cell = core.cell
    x = node("Unsqueeze", ["feat", const("axis0", np.array([0], np.int64))], ["feat_seq"])
    h0 = node("Slice", ["state", const("zero", np.array([0], np.int64)), const("one", np.array([1], np.int64)),
                        "axis0"], ["h0"])
    c0 = node("Slice", ["state", "one", const("two", np.array([2], np.int64)), "axis0"], ["c0"])
    node("LSTM", [x, const("lstm.W", order(w(cell.weight_ih))[None]), const("lstm.R", order(w(cell.weight_hh))[None]),
                  const("lstm.B", np.concatenate([order(w(cell.bias_ih)), order(w(cell.bias_hh))])[None]), "", h0, c0],
         ["", "h1", "c1"], hidden_size=HIDDEN)
    node("Concat", ["h1", "c1"], ["stateN"], axis=0)
    h = node("Relu", [node("Squeeze", ["h1", "axis0"], ["h"])], ["h_relu"])
    logit = node("Gemm", [h, const("head.w", w(core.head.weight)), const("head.b", w(core.head.bias))], ["logit"],
                 transB=1)
    node("Sigmoid", [logit], ["output"])
    f32 = TensorProto.FLOAT
    graph = helper.make_graph(
        nodes, "stateful_vad",
        [helper.make_tensor_value_info("sr", TensorProto.INT64, []),
         helper.make_tensor_value_info("state", f32, [2, "batch", HIDDEN]),
         helper.make_tensor_value_info("input", f32, ["batch", "samples"])],
        [helper.make_tensor_value_info("output", f32, ["batch", 1]),
         helper.make_tensor_value_info("stateN", f32, [2, "batch", HIDDEN])],
        initializer=list(inits.values()))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="export_stateful.py")
    onnx.save(model, str(path))
    return f"onnx.helper (onnx {onnx.__version__})"


def run_ort(path, feeds):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3  # the dynamo export's unused initializers are known (see tools/README.md)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(["output", "stateN"], feeds)


def main():
    args = parse_args(__doc__.splitlines()[0], NAMES)
    torch.set_num_threads(2)
    torch.manual_seed(args.seed)
    core = VadCore(**SIZES[args.size]).eval()
    rng = np.random.default_rng(args.seed)
    feeds = feeds_for(rng, 1, 16000)
    with torch.no_grad():
        out, state = VadScript(core)(*(torch.from_numpy(v) for v in feeds.values()))
    expected = {"output": out.numpy(), "stateN": state.numpy()}
    # a later call of a stream: two streams, a carried state, two chunks' worth of samples
    second = feeds_for(rng, 2, 16000, state=np.tile(expected["stateN"], (1, 2, 1)))
    second["input"] = np.concatenate([second["input"], second["input"][:, ::-1]], 1)
    at8k = feeds_for(rng, 1, 8000)
    exporters = {"stateful_vad_ts": ("torch_ts", export_ts), "stateful_vad_dynamo": ("torch_dynamo", export_dynamo),
                 "stateful_vad_helper": ("onnx_helper", export_helper)}
    paths = {}
    for name in args.only:
        framework, export = exporters[name]
        path = model_path(args, framework, name)
        how = export(core, feeds, path)
        paths[name] = path
        finish(path, exporter=how, versions=VERSIONS, feeds=feeds, expected=expected, second=second,
               probes={"sr 8000, 256 samples": at8k,
                       "sr 16000, 1 sample": {**feeds, "input": feeds["input"][:, :1]}},
               notes={"sr": "0-d int64: 16000 (then-branch) or 8000 (else-branch); any other value takes the else",
                      "state": "[2, batch, 128]: LSTM h and c; zeros at a stream's start, then the previous stateN",
                      "input": "float32 audio in [-1, 1]; 512 samples at 16 kHz, 256 at 8 kHz (longer chunks run "
                               "too; 1 sample fails in the reflect Pad, torch itself needs more than n_fft/2)",
                      "config": {**SIZES[args.size], "hidden": HIDDEN}})
    agree = {}
    for label, f in (("sr16000", feeds), ("sr8000", at8k)):
        runs = {n: run_ort(p, f) for n, p in paths.items()}
        ref = next(iter(runs.values()))
        agree[label] = {n: float(max(np.max(np.abs(a - b)) for a, b in zip(r, ref))) for n, r in runs.items()}
    for p in paths.values():
        info = json.loads(p.with_suffix(".json").read_text())
        info["agreement"] = {"reference": next(iter(paths)), "max_abs_diff": agree}
        p.with_suffix(".json").write_text(json.dumps(info, indent=1) + "\n")
    print("agreement between exports:", agree)


if __name__ == "__main__":
    main()
