"""Fuzz families on the model file itself: byte corruption, invalid graphs, resource bombs."""

from __future__ import annotations

import gzip
import random
from collections.abc import Callable

import numpy as np
import onnx
import onnx.helper as oh

from tests.fuzz import models
from tests.fuzz.case import Case, optimize_argv as _optimize, varint as _varint, write_model as _write

# --- corruption ------------------------------------------------------------------------------------

_MUTATIONS = ("truncate", "flip1", "flip8", "random_region", "zero_region", "append", "duplicate", "swap",
              "graph_flip")


def _mutate(data: bytes, kind: str, rng: random.Random) -> bytes:
    b = bytearray(data)
    n = len(b)
    if kind == "truncate":
        return bytes(b[:rng.randrange(1, n)])
    if kind in ("flip1", "flip8", "graph_flip"):
        for _ in range(1 if kind != "flip8" else 8):
            # Names, types and attributes sit before the weights in most files: aim there half the time.
            pos = rng.randrange(min(n, 4000) if kind == "graph_flip" or rng.random() < 0.5 else n)
            b[pos] ^= 1 << rng.randrange(8)
        return bytes(b)
    if kind == "random_region":
        start = rng.randrange(n)
        length = rng.randrange(1, 64)
        b[start:start + length] = bytes(rng.randrange(256) for _ in range(length))
        return bytes(b)
    if kind == "zero_region":
        start = rng.randrange(n)
        b[start:start + rng.randrange(1, 256)] = bytes(min(256, n - start))[:len(b[start:start + 256])]
        return bytes(b[:n])
    if kind == "append":
        return bytes(b) + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 100)))
    if kind == "duplicate":
        start = rng.randrange(n)
        chunk = b[start:start + rng.randrange(1, 200)]
        pos = rng.randrange(n)
        return bytes(b[:pos] + chunk + b[pos:])
    if kind == "swap":
        i, j = sorted(rng.randrange(n) for _ in range(2))
        k = rng.randrange(1, 32)
        b[i:i + k], b[j:j + k] = b[j:j + k], b[i:i + k]
        return bytes(b[:n]) if len(b) >= n else bytes(b)
    raise ValueError(kind)


def corruption_cases() -> list[Case]:
    cases = []
    bases = ["digits", "conv_bn", "control_flow", "custom_op", "two_output"]

    def byte_case(base: str, kind: str, i: int) -> Case:
        def build(paths, rng):
            _write(paths, _mutate(models.BASES[base]().SerializeToString(), kind, rng))
            return _optimize(paths)
        return Case("corruption", f"{base}-{kind}-{i}", build, fast=i == 0 and base in ("digits", "conv_bn"))

    for base in bases:
        for kind in _MUTATIONS:
            for i in range(4 if base == "digits" else 3):
                cases.append(byte_case(base, kind, i))

    def fixed(name, data: Callable[[], bytes], **kw):
        def build(paths, rng):
            _write(paths, data())
            return _optimize(paths)
        return Case("corruption", name, build, expect="error", fast=True, **kw)

    cases += [
        fixed("empty-file", lambda: b""),
        fixed("text-file", lambda: b"this is not a model\n" * 10),
        fixed("random-bytes", lambda: bytes(random.Random(1).randrange(256) for _ in range(4096))),
        fixed("gzipped-model", lambda: gzip.compress(models.digits().SerializeToString())),
        fixed("header-only", lambda: models.digits().SerializeToString()[:20]),
        fixed("npz-as-model", lambda: models.DIGITS_CALIB.read_bytes()[:5000]),
    ]
    return cases


# --- invalid graphs ---------------------------------------------------------------------------------

_OPSET = '<ir_version: 8, opset_import: ["" : 17]>'


