"""Small hand-built models with the input signatures real exporters write, and that fail on
inputs of dims 1 and integers in [0, 4): for the input model's tests (tests/test_inputs.py).

Each builder returns an onnx.ModelProto with random weights (seeded). The real exports of the
same kinds, made by `tools/export_*.py`, are in `models/zoo/` and tested in tests/test_zoo_real.py.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper as oh
from onnx import numpy_helper as nh

OPSET = [oh.make_opsetid("", 17)]


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return nh.from_array(array, name)


def _model(nodes, inputs, outputs, inits, opset=OPSET) -> onnx.ModelProto:
    model = oh.make_model(oh.make_graph(nodes, "g", inputs, outputs, inits), opset_imports=opset)
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def bert_like(vocab: int = 100, hidden: int = 16, positions: int = 512, seed: int = 0) -> onnx.ModelProto:
    """input_ids, attention_mask, token_type_ids [batch, sequence] (int64), a 2-row token-type
    table, positions sliced to the sequence length, the mask turned into an additive bias."""
    rng = np.random.default_rng(seed)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    inits = [_init("word", f(vocab, hidden)), _init("types", f(2, hidden)), _init("pos", f(1, positions, hidden)),
             _init("w", f(hidden, hidden)), _init("one", np.array(1.0, np.float32)),
             _init("big", np.array(-1e4, np.float32)), _init("zero", np.array([0], np.int64)),
             _init("axis1", np.array([1], np.int64)), _init("idx1", np.array([1], np.int64))]
    nodes = [
        oh.make_node("Gather", ["word", "input_ids"], ["we"]),
        oh.make_node("Gather", ["types", "token_type_ids"], ["te"]),
        oh.make_node("Shape", ["input_ids"], ["ids_shape"]),
        oh.make_node("Gather", ["ids_shape", "idx1"], ["seq_len"]),
        oh.make_node("Slice", ["pos", "zero", "seq_len", "axis1"], ["pe"]),
        oh.make_node("Add", ["we", "te"], ["e1"]),
        oh.make_node("Add", ["e1", "pe"], ["e2"]),
        oh.make_node("MatMul", ["e2", "w"], ["h"]),
        oh.make_node("Cast", ["attention_mask"], ["maskf"], to=T.FLOAT),
        oh.make_node("Sub", ["one", "maskf"], ["inv"]),
        oh.make_node("Mul", ["inv", "big"], ["bias"]),
        oh.make_node("Unsqueeze", ["bias", "axis1"], ["bias3"]),
        oh.make_node("Transpose", ["bias3"], ["bias_t"], perm=[0, 2, 1]),
        oh.make_node("Add", ["h", "bias_t"], ["hidden"]),
    ]
    ids = [oh.make_tensor_value_info(n, T.INT64, ["batch", "sequence"])
           for n in ("input_ids", "attention_mask", "token_type_ids")]
    return _model(nodes, ids, [oh.make_tensor_value_info("hidden", T.FLOAT, ["batch", "sequence", hidden])], inits)


def unet_like(levels: int = 4, width: int = 4, seed: int = 0, batch_dim="batch", dense: bool = True) -> onnx.ModelProto:
    """x [batch, 3, height, width]: `levels` stride-2 convs down, nearest Resize x2 up, and a
    Concat with the skip at each level: height and width must be multiples of 2**levels.
    With `dense` off the output is a global average, as a classifier's would be."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []
    current, channels, skips = "x", 3, []
    for i in range(levels):
        w = rng.standard_normal((width, channels, 3, 3)).astype(np.float32) * 0.3
        inits.append(_init(f"down{i}.w", w))
        skips.append(current)
        nodes.append(oh.make_node("Conv", [current, f"down{i}.w"], [f"d{i}"], strides=[2, 2], pads=[1, 1, 1, 1]))
        nodes.append(oh.make_node("Relu", [f"d{i}"], [f"r{i}"]))
        current, channels = f"r{i}", width
    inits.append(_init("scales", np.array([1, 1, 2, 2], np.float32)))
    inits.append(_init("roi", np.zeros(0, np.float32)))
    for i in reversed(range(levels)):
        nodes.append(oh.make_node("Resize", [current, "roi", "scales"], [f"u{i}"], mode="nearest"))
        nodes.append(oh.make_node("Concat", [f"u{i}", skips[i]], [f"c{i}"], axis=1))
        skip_channels = 3 if i == 0 else width
        w = rng.standard_normal((width, channels + skip_channels, 3, 3)).astype(np.float32) * 0.3
        inits.append(_init(f"up{i}.w", w))
        nodes.append(oh.make_node("Conv", [f"c{i}", f"up{i}.w"], [f"o{i}"], pads=[1, 1, 1, 1]))
        current, channels = f"o{i}", width
    x = oh.make_tensor_value_info("x", T.FLOAT, [batch_dim, 3, "height", "width"])
    if not dense:
        nodes.append(oh.make_node("GlobalAveragePool", [current], ["pooled"]))
        return _model(nodes, [x], [oh.make_tensor_value_info("pooled", T.FLOAT, [batch_dim, width, 1, 1])], inits)
    nodes.append(oh.make_node("Identity", [current], ["mask"]))
    return _model(nodes, [x], [oh.make_tensor_value_info("mask", T.FLOAT, [batch_dim, width, "height", "width"])],
                  inits)


