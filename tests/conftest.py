"""Shared pytest fixtures."""

from __future__ import annotations

import sys
from pathlib import Path

# Tests live in subfolders mirroring guardrails_plugin/; their support modules stay here. Both import
# forms must work from any subfolder: `from langchain_support import ...` (tests/ on the path) and
# `from tests.fake_openai_server import ...` (the repository root on the path).
_TESTS = Path(__file__).resolve().parent
for _p in (str(_TESTS.parent), str(_TESTS)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import pytest  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "unreadable_guard_prompts: the test feeds the marker guard prompts it cannot read on purpose"
    )


@pytest.fixture(autouse=True)
def _marker_guard_read_every_prompt(request: pytest.FixtureRequest):
    """A BLOCK must come from a verdict, not from the marker guard choking on a broken guard prompt
    (which fails closed and looks the same to an assertion on the action)."""
    yield
    for name in ("langchain_support", "tests.langchain_support"):
        mod = sys.modules.get(name)
        if mod is None:
            continue
        seen = list(mod.UNEXPECTED_PROMPTS)
        mod.UNEXPECTED_PROMPTS.clear()
        if seen and request.node.get_closest_marker("unreadable_guard_prompts") is None:
            pytest.fail(f"the marker guard could not read {len(seen)} guard prompt(s); first: {seen[0][-300:]!r}")

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
