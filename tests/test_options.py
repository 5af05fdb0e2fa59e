"""One options schema (graphopt/app/options.py): optimize()'s keywords, `graphopt optimize`'s options
and graphopt.toml's keys are all derived from it, so they cannot drift apart."""

from __future__ import annotations

import inspect

import typer.main

import graphopt
from graphopt.app import cli, options
from graphopt.app.config import SETTINGS


def _cli_options() -> dict[str, object]:
    command = typer.main.get_command(cli.app).commands["optimize"]
    return {opt: p for p in command.params for opt in [*p.opts, *p.secondary_opts] if opt.startswith("--")}


def test_optimize_keywords_are_the_api_settings():
    params = inspect.signature(graphopt.optimize).parameters
    declared = {f.name: f for _, f, _ in options.fields("api")}
    assert [n for n in params if n not in ("model", "progress")] == list(declared)
    for name, f in declared.items():
        assert params[name].default == f.default and params[name].kind is inspect.Parameter.KEYWORD_ONLY


def test_every_cli_setting_is_an_option_and_nothing_else_is():
    flags = {opt for _, _, spec in options.fields("cli") for opt in spec.flag.split("/")}
    where_the_result_goes = {"--output", "--json", "--report"}
    assert set(_cli_options()) == flags | where_the_result_goes


def test_config_keys_are_the_config_settings():
    assert [s.key for s in SETTINGS] == [spec.key for _, _, spec in options.fields("config")]
    for setting, (_, f, spec) in zip(SETTINGS, options.fields("config")):
        assert setting.param == (f.name if "api" in spec.where else None)
        assert setting.kind == spec.kind and setting.help == spec.help


def test_each_setting_is_declared_once_with_a_flag_help_and_kind():
    all_fields = options.fields()
    assert len({f.name for _, f, _ in all_fields}) == len(all_fields)
    assert len({spec.key for _, _, spec in all_fields}) == len(all_fields)
    for _, f, spec in all_fields:
        assert spec.flag.startswith("--") and spec.help and spec.kind in options.KINDS, f.name


def test_drifted_options_exist_everywhere_now():
    """bench-runs and quantize-measure were config and API settings the command line lacked."""
    cli_flags = _cli_options()
    assert "--bench-runs" in cli_flags and "--no-quantize-measure" in cli_flags
    params = inspect.signature(graphopt.optimize).parameters
    assert params["bench_runs"].default == 30 and params["quantize_measure"].default is True


def test_a_misspelled_keyword_is_a_type_error():
    import pytest

    with pytest.raises(TypeError, match="unexpected keyword argument 'levle'"):
        graphopt.optimize("missing.onnx", levle=1)


def test_cli_reads_lists_and_shapes_as_optimize_takes_them():
    assert cli._cli_value("list", "a, b,", ()) == ["a", "b"]
    assert cli._cli_value("list", None, ()) == ()
    assert cli._cli_value("shapes", ["x=1x3x8x8"], None) == {"x": [1, 3, 8, 8]}
