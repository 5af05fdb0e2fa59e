"""Real architectures end to end: the onnx package's light model zoo (backend/test/data/light).

ResNet-50, Inception v1/v2, DenseNet-121, ShuffleNet, SqueezeNet, VGG-19, AlexNet and ZFNet,
exported from Caffe2 (IR v3, weights listed as graph inputs). Their files are tiny because
every weight is computed by a ConstantOfShape fill; graphopt must keep them tiny.

How the shipped `*_output_0.pb` was made: no input is shipped; onnx's backend runner feeds
`arange(n).reshape(shape) / n` (float32) to the one non-initializer input
(`Runner.generate_dummy_data(random=False)`) and compares with that file. With constant fills
every channel of every layer is identical, so the shipped output does not depend on the input
(softmax of equal logits: 0.001 everywhere; the original gives the same output for a random
input). The shipped output therefore checks little, so each model is also checked with real
random weights: every fill is replaced by a He-initialized tensor and the BatchNormalization
parameters are randomized, then graphopt's own verification compares the optimized model
with that original on random inputs (the smaller models; VGG-19, AlexNet and ZFNet carry
0.25-0.6 GB of fully-connected weights once materialized).
"""

from __future__ import annotations

import collections
import math
import pathlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import graphopt

LIGHT = pathlib.Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
MODELS = sorted(p.stem.removeprefix("light_") for p in LIGHT.glob("light_*.onnx"))
# Quick enough for every run (about a second each with verification); the rest are slow (zfnet512,
# bvlc_alexnet and inception_v1 take 3-10 s each on 2 cores).
FAST = {"squeezenet", "shufflenet"}
# Small enough to materialize with random weights (< 110 MB of float32).
RANDOMIZABLE = {"squeezenet", "shufflenet", "inception_v1", "inception_v2", "densenet121", "resnet50"}
FOLDED_INTO = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
BATCHNORMS_IN = {"resnet50": 53, "inception_v2": 69, "densenet121": 121, "shufflenet": 49}


def _marks(name: str, fast: set[str]):
    return pytest.param(name, marks=() if name in fast else pytest.mark.slow, id=name)


def _session(model) -> ort.InferenceSession:
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def runner_input(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The input onnx's backend runner generated the shipped output from (generate_dummy_data)."""
    initializers = {t.name for t in model.graph.initializer}
    feeds = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        shape = tuple(d.dim_value if d.HasField("dim_value") else 1 for d in value.type.tensor_type.shape.dim)
        n = math.prod(shape)
        feeds[value.name] = (np.arange(n).reshape(shape) / n).astype(np.float32)
    return feeds


def batchnorms_after_layers(model: onnx.ModelProto) -> int:
    producer = {out: node.op_type for node in model.graph.node for out in node.output}
    return sum(1 for node in model.graph.node
               if node.op_type == "BatchNormalization" and producer.get(node.input[0]) in FOLDED_INTO)


def ops(model: onnx.ModelProto) -> collections.Counter:
    return collections.Counter(node.op_type for node in model.graph.node)


@pytest.mark.parametrize("name", [_marks(n, FAST) for n in MODELS])
def test_light_model(name, tmp_path):
    path = LIGHT / f"light_{name}.onnx"
    original = onnx.load(path)
    result = graphopt.optimize(path, level=2)
    verification = result.report.verification
    assert verification.status == "passed", (verification.reason, verification.outputs)

    out = tmp_path / f"{name}.opt.onnx"
    result.save(out)
    optimized = onnx.load(out)
    onnx.checker.check_model(optimized, full_check=True)
    assert [o.name for o in optimized.graph.output] == [o.name for o in original.graph.output]

    # No BatchNormalization directly after a Conv (or Gemm/MatMul) is left.
    assert batchnorms_after_layers(optimized) == 0, ops(optimized)
    if name in BATCHNORMS_IN:
        assert ops(original)["BatchNormalization"] == BATCHNORMS_IN[name]
    if name in ("resnet50", "inception_v2", "shufflenet"):  # every BN there follows a Conv
        assert ops(optimized)["BatchNormalization"] == 0
    assert result.report.after["macs"] <= result.report.before["macs"]

    # The file stays small: the fills are not materialized (ORT computes them at session start).
    size_in, size_out = path.stat().st_size, out.stat().st_size
    assert size_out <= 2 * size_in + 64 * 1024, f"{name}: {size_in} -> {size_out} bytes"

    # The shipped reference output, on the input the backend runner used.
    expected = onnx.numpy_helper.to_array(onnx.load_tensor(LIGHT / f"light_{name}_output_0.pb"))
    got = _session(out).run(None, runner_input(original))[0]
    assert got.shape == expected.shape and got.dtype == expected.dtype
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-5)


