"""Export the zoo from TensorFlow/Keras through tf2onnx.

    /work/venv-tf/bin/python tools/export_keras.py [--nets resnet50,bert] [--out build/zoo]

Writes ``<out>/keras/<net>.onnx`` plus ``.npz`` sample and ``.json`` summary.
The image nets are channels-last Keras models (input ``[batch, 224, 224, 3]``),
so tf2onnx wraps every Conv/Pool in Transposes; the ``.npz`` holds the same
pixels as the other frameworks, transposed to NHWC. Weights are the zoo's
(``zoo.params``), converted from PyTorch layout. Stride-2 convs and pools use
explicit ``ZeroPadding2D`` + ``valid`` padding (symmetric, as PyTorch; Keras'
own ``same`` pads bottom/right only), the way Keras' applications do it.
"""

from __future__ import annotations

import math
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf
import tf2onnx
from keras import layers

from zoo import NETS, Params, sample_inputs
from zoo.check import out_dir, record, record_failure
from zoo.cli import parse_args


def _kname(name):
    return name.replace(".", "_")


class PositionEmbedding(layers.Layer):
    """x + table[:seq] with a trainable [max_len, dim] table."""

    def __init__(self, max_len, dim, **kw):
        super().__init__(**kw)
        self.max_len, self.dim = max_len, dim

    def build(self, input_shape):
        self.table = self.add_weight(shape=(self.max_len, self.dim), name="embeddings")

    def call(self, x):
        return x + self.table[: tf.shape(x)[1]]


class AttentionBias(layers.Layer):
    """int mask [B, S] -> additive bias [B, 1, 1, S]."""

    def call(self, mask):
        m = tf.cast(mask[:, tf.newaxis, tf.newaxis, :], tf.float32)
        return (1.0 - m) * -10000.0


