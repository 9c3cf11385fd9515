"""Starting real processes for the LiteLLM tests and benchmark: the loopback upstream and a
``litellm --config`` proxy, each on a free 127.0.0.1 port, with logs captured to files."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml
from fake_openai_server import free_port

SUPPORT_DIR = Path(__file__).resolve().parent
REPO = SUPPORT_DIR.parents[1]
MASTER_KEY = "sk-guardrails-plugin-test"


def _env(extra_pythonpath: list[Path]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        HF_HUB_OFFLINE="1",
        LITELLM_MASTER_KEY=MASTER_KEY,
        LITELLM_TELEMETRY="False",
        PYTHONUNBUFFERED="1",
    )
    env.pop("DATABASE_URL", None)
    paths = [str(p) for p in extra_pythonpath] + [str(REPO)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float, headers: dict | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(url, headers=headers, timeout=2.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise TimeoutError(f"{url} not ready after {timeout}s:\n{log.read_text()[-4000:]}")


class Process:
    def __init__(self, proc: subprocess.Popen, log: Path, base_url: str, startup_s: float):
        self.proc, self.log, self.base_url, self.startup_s = proc, log, base_url, startup_s

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_upstream(workdir: Path) -> Process:
    port = free_port()
    log = workdir / f"upstream-{port}.log"
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, str(SUPPORT_DIR / "upstream.py"), "--port", str(port)],
        stdout=log.open("w"), stderr=subprocess.STDOUT, env=_env([]),
    )
    base = f"http://127.0.0.1:{port}"
    _wait_http(base + "/v1/models", proc, log, 30)
    return Process(proc, log, base, time.monotonic() - t0)


def write_config(workdir: Path, model_list: list[dict[str, Any]], guardrails: list[dict[str, Any]],
                 litellm_settings: dict[str, Any] | None = None, router_settings: dict[str, Any] | None = None) -> Path:
    cfg: dict[str, Any] = {
        "model_list": model_list,
        "guardrails": guardrails,
        "litellm_settings": {"telemetry": False, "drop_params": True, **(litellm_settings or {})},
        "general_settings": {"master_key": "os.environ/LITELLM_MASTER_KEY"},
    }
    if router_settings:
        cfg["router_settings"] = router_settings
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def start_proxy(config: Path, workdir: Path, *, timeout: float = 180, extra_env: dict[str, str] | None = None,
                num_workers: int = 1) -> Process:
    port = free_port()
    log = workdir / f"proxy-{port}.log"
    env = _env([SUPPORT_DIR])
    env.update(extra_env or {})
    litellm_bin = Path(sys.executable).parent / "litellm"
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [str(litellm_bin), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
         "--num_workers", str(num_workers)],
        stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, cwd=str(workdir),
    )
    base = f"http://127.0.0.1:{port}"
    _wait_http(base + "/health/liveliness", proc, log, timeout)
    return Process(proc, log, base, time.monotonic() - t0)