def stateful_vad(hidden: int = 8, seed: int = 0, order=("input", "state", "sr")) -> onnx.ModelProto:
    """input [batch, samples], state [2, batch, hidden], sr int64 scalar. An If on sr == 16000
    picks the 16 kHz path; the other branch Reshapes to a size only 8 kHz frames have, so
    any other rate fails, as the real detector raises on unsupported rates."""
    rng = np.random.default_rng(seed)
    frame = 16
    inits = [_init("w_in", rng.standard_normal((frame, hidden)).astype(np.float32) * 0.3),
             _init("w_out", rng.standard_normal((hidden, 1)).astype(np.float32)),
             _init("rate16k", np.array(16000, np.int64)), _init("rate8k", np.array(8000, np.int64)),
             _init("frames16", np.array([0, -1, frame], np.int64)), _init("frames8", np.array([0, -1, 2 * frame], np.int64)),
             _init("W", rng.standard_normal((1, 3 * hidden, hidden)).astype(np.float32) * 0.3),
             _init("R", rng.standard_normal((1, 3 * hidden, hidden)).astype(np.float32) * 0.3),
             _init("zero", np.array([0], np.int64)), _init("one", np.array([1], np.int64)),
             _init("two", np.array([2], np.int64))]
    then_graph = oh.make_graph([oh.make_node("Reshape", ["input", "frames16"], ["frames_then"])], "then", [],
                               [oh.make_tensor_value_info("frames_then", T.FLOAT, None)])
    else_graph = oh.make_graph([
        oh.make_node("Equal", ["sr", "rate8k"], ["is8k"]),
        oh.make_node("Not", ["is8k"], ["unsupported"]),
        oh.make_node("Cast", ["unsupported"], ["bad"], to=T.INT64),
        oh.make_node("Mul", ["bad", "rate8k"], ["junk"]),  # a rate that is neither: the Reshape below fails
        oh.make_node("Unsqueeze", ["junk", "zero"], ["junk1"]),
        oh.make_node("Add", ["frames8", "junk1"], ["frames8b"]),
        oh.make_node("Reshape", ["input", "frames8b"], ["frames_else"]),
    ], "else", [], [oh.make_tensor_value_info("frames_else", T.FLOAT, None)])
    nodes = [
        oh.make_node("Equal", ["sr", "rate16k"], ["is16k"]),
        oh.make_node("If", ["is16k"], ["frames"], then_branch=then_graph, else_branch=else_graph),
        oh.make_node("MatMul", ["frames", "w_in"], ["feats"]),
        oh.make_node("Transpose", ["feats"], ["seq_major"], perm=[1, 0, 2]),
        oh.make_node("Slice", ["state", "zero", "one", "zero"], ["h0"]),
        oh.make_node("GRU", ["seq_major", "W", "R", "", "", "h0"], ["ys", "h_n"], hidden_size=hidden),
        oh.make_node("Slice", ["state", "one", "two", "zero"], ["kept"]),
        oh.make_node("Concat", ["h_n", "kept"], ["new_state0"], axis=0),
        oh.make_node("Identity", ["new_state0"], ["new_state"]),
        oh.make_node("MatMul", ["h_n", "w_out"], ["logit"]),
        oh.make_node("Sigmoid", ["logit"], ["prob"]),
    ]
    declared = {
        "input": oh.make_tensor_value_info("input", T.FLOAT, ["batch", "samples"]),
        "state": oh.make_tensor_value_info("state", T.FLOAT, [2, "batch", hidden]),
        "sr": oh.make_tensor_value_info("sr", T.INT64, []),
    }
    outputs = [oh.make_tensor_value_info("prob", T.FLOAT, [1, "batch", 1]),
               oh.make_tensor_value_info("new_state", T.FLOAT, [2, "batch", hidden])]
    return _model(nodes, [declared[n] for n in order], outputs, inits)


