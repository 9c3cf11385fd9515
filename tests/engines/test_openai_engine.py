"""OpenAIEngine against (a) a real ``transformers serve`` process with a tiny local model and (b) a
scriptable misbehaving loopback server (tests/fake_openai_server.py). All traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from guardrails_plugin.engines.base import GenerationRequest
from guardrails_plugin.engines.openai_engine import OpenAIEngine
from guardrails_plugin.engines.vllm_launcher import (
    LaunchedServer,
    launch_server,
    vllm_serve_command,
)
from guardrails_plugin.errors import FailureKind, GuardConfigError, GuardEngineError, GuardTimeoutError

try:  # tests/ on sys.path (pytest's default rootdir-less import)
    from fake_openai_server import FakeOpenAIServer, Reply, dead_url, free_port
except ImportError:  # tests/ as a package
    from tests.fake_openai_server import FakeOpenAIServer, Reply, dead_url, free_port

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


# ------------------------------------------------------------------------------ vllm command
def test_vllm_serve_command() -> None:
    cmd = vllm_serve_command(
        "ReasoningShield/ReasoningShield-1B",
        port=8001,
        gpu_memory_utilization=0.35,
        max_model_len=8192,
        served_model_name="ReasoningShield-1B",
    )
    assert cmd == [
        "vllm", "serve", "ReasoningShield/ReasoningShield-1B",
        "--host", "127.0.0.1", "--port", "8001",
        "--gpu-memory-utilization", "0.35", "--max-model-len", "8192",
        "--served-model-name", "ReasoningShield-1B", "--enable-prefix-caching",
    ]  # fmt: skip
    cmd = vllm_serve_command(
        "m", port=1, gpu_memory_utilization=1.0, max_model_len=1, served_model_name="s",
        enable_prefix_caching=False, extra=("--reasoning-parser", "qwen3"),
    )  # fmt: skip
    assert "--enable-prefix-caching" not in cmd and cmd[-2:] == ["--reasoning-parser", "qwen3"]
    for bad in (
        {"gpu_memory_utilization": 0.0},
        {"gpu_memory_utilization": 1.5},
        {"port": 0},
        {"max_model_len": 0},
        {"served_model_name": ""},
        {"extra": "--x"},
    ):
        kw: dict[str, object] = dict(
            port=1, gpu_memory_utilization=0.3, max_model_len=8, served_model_name="s"
        )
        kw.update(bad)
        with pytest.raises(GuardConfigError):
            vllm_serve_command("m", **kw)  # type: ignore[arg-type]


def test_launch_server_reports_early_exit(tmp_path: Path) -> None:
    cmd = [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"]
    with pytest.raises(GuardEngineError, match="exited with code 3"):
        launch_server(cmd, dead_url(), ready_timeout_s=10, log_path=tmp_path / "log.txt")


def test_launch_server_that_never_answers_raises_the_timeout_error(tmp_path: Path) -> None:
    cmd = [sys.executable, "-c", "import time; print('starting', flush=True); time.sleep(30)"]
    with pytest.raises(GuardTimeoutError, match="not ready after") as ei:
        launch_server(cmd, dead_url(), ready_timeout_s=0.5, log_path=tmp_path / "log.txt")
    assert ei.value.kind is FailureKind.TIMEOUT and "starting" in str(ei.value)  # the log tail is kept


# ------------------------------------------------------------------------------ (a) transformers serve
def _transformers_cli() -> str | None:
    exe = Path(sys.executable).with_name("transformers")
    if exe.exists():
        return str(exe)
    return shutil.which("transformers")


#: what the scripted tiny Qwen3 answers to any chat turn: a think block, then a verdict
SCRIPTED_THINK, SCRIPTED_ANSWER = "step", "SAFE\n7"


def _script_think_block(model_dir: Path) -> None:
    """Make the random-weight model answer a chat turn with ``<think>step</think>SAFE<|im_end|>``.

    A generation-config ``sequence_bias`` of +100 on each (previous token, next token) pair of that
    chain overrides the random logits, so the real server really generates a think block and its
    Qwen3 response parser really splits it into ``reasoning_content``. The chain starts from the
    last token of the generation prompt (``assistant\n``)."""
    import json

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    prompt_ids = tok.apply_chat_template(
        [{"role": "user", "content": "x"}], add_generation_prompt=True, tokenize=True, enable_thinking=True
    )
    if isinstance(prompt_ids, dict) or hasattr(prompt_ids, "keys"):
        prompt_ids = prompt_ids["input_ids"]
    # Tri-grams, not pairs: a token that occurs twice in the chain ("\n") must not have two
    # competing successors.
    chain = [int(prompt_ids[-2]), int(prompt_ids[-1]), tok.convert_tokens_to_ids("<think>")]
    chain += tok.encode(SCRIPTED_THINK, add_special_tokens=False)
    chain += [tok.convert_tokens_to_ids("</think>")]
    chain += tok.encode(SCRIPTED_ANSWER, add_special_tokens=False)
    chain += [tok.convert_tokens_to_ids("<|im_end|>")]
    path = model_dir / "generation_config.json"
    cfg = json.loads(path.read_text())
    for key in ("temperature", "top_k", "top_p"):
        cfg.pop(key, None)
    cfg["do_sample"] = False
    cfg["sequence_bias"] = [[[a, b, c], 100.0] for a, b, c in zip(chain, chain[1:], chain[2:], strict=False)]
    path.write_text(json.dumps(cfg, indent=2))


@pytest.fixture(scope="session")
def tiny_served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LaunchedServer, str]]:
    """A real ``transformers serve`` on 127.0.0.1 serving a tiny Qwen3 (random weights, local
    tokenizer). Skips when transformers serve or its serving extras are missing."""
    cli = _transformers_cli()
    if cli is None:
        pytest.skip("`transformers` CLI not installed")
    try:
        help_out = subprocess.run([cli, "serve", "--help"], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"`transformers serve --help` failed: {exc}")
    if help_out.returncode != 0:
        pytest.skip("`transformers serve` unavailable: " + (help_out.stderr or help_out.stdout)[-300:])
    for mod in ("fastapi", "uvicorn", "accelerate"):
        try:
            __import__(mod)
        except ImportError:
            pytest.skip(f"`transformers serve` needs {mod} (pip install 'transformers[serving]' accelerate)")
    try:
        from guardrails_plugin.testing import build_tiny_model
    except ImportError:
        pytest.skip("guardrails_plugin.testing.build_tiny_model not available")
    root = tmp_path_factory.mktemp("tserve")
    model_dir = root / "tiny-qwen3"
    build_tiny_model(model_dir, family="qwen3")
    _script_think_block(model_dir)
    hub_cache = root / "hub-cache"
    hub_cache.mkdir()
    port = free_port()
    env = {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_CACHE": str(hub_cache),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "OMP_NUM_THREADS": "1",
    }
    cmd = [cli, "serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    server = launch_server(
        cmd, f"http://127.0.0.1:{port}", ready_timeout_s=120, env=env, log_path=root / "serve.log"
    )
    try:
        yield server, str(model_dir)
    finally:
        server.stop()


async def test_transformers_serve_chat(tiny_served: tuple[LaunchedServer, str]) -> None:
    server, model = tiny_served
    e = OpenAIEngine(server.base_url + "/v1", model=model, timeout_s=60)
    reqs = [
        GenerationRequest(messages=({"role": "user", "content": f"hi {i}"},), max_new_tokens=6,
                          chat_template_kwargs={"enable_thinking": False})
        for i in range(2)
    ]  # fmt: skip
    out = await e.generate(reqs)
    assert len(out) == 2 and all(isinstance(o, str) for o in out)
    assert e.stats["failures"] == 0
    await e.aclose()


async def test_transformers_serve_think_block_is_reassembled(
    tiny_served: tuple[LaunchedServer, str],
) -> None:
    """transformers serve splits Qwen3's think block into reasoning_content; the engine puts it back."""
    server, model = tiny_served
    e = OpenAIEngine(server.base_url, model=model, timeout_s=60)
    req = GenerationRequest(
        messages=({"role": "user", "content": "is this safe?"},),
        chat_template_kwargs={"enable_thinking": True},
        max_new_tokens=16,
    )
    (out,) = await e.generate([req])
    assert out == f"<think>{SCRIPTED_THINK}</think>{SCRIPTED_ANSWER}"
    await e.aclose()


