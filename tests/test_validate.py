"""graphopt/core/validate.py: unsafe external data and invalid models are refused at load, with one line;
valid oddities (custom ops, unsorted graphs, shapeless outputs) are kept.

The fuzz suite (tests/fuzz) runs many more variants through the command line; these pin the rules.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir
import pytest

import graphopt
from graphopt.core import io
from graphopt.core.errors import InputError
from tests.conftest import conv_bn_model, custom_op_model, save_with_external_data

SECRET = b"root:x:0:0:root:/root:/bin/bash\n" * 40


def _external(tmp_path: pathlib.Path, **fields) -> pathlib.Path:
    """conv_bn with every weight in model.onnx.data, then the `w` tensor's entries rewritten."""
    folder = tmp_path / "model"
    folder.mkdir()
    path = folder / "model.onnx"
    save_with_external_data(conv_bn_model(), path)
    proto = onnx.load(str(path), load_external_data=False)
    tensor = next(t for t in proto.graph.initializer if t.name == "w")
    for key, value in fields.items():
        entry = next((e for e in tensor.external_data if e.key == key), None) or tensor.external_data.add(key=key)
        entry.value = str(value)
    onnx.save(proto, str(path))
    return path


@pytest.fixture
def secret(tmp_path):
    path = tmp_path / "secret"
    path.write_bytes(SECRET)
    os.utime(path, (1_000_000, path.stat().st_mtime))  # any read moves an atime older than the mtime
    return path


@pytest.mark.parametrize("location, needle", [
    ("../secret", "relative path inside"),
    ("sub/../model.onnx.data", "relative path inside"),
    ("ABSOLUTE", "relative path inside"),
    ("", "empty or invalid location"),
])
def test_location_leaving_the_folder_is_refused_before_reading(tmp_path, secret, location, needle):
    path = _external(tmp_path, location=str(secret) if location == "ABSOLUTE" else location)
    with pytest.raises(InputError, match=needle):
        io.load(path)
    assert secret.stat().st_atime == 1_000_000  # not a byte read


def test_symlinks_are_refused_inside_and_outside_the_folder(tmp_path, secret):
    path = _external(tmp_path, location="link.data")
    (path.parent / "link.data").symlink_to(secret)
    with pytest.raises(InputError, match="resolves outside the model's folder"):
        io.load(path)
    (path.parent / "link.data").unlink()
    (path.parent / "link.data").symlink_to("model.onnx.data")
    with pytest.raises(InputError, match="symbolic link"):
        io.load(path)
    assert secret.stat().st_atime == 1_000_000


def test_hard_links_fifos_and_folders_are_refused(tmp_path, secret):
    path = _external(tmp_path, location="other.data")
    os.link(secret, path.parent / "other.data")
    with pytest.raises(InputError, match="hard links"):
        io.load(path)
    (path.parent / "other.data").unlink()
    os.mkfifo(path.parent / "other.data")  # reading a FIFO would block forever
    with pytest.raises(InputError, match="not a regular file"):
        io.load(path)


@pytest.mark.parametrize("fields, needle", [
    ({"length": 4}, "declares 4 bytes"),
    ({"length": 100_000}, "declares 100000 bytes"),
    ({"offset": 10_000}, "truncated or mismatched"),
    ({"offset": -8}, "negative|cannot be read"),
])
def test_length_and_offset_must_match_the_tensor_and_the_file(tmp_path, fields, needle):
    with pytest.raises(InputError, match=needle):
        io.load(_external(tmp_path, **fields))


def test_a_valid_pair_loads_and_its_weights_are_read_lazily(tmp_path):
    path = _external(tmp_path)
    model = io.load(path)
    assert isinstance(model.graph.initializers["w"].const_value, ir.ExternalTensor)


def test_external_tensor_attribute_is_checked_and_read_in(tmp_path):
    value = onnx.numpy_helper.from_array(np.arange(4, dtype=np.float32), "c")
    graph = oh.make_graph([oh.make_node("Constant", [], ["c"], value=value), oh.make_node("Add", ["x", "c"], ["y"])],
                          "g", [oh.make_tensor_value_info("x", 1, [4])], [oh.make_tensor_value_info("y", 1, [4])])
    proto = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)
    path = tmp_path / "m.onnx"
    onnx.save_model(proto, str(path), save_as_external_data=True, location="m.onnx.data", size_threshold=0,
                    convert_attribute=True)
    result = graphopt.optimize(path)
    assert result.report.verification.status == "passed"
    stored = onnx.load(str(path), load_external_data=False)
    stored.graph.node[0].attribute[0].t.external_data[0].value = "../secret"
    onnx.save(stored, str(path))
    with pytest.raises(InputError, match="relative path inside"):
        io.load(path)


