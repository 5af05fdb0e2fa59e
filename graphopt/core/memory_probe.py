"""The memory probe of `graphopt.core.bench` (step 5 of its docstring): one session's RSS growth
over creation and a few runs, printed as one JSON line.

It runs as the program of a fresh interpreter (`python -c <this file's text> SPEC`), which imports
only onnxruntime and numpy (importing graphopt would cost seconds and memory of its own); SPEC is
a JSON object: path, providers, threads, ort_level (an ORT GraphOptimizationLevel name), feeds (an
.npz), runs, spin.
"""

import json
import pathlib
import sys

import numpy as np
import onnxruntime as ort


def rss_kb():
    """(VmRSS, VmHWM) in kB; elsewhere than Linux (None, peak RSS of the process)."""
    try:
        status = pathlib.Path("/proc/self/status").read_text()
    except OSError:
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return None, peak // 1024 if sys.platform == "darwin" else peak
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)

    def kb(key):
        return int(fields[key].split()[0]) if key in fields else None

    return kb("VmRSS"), kb("VmHWM")


def main(spec: dict) -> dict:
    with np.load(spec["feeds"], allow_pickle=False) as data:
        feeds = {k: data[k] for k in data.files}
    options = ort.SessionOptions()
    options.log_severity_level = 4  # errors reach the user as one line, not ORT's log
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, spec["ort_level"])
    if spec["threads"]:
        options.intra_op_num_threads = spec["threads"]
    options.inter_op_num_threads = 1
    if not spec["spin"]:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    before, _ = rss_kb()
    reset = False
    try:
        pathlib.Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        reset = True
    except OSError:
        pass
    session = ort.InferenceSession(spec["path"], options, providers=spec["providers"])
    after_create, _ = rss_kb()
    for _ in range(spec["runs"]):
        session.run(None, feeds)
    after_runs, peak = rss_kb()
    if before is None:
        return {"peak_bytes": peak * 1024, "after_create_bytes": None, "method": "ru_maxrss (whole process)"}
    return {"peak_bytes": max(0, peak - before) * 1024 if reset else max(0, after_runs - before) * 1024,
            "after_create_bytes": max(0, after_create - before) * 1024,
            "after_runs_bytes": max(0, after_runs - before) * 1024,
            "method": "VmHWM" if reset else "VmRSS after runs (VmHWM reset unavailable)"}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
