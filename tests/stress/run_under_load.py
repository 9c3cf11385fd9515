"""Run the test suite repeatedly while every core is kept busy, to flush out timing flakiness.

    python tests/stress/run_under_load.py --runs 5 [-- pytest args ...]

Starts one busy-loop process per core (``--burners``), runs ``pytest -q`` ``--runs`` times, prints
one line per run (exit code, passed / failed counts, wall time) and exits 1 if any run failed.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _burn() -> None:  # pragma: no cover - runs in a child
    while True:
        pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--burners", type=int, default=os.cpu_count() or 2)
    ap.add_argument("pytest_args", nargs="*")
    args = ap.parse_args()
    burners = [mp.Process(target=_burn, daemon=True) for _ in range(args.burners)]
    for p in burners:
        p.start()
    failed = 0
    try:
        for i in range(1, args.runs + 1):
            t0 = time.perf_counter()
            r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args.pytest_args],
                               cwd=ROOT, capture_output=True, text=True)
            tail = [ln for ln in r.stdout.strip().splitlines() if re.search(r"\d+ (passed|failed)", ln)]
            bad = [ln for ln in r.stdout.splitlines() if ln.startswith(("FAILED", "ERROR"))]
            failed += r.returncode != 0
            print(f"run {i}: exit {r.returncode}  {tail[-1] if tail else '?'}  ({time.perf_counter() - t0:.0f}s)",
                  flush=True)
            for ln in bad:
                print("   ", ln, flush=True)
    finally:
        for p in burners:
            p.terminate()
    print(f"{args.runs - failed} of {args.runs} runs green with {args.burners} busy cores")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
