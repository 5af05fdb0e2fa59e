"""Hugging Face transformers exports as users bring them (random weights, configs in code).

    /work/venv-export/bin/python tools/export_hf.py [--size tiny|full] [--out DIR] [--only hf_bert,...]

Models, all exported with the TorchScript exporter (``torch.onnx.export(..., dynamo=False)``,
opset 17, the path Hugging Face Optimum and most published ONNX files took):

* ``hf_bert``            ``BertModel``: ``input_ids``, ``attention_mask``, ``token_type_ids``
                         (type_vocab_size 2: ids >= 2 crash the Gather) -> last_hidden_state, pooler_output
* ``hf_distilbert``      ``DistilBertModel``: ``input_ids``, ``attention_mask`` -> last_hidden_state
* ``hf_gpt2_past``       ``GPT2LMHeadModel`` decoding with a cache: ``input_ids`` [batch, sequence],
                         ``attention_mask`` [batch, past_sequence + sequence], ``past_key_values.N.key/value``
                         [batch, heads, past_sequence, head_dim] -> logits, ``present.N.key/value``
* ``sentence_embedding`` BERT encoder + mean pooling over the mask + L2 normalize (all-MiniLM-L6-v2's shape)

Samples: batch 2 x 128 tokens whose second row pads its tail (attention_mask 0, id 0);
GPT-2 gets one new token after a 128-token past (the second row left-padded, as
``generate`` pads a batch). The past is the model's own cache from running the prompt.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import torch
from transformers import (BertConfig, BertModel, DistilBertConfig, DistilBertModel, DynamicCache, GPT2Config,
                          GPT2LMHeadModel)

from zoo.realistic import finish, model_path, parse_args, versions

NAMES = ["hf_bert", "hf_distilbert", "hf_gpt2_past", "sentence_embedding"]
OPSET = 17
VERSIONS = versions("torch", "transformers", "onnx", "onnxruntime")
EXPORTER = f"torch.onnx.export(dynamo=False) torch {torch.__version__}, transformers {VERSIONS['transformers']}"

# (tiny, full) configurations. Tiny keeps the real structure and sample lengths but a
# 512-token vocabulary and 256 positions, so the committed files stay small.
BERT = {"tiny": dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, max_position_embeddings=256),
        "full": dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                     intermediate_size=1536, max_position_embeddings=512)}
DISTILBERT = {"tiny": dict(vocab_size=512, dim=64, n_layers=2, n_heads=4, hidden_dim=128, max_position_embeddings=256),
              "full": dict(vocab_size=30522, dim=384, n_layers=6, n_heads=12, hidden_dim=1536)}
GPT2 = {"tiny": dict(vocab_size=512, n_embd=32, n_layer=2, n_head=2, n_positions=256),
        "full": dict(vocab_size=50257, n_embd=512, n_layer=4, n_head=8, n_positions=1024)}
CLS, SEP = 101, 102  # BERT's [CLS]/[SEP] ids; [PAD] is 0


def token_batch(rng, vocab, batch=2, seq=128, pad_tail=40):
    """A sentence pair per row; row 1 ends in ``pad_tail`` padding tokens."""
    ids = rng.integers(SEP + 1, vocab, size=(batch, seq), dtype=np.int64)
    mask = np.ones((batch, seq), np.int64)
    types = np.zeros((batch, seq), np.int64)
    for b in range(batch):
        n = seq - (pad_tail if b % 2 else 0)
        mid = n // 2
        ids[b, 0], ids[b, mid], ids[b, n - 1] = CLS, SEP, SEP
        types[b, mid + 1:n] = 1
        ids[b, n:], mask[b, n:] = 0, 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def export_ts(module, feeds, path, outputs, dynamic_axes):
    module.eval()  # export restores the wrapper's mode on exit; a training wrapper would turn dropout on
    args = tuple(torch.from_numpy(v) for v in feeds.values())
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy exporter's DeprecationWarning and tracer warnings
        torch.onnx.export(module, args, str(path), dynamo=False, opset_version=OPSET,
                          input_names=list(feeds), output_names=outputs, dynamic_axes=dynamic_axes)
    with torch.no_grad():
        got = module(*args)
    return {n: t.numpy() for n, t in zip(outputs, got)}


class Bert(torch.nn.Module):
    def __init__(self, model, pool=False):
        super().__init__()
        self.model, self.pool = model, pool

    def forward(self, input_ids, attention_mask, token_type_ids):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                         return_dict=False)
        if not self.pool:
            return out[0], out[1]
        # sentence-transformers: mean over real tokens, then unit length
        m = attention_mask.unsqueeze(-1).to(out[0].dtype)
        emb = (out[0] * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return (torch.nn.functional.normalize(emb, p=2, dim=1),)


class DistilBert(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return (self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=False)[0],)


class GPT2Past(torch.nn.Module):
    """Flat tensors in and out around the Cache object, named as Optimum names them."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, *past):
        cache = DynamicCache(list(zip(past[0::2], past[1::2])))
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, cache=cache, use_cache=True,
                         return_dict=True)
        present = [t for layer in out.cache.layers for t in (layer.keys, layer.values)]
        return (out.logits, *present)


def text_axes(names, outputs):
    axes = {n: {0: "batch", 1: "sequence"} for n in names + outputs}
    return axes


