"""Helpers for the review page, webhook and export tests: a scripted FlexGuard config with an
escalate band, and a loopback HTTP receiver whose behaviour a test controls."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import fake_openai_server
from fake_openai_server import free_port

from guardrails_plugin import Guard, GuardConfig
from guardrails_plugin.engines import ScriptedEngine

# FlexGuard answers: risk = RISK_SCORE / 100. Loose strictness blocks at >= 0.6 and the escalate
# band [0.3, 0.6) escalates, so HARM blocks, GREY escalates and SAFE passes.
HARM = "<think>Step-by-step construction of an explosive device: severe harm, no legitimate use.</think>\nVIO\n90"
GREY = ("<think>Lock-picking is dual-use: fine on one's own door, also the first step of a burglary. "
        "The intent is not stated.</think>\nILG\n45")
GREY_ALARM = ("<think>Disabling a car alarm may fix a faulty alarm or help steal the car; the text does not "
              "say which.</think>\nILG, VIO\n52")
SAFE = "<think>A benign request with no risky content.</think>\nSAFE\n5"
HARM_WORD, GREY_WORD = "zzbomb", "zzgrey"  # the markers never occur in FlexGuard's own prompts
#: phrases that read naturally on the review page (screenshots); none occurs in FlexGuard's prompts
HARM_PHRASES = (HARM_WORD, "pipe bomb")
GREY_PHRASES = (GREY_WORD, "pick a lock")
ALARM_PHRASE = "disable the alarm"

RULES = {"rules": [*({"contains": w, "completion": HARM} for w in HARM_PHRASES),
                   {"contains": ALARM_PHRASE, "completion": GREY_ALARM},
                   *({"contains": w, "completion": GREY} for w in GREY_PHRASES)], "default": SAFE}


def responder(rendered: str) -> str:
    for rule in RULES["rules"]:
        if rule["contains"] in rendered:
            return rule["completion"]
    return SAFE


def config_dict(**extra: Any) -> dict[str, Any]:
    stage = {"guards": ["FlexGuard"]}
    return {
        "strictness": "loose",
        "escalate_threshold": 0.3,
        "models": {"FlexGuard": {"family": "flexguard"}},
        "stages": {"prompt": stage, "reasoning": stage, "response": stage},
        **extra,
    }


def make_guard(**extra: Any) -> Guard:
    return Guard(GuardConfig.build(**config_dict(**extra)), engine=ScriptedEngine(responder))


def write_config(path: Path, **extra: Any) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(config_dict(**extra)), encoding="utf-8")
    return path


def write_rules(path: Path) -> Path:
    path.write_text(json.dumps(RULES), encoding="utf-8")
    return path


# -- loopback receiver ----------------------------------------------------------------------------
@dataclass
class Hit:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1. ``statuses`` are answered in turn (then 200);
    with ``hold`` set, each request waits for ``release`` (at most ``hold_s``) before answering."""

    statuses: list[int] = field(default_factory=list)
    hold: bool = False
    hold_s: float = 20.0
    hits: list[Hit] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    answered: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        rec = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n)
                rec.hits.append(Hit(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                rec.arrived.set()
                if rec.hold:
                    rec.release.wait(rec.hold_s)
                status = rec.statuses.pop(0) if rec.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")
                rec.answered.set()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def dead_url() -> str:
    """A loopback webhook URL nothing listens on (connection refused)."""
    return fake_openai_server.dead_url() + "/hook"


# -- the review server and a headless Chromium ----------------------------------------------------
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,1000")


def require_chromium() -> None:
    """Skip without the Debian chromium + chromium-driver packages; under CI=true, fail instead
    (CI installs them in .ci/run, so a missing browser there is a broken setup, not a skip)."""
    import os

    import pytest

    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if not missing:
        return
    msg = f"{', '.join(missing)} missing: apt-get install -y chromium chromium-driver"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(msg)
    pytest.skip(msg)


def start_chromium(profile: Path) -> Any:
    """Selenium on the system Chromium and chromedriver (nothing downloads a browser)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    return driver


def start_review_server(db: Path, workdir: Path, *args: str) -> tuple[Any, str]:
    """``guardrails-plugin review serve`` as a real process on a free loopback port; returns
    ``(process, base_url)`` once /healthz answers."""
    import os
    import subprocess
    import sys
    import time

    import httpx

    port = free_port()
    log = (workdir / f"review-{port}.log").open("w")
    env = {**os.environ, "GUARDRAILS_PLUGIN_REVIEW_LOG": "warning"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "guardrails_plugin.cli", "review", "serve", "--db", str(db), "--port", str(port),
         *args], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"review server exited {proc.returncode}: {Path(log.name).read_text()}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"review server did not start: {Path(log.name).read_text()}")
