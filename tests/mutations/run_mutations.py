"""Mutation check for the safety properties: break each property on purpose, prove a test notices.

Each mutation names a property, a source file, an exact snippet and its broken replacement, and the
tests that must turn red. The script copies the working tree to a temp dir, applies one mutation
there (the real tree is never touched), runs those tests, and reports the mutant "killed" (a test
failed) or "SURVIVED" (the tests cannot see the property break). A snippet that no longer matches
exactly once is reported "stale", which also fails the run: a refactor must carry its mutation along.

    python tests/mutations/run_mutations.py            # all; exit 1 unless every mutant is killed
    python tests/mutations/run_mutations.py -k policy  # only mutations whose id contains "policy"
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Mutation:
    id: str
    prop: str  #: the safety property the mutation breaks
    path: str
    old: str
    new: str
    tests: tuple[str, ...]  #: pytest node ids / files that must fail


MUTATIONS: list[Mutation] = []


def mutation(**kw: object) -> None:
    kw["tests"] = tuple(kw["tests"])  # type: ignore[arg-type]
    MUTATIONS.append(Mutation(**kw))  # type: ignore[arg-type]


# ---- the catalogue lives in catalogue.py so this runner stays generic --------------------------
sys.path.insert(0, str(Path(__file__).parent))
import catalogue  # noqa: E402

catalogue.register(mutation)


def copy_tree(dst: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.split("\n")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            out = dst / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, out)
    shared = ROOT.parent / "shared"
    if shared.exists() and not (dst.parent / "shared").exists():
        (dst.parent / "shared").symlink_to(shared)


def run_one(m: Mutation, python: str, timeout: float) -> tuple[str, str]:
    with tempfile.TemporaryDirectory(prefix="mut-") as tmp:
        work = Path(tmp) / "main"
        copy_tree(work)
        target = work / m.path
        if not target.exists():
            return "stale", f"{m.path} does not exist"
        # a moved test file would otherwise read as a pytest usage error, not as the catalogue's fault
        missing = [t for t in m.tests if t.split("::")[0].endswith(".py") and not (work / t.split("::")[0]).exists()]
        if missing:
            return "stale", f"test file {missing[0]} does not exist"
        src = target.read_text()
        if src.count(m.old) != 1:
            return "stale", f"snippet found {src.count(m.old)} times in {m.path}"
        target.write_text(src.replace(m.old, m.new))
        env = dict(os.environ, PYTHONPATH=str(work), PYTHONDONTWRITEBYTECODE="1")
        cmd = [python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--timeout", "300", *m.tests]
        try:
            r = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return "killed", "tests timed out under the mutant"
        tail = (r.stdout.strip().splitlines() or [""])[-1]
        if r.returncode == 1:
            return "killed", tail
        if r.returncode == 0:
            return "SURVIVED", tail
        return "error", f"pytest exit {r.returncode}: {tail or r.stderr.strip()[-300:]}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-k", default="", help="only mutations whose id contains this")
    ap.add_argument("--timeout", type=float, default=900.0)
    args = ap.parse_args()
    python = sys.executable
    chosen = [m for m in MUTATIONS if args.k in m.id]
    print(f"{'mutation':34} {'property':28} {'result':9} detail")
    bad = 0
    for m in chosen:
        t0 = time.perf_counter()
        status, detail = run_one(m, python, args.timeout)
        bad += status != "killed"
        print(f"{m.id:34} {m.prop:28} {status:9} {detail} ({time.perf_counter() - t0:.0f}s)", flush=True)
    print(f"{len(chosen) - bad} of {len(chosen)} mutants killed")
    return 1 if bad or not chosen else 0


if __name__ == "__main__":
    raise SystemExit(main())
