"""The serving layout: which guard models the shipped vLLM recipes serve, under which served name,
on which port, and where each model's ``vllm-router`` listens. One source of truth.

``integrations/vllm/serve_guards.sh``, ``integrations/vllm/start_routers.sh``,
``integrations/litellm/guard.yaml``, ``integrations/vllm/guard-router.yaml``, the READMEs and
``docs/`` are written to agree with it, and ``tests/test_serving_layout.py`` parses those files and
fails when one drifts. The CLI's ``check --engine openai`` sends these served names by default.

The rule that keeps it simple: **a guard's config name is its served name** (vLLM's
``--served-model-name``), so ``models: {GuardReasoner-1B: ...}`` in a guard config talks to a
server started with ``--served-model-name GuardReasoner-1B``.

Scale-out (docs/scaling.md): every GPU machine runs ``serve_guards.sh`` (one replica of each guard
on the ports below) and one ``vllm-router`` per guard model fronts that model's replicas on its
``router_port``; guard configs point ``base_url`` at the router.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from .vllm_launcher import vllm_serve_command

__all__ = [
    "HOST",
    "LAYOUT",
    "MAX_MODEL_LEN",
    "ROUTER_ARGS",
    "SESSION_HEADER",
    "ServedGuard",
    "default_served_name",
    "guard_models",
    "router_command",
    "served_guard",
]

#: where the single-GPU recipe binds (set HOST=0.0.0.0 in serve_guards.sh for a replica that a
#: router on another machine reaches)
HOST = "127.0.0.1"
MAX_MODEL_LEN = 8192
#: the header OpenAIEngine puts a stream's session key in; vllm-router's consistent_hash reads it
SESSION_HEADER = "x-session-id"

#: vllm-router flags of the supported topology (docs/scaling.md explains each):
#: consistent_hash keeps every check of one stream on the replica that holds its prefix in cache;
#: a replica that fails once is taken out at once (circuit breaker, threshold 1) and retried after
#: 5 s, and the request that met the failure is retried on another replica (up to 3 times), so a
#: dying replica costs no verdicts; health checks every 5 s bring a restarted replica back.
ROUTER_ARGS: tuple[str, ...] = (
    "--policy", "consistent_hash",
    "--cb-failure-threshold", "1",
    "--cb-timeout-duration-secs", "5",
    "--retry-max-retries", "3",
    "--health-check-interval-secs", "5",
    "--health-check-endpoint", "/health",
)  # fmt: skip


@dataclass(frozen=True)
class ServedGuard:
    """One guard model of the layout."""

    name: str  #: config name == ``--served-model-name`` == the ``model`` the plugin sends
    family: str
    hub_id: str
    port: int  #: replica port (one ``vllm serve`` per guard on each GPU machine)
    router_port: int  #: this model's ``vllm-router``
    metrics_port: int  #: the router's Prometheus port (each router on a host needs its own)
    gpu_memory_utilization: float  #: share of one GPU when only the 1B guards run
    gpu_memory_utilization_with_flexguard: float  #: share when FlexGuard-8B shares the GPU
    optional: bool = False  #: started only by ``serve_guards.sh flexguard``
    vllm_args: tuple[str, ...] = ()

    def base_url(self, host: str = HOST) -> str:
        return f"http://{host}:{self.port}/v1"

    def router_url(self, host: str = HOST) -> str:
        return f"http://{host}:{self.router_port}/v1"

    def vllm_command(self, *, host: str = HOST, with_flexguard: bool = False) -> list[str]:
        """The ``vllm serve`` argv ``serve_guards.sh`` runs for this guard."""
        util = self.gpu_memory_utilization_with_flexguard if with_flexguard else self.gpu_memory_utilization
        return vllm_serve_command(
            self.hub_id, port=self.port, gpu_memory_utilization=util, max_model_len=MAX_MODEL_LEN,
            served_model_name=self.name, host=host, extra=("--dtype", "bfloat16", *self.vllm_args),
        )

    def model_config(self, base_url: str | None = None, *, timeout_s: float = 30.0) -> dict[str, Any]:
        """This guard's entry under ``models:`` in a guard config, on ``engine: openai``."""
        return {
            "family": self.family,
            "engine": "openai",
            "base_url": base_url or self.base_url(),
            "served_model_name": self.name,
            "timeout_s": timeout_s,
        }


LAYOUT: tuple[ServedGuard, ...] = (
    ServedGuard("GuardReasoner-1B", "guardreasoner", "yueliu1999/GuardReasoner-1B",
                port=8001, router_port=8101, metrics_port=29101,
                gpu_memory_utilization=0.35, gpu_memory_utilization_with_flexguard=0.15),
    ServedGuard("ReasoningShield-1B", "reasoningshield", "ReasoningShield/ReasoningShield-1B",
                port=8002, router_port=8102, metrics_port=29102,
                gpu_memory_utilization=0.35, gpu_memory_utilization_with_flexguard=0.15),
    ServedGuard("FlexGuard-Qwen3-8B", "flexguard", "Tommy-DING/FlexGuard-Qwen3-8B",
                port=8003, router_port=8103, metrics_port=29103,
                gpu_memory_utilization=0.50, gpu_memory_utilization_with_flexguard=0.50,
                optional=True, vllm_args=("--reasoning-parser", "qwen3")),
)  # fmt: skip


def served_guard(ref: str) -> ServedGuard | None:
    """The layout entry for a guard name (``GuardReasoner-1B``), hub id
    (``yueliu1999/GuardReasoner-1B``) or a folder named like one (``/models/GuardReasoner-1B``);
    case-insensitive. None for anything else."""
    key = ref.strip().rstrip("/").lower()
    if not key:
        return None
    base = PurePosixPath(key).name
    for g in LAYOUT:
        if key in (g.name.lower(), g.hub_id.lower()) or base == g.name.lower():
            return g
    return None


def default_served_name(ref: str) -> str:
    """The name to send as ``model`` when no ``served_model_name`` is configured: the layout's
    served name for a guard it knows (what ``serve_guards.sh`` starts), else ``ref`` itself
    (what ``vllm serve REF`` serves without ``--served-model-name``)."""
    g = served_guard(ref)
    return g.name if g is not None else ref


def guard_models(*, host: str = HOST, router: bool = False, with_flexguard: bool = False,
                 timeout_s: float = 30.0) -> dict[str, dict[str, Any]]:
    """The ``models:`` mapping of a guard config for the layout: each guard on its replica port,
    or (``router=True``) on its router."""
    return {
        g.name: g.model_config(g.router_url(host) if router else g.base_url(host), timeout_s=timeout_s)
        for g in LAYOUT
        if with_flexguard or not g.optional
    }


def router_command(guard: ServedGuard, worker_urls: list[str], *, host: str = HOST,
                   executable: str = "vllm-router") -> list[str]:
    """The ``vllm-router`` argv that fronts ``guard``'s replicas (``start_routers.sh`` runs it)."""
    if not worker_urls:
        raise ValueError(f"router for {guard.name}: no replica URLs")
    return [
        executable, "--host", host, "--port", str(guard.router_port),
        "--prometheus-port", str(guard.metrics_port),
        "--worker-urls", *worker_urls, *ROUTER_ARGS,
    ]  # fmt: skip
