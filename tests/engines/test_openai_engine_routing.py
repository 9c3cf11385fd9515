"""OpenAIEngine's routing side, on loopback servers: the session key a stream's checks carry, the
failover list (sticky per stream, round-robin otherwise), the 404 configuration error and the
``check_ready`` probe ``Guard.warmup()`` uses. The real router: tests/engines/test_vllm_router.py."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable

import pytest

from guardrails_plugin.engines.base import GenerationRequest, SessionKey
from guardrails_plugin.engines.openai_engine import OpenAIEngine
from guardrails_plugin.engines.openai_wire import rendezvous_order, routing_key
from guardrails_plugin.errors import GuardConfigError, GuardEngineError, GuardServerConfigError

try:
    from fake_openai_server import FakeOpenAIServer, Reply, dead_url
    from guard_replica import GuardReplica
except ImportError:  # tests/ as a package
    from tests.fake_openai_server import FakeOpenAIServer, Reply, dead_url
    from tests.guard_replica import GuardReplica

def req(stream: str | None = None, text: str = "p", *, window: int = 0) -> GenerationRequest:
    """A request of guard "G" on ``window`` of ``stream`` (None: outside any stream)."""
    key = SessionKey(stream, "G", window) if stream is not None else None
    return GenerationRequest(messages=({"role": "user", "content": text},), session_id=key)


@pytest.fixture
async def make_engine() -> AsyncIterator[Callable[..., OpenAIEngine]]:
    made: list[OpenAIEngine] = []

    def make(url: str | list[str], **kw: object) -> OpenAIEngine:
        kw.setdefault("model", "fake-model")
        kw.setdefault("backoff_s", 0.01)
        made.append(OpenAIEngine(url, **kw))  # type: ignore[arg-type]
        return made[-1]

    yield make
    for e in made:
        await e.aclose()


def test_routing_key_is_the_monitor_part_of_the_session() -> None:
    assert routing_key(req("mon1")) == routing_key(req("mon1", window=3)) == "mon1"
    assert routing_key(req(None)) is None and routing_key(req("")) is None
    urls = [f"http://h{i}:1" for i in range(5)]
    order = rendezvous_order("mon1", urls)
    assert sorted(order) == sorted(urls) and rendezvous_order("mon1", list(reversed(urls))) == order
    # dropping a server moves only the keys it held
    keys = [f"k{i}" for i in range(200)]
    before = {k: rendezvous_order(k, urls)[0] for k in keys}
    after = {k: rendezvous_order(k, urls[:-1])[0] for k in keys}
    assert all(before[k] == after[k] for k in keys if before[k] != urls[-1])


async def test_stream_checks_carry_one_session_header(make_engine: Callable[..., OpenAIEngine]) -> None:
    with FakeOpenAIServer() as srv:
        e = make_engine(srv.base_url)
        await e.generate([req("monA"), req("monA", window=1)])
        await e.generate([req("monB")])
        await e.generate([req(None), req(None)])
        sent = [r.headers.get("x-session-id") for r in srv.completion_requests()]
        assert sent[:3] == ["monA", "monA", "monB"]
        assert len(set(sent[3:])) == 2 and all(s and len(s) == 32 for s in sent[3:])  # a fresh key each
        assert all("session_params" not in b for b in srv.bodies)

        e2 = make_engine(srv.base_url, session_header="x-routing-key", session_field=True)
        await e2.generate([req("monC")])
        last = srv.completion_requests()[-1]
        assert last.headers.get("x-routing-key") == "monC" and "x-session-id" not in last.headers
        assert last.body["session_params"] == {"session_id": "monC"}

        e3 = make_engine(srv.base_url, session_header=None)
        await e3.generate([req("monD")])
        assert not any(h.startswith("x-") for h in srv.completion_requests()[-1].headers)


async def test_failover_list_is_sticky_per_stream_and_round_robin_otherwise(
    make_engine: Callable[..., OpenAIEngine],
) -> None:
    with FakeOpenAIServer() as a, FakeOpenAIServer() as b, FakeOpenAIServer() as c:
        servers = [a, b, c]
        e = make_engine([s.base_url for s in servers])
        for i in range(12):
            for check in range(3):
                await e.generate([req(f"stream{i}", text=f"{i}-{check}")])
        where: dict[str, set[int]] = {}
        for n, s in enumerate(servers):
            for r in s.completion_requests():
                where.setdefault(r.headers["x-session-id"], set()).add(n)
        assert all(len(v) == 1 for v in where.values()), where  # every stream on one server
        assert len({next(iter(v)) for v in where.values()}) >= 2  # streams spread
        for s in servers:
            s.reset()
        await e.generate([req(None, text=str(i)) for i in range(6)])
        assert [len(s.completion_requests()) for s in servers] == [2, 2, 2]


async def test_a_stream_fails_over_when_its_server_is_down(make_engine: Callable[..., OpenAIEngine]) -> None:
    with FakeOpenAIServer() as up:
        dead = dead_url()
        e = make_engine([dead, up.base_url], max_retries=0)
        # a key whose preferred server is the dead one
        key = next(k for k in (f"s{i}" for i in range(100)) if rendezvous_order(k, [dead, up.base_url])[0] == dead)
        assert await e.generate([req(key)]) == ["echo:p"]
        assert e.stats["failovers"] == 1 and len(up.completion_requests()) == 1


async def test_unknown_model_404_is_a_configuration_error(make_engine: Callable[..., OpenAIEngine]) -> None:
    with GuardReplica(["ReasoningShield-1B"]) as rep:
        e = make_engine(rep.base_url, model="ReasoningShield/ReasoningShield-1B", max_retries=3)
        with pytest.raises(GuardServerConfigError) as ei:
            await e.generate([req("m")])
        err = ei.value
        assert isinstance(err, GuardConfigError) and isinstance(err, GuardEngineError)
        assert "does not serve model 'ReasoningShield/ReasoningShield-1B'" in str(err) and e.stats["retries"] == 0
        assert len(rep.records()) == 1
    with FakeOpenAIServer(default=Reply.error(404, "Not Found")) as srv:
        with pytest.raises(GuardServerConfigError, match="no such endpoint"):
            await make_engine(srv.base_url).generate([req()])


async def test_check_ready(make_engine: Callable[..., OpenAIEngine], caplog: pytest.LogCaptureFixture) -> None:
    with GuardReplica(["GuardReasoner-1B"]) as rep:
        assert await make_engine(rep.base_url, model="GuardReasoner-1B").check_ready() == {
            rep.base_url: ["GuardReasoner-1B"]}
        assert rep.records() == []  # listed: no completion spent
        with pytest.raises(GuardServerConfigError, match="It serves: GuardReasoner-1B"):
            await make_engine(rep.base_url + "/v1", model="yueliu1999/GuardReasoner-1B").check_ready()
        # a failover list: one server down is a warning, all down an engine error
        with caplog.at_level(logging.WARNING):
            ready = await make_engine([dead_url(), rep.base_url], model="GuardReasoner-1B").check_ready()
        assert list(ready) == [rep.base_url] and "does not answer" in caplog.text
    with pytest.raises(GuardEngineError, match="no server answers") as ei:
        await make_engine([dead_url(), dead_url()], model="m").check_ready()
    assert not isinstance(ei.value, GuardConfigError)
    # servers that load models on demand (transformers serve) list only some: a 1-token completion decides
    with FakeOpenAIServer(model="something-else") as srv:
        assert await make_engine(srv.base_url, model="/models/tiny").check_ready() == {srv.base_url: ["something-else"]}
        (probe,) = srv.completion_requests()
        assert probe.body["model"] == "/models/tiny" and probe.body["max_tokens"] == 1


def test_check_ready_through_guard_warmup() -> None:
    from guardrails_plugin import Guard, GuardConfig

    with GuardReplica(["GuardReasoner-1B"]) as rep:
        cfg = GuardConfig.build(
            models={"GuardReasoner-1B": {"family": "guardreasoner", "engine": "openai", "base_url": rep.base_url,
                                         "served_model_name": "GuardReasoner-8B"}},
            stages={"prompt": {"guards": ["GuardReasoner-1B"]}, "reasoning": {"enabled": False},
                    "response": {"guards": ["GuardReasoner-1B"]}},
        )  # fmt: skip
        with Guard(cfg) as guard:
            with pytest.raises(GuardConfigError, match="does not serve model 'GuardReasoner-8B'"):
                guard.warmup()
        ok = cfg.model_copy(update={"models": {"GuardReasoner-1B": cfg.models["GuardReasoner-1B"].model_copy(
            update={"served_model_name": "GuardReasoner-1B"})}})
        with Guard(ok) as guard:
            guard.warmup()
            assert guard.check_prompt("hi").verdicts[0].ok
    assert Counter(r["model"] for r in rep.records()) == Counter({"GuardReasoner-8B": 1, "GuardReasoner-1B": 1})
