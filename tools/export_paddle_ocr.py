"""PaddleOCR-style recognizer and text detector through the real paddle2onnx (random weights).

    /work/venv-paddle/bin/python tools/export_paddle_ocr.py [--size tiny|full] [--out DIR]
    /work/venv-paddle-old/bin/python tools/export_paddle_ocr.py ...   # paddle 2.6 + paddle2onnx 1.0

As PaddleOCR's deployment docs do it: ``paddle.jit.save`` with ``InputSpec`` (``None`` for the
dynamic dims), then ``paddle2onnx.export`` on the saved program at opset 11:

* ``paddle_crnn_ocr`` recognizer: conv stack over height 32 (tiny) / 48 (full) and a dynamic
                      width, height pooled to 1, bidirectional LSTM, per-timestep softmax.
                      ``x`` [batch, 3, H, width] -> [batch, width/4, classes]
* ``paddle_db_det``   DB-style text detector: stride-2 convs to 1/32, FPN (nearest Resize to
                      the lateral's size, Add, Concat), a head that upsamples 4x back
                      (ConvTranspose) to a probability map. H and W multiples of 32.
                      ``x`` [batch, 3, height, width] -> [batch, 1, height, width]

paddle2onnx 2.x names the ``None`` dims ``DynamicDimension.N`` and the output ``fetch_name_0``;
1.0.x (the ``-old`` venv; its files get the suffix ``_p2o1``) names them
``p2o.DynamicDimension.N`` and the output ``save_infer_model/scale_0.tmp_0``. Neither writes
``dim_value: -1``: only paddle2onnx's legacy Python exporter did, and it needs ``paddle.fluid``
(paddle <= 2.5, no Python 3.11 wheel). So with paddle2onnx 2.x the script also writes
``paddle_crnn_ocr_dim_neg1``: the real recognizer export with every dynamic input/output dim
rewritten to ``dim_value: -1``, labelled as edited in its ``.json``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path

import numpy as np
import paddle
import paddle.nn.functional as PF
import paddle2onnx
from paddle import nn

from zoo.realistic import finish, model_path, parse_args, versions

NAMES = ["paddle_crnn_ocr", "paddle_db_det"]
P2O_MAJOR = int(paddle2onnx.__version__.split(".")[0])
SUFFIX = "" if P2O_MAJOR >= 2 else "_p2o1"
OPSET = 11  # PaddleOCR's documented --opset_version
VERSIONS = versions("paddlepaddle", "paddle2onnx", "onnx", "onnxruntime")
EXPORTER = (f"paddle.jit.save + paddle2onnx.export "
            f"(paddle {VERSIONS['paddlepaddle']}, paddle2onnx {VERSIONS['paddle2onnx']})")
MEAN, STD = np.float32(0.5), np.float32(0.5)  # PaddleOCR normalizes to [-1, 1]

CRNN = {"tiny": dict(widths=(16, 32, 48, 48), hidden=32, classes=37, height=32, width=320),
        "full": dict(widths=(64, 128, 256, 256), hidden=96, classes=6625, height=48, width=320)}
DB = {"tiny": dict(widths=(8, 16, 24, 32), inner=16, hw=(320, 320)),
      "full": dict(widths=(32, 64, 128, 256), inner=96, hw=(640, 640))}


def conv_bn(cin, cout, stride=1):
    return nn.Sequential(nn.Conv2D(cin, cout, 3, stride, 1, bias_attr=False), nn.BatchNorm2D(cout), nn.ReLU())


def randomize_bn(layer, rng):
    for m in layer.sublayers():
        if isinstance(m, nn.BatchNorm2D):
            c = m._mean.shape[0]
            m.weight.set_value((1 + 0.2 * rng.standard_normal(c)).astype(np.float32))
            m.bias.set_value((0.1 * rng.standard_normal(c)).astype(np.float32))
            m._mean.set_value((0.1 * rng.standard_normal(c)).astype(np.float32))
            m._variance.set_value((0.5 + rng.random(c)).astype(np.float32))
    return layer


class CrnnOcr(nn.Layer):
    def __init__(self, widths, hidden, classes, height):
        super().__init__()
        w0, w1, w2, w3 = widths
        self.features = nn.Sequential(
            conv_bn(3, w0), nn.MaxPool2D(2, 2),
            conv_bn(w0, w1), nn.MaxPool2D(2, 2),
            conv_bn(w1, w2), nn.MaxPool2D((2, 1), (2, 1)),
            conv_bn(w2, w3), nn.MaxPool2D((height // 8, 1)))
        self.rnn = nn.LSTM(w3, hidden, direction="bidirect")
        self.fc = nn.Linear(2 * hidden, classes)

    def forward(self, x):
        x = paddle.transpose(paddle.squeeze(self.features(x), 2), [0, 2, 1])  # [batch, width/4, channels]
        x, _ = self.rnn(x)
        return PF.softmax(self.fc(x), axis=-1)


def up(x, k):
    # PaddleOCR writes F.upsample(x, scale_factor=2); paddle2onnx 2.1.0 rejects any scale_factor
    # ("the 0th elementwise MUST be ir::FloatAttribute"), so the target size comes from the shape.
    return PF.interpolate(x, size=[x.shape[2] * k, x.shape[3] * k], mode="nearest")


class DbDet(nn.Layer):
    def __init__(self, widths, inner):
        super().__init__()
        w0, w1, w2, w3 = widths
        self.stem = nn.Sequential(conv_bn(3, w0, 2), conv_bn(w0, w0, 2))          # /4
        self.c3, self.c4, self.c5 = conv_bn(w0, w1, 2), conv_bn(w1, w2, 2), conv_bn(w2, w3, 2)  # /8 /16 /32
        self.lat = nn.LayerList([nn.Conv2D(c, inner, 1) for c in (w0, w1, w2, w3)])
        self.head = nn.Sequential(conv_bn(4 * inner, inner), nn.Conv2DTranspose(inner, inner, 2, 2),
                                  nn.BatchNorm2D(inner), nn.ReLU(), nn.Conv2DTranspose(inner, 1, 2, 2))

    def forward(self, x):
        c2 = self.stem(x)
        c3 = self.c3(c2)
        c4 = self.c4(c3)
        c5 = self.c5(c4)
        p5 = self.lat[3](c5)
        p4 = self.lat[2](c4) + up(p5, 2)
        p3 = self.lat[1](c3) + up(p4, 2)
        p2 = self.lat[0](c2) + up(p3, 2)
        fuse = paddle.concat([up(p5, 8), up(p4, 4), up(p3, 2), p2], axis=1)
        return PF.sigmoid(self.head(fuse))


def text_line(rng, batch, h, w):
    img = np.full((batch, h, w, 3), 235, np.uint8)
    for b in range(batch):
        x = int(rng.integers(2, 8))
        while x < w - 6:
            gw = int(rng.integers(3, 9))
            img[b, int(rng.integers(h // 8, h // 3)):int(rng.integers(2 * h // 3, h - h // 8)), x:x + gw] = \
                rng.integers(10, 60)
            x += gw + int(rng.integers(1, 6))
    return ((img / np.float32(255) - MEAN) / STD).transpose(0, 3, 1, 2).astype(np.float32)


def document(rng, batch, h, w):
    """A light page with dark text-line blocks, what a detector sees."""
    img = np.full((batch, h, w, 3), 225, np.uint8)
    for b in range(batch):
        for _ in range(max(1, h // 24)):
            y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
            img[b, y:y + int(rng.integers(1, 14)), x:x + int(rng.integers(1, w // 2 + 2))] = rng.integers(0, 80)
    return ((img / np.float32(255) - MEAN) / STD).transpose(0, 3, 1, 2).astype(np.float32)


def export(layer, spec, path: Path):
    """jit.save, then paddle2onnx on the saved files (paddle2onnx's log goes to a buffer)."""
    log = io.StringIO()
    handler = logging.StreamHandler(log)
    logging.getLogger().addHandler(handler)
    try:
        with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(log):
            prefix = f"{tmp}/inference"
            paddle.jit.save(layer, prefix, input_spec=spec)
            program = next(p for p in (f"{prefix}.json", f"{prefix}.pdmodel") if Path(p).exists())
            paddle2onnx.export(program, f"{prefix}.pdiparams", str(path), opset_version=OPSET)
    except SystemExit:  # paddle2onnx's logging.error() calls sys.exit(-1)
        pass
    finally:
        logging.getLogger().removeHandler(handler)
    if not path.exists():
        raise RuntimeError(f"paddle2onnx wrote no {path.name}:\n{log.getvalue()[-3000:]}")


def crnn(args, rng):
    cfg = CRNN[args.size]
    layer = randomize_bn(CrnnOcr(cfg["widths"], cfg["hidden"], cfg["classes"], cfg["height"]), rng)
    layer.eval()
    x = text_line(rng, 2, cfg["height"], cfg["width"])
    path = model_path(args, "paddle", "paddle_crnn_ocr" + SUFFIX)
    export(layer, [paddle.static.InputSpec([None, 3, cfg["height"], None], "float32", "x")], path)
    return path, layer, {"x": x}, {"x": text_line(rng, 1, cfg["height"], 100)}, {}, {
        "x": f"text-line crop normalized to [-1, 1], height fixed {cfg['height']}, width >= 4",
        "output": "softmax over classes per timestep (time = width // 4); class 0 is the CTC blank",
        "config": cfg}


def db(args, rng):
    cfg = DB[args.size]
    layer = randomize_bn(DbDet(cfg["widths"], cfg["inner"]), rng)
    layer.eval()
    x = document(rng, 1, *cfg["hw"])
    path = model_path(args, "paddle", "paddle_db_det" + SUFFIX)
    export(layer, [paddle.static.InputSpec([None, 3, None, None], "float32", "x")], path)
    return path, layer, {"x": x}, {"x": document(rng, 1, 256, 416)}, {
        "1x1": {"x": document(rng, 1, 8, 8)[..., :1, :1]},
        "320x336 (16 | W, 32 does not)": {"x": document(rng, 1, 320, 336)}}, {
        "x": "page image normalized to [-1, 1]; height and width multiples of 32",
        "output": "text probability map at input resolution",
        "config": cfg}


def neg1_copy(path: Path) -> Path:
    """Paddle-style: every named dynamic dim of the graph I/O becomes ``dim_value: -1``."""
    import onnx

    model = onnx.load(str(path))
    for vi in [*model.graph.input, *model.graph.output]:
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param"):
                d.dim_value = -1  # clears dim_param (a oneof)
    out = path.with_name(path.stem + "_dim_neg1.onnx")
    onnx.save(model, str(out))
    return out


def main():
    args = parse_args(__doc__.splitlines()[0], NAMES)
    paddle.set_device("cpu")
    makers = {"paddle_crnn_ocr": crnn, "paddle_db_det": db}
    for i, name in enumerate(NAMES):
        if name not in args.only:
            continue
        paddle.seed(args.seed + i)
        path, layer, feeds, second, probes, notes = makers[name](args, np.random.default_rng(args.seed + i))
        import onnx  # paddle2onnx's onnx; only the graph output names are read here

        out_names = [o.name for o in onnx.load(str(path)).graph.output]
        with paddle.no_grad():
            got = layer(paddle.to_tensor(feeds["x"]))
        expected = dict(zip(out_names, [got.numpy()]))
        finish(path, exporter=EXPORTER, versions=VERSIONS, feeds=feeds, expected=expected, second=second,
               probes=probes, notes=notes)
        if name == "paddle_crnn_ocr" and P2O_MAJOR >= 2:
            finish(neg1_copy(path), exporter=EXPORTER + ", then dynamic dims edited to dim_value -1 (Paddle-style)",
                   versions=VERSIONS, feeds=feeds, expected=expected, second=second, probes=probes,
                   notes={**notes, "edited": "not an exporter's own output: " + neg1_copy.__doc__.strip()})


if __name__ == "__main__":
    main()
