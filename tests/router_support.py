"""A loopback guard cluster for routing tests and benchmarks: the real ``vllm-router`` binary in front
of three guard replicas, and concurrent monitor streams through it. Not a test module.

Replicas: two fake guard replicas (tests/guard_replica.py, own processes so they can be SIGKILLed)
and, where ``transformers serve`` is installed, a real one serving a tiny random-weight Llama that
is scripted to answer ReasoningShield's format (otherwise a third fake). The real server sits
behind a logging front (guard_replica.py ``--upstream``) that also drops the default-valued fields
vllm-router adds to every request, which ``transformers serve`` rejects (vLLM ignores them). Every
replica logs each request with its session key to a JSON-lines file (it survives a kill).
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from fake_openai_server import free_port  # noqa: E402
from guard_replica import SAFE_REPLIES, script_tiny_model  # noqa: E402

GUARD = "ReasoningShield-1B"
#: router flags of the supported topology (guardrails_plugin.engines.serving.ROUTER_ARGS), with the
#: recovery clocks shortened from 5 s to 1 s so a test sees a replica come back quickly
TEST_ROUTER_ARGS = (
    "--policy", "consistent_hash", "--cb-failure-threshold", "1", "--cb-timeout-duration-secs", "1",
    "--retry-max-retries", "3", "--health-check-interval-secs", "1", "--health-check-endpoint", "/health",
    "--worker-startup-timeout-secs", "60", "--worker-startup-check-interval", "1",
)  # fmt: skip


def router_executable() -> str | None:
    exe = Path(sys.executable).with_name("vllm-router")
    return str(exe) if exe.exists() else shutil.which("vllm-router")


def transformers_cli() -> str | None:
    exe = Path(sys.executable).with_name("transformers")
    if not exe.exists():
        return None
    for mod in ("fastapi", "uvicorn", "accelerate"):
        try:
            __import__(mod)
        except ImportError:
            return None
    return str(exe)


def wait_http(url: str, proc: subprocess.Popen[Any], timeout_s: float, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout_s}s: {log.read_text()[-2000:]}")


@dataclass
class Replica:
    name: str
    port: int
    kind: str  # "fake" | "transformers-serve"
    log: Path  # the request log (JSON lines)
    proc: subprocess.Popen[Any] | None = None
    backend: subprocess.Popen[Any] | None = None  # the real server behind a logging front

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Cluster:
    root: Path
    replicas: list[Replica] = field(default_factory=list)
    router_port: int = 0
    router: subprocess.Popen[Any] | None = None

    @property
    def router_url(self) -> str:
        return f"http://127.0.0.1:{self.router_port}"

    # -- processes ------------------------------------------------------------------------------
    def start_fake(self, rep: Replica, delay_ms: float = 10.0, *, upstream: str | None = None) -> None:
        args = ["--upstream", upstream] if upstream else ["--served", GUARD, "--delay-ms", str(delay_ms)]
        rep.proc = subprocess.Popen(
            [sys.executable, str(HERE / "guard_replica.py"), "--port", str(rep.port), "--log", str(rep.log), *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_http(rep.url + "/health", rep.proc, 30, rep.log)

    def start_transformers_serve(self, rep: Replica, cli: str) -> None:
        from guardrails_plugin.testing import build_tiny_model

        models = self.root / "tserve"
        model_dir = build_tiny_model(models / GUARD, family="llama")
        script_tiny_model(model_dir, SAFE_REPLIES["reasoningshield"])
        # Unpinned, run from the folder that holds ./ReasoningShield-1B: the request's model name
        # is the served name, resolved as a local folder, as vLLM's --served-model-name would be.
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
               "HF_HUB_CACHE": str(models / "hub-cache"), "HF_HUB_DISABLE_TELEMETRY": "1"}
        port, out = free_port(), self.root / "transformers-serve.log"
        rep.backend = subprocess.Popen(
            [cli, "serve", "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
            cwd=models, env=env, stdout=out.open("w"), stderr=subprocess.STDOUT,
        )
        backend = f"http://127.0.0.1:{port}"
        wait_http(backend + "/health", rep.backend, 120, out)
        # First request loads the model (seconds); do it now, not inside a timed stream.
        body = {"model": GUARD, "messages": [{"role": "user", "content": "warm up"}], "max_tokens": 2}
        httpx.post(backend + "/v1/chat/completions", json=body, timeout=120).raise_for_status()
        self.start_fake(rep, upstream=backend)

    def start_router(self, exe: str, args: tuple[str, ...] = TEST_ROUTER_ARGS) -> None:
        self.router_port = free_port()
        log = self.root / f"router-{self.router_port}.log"
        self.router = subprocess.Popen(
            [exe, "--host", "127.0.0.1", "--port", str(self.router_port), "--prometheus-port", str(free_port()),
             "--worker-urls", *[r.url for r in self.replicas], *args, "--log-level", "warning"],
            stdout=log.open("w"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_http(self.router_url + "/health", self.router, 60, log)

    def with_policy(self, exe: str, policy: str) -> Cluster:
        """Another router over the same replicas with another ``--policy`` (stop it with
        ``.stop_router()``)."""
        args = list(TEST_ROUTER_ARGS)
        args[args.index("--policy") + 1] = policy
        other = Cluster(self.root, replicas=self.replicas)
        other.start_router(exe, tuple(args))
        return other

    def stop_router(self) -> None:
        if self.router is not None and self.router.poll() is None:
            self.router.terminate()
            self.router.wait(10)

    def kill(self, rep: Replica) -> None:
        assert rep.proc is not None
        rep.proc.kill()  # SIGKILL: no goodbye, in-flight requests die with it
        rep.proc.wait()

    def stop(self) -> None:
        for p in [self.router, *(r.proc for r in self.replicas), *(r.backend for r in self.replicas)]:
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()

    # -- what the replicas saw ------------------------------------------------------------------
    def fake_log(self, rep: Replica) -> list[dict[str, Any]]:
        if not rep.log.exists():
            return []
        return [json.loads(line) for line in rep.log.read_text().splitlines() if line.strip()]

    def per_session(self, streams: list[StreamResult], since: float = 0.0) -> dict[str, dict[str, int]]:
        """{session: {replica: requests it received}} for ``streams``."""
        ids = {s.session for s in streams}
        table: dict[str, collections.Counter[str]] = {sid: collections.Counter() for sid in ids}
        for rep in self.replicas:
            for rec in self.fake_log(rep):
                if rec["session"] in ids and rec["at"] >= since:
                    table[rec["session"]][rep.name] += 1
        return {k: dict(v) for k, v in table.items()}


def start_cluster(root: Path, *, real_server: bool = True, delay_ms: float = 10.0) -> Cluster:
    """Three replicas and a router over them (see the module docstring)."""
    exe = router_executable()
    if exe is None:
        raise RuntimeError("vllm-router is not installed (pip install vllm-router; it is in the dev extras)")
    cluster = Cluster(root)
    cli = transformers_cli() if real_server else None
    names = ["replica-a", "replica-b", "replica-c"]
    try:
        for i, name in enumerate(names):
            kind = "transformers-serve" if (i == 2 and cli) else "fake"
            rep = Replica(name, free_port(), kind, root / f"{name}.jsonl")
            cluster.replicas.append(rep)
            if kind == "fake":
                cluster.start_fake(rep, delay_ms)
            else:
                assert cli is not None
                cluster.start_transformers_serve(rep, cli)
        cluster.start_router(exe)
    except BaseException:
        cluster.stop()
        raise
    return cluster


# ---------------------------------------------------------------------------------- streams
@dataclass
class StreamResult:
    session: str
    checks: int
    decisions: list[Any]
    final: Any
    error: BaseException | None = None

    @property
    def failed(self) -> list[Any]:
        """Decisions the fail mode made (no real verdict)."""
        return [d for d in [*self.decisions, self.final] if d is not None and d.failure is not None]


async def run_stream(guard: Any, i: int, *, tokens: int, pace_s: float, every: int) -> StreamResult:
    mon = guard.reasoning_monitor(query=f"How do I keep sourdough starter alive? ({i})", check_every_tokens=every)
    decisions: list[Any] = []
    words = [f"step{i}x{k} " for k in range(tokens)]
    try:
        for k in range(0, tokens, 8):
            d = await mon.afeed("".join(words[k:k + 8]))
            if d is not None:
                decisions.append(d)
            await asyncio.sleep(pace_s)
        final = await mon.aclose()
        return StreamResult(str(mon.metadata["session_id"]), mon.stats.checks_run, decisions, final)
    except Exception as exc:  # reported, never swallowed: the caller asserts there is none
        return StreamResult(str(mon.metadata["session_id"]), mon.stats.checks_run, decisions, None, exc)


async def run_streams(guard: Any, n: int, *, tokens: int = 240, pace_s: float = 0.02, every: int = 48,
                      offset: int = 0) -> list[StreamResult]:
    return list(await asyncio.gather(
        *(run_stream(guard, offset + i, tokens=tokens, pace_s=pace_s, every=every) for i in range(n))
    ))


def stickiness(table: dict[str, dict[str, int]]) -> dict[str, float]:
    """Per session: the share of its checks that went to its main replica."""
    return {sid: (max(c.values()) / sum(c.values()) if c else 1.0) for sid, c in table.items()}


def main_replica(counts: dict[str, int]) -> str | None:
    return max(counts, key=counts.__getitem__) if counts else None