def decoder_with_past(vocab: int = 50, hidden: int = 8, heads: int = 2, mask_dim: str = "past_sequence + sequence",
                      seed: int = 0) -> onnx.ModelProto:
    """GPT-2 style: input_ids [batch, sequence], attention_mask [batch, past + sequence],
    past_key/past_value [batch, heads, past_sequence, head_dim]; attention over the cache
    and the new tokens, the mask added as a bias; present_key/value out."""
    rng = np.random.default_rng(seed)
    d = hidden // heads
    inits = [_init("wte", rng.standard_normal((vocab, hidden)).astype(np.float32)),
             _init("wk", rng.standard_normal((hidden, hidden)).astype(np.float32) * 0.3),
             _init("kv_shape", np.array([0, 0, heads, d], np.int64)), _init("one", np.array(1.0, np.float32)),
             _init("big", np.array(-1e4, np.float32)), _init("axes12", np.array([1, 2], np.int64))]
    nodes = [
        oh.make_node("Gather", ["wte", "input_ids"], ["x"]),
        oh.make_node("MatMul", ["x", "wk"], ["k"]),
        oh.make_node("Reshape", ["k", "kv_shape"], ["k4"]),
        oh.make_node("Transpose", ["k4"], ["k_new"], perm=[0, 2, 1, 3]),
        oh.make_node("Concat", ["past_key", "k_new"], ["present_key"], axis=2),
        oh.make_node("Concat", ["past_value", "k_new"], ["present_value"], axis=2),
        oh.make_node("Transpose", ["present_key"], ["present_key_t"], perm=[0, 1, 3, 2]),
        oh.make_node("MatMul", ["k_new", "present_key_t"], ["scores"]),
        oh.make_node("Cast", ["attention_mask"], ["maskf"], to=T.FLOAT),
        oh.make_node("Sub", ["one", "maskf"], ["inv"]),
        oh.make_node("Mul", ["inv", "big"], ["bias2"]),
        oh.make_node("Unsqueeze", ["bias2", "axes12"], ["bias"]),
        oh.make_node("Add", ["scores", "bias"], ["masked"]),
        oh.make_node("Softmax", ["masked"], ["probs"], axis=-1),
        oh.make_node("MatMul", ["probs", "present_value"], ["ctx"]),
    ]
    past = ["batch", heads, "past_sequence", d]
    inputs = [oh.make_tensor_value_info("input_ids", T.INT64, ["batch", "sequence"]),
              oh.make_tensor_value_info("attention_mask", T.INT64, ["batch", mask_dim]),
              oh.make_tensor_value_info("past_key", T.FLOAT, past),
              oh.make_tensor_value_info("past_value", T.FLOAT, past)]
    total = ["batch", heads, "total", d]
    outputs = [oh.make_tensor_value_info("ctx", T.FLOAT, ["batch", heads, "sequence", d]),
               oh.make_tensor_value_info("present_key", T.FLOAT, total),
               oh.make_tensor_value_info("present_value", T.FLOAT, total)]
    return _model(nodes, inputs, outputs, inits)


