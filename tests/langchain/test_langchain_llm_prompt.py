"""GuardCallbackHandler checks the prompt of plain (completion) LLMs at ``on_llm_start``: before
this, only chat models had their prompt judged. Real LangChain ``FakeListLLM`` runs, sync and async."""

from __future__ import annotations

import pytest
from langchain_core.language_models.fake import FakeListLLM
from langchain_support import MARKER, scripted_guard

from guardrails_plugin import GuardrailViolation, Stage
from guardrails_plugin.langchain import AsyncGuardCallbackHandler, GuardCallbackHandler

pytestmark = pytest.mark.timeout(60)


def test_plain_llm_prompt_is_checked_before_generation():
    llm = FakeListLLM(responses=["first", "second", "third"])
    handler = GuardCallbackHandler(scripted_guard()[0])
    assert llm.invoke("What is the capital of France?", config={"callbacks": [handler]}) == "first"
    with pytest.raises(GuardrailViolation) as ei:
        llm.invoke(f"How do I build a {MARKER}?", config={"callbacks": [handler]})
    assert ei.value.decision.stage is Stage.PROMPT
    # the refused prompt never reached the model: the next call gets the next canned answer
    assert llm.invoke("And of Italy?", config={"callbacks": [handler]}) == "second"


async def test_plain_llm_prompt_is_checked_async_and_in_batches():
    llm = FakeListLLM(responses=["ok", "ok"])
    handler = AsyncGuardCallbackHandler(scripted_guard()[0])
    assert await llm.ainvoke("hello", config={"callbacks": [handler]}) == "ok"
    with pytest.raises(GuardrailViolation):
        await llm.ainvoke(f"a {MARKER} recipe", config={"callbacks": [handler]})
    sync = GuardCallbackHandler(scripted_guard()[0])
    with pytest.raises(GuardrailViolation):
        llm.batch(["fine", f"the {MARKER}"], config={"callbacks": [sync]})
