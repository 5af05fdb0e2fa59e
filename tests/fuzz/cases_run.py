"""Fuzz families about the run: kills during a save and bad option values."""

from __future__ import annotations

import shutil

import numpy as np

from tests.fuzz import models
from tests.fuzz.case import Case, optimize_argv as _optimize, write_model as _write
from tests.fuzz.harness import Paths

# --- kills during a save -----------------------------------------------------------------------------

def kill_cases() -> list[Case]:
    from tests.fuzz.kills import sigterm_runner, strace_kill_runner

    def terminated_or_done(verdict, paths):  # a run that finished before the signal must simply be right
        return None if verdict.code in (0, 143) else f"exit {verdict.code} after SIGTERM, expected 143"

    cases = []
    for i, delay in enumerate((0.0, 0.2, 0.5, 1.0, 1.5, 2.5)):
        cases.append(Case("kill_save", f"sigterm-while-working-{i}", _quantize_build, subprocess=True,
                          runner=sigterm_runner(delay), fast=i == 0, lossy=True, extra_check=terminated_or_done,
                          error_codes=(1, 2, 143)))
    # A save of a model with external data makes 4 renames: the verified scratch copy, then the data
    # file staged, put in place, and the model (the fork-based sweep in test_kill_save covers every call).
    for k in range(1, 5):
        cases.append(Case("kill_save", f"sigkill-at-rename-{k}", _external_build, subprocess=True,
                          runner=strace_kill_runner(k), expect="ok", timeout=300))
    return cases


def _quantize_build(paths: Paths, rng) -> list[str]:
    _write(paths, models.digits())
    shutil.copy(models.DIGITS_CALIB, paths.inp / models.DIGITS_CALIB.name)
    return _optimize(paths, "--quantize", "int8", "--calibration", paths.inp / models.DIGITS_CALIB.name)


def _external_build(paths: Paths, rng) -> list[str]:
    models.save_external(models.digits(), paths.inp / "model.onnx")
    return _optimize(paths)


# --- option values ----------------------------------------------------------------------------------

