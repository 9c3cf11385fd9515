"""An in-process engine loaded in one of several server workers (litellm --num_workers, gunicorn,
uvicorn --workers) means one copy of the weights per worker: TransformersEngine warns once.
Real processes: multiprocessing spawn workers like uvicorn's, and command lines like litellm's."""

from __future__ import annotations

import logging
import multiprocessing as mp
import subprocess
import sys
from pathlib import Path

import pytest

from guardrails_plugin.engines import workers

PROBE = "from guardrails_plugin.engines.workers import multi_worker_reason as m; print(m())"


def _worker(q: mp.Queue, barrier: mp.synchronize.Barrier) -> None:  # type: ignore[name-defined]
    barrier.wait(60)  # both workers alive before either looks
    from guardrails_plugin.engines.workers import multi_worker_reason

    q.put(multi_worker_reason())
    barrier.wait(60)


def _spawn_workers(n: int) -> list[str | None]:
    ctx = mp.get_context("spawn")
    q, barrier = ctx.Queue(), ctx.Barrier(n)
    procs = [ctx.Process(target=_worker, args=(q, barrier)) for _ in range(n)]
    for p in procs:
        p.start()
    try:
        return [q.get(timeout=120) for _ in procs]
    finally:
        for p in procs:
            p.join(30)


def run(*args: str, env: dict[str, str] | None = None) -> str:
    out = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", **(env or {})}, cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_spawned_workers_see_each_other_and_a_single_one_does_not() -> None:
    reasons = _spawn_workers(2)
    assert all(r and "sibling worker" in r for r in reasons), reasons
    assert _spawn_workers(1) == [None]


def test_worker_count_from_environment_and_command_line() -> None:
    assert run() == "None"
    assert run(env={"WEB_CONCURRENCY": "4"}) == "WEB_CONCURRENCY=4"
    assert run(env={"WEB_CONCURRENCY": "1"}) == "None"
    assert "--num_workers 4" in run("--num_workers", "4")  # as `litellm --config c.yaml --num_workers 4`
    assert "-w 2" in run("-w", "2")  # gunicorn
    assert run("--workers", "1") == "None"


def test_transformers_engine_warns_once(tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                        caplog: pytest.LogCaptureFixture) -> None:
    from guardrails_plugin.engines.transformers import TransformersEngine

    monkeypatch.setattr(workers, "_warned", False)
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    with caplog.at_level(logging.WARNING, logger="guardrails_plugin"):
        TransformersEngine(tiny_llama_dir, device="cpu")
        TransformersEngine(tiny_llama_dir, device="cpu")
    warnings = [r for r in caplog.records if "several server workers" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert "WEB_CONCURRENCY=3" in warnings[0].getMessage() and "docs/scaling.md" in warnings[0].getMessage()

    monkeypatch.setattr(workers, "_warned", False)
    monkeypatch.delenv("WEB_CONCURRENCY")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="guardrails_plugin"):
        TransformersEngine(tiny_llama_dir, device="cpu")
    assert not [r for r in caplog.records if "several server workers" in r.getMessage()]
