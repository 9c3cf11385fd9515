"""Start a ``vllm serve`` process for a guard model and wait until it answers.

The guards are small (1B-class), so several share one GPU: give each its own port and a slice of
GPU memory (``gpu_memory_utilization`` is a fraction of the whole GPU per process, so the slices
must add up to less than 1.0). See ``integrations/vllm/`` for ready commands.

    cmd = vllm_serve_command("ReasoningShield/ReasoningShield-1B", port=8001,
                             gpu_memory_utilization=0.35, max_model_len=8192,
                             served_model_name="ReasoningShield-1B")
    with launch_vllm("ReasoningShield/ReasoningShield-1B", port=8001, ...) as server:
        engine = OpenAIEngine(server.base_url, model="ReasoningShield-1B")

``launch_server`` / ``wait_until_ready`` work for any OpenAI-compatible server command
(``transformers serve`` in the tests).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx

from ..errors import GuardConfigError, GuardEngineError, GuardTimeoutError

__all__ = ["LaunchedServer", "launch_server", "launch_vllm", "vllm_serve_command", "wait_until_ready"]


def vllm_serve_command(
    model: str,
    *,
    port: int,
    gpu_memory_utilization: float,
    max_model_len: int,
    served_model_name: str,
    enable_prefix_caching: bool = True,
    extra: Sequence[str] = (),
    host: str = "127.0.0.1",
    executable: str = "vllm",
) -> list[str]:
    """The argv of ``vllm serve`` for one guard model.

    Prefix caching pays off for guards: every call repeats the same long instruction template,
    so only the checked text is prefilled. ``extra`` is appended verbatim (e.g.
    ``("--reasoning-parser", "qwen3")`` for FlexGuard, ``("--dtype", "bfloat16")``).
    """
    if not model:
        raise GuardConfigError("vllm_serve_command: model is required")
    if not 0 < port < 65536:
        raise GuardConfigError(f"vllm_serve_command: bad port {port}")
    if not 0.0 < gpu_memory_utilization <= 1.0:
        raise GuardConfigError(
            f"vllm_serve_command: gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}"
        )
    if max_model_len <= 0:
        raise GuardConfigError("vllm_serve_command: max_model_len must be > 0")
    if not served_model_name:
        raise GuardConfigError("vllm_serve_command: served_model_name is required")
    if isinstance(extra, str):  # a lone string would be split into characters
        raise GuardConfigError("vllm_serve_command: extra must be a sequence of arguments")
    cmd = [
        executable,
        "serve",
        model,
        "--host",
        host,
        "--port",
        str(port),
        "--gpu-memory-utilization",
        f"{gpu_memory_utilization:g}",
        "--max-model-len",
        str(max_model_len),
        "--served-model-name",
        served_model_name,
    ]
    if enable_prefix_caching:
        cmd.append("--enable-prefix-caching")
    cmd.extend(str(a) for a in extra)
    return cmd


def wait_until_ready(
    base_url: str,
    *,
    timeout_s: float = 600.0,
    process: subprocess.Popen[Any] | None = None,
    interval_s: float = 0.5,
) -> None:
    """Poll ``GET {base_url}/v1/models`` until it answers 200.

    Raises GuardEngineError when ``process`` exits first (it crashed: no point waiting) and
    GuardTimeoutError when the timeout passes.
    """
    url = base_url.rstrip("/").removesuffix("/v1") + "/v1/models"
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    with httpx.Client(timeout=5.0) as client:
        while True:
            if process is not None and process.poll() is not None:
                raise GuardEngineError(
                    f"server process exited with code {process.returncode} before {url} answered"
                )
            try:
                resp = client.get(url)
                if resp.status_code == 200:
                    return
                last = f"HTTP {resp.status_code}"
            except httpx.HTTPError as exc:
                last = type(exc).__name__
            if time.monotonic() >= deadline:
                raise GuardTimeoutError(f"{url} not ready after {timeout_s:.0f}s ({last})")
            time.sleep(interval_s)


@dataclass
class LaunchedServer:
    """A running OpenAI-compatible server process. ``stop()`` (or leaving ``with``) ends it."""

    process: subprocess.Popen[Any]
    base_url: str
    command: list[str]
    log_path: Path | None = None

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout_s)

    def log_tail(self, n_chars: int = 4000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-n_chars:]

    def __enter__(self) -> LaunchedServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def launch_server(
    command: Sequence[str],
    base_url: str,
    *,
    ready_timeout_s: float = 600.0,
    env: Mapping[str, str] | None = None,
    log_path: str | os.PathLike[str] | None = None,
) -> LaunchedServer:
    """Start ``command`` and wait until ``base_url`` serves ``/v1/models``.

    Output goes to ``log_path`` (or is discarded); on failure the process is stopped and the
    error carries the log's tail.
    """
    full_env = {**os.environ, **(env or {})}
    log_file: IO[bytes] | None = None
    path = Path(log_path) if log_path is not None else None
    if path is not None:
        log_file = open(path, "wb")  # noqa: SIM115 - the child keeps writing after we return
    try:
        proc = subprocess.Popen(
            list(command),
            stdout=log_file if log_file is not None else subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            env=full_env,
        )
    finally:
        if log_file is not None:
            log_file.close()  # the child holds its own descriptor
    server = LaunchedServer(proc, base_url.rstrip("/"), list(command), path)
    try:
        wait_until_ready(server.base_url, timeout_s=ready_timeout_s, process=proc)
    except BaseException as exc:
        server.stop()
        tail = server.log_tail(1500)
        if isinstance(exc, GuardEngineError) and tail:
            # the same error type (a timeout stays a GuardTimeoutError), with the log tail added
            exc.args = (f"{exc}\n--- server log tail ---\n{tail}",)
            raise exc from None
        raise
    return server


def launch_vllm(
    model: str,
    *,
    port: int,
    gpu_memory_utilization: float,
    max_model_len: int,
    served_model_name: str,
    enable_prefix_caching: bool = True,
    extra: Sequence[str] = (),
    host: str = "127.0.0.1",
    ready_timeout_s: float = 900.0,
    env: Mapping[str, str] | None = None,
    log_path: str | os.PathLike[str] | None = None,
) -> LaunchedServer:
    """Start ``vllm serve`` for one guard and wait until it answers (first start compiles and
    captures CUDA graphs: minutes). Use the returned ``base_url`` with OpenAIEngine."""
    cmd = vllm_serve_command(
        model,
        port=port,
        gpu_memory_utilization=gpu_memory_utilization,
        max_model_len=max_model_len,
        served_model_name=served_model_name,
        enable_prefix_caching=enable_prefix_caching,
        extra=extra,
        host=host,
    )
    return launch_server(
        cmd, f"http://{host}:{port}", ready_timeout_s=ready_timeout_s, env=env, log_path=log_path
    )
