"""The build config: `graphopt.toml`, or `[tool.graphopt]` in pyproject.toml, checked before anything runs.

    [defaults]                          # optional: settings for every model
    level = 2
    output = "build/{stem}.opt.onnx"

    [models.digits]                     # one table per model; NAME is what --only selects
    source = "models/digits_cnn.onnx"   # a path or glob (or a list of them), relative to this file
    output = "build/digits.opt.onnx"    # placeholders: {name} {stem} {dir}
    skip = ["cse"]

A setting is a keyword argument of `graphopt.optimize`, spelled like the long option of
`graphopt optimize`: `SETTINGS` is derived from the one options schema, `graphopt.app.options`. Precedence: optimize()'s defaults < [defaults] <
[models.NAME] < `graphopt build --set KEY=VALUE`. Every mistake is a `ConfigError`: one
line with the file, the line number where it can be found, the table, the key and what
was expected. Turning the checked tables into build targets is `graphopt.app.targets`.
"""

from __future__ import annotations

__all__ = ["ConfigError", "Setting", "SETTINGS", "MODEL_KEYS", "settings_table", "optimize_params", "Doc",
           "read_config", "find_config", "parse_overrides", "convert", "check_keys", "suggest", "got"]

import dataclasses
import datetime
import difflib
import functools
import inspect
import json
import os
import pathlib
import re

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from graphopt.core.errors import UsageError


class ConfigError(UsageError):
    """The build config is wrong: TOML syntax, unknown key, wrong type, missing file (exit 2)."""


@dataclasses.dataclass(frozen=True)
class Setting:
    key: str  # as written in graphopt.toml and as `graphopt optimize --KEY` spells it
    param: str | None  # the optimize() keyword; None for a setting `build` applies itself
    kind: str  # bool | int | float | str | list | path | data (a path, or random[:N]) | shapes
    help: str
    default: object = None  # for param=None settings; optimize()'s own default otherwise


def _settings() -> tuple[Setting, ...]:
    """The config keys, derived from the options schema (graphopt.app.options): every setting that
    says `config`, keyed by its long flag, with its optimize() keyword (None: `build` applies it)."""
    from graphopt.app.options import fields

    return tuple(Setting(spec.key, f.name if "api" in spec.where else None, spec.kind, spec.help,
                         None if "api" in spec.where else f.default)
                 for _, f, spec in fields("config"))


SETTINGS: tuple[Setting, ...] = _settings()
MODEL_KEYS = ("source", "output")  # besides the settings; `output` may also be a [defaults] pattern
_KIND_NAMES = {"bool": "true or false", "verify": 'true, false or "optional"', "int": "an integer", "float": "a number", "str": "a string", "number-or-str": "a number or a string",
               "list": 'an array of strings such as ["a", "b"] (or "a,b")', "path": "a path (a string)",
               "data": 'a path (a string) or "random[:N]"',
               "shapes": 'a table such as {input = [1, 3, 224, 224]} or an array such as ["input=1x3x224x224"]'}


@functools.cache
def optimize_params() -> dict[str, inspect.Parameter]:
    """optimize()'s keyword parameters (not the model, not the progress callback)."""
    from graphopt.app.api import optimize

    return {n: p for n, p in inspect.signature(optimize).parameters.items() if n not in ("model", "progress")}


def settings_table() -> dict[str, Setting]:
    """The settings this graphopt accepts: SETTINGS entries whose optimize() parameter exists.

    An entry for a parameter optimize() lacks is inactive (its key is unknown), so the table may
    name an option a moment before optimize() grows it, never the other way round (tests).
    """
    params = optimize_params()
    return {s.key: s for s in SETTINGS if s.param is None or s.param in params}


def suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Doc:
    """Where config data came from, to point errors at `file:line: dotted.key: message`."""

    def __init__(self, label: str, text: str | None = None, prefix: tuple[str, ...] = (), sep: str = ": "):
        self.label, self.text, self.prefix, self.sep = label, text, prefix, sep

    def error(self, table: tuple[str, ...] | None, key: str | None, message: str) -> ConfigError:
        table = table or ()
        line = self._line(table, key)
        where = self.label + (f":{line}" if line else "")
        path = ".".join(self.prefix + table + ((key,) if key else ()))
        return ConfigError(f"{where}{self.sep}{path + ': ' if path else ''}{message}")

    def _line(self, table: tuple[str, ...], key: str | None) -> int | None:
        """Best effort: the line of `key =` under [table], else of a [table.key] header, else [table]'s."""
        if self.text is None:
            return None
        want = ".".join(self.prefix + table)
        sub = ".".join(self.prefix + table + ((key,) if key else ()))
        current, header, sub_header = "", None, None
        key_re = re.compile(rf"""^\s*(["']?){re.escape(key)}\1\s*=""") if key else None
        for number, raw in enumerate(self.text.splitlines(), 1):
            m = re.match(r"^\s*\[\[?([^\[\]]+)\]\]?\s*(#.*)?$", raw)
            if m:
                current = ".".join(p.strip().strip("\"'") for p in m.group(1).split("."))
                header = number if current == want and header is None else header
                nested = key and (current == sub or current.startswith(sub + "."))
                sub_header = number if nested and sub_header is None else sub_header
            elif current == want and key_re and key_re.match(raw):
                return number
        return sub_header or header


