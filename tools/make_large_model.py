"""Build a synthetic model over 2 GB (never committed) to test graphopt at scale.

    python tools/make_large_model.py build/big/big.onnx [--gb 2.3] [--seed 0]

Writes OUT and OUT.data (external data: a protobuf cannot hold more than 2 GiB). The
network has real random weights (He-scaled, so activations stay finite) and exercises
the level-2 passes at size:

    image [batch,64,16,16]
      -> Conv-BatchNormalization-Relu x CONV_BLOCKS (1024 channels, 3x3, bias-free Conv)
      -> GlobalAveragePool -> Flatten
      -> MatMul-BatchNormalization-Relu x K (8192 wide; K is chosen to reach --gb)
      -> MatMul-Add -> logits [batch,1000]

Weights are generated and written one tensor at a time, so building the model needs
about one layer's worth of memory, not the model's.

Measure graphopt on it (peak resident memory is "Maximum resident set size"):

    /usr/bin/time -v graphopt optimize build/big/big.onnx -o build/big/big.opt.onnx
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np
import onnx
import onnx.helper as oh

CONV_CHANNELS = 1024
CONV_BLOCKS = 12
IN_CHANNELS = 64
SPATIAL = 16
WIDTH = 8192
CLASSES = 1000
OPSET = 17
ALIGN = 4096  # page-aligned offsets let ONNX Runtime memory-map the weights


class ExternalWriter:
    """Appends tensors to one data file and returns TensorProtos that point into it."""

    def __init__(self, data_path: pathlib.Path):
        self.location = data_path.name
        self.file = open(data_path, "wb")
        self.offset = 0

    def add(self, name: str, array: np.ndarray) -> onnx.TensorProto:
        array = np.ascontiguousarray(array)
        pad = (-self.offset) % ALIGN
        if pad:
            self.file.write(b"\0" * pad)
            self.offset += pad
        self.file.write(array.tobytes())
        tensor = onnx.TensorProto(name=name, dims=array.shape,
                                  data_type=oh.np_dtype_to_tensor_dtype(array.dtype))
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", self.location), ("offset", str(self.offset)),
                           ("length", str(array.nbytes))):
            tensor.external_data.add(key=key, value=value)
        self.offset += array.nbytes
        return tensor

    def close(self) -> None:
        self.file.close()


def build(out: pathlib.Path, target_bytes: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    data_path = out.with_name(out.name + ".data")
    writer = ExternalWriter(data_path)
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def weight(name: str, shape: tuple[int, ...], fan_in: int) -> str:
        w = rng.standard_normal(shape, dtype=np.float32)
        w *= np.float32(np.sqrt(2.0 / fan_in))
        inits.append(writer.add(name, w))
        return name

    def batchnorm(prefix: str, x: str, channels: int, y: str) -> None:
        names = [f"{prefix}.{p}" for p in ("gamma", "beta", "mean", "var")]
        arrays = [rng.uniform(0.5, 1.5, channels), rng.normal(0, 0.1, channels),
                  rng.normal(0, 0.1, channels), rng.uniform(0.5, 1.5, channels)]
        inits.extend(writer.add(n, a.astype(np.float32)) for n, a in zip(names, arrays))
        nodes.append(oh.make_node("BatchNormalization", [x, *names], [y], name=f"{prefix}.bn", epsilon=1e-5))

    x = "image"
    channels = IN_CHANNELS
    for i in range(CONV_BLOCKS):
        p = f"conv{i}"
        w = weight(f"{p}.weight", (CONV_CHANNELS, channels, 3, 3), channels * 9)
        nodes.append(oh.make_node("Conv", [x, w], [f"{p}.conv"], name=f"{p}.conv", pads=[1, 1, 1, 1]))
        batchnorm(p, f"{p}.conv", CONV_CHANNELS, f"{p}.bn")
        nodes.append(oh.make_node("Relu", [f"{p}.bn"], [f"{p}.out"], name=f"{p}.relu"))
        x, channels = f"{p}.out", CONV_CHANNELS
    nodes.append(oh.make_node("GlobalAveragePool", [x], ["pooled"], name="gap"))
    nodes.append(oh.make_node("Flatten", ["pooled"], ["features"], name="flatten"))

    head = (WIDTH * CLASSES + CLASSES) * 4
    used = writer.offset + head + channels * WIDTH * 4
    layers = 1 + max(0, -(-(target_bytes - used) // (WIDTH * WIDTH * 4)))  # ceil
    x, width = "features", channels
    for i in range(layers):
        p = f"fc{i}"
        w = weight(f"{p}.weight", (width, WIDTH), width)
        nodes.append(oh.make_node("MatMul", [x, w], [f"{p}.mm"], name=f"{p}.matmul"))
        batchnorm(p, f"{p}.mm", WIDTH, f"{p}.bn")
        nodes.append(oh.make_node("Relu", [f"{p}.bn"], [f"{p}.out"], name=f"{p}.relu"))
        x, width = f"{p}.out", WIDTH
    w = weight("head.weight", (WIDTH, CLASSES), WIDTH)
    inits.append(writer.add("head.bias", np.zeros(CLASSES, np.float32)))
    nodes.append(oh.make_node("MatMul", [x, w], ["head.mm"], name="head.matmul"))
    nodes.append(oh.make_node("Add", ["head.mm", "head.bias"], ["logits"], name="head.add"))
    writer.close()

    graph = oh.make_graph(
        nodes, "synthetic_large",
        [oh.make_tensor_value_info("image", onnx.TensorProto.FLOAT, ["batch", IN_CHANNELS, SPATIAL, SPATIAL])],
        [oh.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", CLASSES])],
        inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", OPSET)], ir_version=8,
                          producer_name="graphopt tools/make_large_model.py")
    out.write_bytes(model.SerializeToString())
    onnx.checker.check_model(str(out))  # by path: checks the data file without loading it
    return {"model": str(out), "data": str(data_path), "bytes": writer.offset,
            "conv_blocks": CONV_BLOCKS, "matmul_blocks": layers, "nodes": len(nodes)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=pathlib.Path, help="output .onnx path (OUT.data is written beside it)")
    parser.add_argument("--gb", type=float, default=2.3, help="approximate weight size in GB (10^9 bytes)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    info = build(args.out, int(args.gb * 1e9), args.seed)
    print(f"wrote {info['model']} + {info['data']}: {info['bytes'] / 1e9:.2f} GB of weights, "
          f"{info['conv_blocks']} Conv-BN-Relu + {info['matmul_blocks']} MatMul-BN-Relu blocks, "
          f"{info['nodes']} nodes, {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
