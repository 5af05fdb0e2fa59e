"""Shared by the exports of models as users bring them (``tools/export_hf.py`` and siblings).

Each script exports a few models at ``--size tiny`` (bundled in ``models/zoo/``, small
enough to commit) or ``--size full`` (realistic widths, ``build/zoo/<framework>/``) and
hands the result to ``finish``, which

1. checks the file with ``onnx.checker`` (plain, then ``full_check=True``, whose failure is
   recorded rather than raised: a declared ``dim_value: -1`` breaks strict shape inference),
2. writes ``<name>.npz``: realistic sample inputs keyed by graph input name, plus the
   framework's own outputs as ``expected_<output name>``,
3. runs ONNX Runtime (CPU, default optimization level) on the sample and on a second
   size, and on "probe" inputs (what graphopt's old generator fed: every dynamic dim 1,
   ints from [0, 4); plus sizes the model is known to reject), recording ORT's own
   message on failure, and
4. writes ``<name>.json``: exporter, versions, opset, I/O as declared, the shapes used,
   the max abs difference to the framework, the second-size run and the probes.

Numpy, onnx and onnxruntime only, so every framework venv can import it.
"""

from __future__ import annotations

import argparse
import collections
import importlib.metadata
import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np

__all__ = ["parse_args", "model_path", "finish", "naive_feeds", "versions", "REPO"]

REPO = Path(__file__).resolve().parents[2]


def parse_args(description: str, names: list[str], argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--size", choices=("tiny", "full"), default="tiny",
                    help="tiny: small widths, bundled in models/zoo; full: realistic widths, build/zoo")
    ap.add_argument("--out", type=Path, default=None,
                    help="output root (default: models/zoo for tiny, build/zoo/<framework> for full)")
    ap.add_argument("--seed", type=int, default=0, help="weight and sample seed")
    ap.add_argument("--only", default=",".join(names), help=f"comma-separated subset of {','.join(names)}")
    args = ap.parse_args(argv)
    args.only = [n for n in args.only.split(",") if n]
    unknown = sorted(set(args.only) - set(names))
    if unknown:
        ap.error(f"unknown models {unknown}; choose from {names}")
    return args


def model_path(args: argparse.Namespace, framework: str, name: str) -> Path:
    """``models/zoo/<name>.onnx`` (tiny, flat) or ``build/zoo/<framework>/<name>.onnx`` (full)."""
    if args.size == "tiny":
        d = args.out or REPO / "models" / "zoo"
    else:
        d = (args.out or REPO / "build" / "zoo") / framework
    d.mkdir(parents=True, exist_ok=True)
    return d / f"{name}.onnx"


def versions(*packages: str) -> dict[str, str]:
    out = {}
    for p in packages:
        try:
            out[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            out[p] = None
    return out


def _dtype(elem_type: int) -> str:
    import onnx

    return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name if elem_type else "?"


def _declared(vi) -> dict:
    """Name, dtype and dims exactly as the file declares them (dim_value -1 stays -1)."""
    t = vi.type.tensor_type
    dims = None
    if t.HasField("shape"):
        dims = [d.dim_param if d.HasField("dim_param") else d.dim_value if d.HasField("dim_value") else None
                for d in t.shape.dim]
    return {"name": vi.name, "dtype": _dtype(t.elem_type), "dims": dims}


def _session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()  # default graph optimization level (ORT_ENABLE_ALL)
    so.log_severity_level = 4  # probes fail on purpose; keep ORT's own log quiet
    so.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _shapes(feeds: dict[str, np.ndarray]) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in feeds.items()}


def _try_run(sess, feeds: dict[str, np.ndarray]) -> dict:
    try:
        outs = sess.run(None, feeds)
    except Exception as e:  # noqa: BLE001 - ORT's message is the result we record
        msg = str(e).strip().splitlines()
        return {"inputs": _shapes(feeds), "ok": False, "error": (msg[0] if msg else type(e).__name__)[:600]}
    names = [o.name for o in sess.get_outputs()]
    return {"inputs": _shapes(feeds), "ok": True, "outputs": {n: list(o.shape) for n, o in zip(names, outs)}}


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez_compressed`` with a fixed zip timestamp, so a rerun writes identical bytes."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asanyarray(arr), allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buf.getvalue(),
                        compress_type=zipfile.ZIP_DEFLATED)


