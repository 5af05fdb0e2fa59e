"""ORT's kernel time per node of a model, from its profiler, credited to the model's own nodes.

ORT renames the nodes it rewrites, so a profile event is matched back to the node it came
from by these rules, in order:

1. the node's own name (most kernels);
2. `<name>_token_<n>`: QDQ fusion keeps the float node's name (QLinearConv, QGemm, ...);
3. `<output>_nchwc`: the NCHWc layout names a node after its output; when ORT fused an
   activation into a Conv (Conv+Relu, Conv+Clip) that output is the activation's, and the
   time is credited to the Conv behind the activation chain.

Events none of these match (layout Transposes ORT inserts, `ReorderOutput`) are returned
under their ORT name with a leading `?`.
"""

from __future__ import annotations

__all__ = ["kernel_times", "node_kernel_times"]

import collections
import json
import pathlib
import re
import tempfile

import onnx_ir as ir

from graphopt.core.bench import create_session, session_options

_ACTIVATIONS = {"Relu", "Clip", "Sigmoid", "LeakyRelu", "HardSigmoid", "HardSwish", "Tanh"}
_TOKEN = re.compile(r"_token_\d+$")


def kernel_times(model: bytes | str, feeds: dict, providers: list[str], threads: int | None,
                 runs: int = 20) -> dict[str, float]:
    """Seconds per run of each kernel ORT ran, keyed by ORT's node name (after a warm-up run)."""
    with tempfile.TemporaryDirectory(prefix="graphopt-profile-") as tmp:
        options = session_options(threads, profile_prefix=str(pathlib.Path(tmp) / "profile"))
        session = create_session(model, providers, options)
        session.run(None, feeds)
        for _ in range(runs):
            session.run(None, feeds)
        events = json.loads(pathlib.Path(session.end_profiling()).read_text())
    times: collections.Counter = collections.Counter()
    for event in events:
        name = event.get("name", "")
        if event.get("cat") == "Node" and name.endswith("_kernel_time"):
            times[name[: -len("_kernel_time")]] += event["dur"] * 1e-6
    # the warm-up run is in the profile too
    return {name: t / (runs + 1) for name, t in times.items()}


def node_kernel_times(times: dict[str, float], graph: ir.Graph) -> dict[str, float]:
    """`kernel_times` credited to the nodes of `graph` by name (rules 1-3)."""
    nodes = {node.name: node for node in graph}
    producers = {out.name: node for node in graph for out in node.outputs}
    credited: collections.Counter = collections.Counter()
    for ort_name, seconds in times.items():
        node = nodes.get(ort_name) or nodes.get(_TOKEN.sub("", ort_name))
        if node is None and ort_name.endswith("_nchwc"):
            node = producers.get(ort_name[: -len("_nchwc")])
            while node is not None and node.op_type in _ACTIVATIONS and node.inputs and node.inputs[0] is not None:
                node = node.inputs[0].producer()
        credited[node.name if node is not None else "?" + ort_name] += seconds
    return dict(credited)