def _sparse_model(indices: list[int], dims: list[int], fmt=np.int64) -> onnx.ModelProto:
    values = onnx.numpy_helper.from_array(np.ones(len(indices), np.float32), "w")
    idx = onnx.numpy_helper.from_array(np.array(indices, dtype=fmt), "w_idx")
    sparse = oh.make_sparse_tensor(values, idx, dims)
    graph = oh.make_graph([oh.make_node("Add", ["x", "w"], ["y"], name="add")], "g",
                          [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, dims)],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, dims)], sparse_initializer=[sparse])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)


def _recursive(mutual: bool) -> onnx.ModelProto:
    other = "G" if mutual else "F"
    f = oh.make_function("local", "F", ["a"], ["b"], [oh.make_node(other, ["a"], ["b"], domain="local")],
                         [oh.make_opsetid("", 17), oh.make_opsetid("local", 1)])
    functions = [f]
    if mutual:
        functions.append(oh.make_function("local", "G", ["a"], ["b"], [oh.make_node("F", ["a"], ["b"], domain="local")],
                                          [oh.make_opsetid("", 17), oh.make_opsetid("local", 1)]))
    g = oh.make_graph([oh.make_node("F", ["x"], ["y"], domain="local")], "g",
                      [oh.make_tensor_value_info("x", 1, [2])], [oh.make_tensor_value_info("y", 1, [2])])
    return oh.make_model(g, opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid("local", 1)],
                         functions=functions, ir_version=8)


def _edit_digits(edit: Callable[[onnx.ModelProto], None]) -> Callable[[], onnx.ModelProto]:
    def make():
        proto = models.digits()
        edit(proto)
        return proto
    return make


def _set_attr(node_index: int, name: str, attr: onnx.AttributeProto):
    def edit(p):
        node = p.graph.node[node_index]
        kept = [a for a in node.attribute if a.name != name]
        del node.attribute[:]
        node.attribute.extend(kept + [attr])
    return edit


def _invalid_texts() -> dict[str, tuple[str, str]]:
    """name -> (model text, expectation)."""
    return {
        "cycle": (f"""{_OPSET} g (float[2] x) => (float[2] y) {{ a = Add(x, b)
            b = Relu(a)
            y = Identity(b) }}""", "error"),
        "self-loop": (f"""{_OPSET} g (float[2] x) => (float[2] y) {{ a = Add(x, a)
            y = Identity(a) }}""", "error"),
        "undefined-input": (f"""{_OPSET} g (float[2] x) => (float[2] y) {{ y = Add(x, ghost) }}""", "error"),
        "type-mismatch": (f"""{_OPSET} g (float[2] x, int64[2] z) => (float[2] y) {{ y = Add(x, z) }}""", "error"),
        "unknown-default-op": (f"""{_OPSET} g (float[2] x) => (float[2] y) {{ y = Frobnicate(x) }}""", "error"),
        "wrong-attribute-type": (f"""{_OPSET} g (float[2,3] x) => (float[3,2] y) {{ y = Transpose<perm="10">(x) }}""",
                                 "error"),
        "attribute-float-for-int": (f"""{_OPSET} g (float[2,3] x) => (float[6] y) {{ y = Flatten<axis=0.5>(x) }}""",
                                    "error"),
        "unknown-attribute": (f"""{_OPSET} g (float[2] x) => (float[2] y) {{ y = Relu<bogus=1>(x) }}""", "error"),
        "missing-required-attribute": (f"""{_OPSET} g (float[2] x) => (int64[2] y) {{ y = Cast(x) }}""", "error"),
        "undefined-graph-output": (f"""{_OPSET} g (float[2] x) => (float[2] y) {{ z = Relu(x) }}""", "error"),
        "two-producers": (f"""{_OPSET} g (float[2] x) => (float[2] y) {{ y = Relu(x)
            y = Neg(x) }}""", "error"),
        "subgraph-undefined": (f"""{_OPSET} g (float[2] x, bool c) => (float[2] y) {{
            y = If (c) <then_branch = t () => (float[2] o) {{ o = Add(x, nowhere) }},
                        else_branch = e () => (float[2] o) {{ o = Neg(x) }}> }}""", "error"),
        "conv-channel-mismatch": (f"""{_OPSET} g (float[1,3,8,8] x, float[4,5,3,3] w) => (float[1,4,6,6] y) {{
            y = Conv(x, w) }}""", "any"),  # the checker and ORT load it; only running fails
        "unsorted-but-valid": (f"""{_OPSET} g (float[2] x) => (float[2] y) {{ y = Neg(a)
            a = Relu(x) }}""", "ok"),
        "custom-domain-odd-attrs": ("""<ir_version: 8, opset_import: ["" : 17, "com.ex" : 1]>
            g (float[2] x) => (float[2] y) { m = com.ex.Mystery<perm="x", axis=0.5, k=[1,2]>(x)
            y = Relu(m) }""", "ok"),
        "custom-domain-no-outputs-used": ("""<ir_version: 8, opset_import: ["" : 17, "com.ex" : 1]>
            g (float[2] x) => (float[2] y) { y = Relu(x)
            z = com.ex.Sink(x) }""", "ok"),
        "empty-graph": (f"""{_OPSET} g (float[2] x) => (float[2] x) {{ }}""", "ok"),
        "value-info-shape-conflict": (f"""{_OPSET} g (float[2,3] x) => (float[2,3] y) <float[7] r> {{ r = Relu(x)
            y = Neg(r) }}""", "any"),
    }


