"""Command line shared by the export scripts."""

from __future__ import annotations

import argparse
from pathlib import Path

from zoo.nets import NETS

__all__ = ["parse_args", "DEFAULT_OUT"]

DEFAULT_OUT = Path(__file__).resolve().parents[2] / "build" / "zoo"


def parse_args(description: str, argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--nets", default=",".join(NETS),
                    help=f"comma-separated subset of {','.join(NETS)} (default: all)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output root (default: build/zoo)")
    ap.add_argument("--seed", type=int, default=0, help="weight seed (same weights in every framework)")
    args = ap.parse_args(argv)
    args.nets = [n for n in args.nets.split(",") if n]
    unknown = [n for n in args.nets if n not in NETS]
    if unknown:
        ap.error(f"unknown nets {unknown}; choose from {list(NETS)}")
    return args
