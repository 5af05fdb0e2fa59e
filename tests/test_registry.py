"""One registry for every pass (graphopt/passes/__init__.py): lossy ones included, names equal to
module stems, old names kept as aliases, and `graphopt passes` lists them all."""

from __future__ import annotations

import importlib
import inspect
import pathlib

import onnx_ir as ir
import pytest

import graphopt.passes as passes
from graphopt.core.errors import UsageError

PASSES_DIR = pathlib.Path(passes.__file__).parent
KINDS = ("cleanup", "shape", "fusion", "quantize", "prune")


def _pass_classes() -> dict[str, type]:
    """Every ir.passes pass class defined in a public module of graphopt.passes, by module stem."""
    found = {}
    for kind in KINDS:
        for path in sorted((PASSES_DIR / kind).glob("*.py")):
            if path.stem.startswith("_"):
                continue
            module = importlib.import_module(f"graphopt.passes.{kind}.{path.stem}")
            for _, cls in inspect.getmembers(module, inspect.isclass):
                if issubclass(cls, ir.passes.PassBase) and cls.__module__ == module.__name__:
                    found[path.stem] = cls
    return found


def test_every_pass_class_is_registered_under_its_module_stem():
    classes = _pass_classes()
    assert len(classes) == len(passes.REGISTRY) == 27
    for name, spec in passes.REGISTRY.items():
        assert passes.pass_class(spec) is classes[name], name
        assert spec.kind in KINDS and (PASSES_DIR / spec.kind / f"{name}.py").is_file()


def test_private_helpers_define_no_pass():
    for kind in KINDS:
        for path in (PASSES_DIR / kind).glob("_*.py"):
            if path.name == "__init__.py":
                continue
            module = importlib.import_module(f"graphopt.passes.{kind}.{path.stem}")
            assert not [c for _, c in inspect.getmembers(module, inspect.isclass)
                        if issubclass(c, ir.passes.PassBase) and c.__module__ == module.__name__], path


def test_aliases_resolve_and_stages_are_named():
    assert passes.resolve("noops").name == "eliminate_noops"
    assert passes.resolve("int8", "quantize").name == "quantize_int8"
    assert passes.resolve("fp16").stage == "quantize"
    assert {spec.stage for spec in passes.REGISTRY.values()} == {"lossless", "compress", "quantize"}
    with pytest.raises(UsageError, match="runs in the quantize stage"):
        passes.resolve("quantize_int8", "compress")


def test_a_lossy_pass_is_not_a_pipeline_step():
    from graphopt.stages.lossless import pipeline_names

    assert pipeline_names(None, ["noops", "cse"], skip=["dead_code"]) == ["eliminate_noops", "cse"]
    with pytest.raises(UsageError, match="lossy pass runs in the quantize stage"):
        pipeline_names(None, ["quantize_int8"])


def test_graphopt_passes_lists_every_pass_with_its_stage(capsys, monkeypatch):
    from graphopt.app import cli

    monkeypatch.setattr(cli._out, "width", 250)
    cli.main(["passes"])
    out = capsys.readouterr().out
    assert f"graphopt passes ({len(passes.REGISTRY)})" in out
    for name in passes.REGISTRY:
        assert name in out
