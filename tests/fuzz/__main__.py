"""`python -m tests.fuzz [--fast] [--family NAME ...] [--keep DIR]`: run the fuzz corpus, print the table.

Each family runs in a forked child, so its memory peak (the child's maximum resident set,
Python and the libraries included) is its own.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import shutil
import sys
import tempfile
import time

from tests.fuzz.corpus import FAMILIES, all_cases, build_case
from tests.fuzz.harness import Paths, judge, prepare_root


def _run_family(cases, root: pathlib.Path, verbose: bool) -> list[dict]:
    rows = []
    for case in cases:
        paths = Paths(root, root / case.id.replace("/", "__"))
        start = time.perf_counter()
        try:
            argv = build_case(case, paths)
            verdict = judge(case, paths, argv)
            row = {"id": case.id, "code": verdict.code, "outcome": verdict.outcome, "ok": verdict.ok,
                   "problems": verdict.problems, "xfail": case.xfail, "seconds": time.perf_counter() - start,
                   "first_line": next((ln for ln in verdict.stderr.splitlines() if ln.strip()), "")[:200]}
        except Exception as e:  # noqa: BLE001 - a broken recipe is reported, not fatal to the run
            row = {"id": case.id, "code": None, "outcome": "harness", "ok": False, "problems": [repr(e)],
                   "xfail": case.xfail, "seconds": time.perf_counter() - start, "first_line": ""}
        rows.append(row)
        if verbose or (not row["ok"] and not case.xfail):
            print(f"{'ok  ' if row['ok'] else 'FAIL'} {case.id}: exit {row['code']} {row['outcome']} "
                  f"{'; '.join(row['problems'])} {row['first_line']}", file=sys.stderr, flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz")
    parser.add_argument("--fast", action="store_true", help="only the cases of the default test run")
    parser.add_argument("--family", action="append", choices=sorted(FAMILIES))
    parser.add_argument("--keep", type=pathlib.Path, help="build the cases here and keep them")
    parser.add_argument("--json", type=pathlib.Path, help="also write every case's verdict here")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    root = args.keep or pathlib.Path(tempfile.mkdtemp(prefix="fuzz-corpus-"))
    prepare_root(root)
    cases = [c for c in all_cases(args.family) if c.fast or not args.fast]
    by_family = collections.defaultdict(list)
    for c in cases:
        by_family[c.family].append(c)
    table, everything = [], []
    for family, members in by_family.items():
        read_end, write_end = os.pipe()
        start = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            rows = _run_family(members, root, args.verbose)
            with os.fdopen(write_end, "w") as f:
                json.dump(rows, f)
            os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end) as f:
            text = f.read()
        _, status, usage = os.wait4(pid, 0)
        rows = json.loads(text) if text else []
        everything += rows
        known = [r for r in rows if r["xfail"]]
        rest = [r for r in rows if not r["xfail"]]
        table.append({
            "family": family, "cases": len(rows),
            "clean errors": sum(r["outcome"] == "error" and r["ok"] for r in rest),
            "correct outputs": sum(r["outcome"] == "correct" and r["ok"] for r in rest),
            "wrong": sum(not r["ok"] and r["outcome"] not in ("traceback", "hang") for r in rest),
            "tracebacks": sum(r["outcome"] == "traceback" for r in rest),
            "hangs": sum(r["outcome"] == "hang" for r in rest),
            "xfail (issue 14)": f"{sum(not r['ok'] for r in known)}/{len(known)}" if known else "-",
            "memory peak": f"{usage.ru_maxrss / 1024:.0f} MB",
            "time": f"{time.perf_counter() - start:.0f} s",
        })
    columns = list(table[0]) if table else []
    widths = {c: max(len(c), *(len(str(r[c])) for r in table)) for c in columns}
    print("| " + " | ".join(c.ljust(widths[c]) for c in columns) + " |")
    print("|" + "|".join("-" * (widths[c] + 2) for c in columns) + "|")
    for r in table:
        print("| " + " | ".join(str(r[c]).ljust(widths[c]) for c in columns) + " |")
    total = {c: sum(r[c] for r in table) for c in ("cases", "clean errors", "correct outputs", "wrong", "tracebacks",
                                                   "hangs")}
    print(f"total: {total}")
    if args.json:
        args.json.write_text(json.dumps(everything, indent=1))
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if total["wrong"] or total["tracebacks"] or total["hangs"] else 0


if __name__ == "__main__":
    sys.exit(main())
