"""OpenAIEngine against a scriptable misbehaving loopback server (tests/fake_openai_server.py): wire
format, retries, deadlines, batches, scale-out, event loops. Real server processes (the vLLM command,
``transformers serve``) are in test_openai_engine_servers.py. All traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
from fake_openai_server import FakeOpenAIServer, Reply, dead_url

from guardrails_plugin.engines.base import GenerationRequest
from guardrails_plugin.engines.openai_engine import OpenAIEngine
from guardrails_plugin.errors import GuardConfigError, GuardEngineError, GuardTimeoutError

RAW = GenerationRequest(prompt="Human user: hi\n", max_new_tokens=8, stop=("\n\n",))
CHAT = GenerationRequest(
    messages=({"role": "system", "content": "sys"}, {"role": "user", "content": "hello"}),
    chat_template_kwargs={"enable_thinking": True},
    max_new_tokens=16,
)


@pytest.fixture
def srv() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture
def srv2() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as server:
        yield server


def _engine(url: str | list[str], **kw: object) -> OpenAIEngine:
    kw.setdefault("backoff_s", 0.01)
    return OpenAIEngine(url, model="fake-model", **kw)  # type: ignore[arg-type]


@pytest.fixture
async def make_engine() -> AsyncIterator[Callable[..., OpenAIEngine]]:
    """Engines closed at teardown on the test's loop, also when the test raised: no leaked sockets."""
    made: list[OpenAIEngine] = []

    def make(url: str | list[str], **kw: object) -> OpenAIEngine:
        made.append(_engine(url, **kw))
        return made[-1]

    yield make
    for e in made:
        await e.aclose()


# ------------------------------------------------------------------------------ wire format
def test_base_url_forms_and_config_errors() -> None:
    e = OpenAIEngine(["http://h:1", "http://h:1/", "http://h:1/v1", "http://h:1/v1/"], model="m")
    assert e.base_urls == ["http://h:1"] * 4
    with pytest.raises(GuardConfigError):
        OpenAIEngine([], model="m")
    with pytest.raises(GuardConfigError):
        OpenAIEngine("h:1", model="m")
    with pytest.raises(GuardConfigError):
        OpenAIEngine("http://h:1", model="")


async def test_raw_prompt_goes_to_completions(
    srv: FakeOpenAIServer, make_engine: Callable[..., OpenAIEngine]
) -> None:
    e = make_engine(srv.base_url + "/v1/")
    req = GenerationRequest(prompt="P", assistant_prefix="Answers:", max_new_tokens=7, stop=("</s>",))
    assert await e.generate([req]) == ["echo:PAnswers:"]
    (rec,) = srv.completion_requests()
    assert rec.path == "/v1/completions"
    assert rec.body == {
        "model": "fake-model",
        "prompt": "PAnswers:",
        "max_tokens": 7,
        "temperature": 0,
        "stream": False,
        "stop": ["</s>"],
    }
    assert rec.headers["authorization"] == "Bearer EMPTY"


async def test_chat_goes_to_chat_completions_with_template_kwargs(
    srv: FakeOpenAIServer, make_engine: Callable[..., OpenAIEngine]
) -> None:
    e = make_engine(srv.base_url)
    assert await e.generate([CHAT]) == ["echo:hello"]
    (rec,) = srv.completion_requests()
    assert rec.path == "/v1/chat/completions"
    assert rec.body["messages"] == [dict(m) for m in CHAT.messages or ()]
    assert rec.body["chat_template_kwargs"] == {"enable_thinking": True}  # top level, as vLLM reads it
    assert rec.body["temperature"] == 0 and rec.body["max_tokens"] == 16
    assert "continue_final_message" not in rec.body and "stop" not in rec.body


async def test_chat_assistant_prefix_continues_final_message(
    srv: FakeOpenAIServer, make_engine: Callable[..., OpenAIEngine]
) -> None:
    e = make_engine(srv.base_url)
    req = GenerationRequest(messages=({"role": "user", "content": "q"},), assistant_prefix='"Judgment": ')
    await e.generate([req])
    body = srv.bodies[0]
    assert body["messages"][-1] == {"role": "assistant", "content": '"Judgment": '}
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    assert "chat_template_kwargs" not in body


