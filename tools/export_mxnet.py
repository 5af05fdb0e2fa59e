"""Export the zoo from MXNet 1.9.1 through ``mxnet.onnx.export_model``.

    /work/venv-mxnet/bin/python tools/export_mxnet.py [--nets resnet50,bert] [--out build/zoo]

Writes ``<out>/mxnet/<net>.onnx`` plus ``.npz`` sample and ``.json`` summary.
Networks are built with the symbol API (what a hybridized Gluon block
exports) and the zoo's weights; the exporter lists every weight as a graph
input as well as an initializer, as MXNet's exports do. The batch (and
sequence) dims are exported dynamic (``dynamic=True``).
"""

from __future__ import annotations

import logging
import math
import time

import mxnet as mx
import numpy as np

from zoo import NETS, Params, sample_inputs
from zoo.check import out_dir, record, record_failure
from zoo.cli import parse_args

sym = mx.sym


class MxOps:
    """The zoo's ``F`` for MXNet symbols; weights go to ``self.args``/``self.aux`` by variable name."""

    def __init__(self, params: Params, text: bool):
        self.params, self.text = params, text
        self.args: dict[str, np.ndarray] = {}
        self.aux: dict[str, np.ndarray] = {}

    def _var(self, name, arr, aux=False):
        (self.aux if aux else self.args)[name] = arr
        return sym.Variable(name)

    def conv(self, x, name, cin, cout, k, stride=1, groups=1, bias=False):
        w, b = self.params.conv(name, cin, cout, k, groups, bias)
        kw = dict(kernel=(k, k), stride=(stride, stride), pad=(k // 2, k // 2), num_filter=cout,
                  num_group=groups, no_bias=not bias, name=name)
        if bias:
            kw["bias"] = self._var(name + ".bias", b)
        return sym.Convolution(x, weight=self._var(name + ".weight", w), **kw)

    def bn(self, x, name, c, eps=1e-5, gamma_scale=1.0):
        g, b, m, v = self.params.bn(name, c, gamma_scale)
        return sym.BatchNorm(x, gamma=self._var(name + ".gamma", g), beta=self._var(name + ".beta", b),
                             moving_mean=self._var(name + ".running_mean", m, aux=True),
                             moving_var=self._var(name + ".running_var", v, aux=True),
                             eps=eps, momentum=0.9, fix_gamma=False, name=name)

    def relu(self, x):
        return sym.Activation(x, act_type="relu")

    def relu6(self, x):
        return sym.clip(x, 0.0, 6.0)

    def silu(self, x):
        return x * sym.Activation(x, act_type="sigmoid")  # Gluon's nn.Swish(beta=1)

    def sigmoid(self, x):
        return sym.Activation(x, act_type="sigmoid")

    def gelu(self, x):
        return sym.LeakyReLU(x, act_type="gelu")

    def add(self, a, b):
        return sym.broadcast_add(a, b)

    def mul(self, a, b):
        return sym.broadcast_mul(a, b)

    def maxpool(self, x, k, stride):
        return sym.Pooling(x, kernel=(k, k), stride=(stride, stride), pad=(k // 2, k // 2), pool_type="max")

    def global_avgpool(self, x, keepdims=False):
        y = sym.Pooling(x, kernel=(1, 1), global_pool=True, pool_type="avg")
        return y if keepdims else sym.Flatten(y)

    def concat(self, xs):
        return sym.Concat(*xs, dim=1)

    def dropout(self, x, p):
        return sym.Dropout(x, p=p)

    def linear(self, x, name, cin, cout, bias=True):
        w, b = self.params.linear(name, cin, cout, bias)
        kw = dict(bias=self._var(name + ".bias", b)) if bias else {}
        return sym.FullyConnected(x, weight=self._var(name + ".weight", w), num_hidden=cout, no_bias=not bias,
                                  flatten=not self.text, name=name, **kw)

    def embed(self, ids, name, vocab, dim):
        table = self._var(name + ".weight", self.params.embedding(name, vocab, dim))
        return sym.Embedding(ids, table, input_dim=vocab, output_dim=dim, name=name)

    def add_position_embedding(self, x, name, max_len, dim):
        pos = sym.contrib.arange_like(x, axis=1)  # [S]
        return sym.broadcast_add(x, sym.expand_dims(self.embed(pos, name, max_len, dim), axis=0))

    def layernorm(self, x, name, dim, eps):
        g, b = self.params.layernorm(name, dim)
        return sym.LayerNorm(x, self._var(name + ".gamma", g), self._var(name + ".beta", b), axis=-1, eps=eps,
                             name=name)

    def attention_bias(self, mask):
        m = sym.expand_dims(sym.expand_dims(sym.Cast(mask, dtype="float32"), axis=1), axis=1)
        return (1.0 - m) * -10000.0

    def attention(self, q, k, v, bias, heads, p):
        def split(t):  # [B, S, D] -> [B, H, S, d]
            return sym.transpose(sym.reshape(t, shape=(0, 0, heads, -1)), axes=(0, 2, 1, 3))

        q, k, v = split(q), split(k), split(v)
        d = self._dim // heads
        scores = sym.batch_dot(q, k, transpose_b=True) / math.sqrt(d)
        probs = sym.Dropout(sym.softmax(sym.broadcast_add(scores, bias), axis=-1), p=p)
        ctx = sym.transpose(sym.batch_dot(probs, v), axes=(0, 2, 1, 3))
        return sym.reshape(ctx, shape=(0, 0, -1))


def build(spec, seed):
    ops = MxOps(Params(seed, **spec.params), spec.is_text)
    if spec.is_text:
        from zoo.nets import BERT

        ops._dim = BERT["hidden"]
    inputs = [sym.Variable(n) for n in spec.inputs]
    return spec.fn(ops, *inputs), ops


def run_mx(net_sym, ops, feeds):
    args = {k: mx.nd.array(v, dtype=v.dtype) for k, v in {**ops.args, **feeds}.items()}
    aux = {k: mx.nd.array(v) for k, v in ops.aux.items()}
    ex = net_sym.bind(mx.cpu(), args=args, aux_states=aux, grad_req="null")
    return [o.asnumpy() for o in ex.forward(is_train=False)]


def export(net_sym, params, shapes, types, dyn, path):
    """Export at the exporter's default opset, else at 13; return a note on what happened.

    mx2onnx exports at ``onnx.defs.onnx_opset_version()`` (19 with onnx 1.14.1)
    but has translations only up to opset 13. Where a translation is not valid
    at 19 (LayerNorm's ReduceMean keeps its ``axes`` attribute, an input since
    opset 18) the exporter's own ``onnx.checker.check_graph`` rejects the
    graph. The retry pins opset 13 by patching what 1.9.1 reads
    (``onnx_opset_version``, the checker's default context) and restamps the
    saved model's opset import, which ``helper.make_model`` sets to the latest.
    """
    import onnx
    import onnx.checker
    import onnx.defs

    kw = dict(in_shapes=shapes, in_types=types, onnx_file_path=str(path), dynamic=True, dynamic_input_shapes=dyn)
    try:
        mx.onnx.export_model(net_sym, params, **kw)
        return ""
    except Exception as e:  # noqa: BLE001 - retried below, the reason goes into the note
        first = f"default opset {onnx.defs.onnx_opset_version()} failed ({type(e).__name__}: {e})"
    latest, ctx_opsets = onnx.defs.onnx_opset_version, dict(onnx.checker.DEFAULT_CONTEXT.opset_imports)
    onnx.defs.onnx_opset_version = lambda: 13
    onnx.checker.DEFAULT_CONTEXT.opset_imports = {"": 13}
    try:
        mx.onnx.export_model(net_sym, params, **kw)
    finally:
        onnx.defs.onnx_opset_version = latest
        onnx.checker.DEFAULT_CONTEXT.opset_imports = ctx_opsets
    model = onnx.load(str(path))
    del model.opset_import[:]
    model.opset_import.append(onnx.helper.make_opsetid("", 13))
    onnx.save(model, str(path))
    return first + "; exported at opset 13 (patched)"


def run_one(spec, cli):
    out = out_dir(cli.out, "mxnet")
    feeds = sample_inputs(spec)
    try:
        net_sym, ops = build(spec, cli.seed)
        expected = run_mx(net_sym, ops, feeds)
        params = {k: mx.nd.array(v) for k, v in {**ops.args, **ops.aux}.items()}
        shapes = [feeds[n].shape for n in spec.inputs]
        dyn = [(None, None) if spec.is_text else (None,) + s[1:] for s in shapes]
        t = time.perf_counter()
        note = export(net_sym, params, shapes, [feeds[n].dtype for n in spec.inputs], dyn, out / f"{spec.name}.onnx")
        dt = time.perf_counter() - t
    except Exception as e:  # noqa: BLE001
        return record_failure(out, "mxnet", spec.name, e)
    return record(out / f"{spec.name}.onnx", "mxnet", spec.name, feeds, expected, text=spec.is_text, export_s=dt,
                  note=note)


def main():
    cli = parse_args(__doc__.splitlines()[0])
    logging.getLogger().setLevel(logging.WARNING)
    print(f"mxnet {mx.__version__}", flush=True)
    for net in cli.nets:
        run_one(NETS[net], cli)


if __name__ == "__main__":
    main()