def invalid_graph_cases() -> list[Case]:
    cases = []

    def proto_case(name, make, expect, fast=True, **kw):
        def build(paths, rng):
            _write(paths, make())
            return _optimize(paths)
        return Case("invalid_graph", name, build, expect=expect, fast=fast, **kw)

    for name, (text, expect) in _invalid_texts().items():
        cases.append(proto_case(name, (lambda t=text: models.parse(t)), expect))

    def dup_names():
        p = models.digits()
        p.graph.node[1].name = p.graph.node[0].name
        return p

    def no_outputs():
        p = models.parse(f"""{_OPSET} g (float[2] x) => (float[2] y) {{ a = Relu(x)
            y = Neg(x) }}""")
        del p.graph.node[0].output[:]
        return p

    def no_opset():
        p = models.digits()
        del p.opset_import[:]
        return p

    def opset(v):
        def make():
            p = models.digits()
            p.opset_import[0].version = v
            return p
        return make

    def ir_version(v):
        def make():
            p = models.digits()
            p.ir_version = v
            return p
        return make

    def raw_size_mismatch():
        p = models.digits()
        t = p.graph.initializer[0]
        t.raw_data = t.raw_data[:-4]
        return p

    def dims_lie():
        p = models.digits()
        p.graph.initializer[0].dims[0] = 10**6
        return p

    def initializer_dtype_changed():
        p = models.digits()
        p.graph.initializer[0].data_type = onnx.TensorProto.INT64
        return p

    cases += [
        proto_case("duplicate-node-names", dup_names, "error"),
        proto_case("node-without-outputs", no_outputs, "error"),
        proto_case("missing-opset-import", no_opset, "error"),
        proto_case("opset-1000", opset(1000), "error"),
        proto_case("opset-0", opset(0), "error"),
        proto_case("ir-version-0", ir_version(0), "error"),
        proto_case("ir-version-99", ir_version(99), "error"),
        proto_case("recursive-function", lambda: _recursive(False), "error"),
        proto_case("mutually-recursive-functions", lambda: _recursive(True), "error"),
        proto_case("raw-data-size-mismatch", raw_size_mismatch, "error"),
        proto_case("initializer-dims-lie", dims_lie, "error"),
        proto_case("initializer-dtype-changed", initializer_dtype_changed, "error"),
        proto_case("transpose-perm-string-in-digits", _edit_digits(_set_attr(
            0, "kernel_shape", oh.make_attribute("kernel_shape", "3x3"))), "error"),
        proto_case("sparse-index-out-of-range", lambda: _sparse_model([0, 1, 99], [2, 3]), "error"),
        proto_case("sparse-negative-index", lambda: _sparse_model([0, -1], [2, 3]), "error"),
        proto_case("sparse-int32-indices-valid", lambda: _sparse_model([0, 4], [2, 3], np.int32), "ok"),
        proto_case("sparse-int64-indices-valid", lambda: _sparse_model([1, 5], [2, 3]), "ok"),
    ]

    # Seeded random edits of the digits model: each must be refused cleanly or optimized correctly.
    edits = ["rename-input", "rename-output", "swap-nodes", "op-type", "drop-attribute", "attr-type",
             "drop-initializer", "domain", "dup-output", "reverse-nodes"]

    def random_edit(kind: str, i: int) -> Case:
        def make_with(rng):
            p = models.digits()
            nodes = p.graph.node
            k = rng.randrange(len(nodes))
            node = nodes[k]
            if kind == "rename-input" and node.input:
                node.input[rng.randrange(len(node.input))] = f"ghost{i}"
            elif kind == "rename-output":
                node.output[0] = f"renamed{i}"
            elif kind == "swap-nodes":
                j = rng.randrange(len(nodes))
                a, b = onnx.NodeProto(), onnx.NodeProto()
                a.CopyFrom(nodes[k])
                b.CopyFrom(nodes[j])
                nodes[k].CopyFrom(b)
                nodes[j].CopyFrom(a)
            elif kind == "op-type":
                node.op_type = rng.choice(["Relu", "Sigmoid", "Conv", "Gemm", "Add", "Nope", "Identity"])
            elif kind == "drop-attribute" and node.attribute:
                del node.attribute[rng.randrange(len(node.attribute))]
            elif kind == "attr-type" and node.attribute:
                a = node.attribute[rng.randrange(len(node.attribute))]
                replacement = rng.choice([oh.make_attribute(a.name, "text"), oh.make_attribute(a.name, 1.5),
                                          oh.make_attribute(a.name, [1.0, 2.0]), oh.make_attribute(a.name, -7)])
                a.CopyFrom(replacement)
            elif kind == "drop-initializer":
                del p.graph.initializer[rng.randrange(len(p.graph.initializer))]
            elif kind == "domain":
                node.domain = rng.choice(["com.unknown", "ai.onnx.ml", "ai.onnx"])
            elif kind == "dup-output":
                other = nodes[(k + 1) % len(nodes)]
                other.output[0] = node.output[0]
            elif kind == "reverse-nodes":
                reordered = list(reversed(nodes))
                copies = []
                for n in reordered:
                    c = onnx.NodeProto()
                    c.CopyFrom(n)
                    copies.append(c)
                del nodes[:]
                nodes.extend(copies)
            return p

        def build(paths, rng):
            _write(paths, make_with(rng))
            return _optimize(paths)
        return Case("invalid_graph", f"edit-{kind}-{i}", build, fast=i == 0 and kind in ("rename-input", "attr-type"))

    for kind in edits:
        for i in range(6):
            cases.append(random_edit(kind, i))
    return cases