async def test_transformers_serve_rejects_prefill(tiny_served: tuple[LaunchedServer, str]) -> None:
    """transformers serve has no continue_final_message: a clear, immediate engine error."""
    server, model = tiny_served
    e = OpenAIEngine(server.base_url, model=model, timeout_s=60)
    req = GenerationRequest(messages=({"role": "user", "content": "q"},), assistant_prefix="<think>")
    with pytest.raises(GuardEngineError, match="continue_final_message") as ei:
        await e.generate([req])
    assert getattr(ei.value, "status_code", None) == 422 and e.stats["retries"] == 0
    await e.aclose()


async def test_transformers_serve_completions(tiny_served: tuple[LaunchedServer, str]) -> None:
    server, model = tiny_served
    e = OpenAIEngine(server.base_url, model=model, timeout_s=60)
    (out,) = await e.generate([GenerationRequest(prompt="Human user: hi\nAnswers:", max_new_tokens=5)])
    assert isinstance(out, str)
    await e.aclose()


async def test_transformers_serve_unknown_model_is_an_engine_error(
    tiny_served: tuple[LaunchedServer, str],
) -> None:
    server, _ = tiny_served
    e = OpenAIEngine(server.base_url, model="/no/such/model", timeout_s=30, max_retries=0)
    with pytest.raises(GuardEngineError):
        await e.generate([CHAT])
    await e.aclose()