def bert_like(args, name, rng):
    cfg = BertConfig(**BERT[args.size], type_vocab_size=2, attn_implementation="eager")
    pool = name == "sentence_embedding"
    module = Bert(BertModel(cfg, add_pooling_layer=not pool), pool=pool)
    feeds = token_batch(rng, cfg.vocab_size)
    outputs = ["sentence_embedding"] if pool else ["last_hidden_state", "pooler_output"]
    axes = text_axes(list(feeds), outputs[:1] if not pool else [])
    axes.update({o: {0: "batch"} for o in outputs if o not in axes})
    path = model_path(args, "torch_ts", name)
    expected = export_ts(module, feeds, path, outputs, axes)
    second = token_batch(np.random.default_rng(2), cfg.vocab_size, batch=1, seq=37, pad_tail=0)
    notes = {"input_ids": f"token ids in [0, {cfg.vocab_size}); 0 = [PAD], {CLS} = [CLS], {SEP} = [SEP]",
             "attention_mask": "1 for real tokens, 0 for padding (row 1 pads its last 40)",
             "token_type_ids": "0 or 1 only: the embedding table has 2 rows (type_vocab_size 2)",
             "config": {k: getattr(cfg, k) for k in BERT[args.size]}}
    return finish(path, exporter=EXPORTER, versions=VERSIONS, feeds=feeds, expected=expected, second=second,
                  notes=notes)


def distilbert(args, rng):
    cfg = DistilBertConfig(**DISTILBERT[args.size], attn_implementation="eager")
    module = DistilBert(DistilBertModel(cfg))
    feeds = token_batch(rng, cfg.vocab_size)
    del feeds["token_type_ids"]
    path = model_path(args, "torch_ts", "hf_distilbert")
    expected = export_ts(module, feeds, path, ["last_hidden_state"], text_axes(list(feeds), ["last_hidden_state"]))
    second = token_batch(np.random.default_rng(2), cfg.vocab_size, batch=1, seq=37, pad_tail=0)
    del second["token_type_ids"]
    notes = {"input_ids": f"token ids in [0, {cfg.vocab_size})", "attention_mask": "1 real, 0 padding",
             "config": {k: getattr(cfg, k) for k in DISTILBERT[args.size]}}
    return finish(path, exporter=EXPORTER, versions=VERSIONS, feeds=feeds, expected=expected, second=second,
                  notes=notes)


def gpt2_feeds(model, rng, vocab, batch, past_len, new=1, left_pad=16):
    """Run a prompt of ``past_len`` tokens through the model; its cache becomes the past."""
    ids = rng.integers(0, vocab, size=(batch, past_len + new), dtype=np.int64)
    mask = np.ones((batch, past_len + new), np.int64)
    if batch > 1:
        mask[1, :left_pad] = 0  # generate() left-pads the shorter prompt
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids[:, :past_len]), attention_mask=torch.from_numpy(mask[:, :past_len]),
                    use_cache=True, return_dict=True)
    feeds = {"input_ids": ids[:, past_len:], "attention_mask": mask}
    for i, layer in enumerate(out.cache.layers):
        feeds[f"past_key_values.{i}.key"] = layer.keys.numpy()
        feeds[f"past_key_values.{i}.value"] = layer.values.numpy()
    return feeds


def gpt2(args, rng):
    v = GPT2[args.size]["vocab_size"]
    cfg = GPT2Config(**GPT2[args.size], bos_token_id=v - 1, eos_token_id=v - 1, attn_implementation="eager")
    model = GPT2LMHeadModel(cfg).eval()
    assert model.lm_head.weight is model.transformer.wte.weight  # tied embedding / LM head
    feeds = gpt2_feeds(model, rng, cfg.vocab_size, batch=2, past_len=128)
    n = cfg.n_layer
    past = [f"past_key_values.{i}.{kv}" for i in range(n) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(n) for kv in ("key", "value")]
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "past_sequence + sequence"},
            "logits": {0: "batch", 1: "sequence"}}
    axes.update({p: {0: "batch", 2: "past_sequence"} for p in past})
    axes.update({p: {0: "batch", 2: "past_sequence + sequence"} for p in present})
    path = model_path(args, "torch_ts", "hf_gpt2_past")
    expected = export_ts(GPT2Past(model), feeds, path, ["logits", *present], axes)
    second = gpt2_feeds(model, np.random.default_rng(2), cfg.vocab_size, batch=1, past_len=17, new=3)
    empty = gpt2_feeds(model, np.random.default_rng(3), cfg.vocab_size, batch=1, past_len=1, new=5)
    empty = {k: (v[:, :, :0] if k.startswith("past") else v[:, 1:] if k == "attention_mask" else v)
             for k, v in empty.items()}
    notes = {"input_ids": f"token ids in [0, {cfg.vocab_size}); the new token(s) only",
             "attention_mask": "length past_sequence + sequence; row 1 left-padded (16 zeros)",
             "past_key_values": "[batch, heads, past_sequence, head_dim], the model's own cache of a 128-token prompt",
             "tied": "lm_head.weight is transformer.wte.weight in torch",
             "config": {k: getattr(cfg, k) for k in GPT2[args.size]}}
    return finish(path, exporter=EXPORTER, versions=VERSIONS, feeds=feeds, expected=expected, second=second,
                  probes={"empty_past_prefill_5": empty}, notes=notes)


def main():
    args = parse_args(__doc__.splitlines()[0], NAMES)
    torch.set_num_threads(2)
    for i, name in enumerate(NAMES):
        if name not in args.only:
            continue
        torch.manual_seed(args.seed + i)  # transformers initialises weights from torch's global RNG
        rng = np.random.default_rng(args.seed + i)
        if name in ("hf_bert", "sentence_embedding"):
            bert_like(args, name, rng)
        elif name == "hf_distilbert":
            distilbert(args, rng)
        else:
            gpt2(args, rng)


if __name__ == "__main__":
    main()
