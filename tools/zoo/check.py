"""Check one export in ONNX Runtime and record it.

``record(...)`` writes ``<net>.npz`` (graph inputs by name plus the
framework's own outputs as ``expected_<output name>``), runs the ONNX model in
ONNX Runtime on the same inputs, re-runs it with batch 1 (and a shorter
sequence for text) to prove the dynamic dims stay dynamic, and writes
``<net>.json`` with node count, op histogram, graph I/O shapes and the max abs
difference. Works with onnx 1.14 / numpy 1.23 (the MXNet venv) and newer.
"""

from __future__ import annotations

import collections
import json
import os
import time
import traceback
from pathlib import Path

import numpy as np

__all__ = ["record", "record_failure", "summarize", "out_dir"]


def out_dir(root: str | os.PathLike, framework: str) -> Path:
    d = Path(root) / framework
    d.mkdir(parents=True, exist_ok=True)
    return d


def _dims(vi) -> list:
    return [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?")
            for d in vi.type.tensor_type.shape.dim]


def summarize(onnx_path: str | os.PathLike) -> dict:
    """Static facts about the model file (no onnxruntime needed)."""
    import onnx

    m = onnx.load(str(onnx_path), load_external_data=False)
    g = m.graph
    inits = {i.name for i in g.initializer}
    ops = collections.Counter(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
                              for n in g.node)
    return {
        "file_mb": round(os.path.getsize(onnx_path) / 2**20, 2),
        "opset": {(o.domain or "ai.onnx"): o.version for o in m.opset_import},
        "producer": f"{m.producer_name} {m.producer_version}".strip(),
        "nodes": len(g.node),
        "initializers": len(inits),
        "initializers_as_inputs": sum(1 for i in g.input if i.name in inits),
        "inputs": {i.name: _dims(i) for i in g.input if i.name not in inits},
        "outputs": {o.name: _dims(o) for o in g.output},
        "ops": dict(ops.most_common()),
        "functions": len(m.functions),
    }


def _feeds_for(sess, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for i in sess.get_inputs():
        if i.name in feeds:
            out[i.name] = feeds[i.name]
    return out


def _run_ort(onnx_path, feeds):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    return sess, sess.run(None, _feeds_for(sess, feeds))


def _smaller(feeds: dict[str, np.ndarray], text: bool) -> dict[str, np.ndarray]:
    small = {k: v[:1] for k, v in feeds.items()}
    if text:
        small = {k: v[:, :64] for k, v in small.items()}
    return small


def record(onnx_path, framework: str, net: str, feeds: dict[str, np.ndarray],
           expected: list[np.ndarray], text: bool = False, note: str = "", export_s: float = 0.0,
           compare: bool = True) -> dict:
    """Save the sample, verify with ORT, write and return the JSON summary.

    ``feeds`` are keyed by the ONNX graph input names; ``expected`` are the
    framework's outputs in the order of the graph outputs.
    """
    onnx_path = Path(onnx_path)
    info = {"framework": framework, "net": net, "status": "ok", "note": note,
            "export_s": round(export_s, 1)}
    info.update(summarize(onnx_path))
    out_names = list(info["outputs"])
    np.savez(onnx_path.with_suffix(".npz"), **feeds,
             **{f"expected_{n}": e for n, e in zip(out_names, expected)})
    try:
        t = time.perf_counter()
        sess, got = _run_ort(onnx_path, feeds)
        info["ort_run_s"] = round(time.perf_counter() - t, 2)
        diffs = [float(np.max(np.abs(g.astype(np.float64) - e.astype(np.float64))))
                 for g, e in zip(got, expected)]
        info["max_abs_diff"] = max(diffs) if compare else None
        info["max_abs_expected"] = float(max(np.max(np.abs(e)) for e in expected))
        info["shapes_match"] = all(g.shape == e.shape for g, e in zip(got, expected))
        if not compare:
            info["note"] = (note + "; " if note else "") + f"not compared (max abs diff {max(diffs):.3g})"
        small = _smaller(feeds, text)
        got_small = sess.run(None, _feeds_for(sess, small))
        info["dynamic_ok"] = all(g.shape[0] == 1 for g in got_small) and (
            not text or all(g.shape[1] == 64 for g in got_small if g.ndim > 1))
    except Exception as e:  # noqa: BLE001 - the error text is the result
        info["status"] = "ort_failed"
        info["error"] = f"{type(e).__name__}: {e}"[:2000]
    (onnx_path.with_suffix(".json")).write_text(json.dumps(info, indent=1))
    _print(info)
    return info


def record_failure(out: Path, framework: str, net: str, exc: BaseException, stage: str = "export") -> dict:
    """Write the JSON summary of a failed export; the traceback goes to ``<net>.err``."""
    msg = f"{type(exc).__name__}: {exc}"
    lines = [ln for ln in msg.splitlines() if ln.strip()]
    info = {"framework": framework, "net": net, "status": f"{stage}_failed",
            "error": "\n".join(lines[:12])[:3000]}
    (out / f"{net}.err").write_text("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    (out / f"{net}.json").write_text(json.dumps(info, indent=1))
    _print(info)
    return info


def _print(info: dict) -> None:
    if info["status"] != "ok" and "nodes" not in info:
        print(f"[{info['framework']}/{info['net']}] {info['status']}: {info['error'].splitlines()[0][:300]}",
              flush=True)
        return
    top = ", ".join(f"{k} {v}" for k, v in list(info["ops"].items())[:5])
    diff = info.get("max_abs_diff")
    print(f"[{info['framework']}/{info['net']}] {info['status']} nodes={info['nodes']} "
          f"diff={diff if diff is None else f'{diff:.3g}'} dynamic={info.get('dynamic_ok')} "
          f"inputs={info['inputs']} top: {top}"
          + (f" ERROR {info['error'][:300]}" if "error" in info else ""), flush=True)