class AttentionCore(layers.Layer):
    """softmax(q k^T / sqrt(d) + bias) v with heads split from and merged into the last axis."""

    def __init__(self, heads, rate, **kw):
        super().__init__(**kw)
        self.heads, self.drop = heads, layers.Dropout(rate)

    def _split(self, t):
        b, s = tf.shape(t)[0], tf.shape(t)[1]
        t = tf.reshape(t, [b, s, self.heads, t.shape[-1] // self.heads])
        return tf.transpose(t, [0, 2, 1, 3])

    def call(self, q, k, v, bias, training=None):
        d = q.shape[-1] // self.heads
        q, k, v = self._split(q), self._split(k), self._split(v)
        scores = tf.matmul(q, k, transpose_b=True) / math.sqrt(d)
        probs = self.drop(tf.nn.softmax(scores + bias, axis=-1), training=training)
        ctx = tf.transpose(tf.matmul(probs, v), [0, 2, 1, 3])
        b, s = tf.shape(ctx)[0], tf.shape(ctx)[1]
        return tf.reshape(ctx, [b, s, self.heads * d])


class GeluErf(layers.Layer):
    """Exact GELU as 0.5 x (1 + erf(x / sqrt 2)).

    ``keras.activations.gelu(approximate=False)`` lowers to TF's ``Erfc``, which
    tf2onnx 1.17 cannot convert: it logs "Unsupported ops: Counter({'Erfc': 4})"
    and writes an ``Erfc`` node that no ONNX runtime accepts.
    """

    def call(self, x):
        return 0.5 * x * (1.0 + tf.math.erf(x * (1.0 / math.sqrt(2.0))))


class KerasOps:
    """The zoo's ``F`` for Keras' functional API (NHWC); each call makes a layer and loads its weights."""

    def __init__(self, params: Params):
        self.params = params

    @staticmethod
    def _pad(x, p):
        return layers.ZeroPadding2D(p)(x) if p else x

    def conv(self, x, name, cin, cout, k, stride=1, groups=1, bias=False):
        w, b = self.params.conv(name, cin, cout, k, groups, bias)
        if stride > 1:
            x, padding = self._pad(x, k // 2), "valid"
        else:
            padding = "same"
        if groups == 1:
            layer = layers.Conv2D(cout, k, stride, padding, use_bias=bias, name=_kname(name))
            kernel = w.transpose(2, 3, 1, 0)
        elif groups == cin == cout:
            layer = layers.DepthwiseConv2D(k, stride, padding, use_bias=bias, name=_kname(name))
            kernel = w.transpose(2, 3, 0, 1)
        else:
            raise NotImplementedError("grouped conv other than depthwise")
        y = layer(x)
        layer.set_weights([kernel] + ([b] if bias else []))
        return y

    def bn(self, x, name, c, eps=1e-5, gamma_scale=1.0):
        layer = layers.BatchNormalization(epsilon=eps, name=_kname(name))
        y = layer(x)
        layer.set_weights(list(self.params.bn(name, c, gamma_scale)))
        return y

    def relu(self, x):
        return layers.ReLU()(x)

    def relu6(self, x):
        return layers.ReLU(max_value=6.0)(x)

    def silu(self, x):
        return layers.Activation("silu")(x)

    def sigmoid(self, x):
        return layers.Activation("sigmoid")(x)

    def gelu(self, x):
        return GeluErf()(x)

    def add(self, a, b):
        return layers.Add()([a, b])

    def mul(self, a, b):
        return layers.Multiply()([a, b])

    def maxpool(self, x, k, stride):
        if stride == 1:
            return layers.MaxPooling2D(k, 1, "same")(x)
        # zero padding == -inf padding here: the zoo only pools ReLU outputs
        return layers.MaxPooling2D(k, stride, "valid")(self._pad(x, k // 2))

    def global_avgpool(self, x, keepdims=False):
        return layers.GlobalAveragePooling2D(keepdims=keepdims)(x)

    def concat(self, xs):
        return layers.Concatenate(axis=-1)(xs)

    def dropout(self, x, p):
        return layers.Dropout(p)(x)

    def linear(self, x, name, cin, cout, bias=True):
        w, b = self.params.linear(name, cin, cout, bias)
        layer = layers.Dense(cout, use_bias=bias, name=_kname(name))
        y = layer(x)
        layer.set_weights([w.T] + ([b] if bias else []))
        return y

    def embed(self, ids, name, vocab, dim):
        layer = layers.Embedding(vocab, dim, name=_kname(name))
        y = layer(ids)
        layer.set_weights([self.params.embedding(name, vocab, dim)])
        return y

    def add_position_embedding(self, x, name, max_len, dim):
        layer = PositionEmbedding(max_len, dim, name=_kname(name))
        y = layer(x)
        layer.set_weights([self.params.embedding(name, max_len, dim)])
        return y

    def layernorm(self, x, name, dim, eps):
        layer = layers.LayerNormalization(epsilon=eps, name=_kname(name))
        y = layer(x)
        layer.set_weights(list(self.params.layernorm(name, dim)))
        return y

    def attention_bias(self, mask):
        return AttentionBias()(mask)

    def attention(self, q, k, v, bias, heads, p):
        return AttentionCore(heads, p)(q, k, v, bias)


def build(spec, seed):
    ops = KerasOps(Params(seed, **spec.params))
    if spec.is_text:
        inputs = [keras.Input((None,), dtype="int64", name=n) for n in spec.inputs]
    else:
        inputs = [keras.Input((224, 224, 3), name="input")]
    out = spec.fn(ops, *inputs)
    return keras.Model(inputs, out, name=spec.name)


def keras_feeds(spec):
    feeds = sample_inputs(spec)
    if not spec.is_text:
        feeds = {"input": np.ascontiguousarray(feeds["input"].transpose(0, 2, 3, 1))}
    return feeds


def export(model, spec, path):
    if spec.is_text:
        sig = [tf.TensorSpec((None, None), tf.int64, name=n) for n in spec.inputs]
    else:
        sig = [tf.TensorSpec((None, 224, 224, 3), tf.float32, name="input")]
    try:
        tf2onnx.convert.from_keras(model, input_signature=sig, output_path=str(path))
        return "tf2onnx.convert.from_keras"
    except Exception as e:  # noqa: BLE001 - fall back to the tf.function route and say so
        first = f"from_keras failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})"

    @tf.function(input_signature=sig)
    def fn(*args):
        return {spec.outputs[0]: model(list(args), training=False)}

    tf2onnx.convert.from_function(fn, input_signature=sig, output_path=str(path))
    return first + "; used tf2onnx.convert.from_function"


def run_one(spec, cli):
    out = out_dir(cli.out, "keras")
    feeds = keras_feeds(spec)
    try:
        keras.backend.clear_session()
        model = build(spec, cli.seed)
        args = [feeds[n] for n in spec.inputs]
        expected = [np.asarray(model(args, training=False))]
        t = time.perf_counter()
        how = export(model, spec, out / f"{spec.name}.onnx")
        dt = time.perf_counter() - t
    except Exception as e:  # noqa: BLE001
        return record_failure(out, "keras", spec.name, e)
    return record(out / f"{spec.name}.onnx", "keras", spec.name, feeds, expected, text=spec.is_text,
                  export_s=dt, note=how)


def main():
    cli = parse_args(__doc__.splitlines()[0])
    tf.config.threading.set_intra_op_parallelism_threads(2)
    print(f"tensorflow {tf.__version__}, keras {keras.__version__}, tf2onnx {tf2onnx.__version__}", flush=True)
    for net in cli.nets:
        run_one(NETS[net], cli)


if __name__ == "__main__":
    main()
