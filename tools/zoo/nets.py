"""The five zoo networks, written once against an op interface ``F``.

A network is a function ``net(F, *inputs) -> output``. Every framework's
exporter supplies an ``F`` whose methods build that framework's layers, load
the weights from ``zoo.params.Params`` by layer name and apply them:

    conv(x, name, cin, cout, k, stride=1, groups=1, bias=False)  # pad k//2 each side
    bn(x, name, c, eps=1e-5, gamma_scale=1.0)                    # inference statistics
    relu(x) relu6(x) silu(x) sigmoid(x) gelu(x)                  # gelu is the erf form
    add(a, b) mul(a, b)                                          # mul broadcasts SE scales
    maxpool(x, k, stride)              # pad k//2; only used on inputs >= 0
    global_avgpool(x, keepdims=False)  # [N, C] or [N, C, 1, 1] (NHWC: [N, 1, 1, C])
    concat(xs)                         # channel axis
    dropout(x, p)
    linear(x, name, cin, cout, bias=True)                        # last axis
    embed(ids, name, vocab, dim)
    add_position_embedding(x, name, max_len, dim)                # x + table[:seq]
    layernorm(x, name, dim, eps)
    attention_bias(mask)               # int mask [B, S] -> additive [B, 1, 1, S]
    attention(q, k, v, bias, heads, p) # scaled dot product, heads split and merged

Image nets take NCHW float32 ``input`` (Keras feeds the same data as NHWC)
and return ``logits`` [N, 1000]. ``bert`` takes int64 ``input_ids`` and
``attention_mask`` [N, S] and returns ``last_hidden_state`` [N, S, hidden].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

__all__ = ["NETS", "NetSpec", "sample_inputs"]


def resnet50(F, x, num_classes=1000):
    """ResNet-50 v1.5 (stride on the 3x3 conv), torchvision layer names."""
    x = F.relu(F.bn(F.conv(x, "conv1", 3, 64, 7, stride=2), "bn1", 64))
    x = F.maxpool(x, 3, 2)
    cin = 64
    for si, (width, blocks, stride) in enumerate([(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)]):
        cout = width * 4
        for bi in range(blocks):
            p = f"layer{si + 1}.{bi}"
            s = stride if bi == 0 else 1
            y = F.relu(F.bn(F.conv(x, p + ".conv1", cin, width, 1), p + ".bn1", width))
            y = F.relu(F.bn(F.conv(y, p + ".conv2", width, width, 3, stride=s), p + ".bn2", width))
            y = F.bn(F.conv(y, p + ".conv3", width, cout, 1), p + ".bn3", cout, gamma_scale=0.3)
            if bi == 0:
                x = F.bn(F.conv(x, p + ".downsample.0", cin, cout, 1, stride=s), p + ".downsample.1", cout)
            x = F.relu(F.add(y, x))
            cin = cout
    x = F.global_avgpool(x)
    return F.linear(x, "fc", 2048, num_classes)


def mobilenetv2(F, x, num_classes=1000):
    """MobileNetV2 1.0, torchvision layer names."""

    def cbr(x, name, cin, cout, k, stride=1, groups=1):
        return F.relu6(F.bn(F.conv(x, name + ".0", cin, cout, k, stride, groups), name + ".1", cout))

    x = cbr(x, "features.0", 3, 32, 3, 2)
    cin, idx = 32, 1
    for t, c, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                       (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]:
        for i in range(n):
            stride = s if i == 0 else 1
            p, hidden, j = f"features.{idx}.conv", cin * t, 0
            y = x
            if t != 1:
                y = cbr(y, f"{p}.{j}", cin, hidden, 1)
                j += 1
            y = cbr(y, f"{p}.{j}", hidden, hidden, 3, stride, groups=hidden)
            y = F.conv(y, f"{p}.{j + 1}", hidden, c, 1)
            y = F.bn(y, f"{p}.{j + 2}", c, gamma_scale=0.5)
            x = F.add(x, y) if stride == 1 and cin == c else y
            cin, idx = c, idx + 1
    x = cbr(x, f"features.{idx}", cin, 1280, 1)
    x = F.dropout(F.global_avgpool(x), 0.2)
    return F.linear(x, "classifier.1", 1280, num_classes)


def efficientnet_b0(F, x, num_classes=1000):
    """EfficientNet-B0: MBConv blocks with squeeze-excitation, SiLU, BN eps 1e-3."""

    def cbs(x, name, cin, cout, k, stride=1, groups=1):
        y = F.bn(F.conv(x, name + ".conv", cin, cout, k, stride, groups), name + ".bn", cout, eps=1e-3)
        return F.silu(y)

    x = cbs(x, "stem", 3, 32, 3, 2)
    cin = 32
    for si, (e, k, s, c, n) in enumerate([(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2),
                                          (6, 3, 2, 80, 3), (6, 5, 1, 112, 3), (6, 5, 2, 192, 4),
                                          (6, 3, 1, 320, 1)]):
        for bi in range(n):
            p, stride, hidden = f"blocks.{si}.{bi}", (s if bi == 0 else 1), cin * e
            y = cbs(x, p + ".expand", cin, hidden, 1) if e != 1 else x
            y = cbs(y, p + ".dw", hidden, hidden, k, stride, groups=hidden)
            squeeze = max(1, cin // 4)
            se = F.global_avgpool(y, keepdims=True)
            se = F.silu(F.conv(se, p + ".se.reduce", hidden, squeeze, 1, bias=True))
            se = F.sigmoid(F.conv(se, p + ".se.expand", squeeze, hidden, 1, bias=True))
            y = F.mul(y, se)
            y = F.bn(F.conv(y, p + ".project.conv", hidden, c, 1), p + ".project.bn", c, eps=1e-3,
                     gamma_scale=0.5)
            x = F.add(y, x) if stride == 1 and cin == c else y
            cin = c
    x = cbs(x, "head", cin, 1280, 1)
    x = F.dropout(F.global_avgpool(x), 0.2)
    return F.linear(x, "classifier", 1280, num_classes)


def inception(F, x, num_classes=1000):
    """Inception-v1 (GoogLeNet) with real 5x5 branches, BN after every conv, no aux heads."""

    def bc(x, name, cin, cout, k, stride=1):
        return F.relu(F.bn(F.conv(x, name + ".conv", cin, cout, k, stride), name + ".bn", cout, eps=1e-3))

    def block(x, name, cin, c1, c3r, c3, c5r, c5, pp):
        b1 = bc(x, name + ".branch1", cin, c1, 1)
        b2 = bc(bc(x, name + ".branch2.0", cin, c3r, 1), name + ".branch2.1", c3r, c3, 3)
        b3 = bc(bc(x, name + ".branch3.0", cin, c5r, 1), name + ".branch3.1", c5r, c5, 5)
        b4 = bc(F.maxpool(x, 3, 1), name + ".branch4.1", cin, pp, 1)
        return F.concat([b1, b2, b3, b4])

    x = F.maxpool(bc(x, "conv1", 3, 64, 7, 2), 3, 2)
    x = bc(bc(x, "conv2", 64, 64, 1), "conv3", 64, 192, 3)
    x = F.maxpool(x, 3, 2)
    x = block(x, "inception3a", 192, 64, 96, 128, 16, 32, 32)
    x = block(x, "inception3b", 256, 128, 128, 192, 32, 96, 64)
    x = F.maxpool(x, 3, 2)
    x = block(x, "inception4a", 480, 192, 96, 208, 16, 48, 64)
    x = block(x, "inception4b", 512, 160, 112, 224, 24, 64, 64)
    x = block(x, "inception4c", 512, 128, 128, 256, 24, 64, 64)
    x = block(x, "inception4d", 512, 112, 144, 288, 32, 64, 64)
    x = block(x, "inception4e", 528, 256, 160, 320, 32, 128, 128)
    x = F.maxpool(x, 3, 2)
    x = block(x, "inception5a", 832, 256, 160, 320, 32, 128, 128)
    x = block(x, "inception5b", 832, 384, 192, 384, 48, 128, 128)
    x = F.dropout(F.global_avgpool(x), 0.4)
    return F.linear(x, "fc", 1024, num_classes)


BERT = dict(vocab=30522, max_len=512, hidden=256, heads=4, layers=4, intermediate=1024, eps=1e-12)


def bert(F, input_ids, attention_mask):
    """BERT encoder (post-LN), Hugging Face layer names; no token-type embeddings or pooler."""
    cfg = BERT  # not a default argument: Paddle's dygraph-to-static loses module globals there
    d, ffn, eps = cfg["hidden"], cfg["intermediate"], cfg["eps"]
    h = F.embed(input_ids, "embeddings.word_embeddings", cfg["vocab"], d)
    h = F.add_position_embedding(h, "embeddings.position_embeddings", cfg["max_len"], d)
    h = F.dropout(F.layernorm(h, "embeddings.LayerNorm", d, eps), 0.1)
    bias = F.attention_bias(attention_mask)
    for i in range(cfg["layers"]):
        p = f"encoder.layer.{i}"
        q = F.linear(h, p + ".attention.self.query", d, d)
        k = F.linear(h, p + ".attention.self.key", d, d)
        v = F.linear(h, p + ".attention.self.value", d, d)
        a = F.attention(q, k, v, bias, cfg["heads"], 0.1)
        a = F.dropout(F.linear(a, p + ".attention.output.dense", d, d), 0.1)
        h = F.layernorm(F.add(a, h), p + ".attention.output.LayerNorm", d, eps)
        f = F.gelu(F.linear(h, p + ".intermediate.dense", d, ffn))
        f = F.dropout(F.linear(f, p + ".output.dense", ffn, d), 0.1)
        h = F.layernorm(F.add(f, h), p + ".output.LayerNorm", d, eps)
    return h


@dataclass(frozen=True)
class NetSpec:
    name: str
    fn: Callable
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    params: dict = field(default_factory=dict)  # Params(**params)

    @property
    def is_text(self) -> bool:
        return self.name == "bert"


_IMG = dict(inputs=("input",), outputs=("logits",))
NETS = {
    "resnet50": NetSpec("resnet50", resnet50, **_IMG),
    "mobilenetv2": NetSpec("mobilenetv2", mobilenetv2, **_IMG),
    "efficientnet_b0": NetSpec("efficientnet_b0", efficientnet_b0, **_IMG),
    "inception": NetSpec("inception", inception, **_IMG),
    "bert": NetSpec("bert", bert, inputs=("input_ids", "attention_mask"),
                    outputs=("last_hidden_state",), params=dict(linear_std=0.02)),
}


def sample_inputs(spec: NetSpec, batch: int = 2, seq: int = 128, seed: int = 1) -> dict[str, np.ndarray]:
    """Seeded inputs in NCHW / [batch, seq] layout; the last sequence pads its tail."""
    rng = np.random.default_rng(seed)
    if not spec.is_text:
        return {"input": rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)}
    ids = rng.integers(1, BERT["vocab"], size=(batch, seq)).astype(np.int64)
    mask = np.ones((batch, seq), dtype=np.int64)
    mask[-1, seq * 3 // 4:] = 0
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask}
