"""Build targets: one per source file of each [models.NAME], with its output and optimize() keywords.

1. A `source` that is a plain path must exist; a glob (`*`, `?`, `[`, `**`) must match at
   least one file. Matches come in sorted order, named `NAME/STEM`.
2. `output` is a path relative to the config file; `{name}` (the model), `{stem}` (the
   source file name without its suffix) and `{dir}` (the source's directory, relative to
   the config file) are filled in per source. Path settings (`inputs`) take them too.
3. A glob never picks up an output of this config: with `models/*.onnx` and outputs
   beside the sources, the next run does not optimize its own outputs.
4. Refused as a ConfigError: two targets writing one output, an output that would
   overwrite a source, an unknown level or pass name, a missing data file.

`Target.settings` holds every effective setting (optimize()'s defaults filled in, paths
relative to the config file) as JSON: it is the settings part of the cache key.
"""

from __future__ import annotations

__all__ = ["Target", "Config", "load_config"]

import copy
import dataclasses
import functools
import glob
import inspect
import os
import pathlib
import re
import string

from graphopt.app.config import (MODEL_KEYS, ConfigError, Doc, check_keys, convert, find_config, got, optimize_params,
                             parse_overrides, read_config, settings_table, suggest)


@dataclasses.dataclass
class Target:
    name: str  # the model's name, or NAME/STEM for each file a glob matched
    model: str  # the [models.NAME] it comes from
    source: pathlib.Path
    output: pathlib.Path
    kwargs: dict  # optimize() keyword arguments
    force: bool  # write the output even if verification fails
    settings: dict  # every effective setting, JSON-ready: the cache key's settings
    data_files: dict[str, pathlib.Path]  # files named by path settings, hashed into the cache key
    pass_names: list[str]  # the pipeline optimize() will run, for progress bars
    from_glob: bool = False
    verify_optional: bool = False  # verify = "optional": a model ORT cannot run is built, marked unverified


@dataclasses.dataclass
class Config:
    path: pathlib.Path | None  # None for a dict
    base: pathlib.Path  # relative paths resolve against this directory
    models: list[str]
    targets: list[Target]

    def select(self, only) -> list[Target]:
        """The targets `--only` names (model names or NAME/STEM, repeatable or comma-separated)."""
        wanted = [w.strip() for item in (only or ()) for w in item.split(",") if w.strip()]
        known = [*self.models, *(t.name for t in self.targets)]
        for w in wanted:
            if w not in known:
                raise ConfigError(f"--only {w}: no such model{suggest(w, known)}; models: {', '.join(self.models)}")
        return [t for t in self.targets if not wanted or t.model in wanted or t.name in wanted]


def load_config(config=None, *, overrides=None, base_dir=None) -> Config:
    """Read and check a config (a path, a dict, or None to search the working directory)."""
    if isinstance(config, dict):
        data, doc, path = copy.deepcopy(config), Doc("<config>"), None
        base = pathlib.Path(base_dir or os.getcwd()).resolve()
    else:
        path = pathlib.Path(config) if config is not None else find_config()
        data, doc = read_config(path)
        base = pathlib.Path(base_dir).resolve() if base_dir else path.resolve().parent
    table = settings_table()
    check_keys(doc, (), data, ["defaults", "models"])
    defaults = _table(doc, ("defaults",), data.get("defaults", {}))
    if "source" in defaults:
        raise doc.error(("defaults",), "source", "belongs in each models.NAME table, not in defaults")
    check_keys(doc, ("defaults",), defaults, [*table, "output"])
    models = _table(doc, ("models",), data.get("models", {}))
    if not models:
        raise doc.error(None, "models", 'no models: add a table per model, models.NAME, with source = "..." '
                        'and output = "..."')
    overrides = parse_overrides(overrides)
    set_doc = Doc("--set", sep=" ")
    check_keys(set_doc, (), overrides, list(table), "setting")
    targets = []
    for name, entry in models.items():
        where = ("models", name)
        if not name or re.search(r"[/,\s]", name):
            raise doc.error(("models",), name, "bad model name: use letters, digits, '-', '_' or '.' (no '/', ',' "
                            "or spaces; --only NAME selects it)")
        entry = _table(doc, where, entry)
        check_keys(doc, where, entry, [*MODEL_KEYS, *table])
        values = {}
        for layer_doc, layer_where, layer in ((doc, ("defaults",), defaults), (doc, where, entry),
                                              (set_doc, None, overrides)):
            for key, raw in layer.items():
                if key not in MODEL_KEYS:
                    fail = functools.partial(layer_doc.error, layer_where, key)
                    values[key] = (convert(table[key], raw, fail), fail)
        pass_names = _check_passes(values)
        out_where = where if "output" in entry else ("defaults",)
        out_spec = entry.get("output", defaults.get("output"))
        if out_spec is None:
            raise doc.error(where, "output", 'missing: give an output path, e.g. output = "build/{stem}.opt.onnx"')
        out_fail = functools.partial(doc.error, out_where, "output")
        if isinstance(out_spec, list):
            raise out_fail("expected the output file path (a string); graph outputs to keep are `outputs`")
        out_spec = _path_string(out_spec, out_fail)
        for source, from_glob in _sources(doc, where, entry, base):
            fields = {"name": name, "stem": source.stem, "dir": _rel(source.parent, base)}
            output = (base / _expand(out_spec, fields, out_fail)).resolve()
            kwargs, settings, data_files = {}, {}, {}
            for setting in table.values():
                if setting.key in values:
                    value, fail = values[setting.key]
                    if setting.kind == "data" and re.fullmatch(r"random(:\d+)?", value):
                        settings[setting.key] = value  # generated data: nothing to hash
                    elif setting.kind in ("path", "data"):
                        file = (base / _expand(value, fields, fail)).resolve()
                        if not file.exists():
                            raise fail(f"no such file {_rel(file, base)!r} (relative to {base})")
                        value, data_files[setting.key] = str(file), file
                        settings[setting.key] = _rel(file, base)
                    else:
                        settings[setting.key] = _jsonable(value)
                    if setting.param:
                        kwargs[setting.param] = value
                else:
                    default = optimize_params()[setting.param].default if setting.param else setting.default
                    settings[setting.key] = _jsonable(default)
            force = bool(values["force"][0]) if "force" in values else False
            verify_optional = kwargs.get("verify") == "optional"
            if verify_optional:
                kwargs["verify"] = True
            target_name = f"{name}/{source.stem}" if from_glob else name
            targets.append(Target(target_name, name, source, output, kwargs, force, settings, data_files,
                                  pass_names, from_glob, verify_optional))
    return Config(path, base, list(models), _check_outputs(doc, targets, base))


