"""Differential test (issue 15): random valid graphs, optimized at levels 1-3, equal in ORT.

Each seed of `tests.graphgen` is one graph; `tests.differential.check` optimizes it at every
level and compares the result with the original in ORT with optimizations off and at ORT's
default level. The default run checks a fast seeded subset; thousands run only when slow
tests are asked for by name (`python -m pytest tests/test_differential.py -m slow -n 2`): they
take minutes, not the seconds the other slow tests take.
A failure names the seed: `python -m tests.differential --seed N --minimize` prints the
smallest graph that still fails, to turn into a regression test beside the pass's tests.
"""

from __future__ import annotations

import logging

import pytest

from tests.differential import check_seed

FAST_SEEDS = range(0, 120)
SLOW_START, SLOW_GRAPHS, SLOW_CHUNK = 100_000, 4000, 100


@pytest.fixture(autouse=True)
def _quiet():
    logging.disable(logging.WARNING)  # passes warn about the odd graphs we make on purpose
    yield
    logging.disable(logging.NOTSET)


def _assert_clean(seeds) -> None:
    failures, out_of_scope = [], []
    for seed in seeds:
        outcome = check_seed(seed)
        failures += [f"seed {seed}: {p}" for p in outcome.problems]
        if outcome.status != "ran":  # the generator's own mistakes, or graphs ORT cannot run
            out_of_scope.append(f"seed {seed}: {outcome.status}")
    assert not failures, "\n".join(failures) + "\n(minimize with: python -m tests.differential --seed N --minimize)"
    assert len(out_of_scope) <= len(seeds) // 20, "\n".join(out_of_scope)  # 1 in 5000 today


@pytest.mark.parametrize("first", range(FAST_SEEDS.start, FAST_SEEDS.stop, 8))
def test_random_graphs_survive_every_level(first):
    _assert_clean(range(first, first + 8))


@pytest.mark.slow
@pytest.mark.parametrize("first", range(SLOW_START, SLOW_START + SLOW_GRAPHS, SLOW_CHUNK))
def test_random_graphs_survive_every_level_slow(first, request):
    markexpr = request.config.getoption("markexpr") or ""
    if "slow" not in markexpr or "not slow" in markexpr:
        pytest.skip("thousands of graphs: run with -m slow")
    _assert_clean(range(first, first + SLOW_CHUNK))
