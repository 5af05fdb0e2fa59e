"""A small causal transformer decoder (GPT-style LM) exported by the torch dynamo exporter.

    /work/venv-export/bin/python tools/export_decoder.py [--size tiny|full] [--out DIR]

``dynamo_decoder``: token + learned position embeddings, pre-LayerNorm blocks with
``F.scaled_dot_product_attention`` (causal, plus the padding mask), GELU MLP, tied LM head.
``input_ids``, ``attention_mask`` int64 [batch, sequence] -> ``logits`` [batch, sequence, vocab].
Exported with ``torch.onnx.export(..., dynamo=True)``, opset 18, ``torch.export.Dim`` for batch
and sequence; the exporter writes its own dim names (``s0``, ``s1``-style or the Dim names).
The sample is batch 2 x 128 tokens, the second row right-padded by 40.
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

NAMES = ["dynamo_decoder"]
VERSIONS = versions("torch", "onnxscript", "onnx", "onnxruntime")
SIZES = {"tiny": dict(vocab=512, dim=48, layers=2, heads=4, max_len=256),
         "full": dict(vocab=32000, dim=512, layers=4, heads=8, max_len=1024)}


class Block(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x, bias):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


class Decoder(nn.Module):
    def __init__(self, vocab, dim, layers, heads, max_len):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, dim), nn.Embedding(max_len, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(dim)

    def forward(self, input_ids, attention_mask):
        t = input_ids.shape[1]
        x = self.tok(input_ids) + self.pos(torch.arange(t, device=input_ids.device))
        causal = torch.ones(t, t, dtype=torch.bool, device=input_ids.device).tril()
        keep = causal[None, None] & attention_mask[:, None, None, :].bool()
        bias = torch.zeros(keep.shape, dtype=x.dtype).masked_fill(~keep, torch.finfo(x.dtype).min)
        for block in self.blocks:
            x = block(x, bias)
        return self.ln(x) @ self.tok.weight.T  # tied LM head


def tokens(rng, vocab, batch, seq, pad_tail):
    ids = rng.integers(1, vocab, size=(batch, seq), dtype=np.int64)
    mask = np.ones((batch, seq), np.int64)
    if batch > 1 and pad_tail:
        ids[1, -pad_tail:], mask[1, -pad_tail:] = 0, 0
    return {"input_ids": ids, "attention_mask": mask}


def main():
    args = parse_args(__doc__.splitlines()[0], NAMES)
    torch.set_num_threads(2)
    torch.manual_seed(args.seed)
    cfg = SIZES[args.size]
    model = Decoder(**cfg).eval()
    rng = np.random.default_rng(args.seed)
    feeds = tokens(rng, cfg["vocab"], 2, 128, 40)
    args_t = tuple(torch.from_numpy(v) for v in feeds.values())
    batch = torch.export.Dim("batch", min=1, max=64)
    seq = torch.export.Dim("sequence", min=2, max=cfg["max_len"])
    path = model_path(args, "torch_dynamo", "dynamo_decoder")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(model, args_t, dynamo=True, opset_version=18, input_names=list(feeds),
                                 output_names=["logits"], external_data=False,
                                 dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}})
        prog.save(str(path), external_data=False)
        expected = {"logits": model(*args_t).numpy()}
    finish(path, exporter=f"torch.onnx.export(dynamo=True) torch {torch.__version__}", versions=VERSIONS,
           feeds=feeds, expected=expected, second=tokens(np.random.default_rng(2), cfg["vocab"], 1, 37, 0),
           notes={"input_ids": f"token ids in [0, {cfg['vocab']}); 0 = padding",
                  "attention_mask": "1 real, 0 padding (row 1 pads its last 40); sequence >= 2 (torch.export Dim min)",
                  "config": cfg})


if __name__ == "__main__":
    main()
