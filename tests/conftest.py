"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

# --- tiny offline models (guardrails_plugin.testing.build_tiny_model) -------------------------------
# Built once per test session into a temporary folder; random weights, real tokenizer conventions
# (special tokens, chat template, BOS/EOS) of the Llama-3.2-Instruct and Qwen3 families.


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from guardrails_plugin.testing import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), family="llama")


@pytest.fixture(scope="session")
def tiny_qwen3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from guardrails_plugin.testing import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen3"), family="qwen3")
