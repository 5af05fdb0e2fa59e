"""A byte-level file-type classifier (Magika's shape) in Keras 3, converted by tf2onnx.

    /work/venv-tf/bin/python tools/export_keras_bytes.py [--size tiny|full] [--out DIR]

``keras_bytes``: ``bytes`` int32 [batch, 1536] (the first, middle and last 512 bytes of a
file, each value 0..255, 256 = padding past the end of a short file) -> Embedding(257) ->
Conv1D + ReLU (x2, strided) -> global max pool -> Dense -> ``probs`` [batch, classes] softmax.
Converted with ``tf2onnx.convert.from_keras`` at opset 17 with a ``[None, 1536]`` signature:
the batch dim is dynamic, the byte window is fixed.
The sample is four files: a PDF, a PNG, a Python script and a short JSON (padded).
"""

from __future__ import annotations

import contextlib
import io
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import tensorflow as tf
import tf2onnx
from tensorflow import keras

from zoo.realistic import finish, model_path, parse_args, versions

NAMES = ["keras_bytes"]
OPSET = 17
WINDOW, PAD = 512, 256
VERSIONS = versions("tensorflow-cpu", "keras", "tf2onnx", "onnx", "onnxruntime")
SIZES = {"tiny": dict(embed=16, filters=32, dense=32, classes=20),
         "full": dict(embed=128, filters=256, dense=256, classes=113)}


def build(cfg):
    x = keras.Input((3 * WINDOW,), dtype="int32", name="bytes")
    h = keras.layers.Embedding(PAD + 1, cfg["embed"])(x)
    h = keras.layers.Conv1D(cfg["filters"], 8, strides=4, activation="relu")(h)
    h = keras.layers.Conv1D(cfg["filters"], 4, strides=2, activation="relu")(h)
    h = keras.layers.GlobalMaxPooling1D()(h)
    h = keras.layers.Dense(cfg["dense"], activation="relu")(h)
    out = keras.layers.Dense(cfg["classes"], activation="softmax", name="probs")(h)
    return keras.Model(x, out)


def features(data: bytes) -> np.ndarray:
    """Beginning, middle and end windows; bytes past a short file's end are PAD."""
    arr = np.frombuffer(data, np.uint8).astype(np.int32)
    mid = max(0, (len(arr) - WINDOW) // 2)
    parts = [arr[:WINDOW], arr[mid:mid + WINDOW], arr[-WINDOW:]]
    return np.concatenate([np.pad(p, (0, WINDOW - len(p)), constant_values=PAD) for p in parts])


def files(rng) -> list[bytes]:
    pdf = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n" + \
        rng.integers(0, 256, 3000, dtype=np.uint8).tobytes() + b"\nxref\n0 6\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n"
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + rng.integers(0, 256, 5000, dtype=np.uint8).tobytes() + \
        b"\x00\x00\x00\x00IEND\xaeB`\x82"
    py = b"".join(f"def f{i}(x):\n    return x * {i} + {i * i}  # step {i}\n\n".encode() for i in range(60))
    js = b'{"name": "zoo", "version": 3, "tags": ["a", "b"]}\n'
    return [pdf, png, py, js]


def main():
    args = parse_args(__doc__.splitlines()[0], NAMES)
    keras.utils.set_random_seed(args.seed)
    cfg = SIZES[args.size]
    model = build(cfg)
    rng = np.random.default_rng(args.seed)
    feeds = {"bytes": np.stack([features(f) for f in files(rng)])}
    path = model_path(args, "keras", "keras_bytes")
    sig = (tf.TensorSpec((None, 3 * WINDOW), tf.int32, name="bytes"),)
    with contextlib.redirect_stdout(io.StringIO()):
        tf2onnx.convert.from_keras(model, input_signature=sig, opset=OPSET, output_path=str(path))
    import onnx

    out_name = onnx.load(str(path)).graph.output[0].name
    expected = {out_name: model(feeds["bytes"], training=False).numpy()}
    finish(path, exporter=f"tf2onnx.convert.from_keras (tf2onnx {tf2onnx.__version__}, keras {keras.__version__})",
           versions=VERSIONS, feeds=feeds, expected=expected, second={"bytes": feeds["bytes"][:1]},
           notes={"bytes": f"int32 byte values 0..255, {PAD} = padding after a short file's end; "
                           "first, middle and last 512 bytes of the file",
                  "config": cfg})


if __name__ == "__main__":
    main()
