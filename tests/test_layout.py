"""The layout's rules that import-linter does not check (it runs in .ci/lint): no private name is
imported across modules, and `graphopt` imports nothing until a name is used."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def _module_dir(module: str) -> pathlib.Path:
    parts = module.split(".")
    if parts[:2] == ["graphopt", "passes"]:
        return REPO.joinpath("passes", *parts[2:])
    return REPO.joinpath(*parts)


def test_no_private_name_is_imported_across_modules():
    found = []
    for path in sorted([*REPO.glob("graphopt/**/*.py"), *REPO.glob("passes/**/*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                    and node.module.split(".")[0] == "graphopt"):
                continue
            for alias in node.names:
                private = alias.name.startswith("_") and not alias.name.startswith("__")
                own_module = (_module_dir(node.module) / f"{alias.name}.py").is_file() \
                    and _module_dir(node.module) == path.parent  # a private module of the importer's package
                if private and not own_module:
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}: from {node.module} import {alias.name}")
    assert not found, "\n".join(found)


def test_import_graphopt_imports_no_submodule():
    code = "import sys, graphopt; print(sorted(m for m in sys.modules if m.startswith('graphopt.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
