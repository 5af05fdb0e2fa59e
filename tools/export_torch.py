"""Export the zoo from PyTorch with both ONNX exporters.

    /work/venv/bin/python tools/export_torch.py [--nets resnet50,bert] [--out build/zoo]

Writes ``<out>/torch_ts/<net>.onnx`` (TorchScript exporter, ``dynamo=False``),
``<out>/torch_dynamo/<net>.onnx`` (``dynamo=True``) and training-mode
TorchScript exports ``torch_ts/resnet50_train.onnx`` and
``torch_ts/mobilenetv2_train.onnx`` (BatchNormalization training_mode=1,
Dropout). Each model gets a ``.npz`` sample and a ``.json`` summary (see
``zoo/check.py``). Exporters run with their default opsets; weights are
stored inside the ``.onnx`` file (``external_data=False``).
"""

from __future__ import annotations

import contextlib
import io
import math
import time
import warnings

import onnx
import torch
import torch.nn.functional as TF
from torch import nn

from zoo import NETS, Params, sample_inputs
from zoo.check import out_dir, record, record_failure
from zoo.cli import parse_args


class TorchOps:
    """The zoo's ``F`` for PyTorch: real ``nn`` modules, created on the first call.

    The first (eager) forward creates each layer under its dotted name in the
    root module's hierarchy and loads its weights; later forwards (tracing,
    dynamo) only look layers up.
    """

    def __init__(self, root: nn.Module, params: Params):
        self.root, self.params, self.mods = root, params, {}

    def _m(self, name, make):
        mod = self.mods.get(name)
        if mod is None:
            mod = make().train(self.root.training)  # a new module starts in training mode
            parent = self.root
            *path, leaf = name.split(".")
            for part in path:
                if not hasattr(parent, part):
                    parent.add_module(part, nn.Module())
                parent = getattr(parent, part)
            parent.add_module(leaf, mod)
            self.mods[name] = mod
        return mod

    @staticmethod
    def _load(mod, **arrays):
        with torch.no_grad():
            for attr, arr in arrays.items():
                if arr is not None:
                    getattr(mod, attr).copy_(torch.from_numpy(arr))
        return mod

    def conv(self, x, name, cin, cout, k, stride=1, groups=1, bias=False):
        def make():
            w, b = self.params.conv(name, cin, cout, k, groups, bias)
            return self._load(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=bias), weight=w, bias=b)
        return self._m(name, make)(x)

    def bn(self, x, name, c, eps=1e-5, gamma_scale=1.0):
        def make():
            g, b, m, v = self.params.bn(name, c, gamma_scale)
            return self._load(nn.BatchNorm2d(c, eps=eps), weight=g, bias=b, running_mean=m, running_var=v)
        return self._m(name, make)(x)

    def relu(self, x):
        return TF.relu(x)

    def relu6(self, x):
        return TF.relu6(x)

    def silu(self, x):
        return TF.silu(x)

    def sigmoid(self, x):
        return torch.sigmoid(x)

    def gelu(self, x):
        return TF.gelu(x)

    def add(self, a, b):
        return a + b

    def mul(self, a, b):
        return a * b

    def maxpool(self, x, k, stride):
        return TF.max_pool2d(x, k, stride, k // 2)

    def global_avgpool(self, x, keepdims=False):
        x = TF.adaptive_avg_pool2d(x, 1)
        return x if keepdims else torch.flatten(x, 1)

    def concat(self, xs):
        return torch.cat(xs, 1)

    def dropout(self, x, p):
        return TF.dropout(x, p, self.root.training)

    def linear(self, x, name, cin, cout, bias=True):
        def make():
            w, b = self.params.linear(name, cin, cout, bias)
            return self._load(nn.Linear(cin, cout, bias=bias), weight=w, bias=b)
        return self._m(name, make)(x)

    def embed(self, ids, name, vocab, dim):
        return self._m(name, lambda: self._load(nn.Embedding(vocab, dim),
                                                weight=self.params.embedding(name, vocab, dim)))(ids)

    def add_position_embedding(self, x, name, max_len, dim):
        # Hugging Face style: a position_ids buffer sliced to the sequence length.
        if not hasattr(self.root, "position_ids"):
            self.root.register_buffer("position_ids", torch.arange(max_len).unsqueeze(0), persistent=False)
        pos = self.root.position_ids[:, : x.shape[1]]
        return x + self.embed(pos, name, max_len, dim)

    def layernorm(self, x, name, dim, eps):
        def make():
            g, b = self.params.layernorm(name, dim)
            return self._load(nn.LayerNorm(dim, eps=eps), weight=g, bias=b)
        return self._m(name, make)(x)

    def attention_bias(self, mask):
        m = mask[:, None, None, :].to(torch.float32)
        return (1.0 - m) * -10000.0

    def attention(self, q, k, v, bias, heads, p):
        def split(t):
            return t.view(t.size()[:-1] + (heads, t.size(-1) // heads)).permute(0, 2, 1, 3)

        q, k, v = split(q), split(k), split(v)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.size(-1))
        probs = self.dropout(torch.softmax(scores + bias, dim=-1), p)
        ctx = torch.matmul(probs, v).permute(0, 2, 1, 3).contiguous()
        return ctx.view(ctx.size()[:-2] + (ctx.size(-2) * ctx.size(-1),))


class ImageNet(nn.Module):
    def __init__(self, spec, params):
        super().__init__()
        self._fn, self._ops = spec.fn, TorchOps(self, params)

    def forward(self, input):
        return self._fn(self._ops, input)


class TextNet(ImageNet):
    def forward(self, input_ids, attention_mask):
        return self._fn(self._ops, input_ids, attention_mask)


def build(spec, seed, feeds):
    """Model in eval mode with all layers created (one eager forward)."""
    model = (TextNet if spec.is_text else ImageNet)(spec, Params(seed, **spec.params)).eval()
    with torch.no_grad():
        model(*[torch.from_numpy(feeds[n]) for n in spec.inputs])
    return model


def _dims(spec):
    """TorchScript ``dynamic_axes`` for inputs and outputs."""
    if spec.is_text:
        return {n: {0: "batch", 1: "sequence"} for n in spec.inputs + spec.outputs}
    return {"input": {0: "batch"}, spec.outputs[0]: {0: "batch"}}


def export_ts(model, spec, args, path, training=torch.onnx.TrainingMode.EVAL):
    torch.onnx.export(model, args, str(path), dynamo=False, input_names=list(spec.inputs),
                      output_names=list(spec.outputs), dynamic_axes=_dims(spec),
                      training=training, do_constant_folding=training == torch.onnx.TrainingMode.EVAL)


def export_dynamo(model, spec, args, path):
    batch = torch.export.Dim("batch", min=1, max=1024)
    if spec.is_text:
        seq = torch.export.Dim("sequence", min=2, max=512)
        dyn = {n: {0: batch, 1: seq} for n in spec.inputs}
    else:
        dyn = {"input": {0: batch}}
    prog = torch.onnx.export(model, args, dynamo=True, input_names=list(spec.inputs),
                             output_names=list(spec.outputs), dynamic_shapes=dyn, external_data=False)
    prog.save(str(path), external_data=False)


def run_one(kind, spec, cli):
    out = out_dir(cli.out, kind)
    feeds = sample_inputs(spec)
    try:
        model = build(spec, cli.seed, feeds)
        targs = tuple(torch.from_numpy(feeds[n]) for n in spec.inputs)
        with torch.no_grad():
            expected = [model(*targs).numpy()]
        t = time.perf_counter()
        quiet = io.StringIO()
        with warnings.catch_warnings(), contextlib.redirect_stdout(quiet):
            warnings.simplefilter("ignore")
            (export_ts if kind == "torch_ts" else export_dynamo)(model, spec, targs, out / f"{spec.name}.onnx")
        dt = time.perf_counter() - t
    except Exception as e:  # noqa: BLE001 - a failed export is a result to report
        return record_failure(out, kind, spec.name, e)
    return record(out / f"{spec.name}.onnx", kind, spec.name, feeds, expected, text=spec.is_text, export_s=dt)


def run_train(spec, cli):
    """TorchScript export in training mode; BN uses batch statistics, Dropout is live."""
    out, name = out_dir(cli.out, "torch_ts"), f"{spec.name}_train"
    feeds = sample_inputs(spec)
    try:
        model = build(spec, cli.seed, feeds).train()
        x = torch.from_numpy(feeds["input"])
        # The reference switches dropout off (ORT draws other random numbers) but keeps
        # batch statistics, so BN in training mode is still checked when Dropout is absent.
        state = {k: v.clone() for k, v in model.state_dict().items()}
        with torch.no_grad():
            model.eval()
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.train()
            expected = [model(x).numpy()]
        model.load_state_dict(state)  # undo the running-stat update of the reference run
        model.train()
        t = time.perf_counter()
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            export_ts(model, spec, (x,), out / f"{name}.onnx", training=torch.onnx.TrainingMode.TRAINING)
        dt = time.perf_counter() - t
    except Exception as e:  # noqa: BLE001
        return record_failure(out, "torch_ts", name, e)
    has_dropout = any(n.op_type == "Dropout" for n in onnx.load(str(out / f"{name}.onnx")).graph.node)
    return record(out / f"{name}.onnx", "torch_ts", name, feeds, expected, export_s=dt,
                  note="training mode export", compare=not has_dropout)


def main():
    cli = parse_args(__doc__.splitlines()[0])
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}", flush=True)
    for net in cli.nets:
        for kind in ("torch_ts", "torch_dynamo"):
            run_one(kind, NETS[net], cli)
    for net in ("resnet50", "mobilenetv2"):
        if net in cli.nets:
            run_train(NETS[net], cli)


if __name__ == "__main__":
    main()
