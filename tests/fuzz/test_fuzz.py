"""The hardening fuzz suite (issue 15): every case exits 0 with a correct model or 1/2 with one line,
leaves its inputs, the output folder and everything outside the case alone (tests/fuzz/harness.py).

The fast cases (one or two per kind) run by default; `-m slow` runs the whole seeded corpus.
`python -m tests.fuzz` runs it all and prints the per-family table.
"""

from __future__ import annotations

import pytest

from tests.fuzz.corpus import all_cases, build_case
from tests.fuzz.harness import Paths, judge, prepare_root

CASES = all_cases()


def _param(case):
    marks = [] if case.fast else [pytest.mark.slow]
    if case.xfail:
        marks.append(pytest.mark.xfail(strict=False, reason=case.xfail))
    return pytest.param(case, id=case.id, marks=marks)


@pytest.fixture(scope="session")
def fuzz_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    prepare_root(root)
    return root


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_fuzz_case(case, fuzz_root):
    paths = Paths(fuzz_root, fuzz_root / case.id.replace("/", "__"))
    argv = build_case(case, paths)
    verdict = judge(case, paths, argv)
    assert verdict.ok, f"{case.id}: {verdict}"


def test_corpus_covers_every_family_and_issue_item():
    families = {c.family for c in CASES}
    assert families == {"corruption", "invalid_graph", "resource_bomb", "external_data", "output_path",
                        "kill_save", "options"}
    assert len(CASES) >= 300
    names = {c.name for c in CASES}
    for item in ("dotdot", "absolute-etc-passwd", "symlink-leaving-folder", "length-short",  # 1
                 "cycle", "self-loop", "undefined-input", "duplicate-node-names", "type-mismatch",  # 3
                 "unknown-default-op", "wrong-attribute-type", "node-without-outputs", "recursive-function",
                 "missing-opset-import", "fold-limit-nan", "rtol-nan", "atol-negative", "threads-0",  # 5
                 "threads-100000", "shape-20-digit-dim", "sparse-index-out-of-range",  # 7
                 "fifo", "char-device-null", "hardlink-of-input", "sigterm-while-working-0",  # 8, 9
                 "sparsity-collapse-warns", "json-with-error"):  # 10, 11
        assert item in names, item
