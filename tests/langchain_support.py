"""Fake reasoning chat models and scripted guards shared by the LangChain tests.

langchain_core's own fakes cannot stream reasoning (GenericFakeChatModel has no content blocks)
and lack ``bind_tools``, so these subclass BaseChatModel directly. Two reasoning styles, as real
providers emit them:

* ``style="blocks"``: content blocks ``{"type": "reasoning", "reasoning": ...}`` then
  ``{"type": "text", "text": ...}`` (LangChain v1 standard blocks);
* ``style="reasoning_content"``: ``additional_kwargs["reasoning_content"]`` deltas with string
  content for the answer (DeepSeek / Qwen through OpenAI-compatible servers, v0).

Each model counts its calls so a test can assert that a blocked prompt never reached it.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import Field

from guardrails_plugin import Guard, GuardConfig
from guardrails_plugin.engines import ScriptedEngine

MARKER = "bomb"  # the scripted guards call a text harmful iff it contains this word

_PIECES = re.compile(r"\S+\s*|\s+")


def pieces(text: str) -> list[str]:
    """Split text into word-sized stream deltas that concatenate back to ``text`` exactly."""
    return _PIECES.findall(text)


def filler(n_words: int, start: int = 0) -> str:
    """``n_words`` harmless words ("step0 step1 ..."), each one monitor token."""
    return "".join(f"step{i} " for i in range(start, start + n_words))


class Turn(dict):
    """One scripted model reply: reasoning, answer and optional tool calls."""

    def __init__(self, reasoning: str = "", answer: str = "", tool_calls: list[dict] | None = None):
        super().__init__(reasoning=reasoning, answer=answer, tool_calls=tool_calls or [])


class ScriptedReasoningChatModel(BaseChatModel):
    """Streams scripted reasoning and then the answer, one word per chunk.

    ``turns`` are consumed one per model call (the last one repeats). ``token_delay_s`` sleeps
    between chunks so guard checks can land mid-stream.
    """

    turns: list[dict[str, Any]] = Field(default_factory=lambda: [Turn("I think.", "Hello.")])
    style: Literal["blocks", "reasoning_content"] = "blocks"
    token_delay_s: float = 0.001
    calls: int = 0
    chunks_produced: int = 0
    inputs: list[list[BaseMessage]] = Field(default_factory=list)  # messages of every call
    #: ``bind_tools`` returns a RunnableBinding, as ChatOpenAI / ChatAnthropic / init_chat_model do
    #: (False: returns ``self``, the kinder shape our first fakes had)
    binding: bool = False

    @property
    def _llm_type(self) -> str:
        return f"scripted-reasoning-{self.style}"

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Any:
        if self.binding:  # what BaseChatModel subclasses of real providers do: a RunnableBinding
            return self.bind(tools=[getattr(t, "name", t) for t in tools], **kwargs)
        return self  # tools are scripted in the turns

    # -- scripting ------------------------------------------------------------------------------
    def _turn(self, messages: list[BaseMessage]) -> dict[str, Any]:
        self.inputs.append(list(messages))
        turn = self.turns[min(self.calls, len(self.turns) - 1)]
        self.calls += 1
        return turn

    def _chunks(self, turn: dict[str, Any]) -> Iterator[AIMessageChunk]:
        for p in pieces(turn["reasoning"]):
            if self.style == "blocks":
                yield AIMessageChunk(content=[{"type": "reasoning", "reasoning": p, "index": 0}])
            else:
                yield AIMessageChunk(content="", additional_kwargs={"reasoning_content": p})
        for p in pieces(turn["answer"]):
            if self.style == "blocks":
                yield AIMessageChunk(content=[{"type": "text", "text": p, "index": 1}])
            else:
                yield AIMessageChunk(content=p)
        if turn["tool_calls"]:
            yield AIMessageChunk(
                content=[] if self.style == "blocks" else "",
                tool_call_chunks=[
                    {"name": tc["name"], "args": _json(tc["args"]), "id": tc["id"], "index": i}
                    for i, tc in enumerate(turn["tool_calls"])
                ],
            )

    def _message(self, turn: dict[str, Any]) -> AIMessage:
        tool_calls = [{**tc, "type": "tool_call"} for tc in turn["tool_calls"]]
        if self.style == "blocks":
            content: list[Any] = []
            if turn["reasoning"]:
                content.append({"type": "reasoning", "reasoning": turn["reasoning"]})
            if turn["answer"]:
                content.append({"type": "text", "text": turn["answer"]})
            return AIMessage(content=content, tool_calls=tool_calls)
        extra = {"reasoning_content": turn["reasoning"]} if turn["reasoning"] else {}
        return AIMessage(content=turn["answer"], additional_kwargs=extra, tool_calls=tool_calls)

    # -- BaseChatModel ------------------------------------------------------------------------
    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self._message(self._turn(messages)))])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for chunk in self._chunks(self._turn(messages)):
            if self.token_delay_s:
                time.sleep(self.token_delay_s)
            self.chunks_produced += 1
            yield ChatGenerationChunk(message=chunk)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        for chunk in self._chunks(self._turn(messages)):
            if self.token_delay_s:
                await asyncio.sleep(self.token_delay_s)
            self.chunks_produced += 1
            yield ChatGenerationChunk(message=chunk)


def _json(args: dict[str, Any]) -> str:
    import json

    return json.dumps(args)


# -- scripted guards ----------------------------------------------------------------------------

_GR_HUMAN = re.compile(r"Human user:\n(.*?)\n\nAI assistant:\n(.*)\n\n\Z", re.DOTALL)
_RS_THOUGHT = re.compile(r"\nThought: (.*)\n<\|assistant\|>\n\Z", re.DOTALL)

GR_SAFE = "Answers: \nRequest: unharmful\nCompletion: compliance\nResponse: unharmful\n"


#: Guard prompts the marker guard could not read. It raises on them, so the check fails closed and
#: a test asserting BLOCK would pass for the wrong reason; tests/conftest.py fails any test that left
#: one here (a test that means it marks itself ``@pytest.mark.unreadable_guard_prompts``).
UNEXPECTED_PROMPTS: list[str] = []


def marker_responder(marker: str = MARKER):
    """A guard that judges only the text under judgment: harmful iff ``marker`` appears in it.

    GuardReasoner prompts carry the user turn and the answer; ReasoningShield prompts carry the
    query and the thought. Reading the right part keeps a harmful query from flagging the answer."""

    def respond(rendered: str) -> str:
        m = _GR_HUMAN.search(rendered)
        if m:
            human, answer = m.group(1), m.group(2)
            req = "harmful" if marker in human else "unharmful"
            res = "harmful" if answer != "None" and marker in answer else "unharmful"
            return f"Answers: \nRequest: {req}\nCompletion: compliance\nResponse: {res}\n"
        m = _RS_THOUGHT.search(rendered)
        if m:
            return '"Analysis": scripted\n"Judgment": ' + ("1" if marker in m.group(1) else "0")
        UNEXPECTED_PROMPTS.append(rendered)
        raise AssertionError(f"unexpected guard prompt: {rendered[-200:]!r}")

    return respond


def scripted_guard(
    *, latency_s: float = 0.01, marker: str = MARKER, **config: Any
) -> tuple[Guard, ScriptedEngine]:
    engine = ScriptedEngine(marker_responder(marker), latency_s=latency_s)
    return Guard(GuardConfig.build(**config), engine=engine), engine


def wait_until(pred, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.005)
    return pred()


def chunk_count(turn: dict[str, Any]) -> int:
    """Chunks the scripted model streams for ``turn``."""
    return len(pieces(turn["reasoning"])) + len(pieces(turn["answer"])) + (1 if turn["tool_calls"] else 0)


def harmful_reasoning(words_before: int = 60, words_after: int = 140) -> str:
    """~200 reasoning tokens with the marker after ``words_before`` harmless ones."""
    return filler(words_before) + f"now the {MARKER} part " + filler(words_after, words_before)


def marker_end(text: str) -> int:
    """Token offset just past the first marker: the shortest prefix a marker guard flags."""
    from guardrails_plugin.stream.extract import approx_tokens

    i = text.index(MARKER) + len(MARKER)
    return approx_tokens(text[:i])


STYLES = ["blocks", "reasoning_content"]