def find_config(cwd: pathlib.Path | None = None) -> pathlib.Path:
    """./graphopt.toml, else ./pyproject.toml if it has a [tool.graphopt] table."""
    cwd = cwd or pathlib.Path.cwd()
    if (cwd / "graphopt.toml").is_file():
        return cwd / "graphopt.toml"
    pyproject = cwd / "pyproject.toml"
    if pyproject.is_file() and "graphopt" in _parse(pyproject, _label(pyproject))[0].get("tool", {}):
        return pyproject
    raise ConfigError(f"no graphopt.toml, and no tool.graphopt table in a pyproject.toml, in {cwd}; "
                      "write one (README, 'Build step') or pass --config FILE")


def _label(path: pathlib.Path) -> str:
    try:
        return str(path.resolve().relative_to(pathlib.Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _parse(path: pathlib.Path, label: str) -> tuple[dict, str]:
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{label}: no such config file") from None
    except IsADirectoryError:
        raise ConfigError(f"{label}: is a directory, expected a .toml file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{label}: not UTF-8 text ({e.reason} at byte {e.start}); TOML files are UTF-8") from None
    except OSError as e:
        raise ConfigError(f"{label}: cannot read the config ({e.strerror or e})") from None
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column \d+\)", str(e))
        line = f":{m.group(1)}" if m else ""
        raise ConfigError(f"{label}{line}: TOML syntax error: {e}") from None


def read_config(path: pathlib.Path) -> tuple[dict, Doc]:
    """The graphopt tables of a config file, and a Doc pointing errors into it."""
    label = _label(path)
    data, text = _parse(path, label)
    if path.name == "pyproject.toml":
        section = data.get("tool", {}).get("graphopt")
        if section is None:
            raise ConfigError(f"{label}: no tool.graphopt table (add a tool.graphopt.models.NAME table per model)")
        if not isinstance(section, dict):
            raise ConfigError(f"{label}: tool.graphopt must be a table")
        return section, Doc(label, text, ("tool", "graphopt"))
    return data, Doc(label, text)


def check_keys(doc: Doc, table: tuple[str, ...], data: dict, allowed, what: str = "key") -> None:
    for key in data:
        if key not in allowed:
            hint = suggest(key, allowed) or f"; valid {what}s: {', '.join(allowed)}"
            raise doc.error(table, key, f"unknown {what}{hint}")


def parse_overrides(items) -> dict:
    """`--set KEY=VALUE` strings (VALUE is a TOML value, or else a bare string) or a dict, as a dict."""
    if isinstance(items, dict):
        return dict(items)
    out = {}
    for item in items or ():
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE such as level=1 or 'skip=[\"cse\"]'")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()  # a bare word: --set quantize=int8
        out[key.strip()] = value
    return out


def _kind(value) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (datetime.date, datetime.time)):
        return "a date/time"
    names = {int: "an integer", float: "a float", str: "a string", list: "an array", dict: "a table"}
    return next((n for t, n in names.items() if isinstance(value, t)), type(value).__name__)


def got(value) -> str:
    shown = json.dumps(value, default=str)
    return f"got {_kind(value)} ({shown if len(shown) <= 40 else shown[:37] + '...'})"


def convert(setting: Setting, value, fail) -> object:
    """Check one value against its setting's kind; `fail(message)` builds the ConfigError."""
    kind = setting.kind
    if isinstance(value, os.PathLike) and kind in ("str", "path", "data"):
        value = os.fspath(value)
    ok = {"bool": lambda v: isinstance(v, bool),
          "verify": lambda v: isinstance(v, bool) or v == "optional",
          "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
          "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          "str": lambda v: isinstance(v, str),
          "number-or-str": lambda v: isinstance(v, (int, float, str)) and not isinstance(v, bool),
          "path": lambda v: isinstance(v, str) and bool(v.strip()),
          "data": lambda v: isinstance(v, str) and bool(v.strip())}
    if kind in ok:
        if not ok[kind](value):
            raise fail(f"expected {_KIND_NAMES[kind]}, {got(value)}")
        return float(value) if kind == "float" else value
    if kind == "list":
        if isinstance(value, str):
            return [t.strip() for t in value.split(",") if t.strip()]
        if isinstance(value, (list, tuple)) and all(isinstance(t, str) for t in value):
            return list(value)
        raise fail(f"expected {_KIND_NAMES[kind]}, {got(value)}")
    if kind == "shapes":
        return _shapes(value, fail)
    raise AssertionError(f"setting {setting.key!r} has unknown kind {kind!r}")


def _shapes(value, fail) -> dict[str, list[int]]:
    if isinstance(value, dict):
        out = {}
        for name, dims in value.items():
            if not (isinstance(dims, list) and dims and all(isinstance(d, int) and not isinstance(d, bool)
                                                           and d > 0 for d in dims)):
                raise fail(f"input {name!r}: expected an array of positive integers such as [1, 3, 224, 224], "
                           f"{got(dims)}")
            out[name] = list(dims)
        return out
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(t, str) for t in items):
        raise fail(f"expected {_KIND_NAMES['shapes']}, {got(value)}")
    out = {}
    for text in items:
        name, sep, dims = text.rpartition("=")
        try:
            parsed = [int(d) for d in dims.lower().split("x")] if sep and name else None
        except ValueError:
            parsed = None
        if not parsed or min(parsed) <= 0:
            raise fail(f"{text!r}: expected NAME=D1xD2x... such as input=1x3x224x224")
        out[name] = parsed
    return out