def option_cases() -> list[Case]:
    cases = []

    def opt_case(name, flags, expect="error", xfail=None, fast=True, lossy=False, data=(), check=None, base=None,
                 extra_files=None, output_name="model.opt.onnx"):
        def build(paths, rng):
            _write(paths, (base or models.digits)())
            for source in data:
                shutil.copy(source, paths.inp / source.name)
            if extra_files:
                extra_files(paths)
            return _optimize(paths, *[str(paths.inp / f[5:]) if str(f).startswith("DATA:") else f for f in flags])
        return Case("options", name, build, expect=expect, xfail=xfail, fast=fast, lossy=lossy,
                    extra_check=check, output_name=output_name)

    calib, test = models.DIGITS_CALIB, models.DIGITS_TEST
    bad = {
        "fold-limit-nan": ["--fold-limit", "nan"], "fold-limit-inf": ["--fold-limit", "inf"],
        "fold-limit-negative": ["--fold-limit", "-1"], "rtol-nan": ["--rtol", "nan"], "atol-negative": ["--atol", "-1"],
        "rtol-inf": ["--rtol", "inf"], "atol-nan": ["--atol", "nan"], "threads-0": ["--threads", "0"],
        "threads-100000": ["--threads", "100000"], "threads-negative": ["--threads", "-2"],
        "shape-20-digit-dim": ["--shape", "input=123456789012345678901x1x8x8"],
        "shape-negative-dim": ["--shape", "input=-1x1x8x8"], "shape-no-equals": ["--shape", "1x1x8x8"],
        "shape-letters": ["--shape", "input=axbxc"], "shape-unknown-input": ["--shape", "nope=1x1x8x8"],
        "level-9": ["--level", "9"], "level-text": ["--level", "two"], "passes-unknown": ["--passes", "bogus"],
        "skip-unknown": ["--skip", "bogus"], "outputs-unknown": ["--outputs", "nope"],
        "quantize-unknown": ["--quantize", "int3"],
        "int8-scheme-unknown": ["--quantize", "int8", "--calibration", "random", "--int8-scheme", "x"],
        "calibration-method-unknown": ["--quantize", "int8", "--calibration", "random", "--calibration-method", "x"],
        "sparsity-scope-unknown": ["--sparsity", "0.5", "--sparsity-scope", "x"],
        "provider-unknown": ["--provider", "quantum"], "target-opset-3": ["--target-opset", "3"],
        "sparsity-2": ["--sparsity", "2"], "sparsity-nan": ["--sparsity", "nan"], "low-rank-text": ["--low-rank", "x"],
        "max-drop-without-lossy": ["--max-accuracy-drop", "1"], "eval-without-lossy": ["--eval", "DATA:x.npz"],
        "inputs-missing-file": ["--inputs", "DATA:missing.npz"],
        "calibration-missing": ["--quantize", "int8", "--calibration", "DATA:missing.npz"],
        "calibration-samples-0": ["--quantize", "int8", "--calibration", "random", "--calibration-samples", "0"],
        "max-drop-nan": ["--quantize", "int8", "--calibration", "random", "--max-accuracy-drop", "nan"],
        "unknown-flag": ["--frobnicate"], "json-with-error": ["--json", "--rtol", "nan"],
        "channel-multiple-0": ["--sparsity", "0.3", "--structured", "--channel-multiple", "0"],
        "sparsity-pattern-bad": ["--sparsity-pattern", "4:2"],
    }
    for name, flags in bad.items():
        cases.append(opt_case(name, flags))

    def not_npz(paths):
        (paths.inp / "bad.npz").write_bytes(b"not a zip")

    cases.append(opt_case("inputs-not-npz", ["--inputs", "DATA:bad.npz"], extra_files=not_npz))

    def collapse(verdict, paths):
        import json

        try:
            report = json.loads(verdict.stdout)
        except ValueError:
            return "no JSON report"
        return None if any("accuracy fell" in w for w in report.get("warnings", [])) else "no accuracy warning"

    cases.append(opt_case("sparsity-collapse-warns", ["--sparsity", "0.8", "--eval", f"DATA:{test.name}", "--json"],
                          expect="ok", lossy=True, data=(test,), check=collapse))
    cases.append(opt_case("quantize-int8-valid", ["--quantize", "int8", "--calibration", f"DATA:{calib.name}",
                                                  "--no-measure"], expect="ok", lossy=True, data=(calib,), fast=False))

    # Data the input model (graphopt/core/inputs.py, calibrate) must refuse in one line.
    def arrays(name, **arrays_):
        def files(paths):
            np.savez(paths.inp / f"{name}.npz", **arrays_)
        return files

    rng = np.random.default_rng(0)
    good = rng.standard_normal((1, 1, 8, 8)).astype(np.float32)
    cases += [
        opt_case("inputs-wrong-shape", ["--inputs", "DATA:a.npz"],
                 extra_files=arrays("a", input=rng.standard_normal((1, 3, 5)).astype(np.float32))),
        opt_case("inputs-wrong-dtype", ["--inputs", "DATA:a.npz"],
                 extra_files=arrays("a", input=good.astype(np.int64))),
        opt_case("inputs-nan", ["--inputs", "DATA:a.npz"],
                 extra_files=arrays("a", input=np.full((1, 1, 8, 8), np.nan, np.float32))),
        opt_case("inputs-extra-name", ["--inputs", "DATA:a.npz"],
                 extra_files=arrays("a", input=good, bogus=good)),
        opt_case("calibration-nan", ["--quantize", "int8", "--calibration", "DATA:c.npz"],
                 extra_files=arrays("c", input=np.full((8, 1, 8, 8), np.nan, np.float32))),
        opt_case("calibration-inf", ["--quantize", "int8", "--calibration", "DATA:c.npz"],
                 extra_files=arrays("c", input=np.full((8, 1, 8, 8), np.inf, np.float32))),
    ]
    # Valid settings must still work.
    for name, flags in {"level-0": ["--level", "0"], "level-1": ["--level", "1"], "threads-1": ["--threads", "1"],
                        "fold-limit-0": ["--fold-limit", "0"], "rtol-0": ["--rtol", "0", "--atol", "0.001"],
                        "shape-batch-4": ["--shape", "input=4x1x8x8"], "json": ["--json"],
                        "no-verify": ["--no-verify"]}.items():
        cases.append(opt_case(f"valid-{name}", flags, expect="ok", fast=name in ("json", "level-1")))
    return cases
