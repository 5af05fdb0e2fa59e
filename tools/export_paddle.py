"""Export the zoo from PaddlePaddle through paddle2onnx.

    /work/venv-paddle/bin/python tools/export_paddle.py [--nets resnet50,bert] [--out build/zoo]

Writes ``<out>/paddle/<net>.onnx`` plus ``.npz`` sample and ``.json`` summary.
Dygraph layers (``paddle.nn``) hold the zoo's weights; ``paddle.onnx.export``
saves a static program with ``paddle.jit.save`` and converts it with
paddle2onnx at its default opset (9, upgraded automatically where an op
needs more). ``paddle.onnx.export`` only logs a failure, so a missing
``.onnx`` file is reported as the failure.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import time

import paddle
import paddle.nn.functional as PF
from paddle import nn

from zoo import NETS, Params, sample_inputs
from zoo.check import out_dir, record, record_failure
from zoo.cli import parse_args


class PaddleOps:
    """The zoo's ``F`` for Paddle dygraph: ``paddle.nn`` layers created on the first call."""

    def __init__(self, root: nn.Layer, params: Params):
        self.root, self.params, self.mods = root, params, {}

    def _m(self, name, make):
        mod = self.mods.get(name)
        if mod is None:
            mod = make()
            if not self.root.training:
                mod.eval()  # a new layer starts in training mode
            parent = self.root
            *path, leaf = name.split(".")
            for part in path:
                if part not in parent._sub_layers:
                    parent.add_sublayer(part, nn.Layer())
                parent = parent._sub_layers[part]
            parent.add_sublayer(leaf, mod)
            self.mods[name] = mod
        return mod

    @staticmethod
    def _load(mod, **arrays):
        for attr, arr in arrays.items():
            if arr is not None:
                getattr(mod, attr).set_value(arr)
        return mod

    def conv(self, x, name, cin, cout, k, stride=1, groups=1, bias=False):
        def make():
            w, b = self.params.conv(name, cin, cout, k, groups, bias)
            layer = nn.Conv2D(cin, cout, k, stride, k // 2, groups=groups, bias_attr=None if bias else False)
            return self._load(layer, weight=w, bias=b)
        return self._m(name, make)(x)

    def bn(self, x, name, c, eps=1e-5, gamma_scale=1.0):
        def make():
            g, b, m, v = self.params.bn(name, c, gamma_scale)
            return self._load(nn.BatchNorm2D(c, momentum=0.9, epsilon=eps), weight=g, bias=b, _mean=m, _variance=v)
        return self._m(name, make)(x)

    def relu(self, x):
        return PF.relu(x)

    def relu6(self, x):
        return PF.relu6(x)

    def silu(self, x):
        return PF.silu(x)

    def sigmoid(self, x):
        return PF.sigmoid(x)

    def gelu(self, x):
        return PF.gelu(x, approximate=False)

    def add(self, a, b):
        return a + b

    def mul(self, a, b):
        return a * b

    def maxpool(self, x, k, stride):
        return PF.max_pool2d(x, k, stride, k // 2)

    def global_avgpool(self, x, keepdims=False):
        x = PF.adaptive_avg_pool2d(x, 1)
        return x if keepdims else paddle.flatten(x, 1)

    def concat(self, xs):
        return paddle.concat(xs, axis=1)

    def dropout(self, x, p):
        return PF.dropout(x, p, training=self.root.training)

    def linear(self, x, name, cin, cout, bias=True):
        def make():
            w, b = self.params.linear(name, cin, cout, bias)
            return self._load(nn.Linear(cin, cout, bias_attr=None if bias else False), weight=w.T.copy(), bias=b)
        return self._m(name, make)(x)

    def embed(self, ids, name, vocab, dim):
        return self._m(name, lambda: self._load(nn.Embedding(vocab, dim),
                                                weight=self.params.embedding(name, vocab, dim)))(ids)

    def add_position_embedding(self, x, name, max_len, dim):
        pos = paddle.arange(paddle.shape(x)[1], dtype="int64")
        return x + self.embed(pos, name, max_len, dim)

    def layernorm(self, x, name, dim, eps):
        def make():
            g, b = self.params.layernorm(name, dim)
            return self._load(nn.LayerNorm(dim, epsilon=eps), weight=g, bias=b)
        return self._m(name, make)(x)

    def attention_bias(self, mask):
        m = paddle.unsqueeze(mask, [1, 2]).astype("float32")
        return (1.0 - m) * -10000.0

    def attention(self, q, k, v, bias, heads, p):
        d = q.shape[-1] // heads

        def split(t):  # PaddleNLP style: 0 copies a dim
            return paddle.transpose(paddle.reshape(t, [0, 0, heads, d]), [0, 2, 1, 3])

        q, k, v = split(q), split(k), split(v)
        scores = paddle.matmul(q, k, transpose_y=True) * (1.0 / math.sqrt(d))
        probs = self.dropout(PF.softmax(scores + bias, axis=-1), p)
        ctx = paddle.transpose(paddle.matmul(probs, v), [0, 2, 1, 3])
        return paddle.reshape(ctx, [0, 0, heads * d])


class ImageNet(nn.Layer):
    def __init__(self, spec, params):
        super().__init__()
        self._fn, self._ops = spec.fn, PaddleOps(self, params)

    def forward(self, input):
        return self._fn(self._ops, input)


class TextNet(ImageNet):
    def forward(self, input_ids, attention_mask):
        return self._fn(self._ops, input_ids, attention_mask)


def build(spec, seed, feeds):
    model = (TextNet if spec.is_text else ImageNet)(spec, Params(seed, **spec.params))
    model.eval()
    with paddle.no_grad():
        model(*[paddle.to_tensor(feeds[n]) for n in spec.inputs])
    return model


def run_one(spec, cli):
    out = out_dir(cli.out, "paddle")
    feeds = sample_inputs(spec)
    path = out / f"{spec.name}.onnx"
    try:
        path.unlink(missing_ok=True)
        model = build(spec, cli.seed, feeds)
        with paddle.no_grad():
            expected = [model(*[paddle.to_tensor(feeds[n]) for n in spec.inputs]).numpy()]
        if spec.is_text:
            specs = [paddle.static.InputSpec([None, None], "int64", n) for n in spec.inputs]
        else:
            specs = [paddle.static.InputSpec([None, 3, 224, 224], "float32", "input")]
        t = time.perf_counter()
        log = io.StringIO()
        handler = logging.StreamHandler(log)
        logging.getLogger().addHandler(handler)
        try:
            with contextlib.redirect_stdout(log):
                paddle.onnx.export(model, str(path.with_suffix("")), input_spec=specs)
        except SystemExit:  # paddle2onnx's logging.error() calls sys.exit(-1)
            pass
        finally:
            logging.getLogger().removeHandler(handler)
        dt = time.perf_counter() - t
        if not path.exists():
            text = log.getvalue()
            start = text.find("[ERROR]")
            raise RuntimeError("paddle.onnx.export wrote no file: " + (text[start:] if start >= 0 else text[-3000:]))
    except Exception as e:  # noqa: BLE001
        return record_failure(out, "paddle", spec.name, e)
    if "[ERROR]" in log.getvalue():
        print(log.getvalue(), flush=True)
    return record(path, "paddle", spec.name, feeds, expected, text=spec.is_text, export_s=dt)


def main():
    cli = parse_args(__doc__.splitlines()[0])
    paddle.set_device("cpu")
    print(f"paddle {paddle.__version__}", flush=True)
    for net in cli.nets:
        run_one(NETS[net], cli)


if __name__ == "__main__":
    main()
