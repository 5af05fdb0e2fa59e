"""Test helpers: build models from text, run them in ORT with optimizations off, compare."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort


def parse(text: str) -> ir.Model:
    """An ir.Model from onnx's textual syntax (onnx.parser)."""
    return ir.serde.deserialize_model(onnx.parser.parse_model(text))


def to_proto(model: ir.Model) -> onnx.ModelProto:
    return ir.serde.serialize_model(model)


def run(model: ir.Model | onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run in ORT with graph optimizations off, so ORT's own fusions cannot hide a bad rewrite."""
    proto = to_proto(model) if isinstance(model, ir.Model) else model
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def random_feeds(model: ir.Model, seed: int = 0, dynamic: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for v in model.graph.inputs:
        if v.name in model.graph.initializers:
            continue
        shape = [d if isinstance(d, int) else dynamic for d in v.shape]
        dtype = v.dtype.numpy()
        if np.issubdtype(dtype, np.floating):
            feeds[v.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[v.name] = rng.integers(0, 4, size=shape).astype(dtype)
    return feeds


def assert_equivalent(before: ir.Model, after: ir.Model, feeds=None, rtol=1e-5, atol=1e-5):
    """Both models give the same outputs in ORT; `after` passes the full onnx checker."""
    proto_after = to_proto(after)
    onnx.checker.check_model(proto_after, full_check=True)
    feeds = feeds if feeds is not None else random_feeds(before)
    expected = run(before, feeds)
    got = run(proto_after, feeds)
    assert len(expected) == len(got)
    for e, g in zip(expected, got):
        assert e.shape == g.shape
        np.testing.assert_allclose(g, e, rtol=rtol, atol=atol)


def ops(model: ir.Model) -> list[str]:
    return [n.op_type for n in model.graph.all_nodes()]


def copy(model: ir.Model) -> ir.Model:
    return ir.serde.deserialize_model(ir.serde.serialize_model(model))