# --- invalid graphs -------------------------------------------------------------------------------

_OPSET = '<ir_version: 8, opset_import: ["" : 17]>'


@pytest.mark.parametrize("text, needle", [
    (f"{_OPSET} g (float[2] x) => (float[2] y) {{ a = Add(x, b)\n b = Relu(a)\n y = Identity(b) }}", "cycle"),
    (f"{_OPSET} g (float[2] x) => (float[2] y) {{ a = Add(x, a)\n y = Identity(a) }}", "cycle"),
    (f"{_OPSET} g (float[2] x) => (float[2] y) {{ y = Add(x, ghost) }}", "'ghost' of node 'Add' is not defined"),
    (f"{_OPSET} g (float[2] x, int64[2] z) => (float[2] y) {{ y = Add(x, z) }}", "inconsistent type"),
    (f"{_OPSET} g (float[2] x) => (float[2] y) {{ y = Frobnicate(x) }}", "No Op registered for Frobnicate"),
    (f'{_OPSET} g (float[2,3] x) => (float[3,2] y) {{ y = Transpose<perm="10">(x) }}', "Mismatched attribute type"),
])
def test_invalid_graphs_are_refused_with_one_line(text, needle):
    with pytest.raises(InputError, match=needle) as info:
        io.load(onnx.parser.parse_model(text))
    assert "\n" not in str(info.value)


def test_duplicate_node_names_missing_opset_and_recursion_are_refused():
    proto = conv_bn_model()
    proto.graph.node[1].name = proto.graph.node[0].name
    with pytest.raises(InputError, match="two nodes are named 'conv'"):
        io.load(proto)
    proto = conv_bn_model()
    del proto.opset_import[:]
    with pytest.raises(InputError, match="opset_import"):
        io.load(proto)
    f = oh.make_function("local", "F", ["a"], ["b"], [oh.make_node("F", ["a"], ["b"], domain="local")],
                         [oh.make_opsetid("", 17), oh.make_opsetid("local", 1)])
    g = oh.make_graph([oh.make_node("F", ["x"], ["y"], domain="local")], "g", [oh.make_tensor_value_info("x", 1, [2])],
                      [oh.make_tensor_value_info("y", 1, [2])])
    recursive = oh.make_model(g, opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid("local", 1)], functions=[f],
                              ir_version=8)
    with pytest.raises(InputError, match="recursive"):
        io.load(recursive)


def test_invalid_utf8_name_is_refused(tmp_path):
    data = bytearray(conv_bn_model().SerializeToString())
    at = data.index(b"relu")
    data[at] = 0xAF  # a bit flip the checker passes; onnx-ir could not write the model back
    path = tmp_path / "m.onnx"
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="not valid UTF-8"):
        io.load(path)


def test_out_of_range_sparse_indices_are_refused():
    values = onnx.numpy_helper.from_array(np.ones(2, np.float32), "w")
    sparse = oh.make_sparse_tensor(values, onnx.numpy_helper.from_array(np.array([0, 99], np.int64), "i"), [2, 3])
    graph = oh.make_graph([oh.make_node("Add", ["x", "w"], ["y"])], "g", [oh.make_tensor_value_info("x", 1, [2, 3])],
                          [oh.make_tensor_value_info("y", 1, [2, 3])], sparse_initializer=[sparse])
    with pytest.raises(InputError, match="indices outside"):
        io.load(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=8))


def test_valid_oddities_are_kept():
    # Out of order: ORT accepts it, so it is sorted, not refused.
    unsorted = onnx.parser.parse_model(f"{_OPSET} g (float[2] x) => (float[2] y) {{ y = Neg(a)\n a = Relu(x) }}")
    assert [n.op_type for n in io.load(unsorted).graph] == ["Relu", "Neg"]
    # Shapeless graph outputs: the checker wants a shape, ORT and onnx-ir do not.
    shapeless = conv_bn_model()
    shapeless.graph.output[0].type.tensor_type.ClearField("shape")
    assert graphopt.optimize(shapeless).report.verification.status == "passed"
    # Custom-domain ops with attributes no schema knows: left untouched.
    result = graphopt.optimize(custom_op_model())
    node = next(n for n in result.model.graph if n.domain == "com.example")
    assert node.attributes["mode"].value == "fast"
