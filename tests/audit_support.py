"""Shared pieces of the audit tests: a scripted guard with an escalate band, the store backends
(SQLite file, PostgreSQL database) as a fixture, and a child-process runner."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from guardrails_plugin import Guard, GuardConfig
from guardrails_plugin.engines import ScriptedEngine

REPO = Path(__file__).resolve().parents[1]

SAFE = "ok\nAnswers: \nRequest: unharmful\nCompletion: compliance\nResponse: unharmful\n"
HARM = "the user asks for a bomb\nAnswers: \nRequest: harmful\nCompletion: refusal\nResponse: harmful\n"
GREY = '"Analysis": borderline\n"Judgment": 0.5'


def responder(rendered: str) -> str:
    """GuardReasoner: harmful iff 'bomb'; ReasoningShield (chat guard): 0.5 -> the escalate band."""
    if "<|user|>" in rendered:
        return GREY
    return HARM if "bomb" in rendered else SAFE


def make_guard(**cfg: object) -> Guard:
    # loose: block at >= 0.6; escalate band [0.3, 0.6) catches ReasoningShield's 0.5
    config = GuardConfig(strictness="loose", escalate_threshold=0.3, **cfg)  # type: ignore[arg-type]
    return Guard(config, engine=ScriptedEngine(responder))


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a store lives: a SQLite file path, or a fresh PostgreSQL database URL."""
    if request.param == "sqlite":
        return str(tmp_path / "audit.db")
    return request.getfixturevalue("pg_server").create_db()


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(LITELLM_LOCAL_MODEL_COST_MAP="True", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
               TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tests"), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def run_child(code: str, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         timeout=timeout, env=child_env(**env), cwd=str(REPO))
    assert out.returncode == 0, f"child failed ({out.returncode}):\n{out.stderr[-4000:]}"
    return out