def test_guard_end_to_end_through_transformers_serve(tiny_served: tuple[LaunchedServer, str]) -> None:
    """Guard -> FlexGuard adapter -> OpenAIEngine -> a real `transformers serve` -> parser -> policy.

    The tiny Qwen3's generation config is biased to write a FlexGuard answer (think block, SAFE, 7),
    so the verdict is a real parse of what came over HTTP, not a fail-mode outcome."""
    from guardrails_plugin import Action, Guard, GuardConfig

    server, model = tiny_served
    cfg = GuardConfig.build(
        models={"FlexGuard": {"family": "flexguard", "engine": "openai", "base_url": server.base_url,
                              "served_model_name": model, "max_new_tokens": 32, "timeout_s": 60}},
        stages={"prompt": {"guards": ["FlexGuard"]}, "reasoning": {"enabled": False},
                "response": {"guards": ["FlexGuard"]}},
    )
    with Guard(cfg) as guard:
        d = guard.check_prompt("is this safe?")
        assert d.action is Action.ALLOW, d
        (v,) = d.verdicts
        assert v.parse_ok and v.guard == "FlexGuard" and v.label == "SAFE"
        assert v.risk == pytest.approx(0.07) and v.rationale == SCRIPTED_THINK


def test_guards_with_different_api_keys_do_not_share_an_engine() -> None:
    from guardrails_plugin import Guard, GuardConfig, GuardModelConfig

    url = "http://127.0.0.1:9"
    cfg = GuardConfig(
        models={
            "a": GuardModelConfig(family="guardreasoner", engine="openai", base_url=url, served_model_name="m",
                                  api_key="key-a"),
            "b": GuardModelConfig(family="guardreasoner", engine="openai", base_url=url, served_model_name="m",
                                  api_key="key-b"),
            "c": GuardModelConfig(family="guardreasoner", engine="openai", base_url=url, served_model_name="m",
                                  api_key="key-a"),
        },
        stages={"prompt": {"guards": ["a", "b", "c"]}, "reasoning": {"enabled": False},
                "response": {"enabled": False}},
        circuit={"enabled": False},
    )
    guard = Guard(cfg)
    assert guard.engine("a").api_key == "key-a" and guard.engine("b").api_key == "key-b"
    assert guard.engine("a") is guard.engine("c")  # identical configs still share
    guard.close()