def paddle_like(seed: int = 0) -> onnx.ModelProto:
    """An OCR recognizer as paddle2onnx writes it: x [-1, 3, 32, -1] (dim_value -1), a conv
    stack that halves the height to 1, a per-column classifier; dims written -1, not symbols."""
    rng = np.random.default_rng(seed)
    inits = [_init("c1.w", rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3),
             _init("c2.w", rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.3),
             _init("fc.w", rng.standard_normal((8, 10)).astype(np.float32)),
             _init("axes", np.array([2], np.int64))]
    nodes = [oh.make_node("Conv", ["x", "c1.w"], ["a"], pads=[1, 1, 1, 1], strides=[2, 1]),
             oh.make_node("Relu", ["a"], ["b"]),
             oh.make_node("Conv", ["b", "c2.w"], ["c"], pads=[1, 1, 1, 1], strides=[2, 1]),
             oh.make_node("MaxPool", ["c"], ["d"], kernel_shape=[8, 1], strides=[8, 1]),
             oh.make_node("Squeeze", ["d", "axes"], ["e"]),
             oh.make_node("Transpose", ["e"], ["f"], perm=[0, 2, 1]),
             oh.make_node("MatMul", ["f", "fc.w"], ["g"]),
             oh.make_node("Softmax", ["g"], ["probs"], axis=-1)]
    x = oh.make_tensor_value_info("x", T.FLOAT, [-1, 3, 32, -1])
    return _model(nodes, [x], [oh.make_tensor_value_info("probs", T.FLOAT, [-1, -1, 10])], inits)


def detector_like(seed: int = 0) -> onnx.ModelProto:
    """images [batch, 3, height, width] -> stride-32 feature map -> boxes and scores ->
    NonMaxSuppression: detectors are timed at 640 pixels."""
    rng = np.random.default_rng(seed)
    inits = [_init("w", rng.standard_normal((5, 3, 32, 32)).astype(np.float32) * 0.05),
             _init("boxes_shape", np.array([1, -1, 4], np.int64)), _init("scores_shape", np.array([1, 1, -1], np.int64)),
             _init("max_out", np.array([10], np.int64)), _init("iou", np.array([0.5], np.float32)),
             _init("c0", np.array([0], np.int64)), _init("c4", np.array([4], np.int64)),
             _init("c5", np.array([5], np.int64)), _init("axis1", np.array([1], np.int64)),
             _init("axis3", np.array([3], np.int64))]
    nodes = [oh.make_node("Conv", ["images", "w"], ["feat"], strides=[32, 32]),
             oh.make_node("Slice", ["feat", "c4", "c5", "axis1"], ["score_map"]),
             oh.make_node("Reshape", ["score_map", "scores_shape"], ["scores"]),
             oh.make_node("Transpose", ["feat"], ["feat_t"], perm=[0, 2, 3, 1]),
             oh.make_node("Slice", ["feat_t", "c0", "c4", "axis3"], ["box_map"]),
             oh.make_node("Reshape", ["box_map", "boxes_shape"], ["boxes"]),
             oh.make_node("NonMaxSuppression", ["boxes", "scores", "max_out", "iou"], ["selected"])]
    x = oh.make_tensor_value_info("images", T.FLOAT, ["batch", 3, "height", "width"])
    return _model(nodes, [x], [oh.make_tensor_value_info("selected", T.INT64, ["n", 3]),
                               oh.make_tensor_value_info("boxes", T.FLOAT, [1, "boxes", 4])], inits)