def _table(doc: Doc, where: tuple[str, ...], value) -> dict:
    if not isinstance(value, dict):
        raise doc.error(where[:-1], where[-1], f"expected a table, {got(value)}")
    return value


def _path_string(value, fail) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip():
        raise fail(f"expected a path (a string), got {value!r}")
    return value


def _sources(doc: Doc, where, entry: dict, base: pathlib.Path):
    fail = functools.partial(doc.error, where, "source")
    spec = entry.get("source")
    if spec is None:
        raise doc.error(where, "source", 'missing: give the model file or a glob, e.g. source = "models/net.onnx"')
    specs = spec if isinstance(spec, list) else [spec]
    if not specs:
        raise fail("expected a path, a glob or an array of them, got an empty array")
    seen = set()
    for item in specs:
        item = _path_string(item, fail)
        if re.search(r"[*?\[]", item):
            matches = sorted(pathlib.Path(p).resolve() for p in glob.glob(str(base / item), recursive=True)
                             if os.path.isfile(p))
            if not matches:
                raise fail(f"{item!r} matched no files (relative to {base})")
            found = [(m, True) for m in matches]
        else:
            path = (base / item).resolve()
            if not path.exists():
                raise fail(f"no such file {item!r} (relative to {base})")
            if path.is_dir():
                raise fail(f"{item!r} is a directory; name the .onnx file or use a glob such as {item}/*.onnx")
            found = [(path, False)]
        for path, from_glob in found:
            if path not in seen:
                seen.add(path)
                yield path, from_glob


def _expand(pattern: str, fields: dict[str, str], fail) -> str:
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None]
    except ValueError as e:
        raise fail(f"bad placeholder in {pattern!r} ({e}); write {{{{ and }}}} for literal braces") from None
    for n in names:
        if n not in fields:
            raise fail(f"unknown placeholder {{{n}}} in {pattern!r}; use {{name}}, {{stem}} or {{dir}}")
    return pattern.format(**fields)


def _rel(path: pathlib.Path, base: pathlib.Path) -> str:
    return pathlib.Path(os.path.relpath(path, base)).as_posix()


def _jsonable(value):
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is inspect.Parameter.empty or not isinstance(value, (str, int, float, bool, type(None))):
        return repr(value)
    return value


def _check_passes(values: dict) -> list[str]:
    """Level and pass names, checked now rather than when the model's turn comes; the pipeline
    optimize() will run (`graphopt.stages.lossless.pipeline_names`, as optimize() picks it)."""
    from graphopt.core.errors import UsageError
    from graphopt.core.pipeline import PassOptions
    from graphopt.passes import ALIASES, LEVELS, REGISTRY
    from graphopt.stages.lossless import pipeline_names

    level = values["level"][0] if "level" in values else None
    if level is not None and level not in LEVELS:
        raise values["level"][1](f"expected one of {', '.join(map(str, sorted(LEVELS)))}, got {level}")
    for key in ("passes", "skip"):
        for name in values.get(key, ([], None))[0]:
            if name not in REGISTRY and name not in ALIASES:
                raise values[key][1](f"unknown pass {name!r}{suggest(name, REGISTRY)}; `graphopt passes` lists them")
    passes = values["passes"][0] if "passes" in values else None
    skip = values["skip"][0] if "skip" in values else ()
    options = PassOptions(target_opset=values["target-opset"][0] if "target-opset" in values else None,
                          shapes=values["shape"][0] if "shape" in values else {})
    try:
        return pipeline_names(level, passes, skip, options)
    except UsageError as e:  # a lossy pass named in `passes`
        raise values["passes"][1](str(e)) from None


def _check_outputs(doc: Doc, targets: list[Target], base: pathlib.Path) -> list[Target]:
    outputs = {t.output for t in targets}
    targets = [t for t in targets if not (t.from_glob and t.source in outputs)]  # case 3
    by_output: dict[pathlib.Path, Target] = {}
    sources = {t.source: t for t in targets}
    for t in targets:
        where = ("models", t.model)
        if t.output in sources:
            whose = "its own source" if sources[t.output] is t else f"the source of {sources[t.output].name!r}"
            raise doc.error(where, "output", f"{_rel(t.output, base)!r} would overwrite {whose}")
        if t.output in by_output:
            other = by_output[t.output]
            hint = "; put {stem} in the output of a glob" if t.from_glob or other.from_glob else ""
            raise doc.error(where, "output", f"{_rel(t.output, base)!r} is also the output of {other.name!r}{hint}")
        by_output[t.output] = t
    return targets