# --- resource bombs ---------------------------------------------------------------------------------

def resource_bomb_cases() -> list[Case]:
    cases = []

    # Slow bombs run as subprocesses under harness.MEMORY_LIMIT: one that explodes must not take the machine.
    def text_case(name, text, expect="any", fast=False, xfail=None, flags=(), timeout=None):
        def build(paths, rng):
            _write(paths, models.parse(text))
            return _optimize(paths, *flags)
        return Case("resource_bomb", name, build, expect=expect, fast=fast, xfail=xfail, timeout=timeout,
                    subprocess=not fast)

    cases += [
        text_case("constant-of-shape-100mb", f"""{_OPSET} g (float[1] x) => (float[1] y) {{
            s = Constant<value = int64[2] {{5000, 5000}}>()
            c = ConstantOfShape<value = float[1] {{1.0}}>(s)
            r = ReduceSum<keepdims=0>(c)
            y = Add(x, r) }}""", "ok", fast=True),
        text_case("expand-bomb", f"""{_OPSET} g (float[1] x) => (float[1] y) {{
            v = Constant<value = float[1] {{2.0}}>()
            s = Constant<value = int64[3] {{300, 300, 300}}>()
            e = Expand(v, s)
            r = ReduceMax<keepdims=0>(e)
            y = Mul(x, r) }}""", "ok", fast=True),
        text_case("tile-bomb", f"""{_OPSET} g (float[1] x) => (float[1] y) {{
            v = Constant<value = float[2,2] {{1.0, 2.0, 3.0, 4.0}}>()
            r = Constant<value = int64[2] {{2000, 2000}}>()
            t = Tile(v, r)
            m = ReduceMean<keepdims=0>(t)
            y = Add(x, m) }}""", "ok"),
        text_case("range-bomb", f"""{_OPSET} g (float[1] x) => (float[1] y) {{
            a = Constant<value = float {{0.0}}>()
            b = Constant<value = float {{20000000.0}}>()
            d = Constant<value = float {{1.0}}>()
            r = Range(a, b, d)
            m = ReduceMax<keepdims=1>(r)
            y = Add(x, m) }}""", "ok"),
        text_case("fold-limit-raised-bomb", f"""{_OPSET} g (float[1] x) => (float[1] y) {{
            s = Constant<value = int64[2] {{2000, 2000}}>()
            c = ConstantOfShape<value = float[1] {{1.0}}>(s)
            r = ReduceSum<keepdims=0>(c)
            y = Add(x, r) }}""", "ok", flags=("--fold-limit", "64")),
        text_case("huge-declared-input-dims", f"""{_OPSET} g (float[1099511627776, 4] x) => (float[1099511627776, 4] y) {{
            y = Relu(x) }}"""),
        text_case("int64-max-declared-dim", f"""{_OPSET} g (float[9223372036854775807] x) => (float[9223372036854775807] y) {{
            y = Relu(x) }}"""),
    ]

    def shape_flag(name, dims, xfail=None, expect="any", fast=False):
        def build(paths, rng):
            _write(paths, models.digits())
            return _optimize(paths, "--shape", f"input={dims}")
        return Case("resource_bomb", name, build, expect=expect, xfail=xfail, fast=fast, subprocess=not fast)

    cases += [shape_flag("shape-flag-100m-batch", "100000000x1x8x8"),
              shape_flag("shape-flag-20-digit-dim", "123456789012345678901x1x8x8", expect="error", fast=True)]

    def generated(name, make, expect="any", fast=False, timeout=None):
        def build(paths, rng):
            _write(paths, make())
            return _optimize(paths)
        return Case("resource_bomb", name, build, expect=expect, fast=fast, timeout=timeout, subprocess=not fast)

    def deep_if(depth: int):
        """If inside If, `depth` levels (each else branch a plain Neg, so the file grows linearly)."""
        def make():
            graph = oh.make_graph([oh.make_node("Identity", ["x"], ["t0"])], "leaf", [],
                                  [oh.make_tensor_value_info("t0", 1, [2])])
            for level in range(1, depth + 1):
                other = oh.make_graph([oh.make_node("Neg", ["x"], [f"e{level}"])], f"else{level}", [],
                                      [oh.make_tensor_value_info(f"e{level}", 1, [2])])
                node = oh.make_node("If", ["c"], [f"t{level}"], then_branch=graph, else_branch=other, name=f"if{level}")
                graph = oh.make_graph([node], f"then{level}", [], [oh.make_tensor_value_info(f"t{level}", 1, [2])])
            g = oh.make_graph(list(graph.node), "deep", [oh.make_tensor_value_info("x", 1, [2]),
                                                         oh.make_tensor_value_info("c", onnx.TensorProto.BOOL, [])],
                              [oh.make_tensor_value_info(f"t{depth}", 1, [2])])
            return oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)
        return make

    def deep_if_bytes(depth: int):
        """The same nesting written as raw protobuf, past what protobuf parsers accept (upb: 100 levels)."""
        def field(number: int, payload: bytes) -> bytes:
            return _varint(number << 3 | 2) + _varint(len(payload)) + payload

        def make():
            out = oh.make_tensor_value_info("t", 1, [2]).SerializeToString()
            other = oh.make_graph([oh.make_node("Neg", ["x"], ["t"])], "e", [],
                                  [oh.make_tensor_value_info("t", 1, [2])]).SerializeToString()
            graph = oh.make_graph([oh.make_node("Identity", ["x"], ["t"])], "leaf", [],
                                  [oh.make_tensor_value_info("t", 1, [2])]).SerializeToString()
            for level in range(depth):
                then_attr = field(1, b"then_branch") + field(6, graph) + _varint(20 << 3) + _varint(5)
                else_attr = field(1, b"else_branch") + field(6, other) + _varint(20 << 3) + _varint(5)
                node = field(1, b"c") + field(2, b"t") + field(4, b"If") + field(5, then_attr) + field(5, else_attr)
                graph = field(1, node) + field(2, f"g{level}".encode()) + field(12, out)
            inputs = (field(11, oh.make_tensor_value_info("x", 1, [2]).SerializeToString())
                      + field(11, oh.make_tensor_value_info("c", onnx.TensorProto.BOOL, []).SerializeToString()))
            opset = oh.make_opsetid("", 17).SerializeToString()
            return _varint(1 << 3) + _varint(8) + field(7, graph + inputs) + field(8, opset)
        return make

    def long_chain(n: int):
        def make():
            nodes = [oh.make_node("Relu" if i % 2 else "Neg", [f"v{i}" if i else "x"], [f"v{i + 1}" if i < n - 1 else "y"],
                                  name=f"n{i}") for i in range(n)]
            g = oh.make_graph(nodes, "chain", [oh.make_tensor_value_info("x", 1, [4])],
                              [oh.make_tensor_value_info("y", 1, [4])])
            return oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)
        return make

    def many_outputs(n: int):
        def make():
            nodes = [oh.make_node("Relu", ["x"], [f"y{i}"], name=f"r{i}") for i in range(n)]
            g = oh.make_graph(nodes, "wide", [oh.make_tensor_value_info("x", 1, [4])],
                              [oh.make_tensor_value_info(f"y{i}", 1, [4]) for i in range(n)])
            return oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)
        return make

    def long_names(length: int):
        def make():
            p = models.conv_bn_model()
            for n in p.graph.node:
                n.name = n.name + "x" * length
            return p
        return make

    def many_initializers(n: int):
        def make():
            inits = [onnx.numpy_helper.from_array(np.full(1, i, np.float32), f"c{i}") for i in range(n)]
            nodes = [oh.make_node("Sum", ["x", *[f"c{i}" for i in range(n)]], ["y"], name="sum")]
            g = oh.make_graph(nodes, "inits", [oh.make_tensor_value_info("x", 1, [1])],
                              [oh.make_tensor_value_info("y", 1, [1])], inits)
            return oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)
        return make

    def sparse_huge():
        return _sparse_model([0], [1_000_000, 1_000_000])

    cases += [
        generated("deep-if-nesting-20", deep_if(20), "ok"),
        generated("deep-if-nesting-200-raw", deep_if_bytes(200), "error"),
        generated("deep-if-nesting-10-raw", deep_if_bytes(10), "ok"),
        generated("chain-3000-nodes", long_chain(3000), "ok", timeout=240),
        generated("500-outputs", many_outputs(500), "ok"),
        generated("100kb-node-names", long_names(100_000), "ok"),
        generated("3000-initializers", many_initializers(3000), "ok"),
        generated("sparse-declares-4tb", sparse_huge, "error", fast=True),
        generated("chain-300-nodes", long_chain(300), "ok", fast=True),
    ]
    return cases
