"""Audit write throughput: records per second into SQLite and PostgreSQL, strict and background.

    python benchmarks/audit_bench.py [--pg-url postgresql://user@host:5432/db] [--records 4000]

Every record goes through the real decision hook (``Auditor.__call__``: record built from a
Decision, then committed), so the figures are what a Guard pays. Strict runs with 1 and with 8
concurrent callers (concurrent strict writers share commits); background runs one caller that
enqueues as fast as it can and stops the clock when everything is committed. Without ``--pg-url``
a throw-away PostgreSQL server is started on 127.0.0.1 (tests/pg_support.py; needs the server
binaries, and root runs it as the ``postgres`` user). Prints a table and writes
benchmarks/results/audit_bench.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from guardrails_plugin.audit import Auditor, open_store  # noqa: E402
from guardrails_plugin.types import Action, Decision, GuardRequest, Stage, Verdict  # noqa: E402


def pairs(n: int, tag: str) -> list[tuple[GuardRequest, Decision]]:
    """Realistic decisions: one guard verdict each, every tenth an escalation."""
    out = []
    for i in range(n):
        req = GuardRequest(stage=Stage.PROMPT, prompt=f"{tag} user message {i} " + "lorem ipsum " * 20,
                           metadata={"user": f"u{i % 50}", "model": "gpt-x", "route": "/v1/chat"})
        action = Action.ESCALATE if i % 10 == 0 else Action.ALLOW
        v = Verdict(guard="GuardReasoner-1B", stage=Stage.PROMPT, risk=0.5 if action is Action.ESCALATE else 0.0,
                    harmful=False, label="unharmful", raw_output="Answers: Request: unharmful", latency_ms=12.0)
        out.append((req, Decision(action=action, stage=Stage.PROMPT, text=req.prompt, reason="risk 0.00",
                                  verdicts=[v], risk=v.risk, request_id=req.request_id, latency_ms=14.0)))
    return out


def run_strict(target: str, n: int, threads: int) -> dict[str, float]:
    store = open_store(target)
    auditor = Auditor(store, durability="strict")
    work = pairs(n, "strict")
    chunks = [work[i::threads] for i in range(threads)]
    lat: list[float] = []
    lock = threading.Lock()

    def go(chunk: list[tuple[GuardRequest, Decision]]) -> None:
        mine = []
        for req, dec in chunk:
            t = time.perf_counter()
            auditor(req, dec)
            mine.append(time.perf_counter() - t)
        with lock:
            lat.extend(mine)

    ts = [threading.Thread(target=go, args=(c,)) for c in chunks]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    dt = time.perf_counter() - t0
    assert auditor.written == n, auditor.stats()
    auditor.close()
    lat.sort()
    return {"records": n, "seconds": dt, "per_s": n / dt, "p50_ms": 1e3 * statistics.median(lat),
            "p99_ms": 1e3 * lat[int(0.99 * (len(lat) - 1))]}


def run_background(target: str, n: int) -> dict[str, float]:
    store = open_store(target)
    auditor = Auditor(store, durability="background", queue_size=n + 1)
    work = pairs(n, "bg")
    lat = []
    t0 = time.perf_counter()
    for req, dec in work:
        t = time.perf_counter()
        auditor(req, dec)
        lat.append(time.perf_counter() - t)
    assert auditor.flush(600)
    dt = time.perf_counter() - t0
    assert auditor.written == n and auditor.dropped == 0, auditor.stats()
    auditor.close()
    lat.sort()
    return {"records": n, "seconds": dt, "per_s": n / dt, "p50_ms": 1e3 * statistics.median(lat),
            "p99_ms": 1e3 * lat[int(0.99 * (len(lat) - 1))]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pg-url", help="an existing PostgreSQL database (default: start a temporary server)")
    ap.add_argument("--records", type=int, default=4000, help="records per background run")
    ap.add_argument("--strict-records", type=int, default=800, help="records per strict run")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "audit_bench.json"))
    args = ap.parse_args(argv)

    server = None
    pg_url = args.pg_url
    if pg_url is None:
        import pg_support

        bindir = pg_support.find_bindir()
        if bindir is None:
            print("no PostgreSQL binaries: PostgreSQL rows skipped (give --pg-url)", file=sys.stderr)
        else:
            server = pg_support.PgServer(bindir)
    tmp = Path(tempfile.mkdtemp(prefix="audit-bench-"))
    rows = []
    try:
        targets = [("sqlite", lambda i: str(tmp / f"bench{i}.db"))]
        if server is not None or pg_url:
            targets.append(("postgresql", lambda i: pg_url or server.create_db()))  # type: ignore[union-attr]
        runs = 0
        for backend, make in targets:
            for mode, threads in (("strict", 1), ("strict", 8), ("background", 1)):
                runs += 1
                target = make(runs)
                res = (run_strict(target, args.strict_records, threads) if mode == "strict"
                       else run_background(target, args.records))
                rows.append({"backend": backend, "mode": mode, "callers": threads, **res})
                print(f"{backend:<11} {mode:<10} callers={threads:<2} {res['records']:>6} records "
                      f"{res['seconds']:7.2f} s  {res['per_s']:9.0f} records/s  hook p50 "
                      f"{res['p50_ms']:7.3f} ms  p99 {res['p99_ms']:7.3f} ms", flush=True)
    finally:
        if server is not None:
            server.close()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": platform.platform(), "python": platform.python_version(),
                                          "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