def naive_feeds(model) -> dict[str, np.ndarray]:
    """What graphopt's generator fed before: every dynamic dim 1, ints from [0, 4), floats N(0, 1)."""
    rng = np.random.default_rng(1)
    feeds = {}
    inits = {i.name for i in model.graph.initializer}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        d = _declared(vi)
        shape = tuple(x if isinstance(x, int) and x > 0 else 1 for x in d["dims"] or [])
        dt = np.dtype(d["dtype"])
        feeds[vi.name] = (rng.integers(0, 4, size=shape).astype(dt) if dt.kind in "iub"
                          else rng.standard_normal(shape).astype(dt))
    return feeds


def finish(path: Path, *, exporter: str, versions: dict, feeds: dict[str, np.ndarray],
           expected: dict[str, np.ndarray], second: dict[str, np.ndarray],
           probes: dict[str, dict[str, np.ndarray]] | None = None,
           notes: dict | None = None, tol: float = 1e-3) -> dict:
    """Check, run and record one export (see the module docstring). Returns the JSON dict.

    ``expected`` maps graph output names to the framework's outputs; ``notes`` is free
    text the input generator should know (value ranges, which sizes are valid). An output
    passes when its max abs difference is at most ``tol * max(1, max |expected|)``.
    """
    import onnx

    path = Path(path)
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    try:  # full_check runs strict shape inference, which a declared dim_value -1 can break
        onnx.checker.check_model(model, full_check=True)
        full_check = "ok"
    except Exception as e:  # noqa: BLE001 - recorded, not fatal
        full_check = f"{type(e).__name__}: {str(e).strip()[:400]}"
    g = model.graph
    inits = {i.name for i in g.initializer}
    in_names = [i.name for i in g.input if i.name not in inits]
    out_names = [o.name for o in g.output]
    assert sorted(feeds) == sorted(in_names), f"{path.name}: feeds {sorted(feeds)} != inputs {in_names}"
    assert sorted(expected) == sorted(out_names), f"{path.name}: expected {sorted(expected)} != {out_names}"
    save_npz(path.with_suffix(".npz"), {**feeds, **{f"expected_{k}": v for k, v in expected.items()}})

    sess = _session(path)
    got = dict(zip(out_names, sess.run(out_names, feeds)))
    diffs = {k: float(np.max(np.abs(got[k].astype(np.float64) - expected[k].astype(np.float64))))
             if expected[k].size else 0.0 for k in out_names}
    scale = {k: float(np.max(np.abs(v))) if v.size else 0.0 for k, v in expected.items()}
    info = {
        "name": path.stem,
        "exporter": exporter,
        "versions": versions,
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "checker": {"check_model": "ok", "full_check": full_check},
        "opset": {(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        "file_bytes": os.path.getsize(path),
        "nodes": len(g.node),
        "ops": dict(collections.Counter(n.op_type for n in g.node).most_common()),
        "inputs": [_declared(i) for i in g.input if i.name not in inits],
        "outputs": [_declared(o) for o in g.output],
        "sample": {k: {"shape": list(v.shape), "dtype": v.dtype.name} for k, v in feeds.items()},
        "notes": notes or {},
        "ort": {"level": "default (ORT_ENABLE_ALL)", "max_abs_diff": diffs, "max_abs_expected": scale,
                "ok": all(diffs[k] <= tol * max(1.0, scale[k]) for k in diffs)},
        "second_size": _try_run(sess, second),
        "probes": {label: _try_run(sess, f)
                   for label, f in {"all_dynamic_dims_1_ints_0_4": naive_feeds(model), **(probes or {})}.items()},
    }
    path.with_suffix(".json").write_text(json.dumps(info, indent=1) + "\n")
    bad = [] if info["ort"]["ok"] else [f"diff {max(diffs.values()):.3g}"]
    bad += [] if info["second_size"]["ok"] else [f"second size: {info['second_size']['error'][:200]}"]
    status = f"{info['file_bytes']} bytes, {info['nodes']} nodes, max diff {max(diffs.values()):.2e}"
    if full_check != "ok":
        status += ", full_check FAILED"
    status += f", second size {'ok' if info['second_size']['ok'] else 'FAILED'}; probes: "
    print(f"[{path.stem}] {status}" + ", ".join(f"{k}={'ok' if v['ok'] else 'fails'}"
                                                for k, v in info["probes"].items()), flush=True)
    if bad:
        raise RuntimeError(f"{path.name}: " + "; ".join(bad))
    return info
