"""The inline writer: the file it writes parses to the model `ir.save` writes, and ORT runs it."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.numpy_helper as nh
import onnx_ir as ir
import onnxruntime as ort
import pytest

from graphopt.core import io
from graphopt.core.protowrite import write_inline
from tests.conftest import DIGITS, control_flow_model, conv_bn_model


def _mixed_model() -> ir.Model:
    """Big and small weights of several dtypes, a string constant, a doc string, metadata, a body."""
    model = ir.serde.deserialize_model(control_flow_model())
    graph = model.graph
    rng = np.random.default_rng(0)
    arrays = {"w_f32": rng.standard_normal((64, 32)).astype(np.float32),
              "w_f16": rng.standard_normal((40, 40)).astype(np.float16),
              "w_i8": rng.integers(-128, 127, (2048,)).astype(np.int8),
              "w_i64": np.arange(300, dtype=np.int64), "small": np.ones(3, np.float32)}
    for name, array in arrays.items():
        tensor = ir.tensor(array, name=name)
        if name == "w_f32":
            tensor.doc_string = "a weight"
            tensor.metadata_props["origin"] = "test"
        graph.register_initializer(ir.Value(name=name, const_value=tensor))
    graph.register_initializer(ir.Value(name="labels", const_value=ir.StringTensor(np.array([b"a", b"bc"] * 600, dtype=object),
                                                                                   name="labels")))
    return model


def _split(proto: onnx.ModelProto) -> tuple[dict, onnx.ModelProto]:
    tensors = {t.name: t for t in proto.graph.initializer}
    rest = onnx.ModelProto()
    rest.CopyFrom(proto)
    del rest.graph.initializer[:]
    return tensors, rest


@pytest.mark.parametrize("make", [_mixed_model, lambda: io.load(DIGITS), lambda: io.load(conv_bn_model())],
                         ids=["mixed", "digits", "conv_bn"])
def test_same_model_as_ir_save(tmp_path, make):
    model = make()
    write_inline(model, tmp_path / "fast.onnx")
    ir.save(model, tmp_path / "reference.onnx")
    fast, fast_rest = _split(onnx.load(tmp_path / "fast.onnx"))
    ref, ref_rest = _split(onnx.load(tmp_path / "reference.onnx"))
    assert fast_rest == ref_rest  # nodes, inputs, value_info, bodies, opsets, metadata
    assert fast.keys() == ref.keys()
    for name, tensor in ref.items():
        got = fast[name]
        assert (got.name, list(got.dims), got.data_type, got.doc_string) == (
            tensor.name, list(tensor.dims), tensor.data_type, tensor.doc_string)
        assert list(got.metadata_props) == list(tensor.metadata_props)
        a, b = nh.to_array(got), nh.to_array(tensor)
        assert a.dtype == b.dtype and np.array_equal(a, b)
    onnx.checker.check_model(str(tmp_path / "fast.onnx"))


def test_ort_runs_it_with_the_same_outputs(tmp_path):
    model = io.load(DIGITS)
    write_inline(model, tmp_path / "fast.onnx")
    ir.save(model, tmp_path / "reference.onnx")
    feeds = {"input": np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)}
    outs = [ort.InferenceSession(str(tmp_path / name), providers=["CPUExecutionProvider"]).run(None, feeds)
            for name in ("fast.onnx", "reference.onnx")]
    assert all(np.array_equal(a, b) for a, b in zip(*outs))


def test_model_is_unchanged_after_writing(tmp_path):
    model = _mixed_model()
    before = {name: v.const_value for name, v in model.graph.initializers.items()}
    write_inline(model, tmp_path / "fast.onnx")
    assert {name: v.const_value for name, v in model.graph.initializers.items()} == before
    assert all(not isinstance(v.const_value, ir.ExternalTensor) for v in model.graph.initializers.values())
