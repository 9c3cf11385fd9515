"""Extra latency to the first answer token of the event-safe LangChain paths (issue 19).

Benign rows only: a fake reasoning chat model streams ``--reasoning-words`` reasoning words and then
``--answer-words`` answer words at ``--tok-s`` tokens per second; a scripted guard answers "safe" after
a fixed latency (``--latency-ms``, default 20 and 200). For each way of reading the output it times the
first chunk or event that carries answer text, for the plain model / plain agent and for the guarded
one (GuardedRunnable, create_agent + GuardMiddleware), and prints the medians and the difference:

    runnable  stream               plain model.stream vs GuardedRunnable.stream
    runnable  astream_events v2    plain model vs GuardedRunnable, on_chat_model_stream
    agent     stream messages      create_agent vs create_agent + GuardMiddleware, stream_mode="messages"
    agent     astream_events v2    the same agents, on_chat_model_stream

What the difference is made of: the prompt check before the model starts (one guard call), the gate
(the answer waits for the reasoning's final check: one guard call after the reasoning ends) and the
answer's hold-back (the first answer text leaves once a check has covered it: one more guard call,
plus the tokens until that check is due). Offline, no model weights:

    python benchmarks/langchain_stream_bench.py                 # 20 ms and 200 ms guards, 3 runs each
    python benchmarks/langchain_stream_bench.py --latency-ms 50 --runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain.agents import create_agent
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult

from guardrails_plugin import Guard, GuardConfig
from guardrails_plugin.engines import ScriptedEngine
from guardrails_plugin.langchain import GuardMiddleware, guard_runnable

warnings.filterwarnings("ignore")
ANSWER_MARK = "zq"  # every answer word starts with it; nothing else does


class PacedReasoningModel(BaseChatModel):
    """Streams reasoning blocks, then answer blocks, one word per chunk at a fixed rate."""

    reasoning_words: int = 20
    answer_words: int = 40
    delay_s: float = 0.01

    @property
    def _llm_type(self) -> str:
        return "paced-reasoning"

    def bind_tools(self, tools: Any, **kwargs: Any) -> PacedReasoningModel:
        return self

    def _chunks(self) -> Iterator[AIMessageChunk]:
        for i in range(self.reasoning_words):
            yield AIMessageChunk(content=[{"type": "reasoning", "reasoning": f"step{i} ", "index": 0}])
        for i in range(self.answer_words):
            yield AIMessageChunk(content=[{"type": "text", "text": f"{ANSWER_MARK}{i} ", "index": 1}])

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any) -> ChatResult:
        text = "".join(f"{ANSWER_MARK}{i} " for i in range(self.answer_words))
        return ChatResult(generations=[ChatGeneration(message=AIMessage(text))])

    def _stream(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any) -> Iterator[ChatGenerationChunk]:
        for c in self._chunks():
            time.sleep(self.delay_s)
            yield ChatGenerationChunk(message=c)

    async def _astream(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None,
                       **kw: Any) -> AsyncIterator[ChatGenerationChunk]:
        for c in self._chunks():
            await asyncio.sleep(self.delay_s)
            yield ChatGenerationChunk(message=c)


def _has_answer(item: Any) -> bool:
    return ANSWER_MARK in repr(item)


def _first_sync(items: Iterator[Any]) -> float:
    t0 = time.perf_counter()
    first = None
    for item in items:
        if first is None and _has_answer(item):
            first = time.perf_counter() - t0
    assert first is not None, "no answer text reached the reader"
    return first


async def _first_async(items: AsyncIterator[Any]) -> float:
    t0 = time.perf_counter()
    first = None
    async for item in items:
        if first is None and _has_answer(item if not isinstance(item, dict) else item.get("data", {}).get("chunk")):
            first = time.perf_counter() - t0
    assert first is not None, "no answer text reached the reader"
    return first


def _stream_events(runnable: Any, inp: Any) -> AsyncIterator[Any]:
    async def only_tokens() -> AsyncIterator[Any]:
        async for e in runnable.astream_events(inp, version="v2"):
            if e["event"] == "on_chat_model_stream":
                yield e
    return only_tokens()


def run(args: argparse.Namespace) -> None:
    q = "How do fireworks get their colours?"
    agent_in = {"messages": [HumanMessage(q)]}
    print(f"fake model: {args.reasoning_words} reasoning + {args.answer_words} answer words at {args.tok_s:.0f} tok/s;"
          f" medians of {args.runs} runs; time to the first answer text")
    print(f"{'guard':>7}  {'what':<10} {'read through':<20} {'plain ms':>9} {'guarded ms':>11} {'extra ms':>9}")
    for latency_ms in args.latency_ms:
        def model() -> PacedReasoningModel:
            return PacedReasoningModel(reasoning_words=args.reasoning_words, answer_words=args.answer_words,
                                       delay_s=1.0 / args.tok_s)

        def guard(latency_s: float = latency_ms / 1000) -> Guard:
            return Guard(GuardConfig(), engine=ScriptedEngine.from_rules({}, latency_s=latency_s))

        rows = [
            ("runnable", "stream", lambda: _first_sync(model().stream(q)),
             lambda: _first_sync(guard_runnable(model(), guard()).stream(q))),
            ("runnable", "astream_events v2", lambda: asyncio.run(_first_async(_stream_events(model(), q))),
             lambda: asyncio.run(_first_async(_stream_events(guard_runnable(model(), guard()), q)))),
            ("agent", "stream messages",
             lambda: _first_sync(create_agent(model(), tools=[]).stream(agent_in, stream_mode="messages")),
             lambda: _first_sync(create_agent(model(), tools=[], middleware=[GuardMiddleware(guard())]).stream(
                 agent_in, stream_mode="messages"))),
            ("agent", "astream_events v2",
             lambda: asyncio.run(_first_async(_stream_events(create_agent(model(), tools=[]), agent_in))),
             lambda: asyncio.run(_first_async(_stream_events(
                 create_agent(model(), tools=[], middleware=[GuardMiddleware(guard())]), agent_in)))),
        ]
        for what, how, plain, guarded in rows:
            p = statistics.median(plain() for _ in range(args.runs)) * 1000
            g = statistics.median(guarded() for _ in range(args.runs)) * 1000
            print(f"{latency_ms:>5}ms  {what:<10} {how:<20} {p:>9.0f} {g:>11.0f} {g - p:>+9.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--latency-ms", type=int, nargs="+", default=[20, 200], help="scripted guard latency per check")
    ap.add_argument("--tok-s", type=float, default=100.0, help="the fake model's token rate")
    ap.add_argument("--reasoning-words", type=int, default=20)
    ap.add_argument("--answer-words", type=int, default=40)
    ap.add_argument("--runs", type=int, default=3)
    run(ap.parse_args())


if __name__ == "__main__":
    main()