async def test_api_key_from_env(
    srv: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch, make_engine: Callable[..., OpenAIEngine]
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    e = make_engine(srv.base_url)
    await e.generate([RAW])
    e2 = make_engine(srv.base_url, api_key="sk-arg")
    await e2.generate([RAW])
    assert [r.headers["authorization"] for r in srv.completion_requests()] == [
        "Bearer sk-env",
        "Bearer sk-arg",
    ]


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
async def test_reasoning_field_is_reassembled(
    srv: FakeOpenAIServer, field: str, make_engine: Callable[..., OpenAIEngine]
) -> None:
    srv.script(Reply.ok("\n\nS1\nRISK_SCORE: 80", reasoning="\nstep1\n", reasoning_field=field))
    e = make_engine(srv.base_url)
    assert await e.generate([CHAT]) == ["<think>\nstep1\n</think>\n\nS1\nRISK_SCORE: 80"]


async def test_reasoning_truncated_by_length_stays_open(
    srv: FakeOpenAIServer, make_engine: Callable[..., OpenAIEngine]
) -> None:
    srv.script(
        Reply(
            body={
                "choices": [
                    {"message": {"content": None, "reasoning_content": "long..."}, "finish_reason": "length"}
                ]
            }
        )
    )
    e = make_engine(srv.base_url)
    assert await e.generate([CHAT]) == ["<think>long..."]


async def test_batch_is_concurrent_and_ordered(
    srv: FakeOpenAIServer, make_engine: Callable[..., OpenAIEngine]
) -> None:
    srv.default = Reply.slow(0.3)
    e = make_engine(srv.base_url)
    reqs = [GenerationRequest(prompt=f"p{i}") for i in range(6)]
    t0 = time.monotonic()
    out = await e.generate(reqs)
    assert out == [f"echo:p{i}" for i in range(6)]
    assert time.monotonic() - t0 < 6 * 0.3 * 0.6  # sent concurrently, not one after another
    assert e.stats["requests"] == 6 and e.stats["failures"] == 0


async def test_empty_batch(make_engine: Callable[..., OpenAIEngine]) -> None:
    assert await make_engine("http://127.0.0.1:9").generate([]) == []


# ------------------------------------------------------------------------------ retries
async def test_429_then_200_retries_and_honours_retry_after(
    srv: FakeOpenAIServer, make_engine: Callable[..., OpenAIEngine]
) -> None:
    srv.script(Reply.error(429, "slow down", retry_after=0.3))
    e = make_engine(srv.base_url)
    t0 = time.monotonic()
    assert await e.generate([RAW]) == ["echo:" + RAW.prompt]  # type: ignore[operator]
    assert time.monotonic() - t0 >= 0.28  # waited for Retry-After, not just the 0.01 s backoff
    assert len(srv.completion_requests()) == 2
    assert e.stats["retries"] == 1


async def test_503_retried_then_gives_up(
    srv: FakeOpenAIServer, make_engine: Callable[..., OpenAIEngine]
) -> None:
    srv.default = Reply.error(503, "overloaded")
    e = make_engine(srv.base_url, max_retries=2)
    with pytest.raises(GuardEngineError) as ei:
        await e.generate([RAW])
    assert not isinstance(ei.value, GuardTimeoutError)
    assert "503" in str(ei.value)
    assert len(srv.completion_requests()) == 3  # 1 + max_retries
    assert e.stats["retries"] == 2 and e.stats["failures"] == 1


@pytest.mark.parametrize("status", [400, 404, 422, 500, 502])
async def test_other_http_errors_raise_immediately(
    srv: FakeOpenAIServer, status: int, make_engine: Callable[..., OpenAIEngine]
) -> None:
    srv.default = Reply.error(status, "model 'x' does not exist")
    e = make_engine(srv.base_url, max_retries=5)
    with pytest.raises(GuardEngineError) as ei:
        await e.generate([RAW])
    msg = str(ei.value)
    assert f"HTTP {status}" in msg and "does not exist" in msg
    assert getattr(ei.value, "status_code", None) == status
    assert len(srv.completion_requests()) == 1 and e.stats["retries"] == 0


@pytest.mark.parametrize(
    "reply",
    [
        Reply.garbage(),
        Reply(body={"object": "list"}),
        Reply(body={"choices": []}),
        Reply(body={"choices": [{"message": None}]}),
        Reply(body=[1, 2]),
    ],
    ids=["garbage", "no-choices", "empty-choices", "no-message", "not-object"],
)
async def test_malformed_replies_raise_without_retry(
    srv: FakeOpenAIServer, reply: Reply, make_engine: Callable[..., OpenAIEngine]
) -> None:
    srv.default = reply
    e = make_engine(srv.base_url)
    with pytest.raises(GuardEngineError):
        await e.generate([CHAT])
    assert len(srv.completion_requests()) == 1


@pytest.mark.parametrize("fault", [Reply.reset(), Reply.close()], ids=["reset-mid-body", "closed"])
async def test_connection_faults_are_retried(
    srv: FakeOpenAIServer, fault: Reply, make_engine: Callable[..., OpenAIEngine]
) -> None:
    srv.script(fault)
    e = make_engine(srv.base_url)
    assert await e.generate([RAW]) == ["echo:" + RAW.prompt]  # type: ignore[operator]
    assert e.stats["retries"] == 1
    assert len(srv.completion_requests()) == 2


# ------------------------------------------------------------------------------ deadline
async def test_slow_reply_hits_deadline(
    srv: FakeOpenAIServer, make_engine: Callable[..., OpenAIEngine]
) -> None:
    srv.default = Reply.slow(5.0)
    e = make_engine(srv.base_url, timeout_s=10.0)
    t0 = time.monotonic()
    with pytest.raises(GuardTimeoutError):
        await e.generate([RAW, CHAT], timeout=0.5)
    assert time.monotonic() - t0 <= 0.5 * 1.1 + 0.15


async def test_default_deadline_is_timeout_s(
    srv: FakeOpenAIServer, make_engine: Callable[..., OpenAIEngine]
) -> None:
    srv.default = Reply.slow(5.0)
    e = make_engine(srv.base_url, timeout_s=0.4)
    t0 = time.monotonic()
    with pytest.raises(GuardTimeoutError):
        await e.generate([RAW])
    assert time.monotonic() - t0 <= 0.4 * 1.1 + 0.15


async def test_deadline_covers_retries(
    srv: FakeOpenAIServer, make_engine: Callable[..., OpenAIEngine]
) -> None:
    srv.default = Reply(status=503, body={"error": "busy"}, delay_s=0.15)
    e = make_engine(srv.base_url, max_retries=50, backoff_s=0.05)
    t0 = time.monotonic()
    with pytest.raises(GuardTimeoutError):
        await e.generate([RAW], timeout=0.6)
    assert time.monotonic() - t0 <= 0.6 * 1.1 + 0.15
    assert 1 <= e.stats["retries"] < 50


async def test_large_retry_after_beyond_deadline_fails_fast(
    srv: FakeOpenAIServer, make_engine: Callable[..., OpenAIEngine]
) -> None:
    srv.default = Reply.error(429, retry_after=3)
    e = make_engine(srv.base_url)
    t0 = time.monotonic()
    with pytest.raises(GuardTimeoutError):
        await e.generate([RAW], timeout=1.0)
    assert time.monotonic() - t0 < 0.9  # did not sleep into the 1 s deadline
    assert len(srv.completion_requests()) == 1


# ------------------------------------------------------------------------------ batches
async def test_one_failure_fails_the_whole_batch(
    srv: FakeOpenAIServer, make_engine: Callable[..., OpenAIEngine]
) -> None:
    srv.default = lambda rec: Reply.error(500) if rec.prompt_text == "bad" else Reply.slow(2.0)
    e = make_engine(srv.base_url)
    reqs = [GenerationRequest(prompt="a"), GenerationRequest(prompt="bad"), GenerationRequest(prompt="c")]
    t0 = time.monotonic()
    with pytest.raises(GuardEngineError, match="HTTP 500"):
        await e.generate(reqs)
    assert time.monotonic() - t0 < 1.5  # the slow siblings were cancelled, not awaited
    assert e.stats["failures"] == 3


# ------------------------------------------------------------------------------ scale-out
async def test_round_robin_across_two_servers(
    srv: FakeOpenAIServer, srv2: FakeOpenAIServer, make_engine: Callable[..., OpenAIEngine]
) -> None:
    e = make_engine([srv.base_url, srv2.base_url])
    for _ in range(4):
        await e.generate([RAW])
    await e.generate([RAW] * 4)
    assert len(srv.completion_requests()) == 4 and len(srv2.completion_requests()) == 4


async def test_failover_when_one_server_is_dead(
    srv: FakeOpenAIServer, make_engine: Callable[..., OpenAIEngine]
) -> None:
    e = make_engine([dead_url(), srv.base_url], max_retries=0)  # failover must not need a retry
    out = await e.generate([GenerationRequest(prompt=f"p{i}") for i in range(4)])
    assert out == [f"echo:p{i}" for i in range(4)]
    assert len(srv.completion_requests()) == 4
    assert e.stats["failovers"] >= 1 and e.stats["retries"] == 0


async def test_all_servers_dead_raise_engine_error(make_engine: Callable[..., OpenAIEngine]) -> None:
    e = make_engine([dead_url(), dead_url()], max_retries=1)
    t0 = time.monotonic()
    with pytest.raises(GuardEngineError) as ei:
        await e.generate([RAW], timeout=5.0)
    assert not isinstance(ei.value, GuardTimeoutError)
    assert "connection error" in str(ei.value)
    assert time.monotonic() - t0 < 2.0


# ------------------------------------------------------------------------------ event loops
def test_client_is_per_event_loop(srv: FakeOpenAIServer) -> None:
    """An AsyncClient must not cross event loops: each loop gets its own, and a closed client is
    replaced (the sync facade or a user may drive the engine from several loops)."""
    e = _engine(srv.base_url)
    loop_a, loop_b = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        for loop in (loop_a, loop_b, loop_a, loop_b):
            assert loop.run_until_complete(e.generate([RAW])) == ["echo:" + RAW.prompt]  # type: ignore[operator]
        assert len(e._clients) == 2
        for loop in (loop_a, loop_b):
            loop.run_until_complete(e.aclose())
        assert len(e._clients) == 0
    finally:
        loop_a.close()
        loop_b.close()

    async def run_and_close() -> list[str]:
        try:
            return await e.generate([CHAT])
        finally:
            await e.aclose()

    assert asyncio.run(run_and_close()) == ["echo:hello"]
    assert asyncio.run(run_and_close()) == ["echo:hello"]  # fresh loop, fresh client
    assert len(srv.completion_requests()) == 6
