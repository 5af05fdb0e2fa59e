"""Small models the fuzz cases start from, and helpers that write them (with external data) into a case."""

from __future__ import annotations

import pathlib

import numpy as np
import onnx
import onnx.helper as oh
import onnx.parser

from tests.conftest import DIGITS, control_flow_model, conv_bn_model, custom_op_model, two_output_model

REPO = pathlib.Path(__file__).resolve().parents[2]
DIGITS_CALIB = REPO / "models" / "digits_calib.npz"
DIGITS_TEST = REPO / "models" / "digits_test.npz"


def digits() -> onnx.ModelProto:
    return onnx.load(str(DIGITS))


def mlp(seed: int = 0) -> onnx.ModelProto:
    """x[N,16] -> Gemm -> Relu -> MatMul -> y[N,8], real random weights (lossy passes have work)."""
    rng = np.random.default_rng(seed)
    inits = [onnx.numpy_helper.from_array(rng.standard_normal((32, 16)).astype(np.float32), "w1"),
             onnx.numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "b1"),
             onnx.numpy_helper.from_array(rng.standard_normal((32, 8)).astype(np.float32), "w2")]
    nodes = [oh.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1, name="gemm"),
             oh.make_node("Relu", ["h"], ["r"], name="relu"),
             oh.make_node("MatMul", ["r", "w2"], ["y"], name="matmul")]
    graph = oh.make_graph(nodes, "mlp", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 16])],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 8])], inits)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)


BASES = {
    "digits": digits,
    "conv_bn": conv_bn_model,
    "two_output": two_output_model,
    "control_flow": control_flow_model,
    "custom_op": custom_op_model,
    "mlp": mlp,
}


def parse(text: str) -> onnx.ModelProto:
    return onnx.parser.parse_model(text)


def save_external(model: onnx.ModelProto, path: pathlib.Path, location: str | None = None) -> pathlib.Path:
    """Every initializer in one external file beside `path`; returns the data file."""
    location = location or path.name + ".data"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=0)
    return path.parent / location


def set_external_field(path: pathlib.Path, key: str, value: str, tensor: str | None = None) -> None:
    """Rewrite one external_data entry (`location`, `offset`, `length`...) of the model at `path`."""
    proto = onnx.load(str(path), load_external_data=False)
    for t in onnx.external_data_helper._get_all_tensors(proto):
        if tensor is not None and t.name != tensor:
            continue
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        entries = {e.key: e for e in t.external_data}
        if key in entries:
            entries[key].value = value
        else:
            t.external_data.add(key=key, value=value)
        if tensor is None and key != "location":
            break  # offsets and lengths: the first external tensor only
    onnx.save(proto, str(path))
