"""Run a benchmark's measurement in fresh subprocesses, for this checkout and optionally another
(``--baseline-path``: e.g. the code before a change), so that one run gives before and after."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--baseline-path`` and ``--rounds``."""
    parser.add_argument("--baseline-path",
                        help="also measure the checkout at this path (its PYTHONPATH)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="rounds; each measures the baseline, then this checkout")


def checkouts(args) -> list[tuple[str, str]]:
    """[(label, PYTHONPATH)]: "before" (``--baseline-path``, when given), then "this" (the
    caller's PYTHONPATH, else the repository root above ``benchmarks/``)."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return ([("before", args.baseline_path)] if args.baseline_path else []) + [
        ("this", os.environ.get("PYTHONPATH", here))]


def run_json(script: str, extra: list[str], pythonpath: str):
    """Run ``script`` with this process's arguments plus ``extra`` under ``pythonpath`` and
    return the JSON its last output line holds."""
    out = subprocess.run([sys.executable, script, *sys.argv[1:], *extra], check=True,
                         capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": pythonpath}).stdout
    return json.loads(out.strip().splitlines()[-1])