# --- the same architectures with real random weights -------------------------------------------------

def randomized(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """Replace every ConstantOfShape weight by a random initializer, randomize BN parameters.

    Conv/Gemm weights are He-scaled normals (activations stay finite through 50+ layers), biases
    small normals; BatchNormalization gets scale U(0.5, 1.5), bias and mean N(0, 0.1) and
    var U(0.5, 1.5). Everything else is left as it is.
    """
    rng = np.random.default_rng(seed)
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    shape_of = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    role: dict[str, tuple[str, int, onnx.NodeProto]] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            role.setdefault(name, (node.op_type, i, node))

    def value_for(name: str, shape: tuple[int, ...]) -> np.ndarray | None:
        op, index, node = role.get(name, ("", -1, None))
        if op in ("Conv", "Gemm") and index == 1:
            if op == "Conv":
                fan_in = math.prod(shape[1:])
            else:
                trans_b = any(a.name == "transB" and a.i for a in node.attribute)
                fan_in = shape[1] if trans_b else shape[0]
            return rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)
        if op in ("Conv", "Gemm") and index == 2:
            return rng.normal(0, 0.01, shape)
        if op == "BatchNormalization" and index in (1, 4):
            return rng.uniform(0.5, 1.5, shape)
        if op == "BatchNormalization" and index in (2, 3):
            return rng.normal(0, 0.1, shape)
        return None

    kept = []
    for node in graph.node:
        if node.op_type == "ConstantOfShape" and node.input[0] in shape_of:
            shape = tuple(int(d) for d in shape_of[node.input[0]])
            array = value_for(node.output[0], shape)
            if array is not None:
                graph.initializer.append(onnx.numpy_helper.from_array(array.astype(np.float32), node.output[0]))
                continue
        kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    for i, tensor in enumerate(graph.initializer):
        if tensor.data_type == onnx.TensorProto.FLOAT:
            array = value_for(tensor.name, tuple(tensor.dims))
            if array is not None:
                graph.initializer[i].CopyFrom(onnx.numpy_helper.from_array(array.astype(np.float32), tensor.name))
    # Initializers must be listed as graph inputs in IR v3; the new ones are not, so say IR v4.
    model.ir_version = max(model.ir_version, 4)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RANDOMIZABLE))
def test_light_architecture_with_random_weights(name):
    original = randomized(onnx.load(LIGHT / f"light_{name}.onnx"))
    outputs = _session(original).run(None, runner_input(original))
    assert all(np.isfinite(o).all() for o in outputs)
    assert float(np.std(outputs[0])) > 1e-6, "random weights should make the output vary across classes"
    result = graphopt.optimize(original, level=2)
    verification = result.report.verification
    assert verification.status == "passed", (verification.reason, verification.outputs)
    optimized = result.to_onnx()
    assert batchnorms_after_layers(optimized) == 0
    # An input the verification did not draw: the runner's ramp.
    got = _session(optimized).run(None, runner_input(original))
    for e, g in zip(outputs, got):
        np.testing.assert_allclose(g, e, rtol=1e-3, atol=1e-5 * max(1.0, float(np.abs(e).max())))
