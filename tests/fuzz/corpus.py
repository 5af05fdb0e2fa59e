"""The fuzz corpus: seeded cases in the families of issue 15, each a recipe that builds its files.

Families: corruption (bytes), invalid_graph, resource_bomb, external_data, output_path,
kill_save, options. Every case is deterministic given its name (its own seeded RNG). `fast`
cases run in the default test run, the rest under `-m slow`. Cases whose fix belongs to the
input-model work (issue 14 / issue 15 items 4, 5 `--inputs`, 6) are marked `xfail`.
"""

from __future__ import annotations

from tests.fuzz.case import Case
from tests.fuzz.cases_files import _fix_report_flag, external_data_cases, output_path_cases
from tests.fuzz.cases_model import corruption_cases, invalid_graph_cases, resource_bomb_cases
from tests.fuzz.cases_run import kill_cases, option_cases
from tests.fuzz.harness import Paths

__all__ = ["Case", "FAMILIES", "all_cases", "build_case"]

FAMILIES = {
    "corruption": corruption_cases,
    "invalid_graph": invalid_graph_cases,
    "resource_bomb": resource_bomb_cases,
    "external_data": external_data_cases,
    "output_path": output_path_cases,
    "kill_save": kill_cases,
    "options": option_cases,
}


def all_cases(families=None) -> list[Case]:
    cases = []
    for family, make in FAMILIES.items():
        if families is None or family in families:
            cases += make()
    ids = [c.id for c in cases]
    assert len(ids) == len(set(ids)), "duplicate case names"
    return cases


def build_case(case: Case, paths: Paths) -> list[str]:
    for folder in (paths.inp, paths.out, paths.tmp):
        folder.mkdir(parents=True, exist_ok=True)
    argv = case.build(paths, case.rng())
    return _fix_report_flag(argv, paths)
