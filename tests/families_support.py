"""Shared helpers of the guard-family tests: tiny models of each family (built once per session) and
the engines that render them. Not a test module."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from guardrails_plugin.engines.base import GenerationRequest
from guardrails_plugin.types import GuardRequest, Stage

_DIRS: dict[str, Path] = {}
_ENGINES: dict[str, Any] = {}

PROMPT = GuardRequest(stage=Stage.PROMPT, prompt="{USER_TEXT}")
RESPONSE = GuardRequest(stage=Stage.RESPONSE, prompt="{USER_TEXT}", response="{ASSISTANT_TEXT}")
REASONING = GuardRequest(stage=Stage.REASONING, prompt="{USER_TEXT}", reasoning="{ASSISTANT_TEXT}")


def tiny_dir(factory: pytest.TempPathFactory, family: str) -> Path:
    """A tiny model of ``family`` (guardrails_plugin.testing.FAMILIES), built once per session."""
    if family not in _DIRS:
        from guardrails_plugin.testing import build_tiny_model

        _DIRS[family] = build_tiny_model(factory.mktemp(f"tiny-{family}"), family=family)
    return _DIRS[family]


def tiny_engine(factory: pytest.TempPathFactory, family: str) -> Any:
    """A TransformersEngine on the tiny model of ``family`` (shared; only its render/tokenize are
    used by the prompt tests)."""
    if family not in _ENGINES:
        from guardrails_plugin.engines import TransformersEngine

        _ENGINES[family] = TransformersEngine(str(tiny_dir(factory, family)))
    return _ENGINES[family]


def render(engine: Any, gen: GenerationRequest) -> str:
    return engine.render(gen)


def run(coro: Any) -> Any:
    return asyncio.run(coro)
