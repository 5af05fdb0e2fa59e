"""Vision models whose height and width are dynamic, as users export them (random weights).

    /work/venv-export/bin/python tools/export_vision.py [--size tiny|full] [--out DIR] [--only unet_seg,...]

All three are written in ``torch.nn`` (torchvision style, no torchvision) and exported with
``torch.onnx.export(..., dynamo=False)``, opset 17:

* ``unet_seg``  U-Net: stride-2 convs down to 1/16, back up through bilinear Resize and
                ConvTranspose, Concat with the skip at each level. ``input`` [batch, 3, height,
                width] -> ``mask`` [batch, classes, height, width]. H and W must be multiples of 16:
                at 1x1 or 33x33 a Concat gets mismatched skips and ORT fails.
* ``yolo_like`` detector: stride 8/16/32 feature maps with an FPN neck (nearest Resize + Concat,
                so H, W multiples of 32), a YOLOv5-style head whose grid and anchors are built from
                each map's size (Shape/Range/Expand/Reshape/Concat) -> ``boxes`` [batch, N, 4]
                (xyxy pixels) and ``scores`` [batch, N, classes], N = 3 * sum(h_i * w_i).
* ``crnn_ocr``  text-line recognizer: conv stack over a fixed height (32 tiny, 48 full) and a
                dynamic width, height pooled to 1, bidirectional LSTM, per-timestep classifier
                -> ``probs`` [batch, width/4, classes] (CTC, softmax as PaddleOCR emits it).

Samples are synthetic "photos" (gradients, boxes) and "text lines" (dark glyph bars on a
light background) made from uint8 pixels and normalized as torchvision does.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zoo.realistic import finish, model_path, parse_args, versions

NAMES = ["unet_seg", "yolo_like", "crnn_ocr"]
OPSET = 17
VERSIONS = versions("torch", "onnx", "onnxruntime")
EXPORTER = f"torch.onnx.export(dynamo=False) torch {torch.__version__}"
MEAN, STD = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)

UNET = {"tiny": dict(widths=(8, 12, 16, 24, 32), classes=1, hw=(320, 320)),
        "full": dict(widths=(32, 64, 128, 256, 512), classes=21, hw=(480, 640))}
YOLO = {"tiny": dict(widths=(8, 16, 24, 32), classes=4, hw=(320, 320)),
        "full": dict(widths=(32, 64, 128, 256), classes=80, hw=(480, 640))}
CRNN = {"tiny": dict(widths=(16, 32, 48, 48), hidden=32, classes=37, height=32, width=320),
        "full": dict(widths=(64, 128, 256, 256), hidden=96, classes=6625, height=48, width=320)}


def photo(rng, batch, h, w):
    """Gradient background with a few flat boxes, uint8 -> normalized float NCHW."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.empty((batch, h, w, 3), np.uint8)
    for b in range(batch):
        base = (xx * 180 // max(w - 1, 1) + yy * 60 // max(h - 1, 1)).astype(np.uint8)
        img[b] = np.stack([base, base[::-1], 255 - base], -1)
        for _ in range(5):
            y0, x0 = rng.integers(0, h), rng.integers(0, w)
            img[b, y0:y0 + rng.integers(1, h // 3 + 2), x0:x0 + rng.integers(1, w // 3 + 2)] = rng.integers(0, 256, 3)
    return ((img / np.float32(255) - MEAN) / STD).transpose(0, 3, 1, 2).astype(np.float32)


def text_line(rng, batch, h, w):
    """Dark glyph-like bars on a light background, as a cropped text line looks."""
    img = np.full((batch, h, w, 3), 235, np.uint8)
    for b in range(batch):
        x = int(rng.integers(2, 8))
        while x < w - 6:
            gw = int(rng.integers(3, 9))
            top, bot = int(rng.integers(h // 8, h // 3)), int(rng.integers(2 * h // 3, h - h // 8))
            img[b, top:bot, x:x + gw] = rng.integers(10, 60)
            x += gw + int(rng.integers(1, 6))
    return ((img / np.float32(255) - MEAN) / STD).transpose(0, 3, 1, 2).astype(np.float32)


def randomize_bn(module, gen):
    """Non-trivial BN statistics, as a trained net has (the defaults make BN an identity)."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(1 + 0.2 * torch.randn(c, generator=gen))
                m.bias.copy_(0.1 * torch.randn(c, generator=gen))
                m.running_mean.copy_(0.1 * torch.randn(c, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(c, generator=gen))
    return module


def conv_bn(cin, cout, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class UNet(nn.Module):
    def __init__(self, widths, classes):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, widths[0]), conv_bn(widths[0], widths[0]))
        self.down = nn.ModuleList(nn.Sequential(conv_bn(a, b, 2), conv_bn(b, b)) for a, b in zip(widths, widths[1:]))
        ups = []
        for i, (a, _b) in enumerate(zip(widths[::-1], widths[-2::-1])):
            # alternate the two upsamplers exporters meet: learned ConvTranspose and bilinear Resize
            ups.append(nn.ConvTranspose2d(a, a, 2, 2) if i % 2 else nn.Identity())
        self.up = nn.ModuleList(ups)
        self.fuse = nn.ModuleList(nn.Sequential(conv_bn(a + b, b), conv_bn(b, b))
                                  for a, b in zip(widths[::-1], widths[-2::-1]))
        self.head = nn.Conv2d(widths[0], classes, 1)

    def forward(self, input):
        skips = [self.stem(input)]
        for block in self.down:
            skips.append(block(skips[-1]))
        x = skips.pop()
        for up, fuse in zip(self.up, self.fuse):
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False) \
                if isinstance(up, nn.Identity) else up(x)
            x = fuse(torch.cat([x, skips.pop()], 1))
        return self.head(x)


class YoloLike(nn.Module):
    ANCHORS = ((10, 13, 16, 30, 33, 23), (30, 61, 62, 45, 59, 119), (116, 90, 156, 198, 373, 326))
    STRIDES = (8, 16, 32)

    def __init__(self, widths, classes):
        super().__init__()
        w0, w1, w2, w3 = widths
        self.classes, self.no = classes, 5 + classes
        self.c3 = nn.Sequential(conv_bn(3, w0, 2), conv_bn(w0, w1, 2), conv_bn(w1, w1, 2), conv_bn(w1, w1))  # /8
        self.c4 = nn.Sequential(conv_bn(w1, w2, 2), conv_bn(w2, w2))  # /16
        self.c5 = nn.Sequential(conv_bn(w2, w3, 2), conv_bn(w3, w3))  # /32
        self.lat5, self.lat4 = conv_bn(w3 + w2, w2), conv_bn(w2 + w1, w1)
        self.heads = nn.ModuleList(nn.Conv2d(c, 3 * self.no, 1) for c in (w1, w2, w3))
        self.register_buffer("anchors", torch.tensor(self.ANCHORS, dtype=torch.float32).view(3, 1, 3, 1, 1, 2))

    def decode(self, p, i):
        b, _, h, w = p.shape
        p = p.view(b, 3, self.no, h, w).permute(0, 1, 3, 4, 2).sigmoid()
        gy, gx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                                indexing="ij")
        grid = torch.stack((gx, gy), 2).view(1, 1, h, w, 2)
        xy = (p[..., 0:2] * 2 - 0.5 + grid) * self.STRIDES[i]
        wh = (p[..., 2:4] * 2) ** 2 * self.anchors[i]
        boxes = torch.cat((xy - wh / 2, xy + wh / 2), -1).reshape(b, -1, 4)
        scores = (p[..., 5:] * p[..., 4:5]).reshape(b, -1, self.classes)
        return boxes, scores

    def forward(self, input):
        p3 = self.c3(input)
        p4 = self.c4(p3)
        p5 = self.c5(p4)
        n4 = self.lat5(torch.cat([F.interpolate(p5, scale_factor=2.0, mode="nearest"), p4], 1))
        n3 = self.lat4(torch.cat([F.interpolate(n4, scale_factor=2.0, mode="nearest"), p3], 1))
        outs = [self.decode(head(f), i) for i, (head, f) in enumerate(zip(self.heads, (n3, n4, p5)))]
        return torch.cat([o[0] for o in outs], 1), torch.cat([o[1] for o in outs], 1)


class CrnnOcr(nn.Module):
    def __init__(self, widths, hidden, classes, height):
        super().__init__()
        w0, w1, w2, w3 = widths
        self.features = nn.Sequential(
            conv_bn(3, w0), nn.MaxPool2d(2, 2),             # H/2,  W/2
            conv_bn(w0, w1), nn.MaxPool2d(2, 2),            # H/4,  W/4
            conv_bn(w1, w2), nn.MaxPool2d((2, 1), (2, 1)),  # H/8,  W/4
            conv_bn(w2, w3), nn.MaxPool2d((height // 8, 1)))  # height 1
        self.rnn = nn.LSTM(w3, hidden, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(2 * hidden, classes)

    def forward(self, input):
        x = self.features(input).squeeze(2).permute(0, 2, 1)  # [batch, width/4, channels]
        x, _ = self.rnn(x)
        return self.fc(x).softmax(-1)


def export(module, feeds, path, outputs, dynamic_axes):
    module.eval()
    args = tuple(torch.from_numpy(v) for v in feeds.values())
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy exporter's DeprecationWarning and tracer warnings
        torch.onnx.export(module, args, str(path), dynamo=False, opset_version=OPSET, input_names=list(feeds),
                          output_names=outputs, dynamic_axes=dynamic_axes)
    with torch.no_grad():
        got = module(*args)
    got = got if isinstance(got, tuple) else (got,)
    return {n: t.numpy() for n, t in zip(outputs, got)}


def unet(args, gen, rng):
    cfg = UNET[args.size]
    module = randomize_bn(UNet(cfg["widths"], cfg["classes"]), gen)
    feeds = {"input": photo(rng, 1, *cfg["hw"])}
    path = model_path(args, "torch_ts", "unet_seg")
    img = {0: "batch", 2: "height", 3: "width"}
    expected = export(module, feeds, path, ["mask"], {"input": img, "mask": img})
    return finish(path, exporter=EXPORTER, versions=VERSIONS, feeds=feeds, expected=expected,
                  second={"input": photo(rng, 2, 224, 416)},
                  probes={"1x1": {"input": photo(rng, 1, 16, 16)[:, :, :1, :1]},
                          "33x33": {"input": photo(rng, 1, 33, 33)},
                          "320x328 (8 | W, 16 does not)": {"input": photo(rng, 1, 320, 328)}},
                  notes={"input": "normalized RGB, NCHW; height and width multiples of 16",
                         "config": cfg})


def yolo(args, gen, rng):
    cfg = YOLO[args.size]
    module = randomize_bn(YoloLike(cfg["widths"], cfg["classes"]), gen)
    feeds = {"input": photo(rng, 1, *cfg["hw"])}
    path = model_path(args, "torch_ts", "yolo_like")
    axes = {"input": {0: "batch", 2: "height", 3: "width"}, "boxes": {0: "batch", 1: "boxes"},
            "scores": {0: "batch", 1: "boxes"}}
    expected = export(module, feeds, path, ["boxes", "scores"], axes)
    return finish(path, exporter=EXPORTER, versions=VERSIONS, feeds=feeds, expected=expected,
                  second={"input": photo(rng, 2, 256, 416)},
                  probes={"1x1": {"input": photo(rng, 1, 16, 16)[:, :, :1, :1]},
                          "320x336 (16 | W, 32 does not)": {"input": photo(rng, 1, 320, 336)}},
                  notes={"input": "normalized RGB, NCHW; height and width multiples of 32",
                         "boxes": "xyxy in input pixels; N = 3 * (H/8*W/8 + H/16*W/16 + H/32*W/32)",
                         "config": cfg})


def crnn(args, gen, rng):
    cfg = CRNN[args.size]
    module = randomize_bn(CrnnOcr(cfg["widths"], cfg["hidden"], cfg["classes"], cfg["height"]), gen)
    feeds = {"input": text_line(rng, 2, cfg["height"], cfg["width"])}
    path = model_path(args, "torch_ts", "crnn_ocr")
    axes = {"input": {0: "batch", 3: "width"}, "probs": {0: "batch", 1: "time"}}
    expected = export(module, feeds, path, ["probs"], axes)
    return finish(path, exporter=EXPORTER, versions=VERSIONS, feeds=feeds, expected=expected,
                  second={"input": text_line(rng, 1, cfg["height"], 100)},
                  probes={"width 2": {"input": text_line(rng, 1, cfg["height"], 16)[..., :2]}},
                  notes={"input": f"normalized RGB text-line crop, height fixed {cfg['height']}, width >= 4",
                         "probs": "softmax over classes per timestep (time = width // 4); class 0 is the CTC blank",
                         "config": cfg})


def main():
    args = parse_args(__doc__.splitlines()[0], NAMES)
    torch.set_num_threads(2)
    makers = {"unet_seg": unet, "yolo_like": yolo, "crnn_ocr": crnn}
    for i, name in enumerate(NAMES):
        if name in args.only:
            torch.manual_seed(args.seed + i)
            makers[name](args, torch.Generator().manual_seed(args.seed + i), np.random.default_rng(args.seed + i))


if __name__ == "__main__":
    main()
