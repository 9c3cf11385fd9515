"""Is this process one of several workers of a server? Then an in-process engine is loaded once per
worker: ``litellm --num_workers 4`` or ``gunicorn -w 4`` holds four copies of the guard weights
(and four KV caches), each on a quarter of the traffic. ``TransformersEngine`` warns once at start
and points at the router topology (serve the guards with vLLM, docs/scaling.md) instead.

The signals, any one of which counts (best effort; never raises):

* ``WEB_CONCURRENCY`` > 1: the worker count gunicorn and uvicorn read from the environment;
* a worker-count flag > 1 on this process's or its parent's command line (``--num_workers N``
  for litellm, ``--workers N`` for uvicorn / hypercorn, ``-w N`` / ``--workers N`` for gunicorn);
* sibling workers (Linux ``/proc``): another child of our parent that runs our command line
  (forked workers: gunicorn), or that is, like us, a ``multiprocessing`` spawn child of the same
  interpreter (uvicorn and litellm start their workers that way).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

log = logging.getLogger("guardrails_plugin")

_WORKER_FLAG = re.compile(r"(?:^|\s)(?:--num_workers|--num-workers|--workers|-w)(?:=|\s+)(\d+)(?=\s|$)")
_SPAWN_MARK = "--multiprocessing-fork"
_warned = False


def _cmdline(pid: int | str) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _ppid(pid: str) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[1])  # the name in (...) may hold spaces
    except (OSError, ValueError, IndexError):
        return None


def _is_worker_like(mine: list[str], other: list[str]) -> bool:
    if not other:
        return False
    if other == mine:
        return True
    return _SPAWN_MARK in mine and _SPAWN_MARK in other and other[0] == mine[0]


def sibling_workers(pid: int | None = None) -> list[int]:
    """Pids of the processes that look like fellow workers of ``pid`` (default: this process)."""
    me = os.getpid() if pid is None else pid
    mine = _cmdline(me)
    parent = _ppid(str(me))
    if not mine or parent in (None, 0, 1):
        return []
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        if _ppid(entry.name) == parent and _is_worker_like(mine, _cmdline(entry.name)):
            out.append(int(entry.name))
    return out


def multi_worker_reason() -> str | None:
    """Why this process looks like one of several server workers, or None."""
    try:
        wc = os.environ.get("WEB_CONCURRENCY", "").strip()
        if wc.isdigit() and int(wc) > 1:
            return f"WEB_CONCURRENCY={wc}"
        for who, pid in (("this process", os.getpid()), ("the parent process", os.getppid())):
            m = _WORKER_FLAG.search(" ".join(_cmdline(pid)))
            if m and int(m.group(1)) > 1:
                return f"{who} was started with {m.group(0).strip()!r}"
        siblings = sibling_workers()
        if siblings:
            return f"{len(siblings)} sibling worker process(es) share this parent (pid {os.getppid()})"
    except Exception:  # noqa: BLE001 - a heuristic must never stop an engine from loading
        return None
    return None


def warn_if_multi_worker(model: str) -> None:
    """Log one WARNING per process when an in-process engine loads in one of several workers."""
    global _warned
    if _warned:
        return
    reason = multi_worker_reason()
    if reason is None:
        return
    _warned = True
    log.warning(
        "guardrails-plugin: loading guard model %s in-process, but this looks like one of several "
        "server workers (%s): every worker loads its own copy of the weights. Serve the guards "
        "with vLLM instead (integrations/vllm/serve_guards.sh; many replicas: vllm-router, see "
        "docs/scaling.md) and use `engine: openai`, or run a single worker.",
        model, reason,
    )
