"""Guard facade with a ScriptedEngine (canned guard outputs; it judges nothing itself)."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

from guardrails_plugin import Action, FailureKind, Guard, GuardConfig, GuardConfigError, Stage
from guardrails_plugin.config import GuardModelConfig, StageConfig
from guardrails_plugin.engines import ScriptedEngine

GR_HARMFUL = "# Task 1\n...\nAnswers: \nRequest: harmful\nCompletion: compliance\nResponse: harmful\n"
GR_SAFE = "# Task 1\n...\nAnswers: \nRequest: unharmful\nCompletion: compliance\nResponse: unharmful\n"


def marker_responder(marker: str = "MARKER"):
    """GuardReasoner / ReasoningShield / FlexGuard style output: harmful iff the judged text has the marker."""

    def respond(rendered: str) -> str:
        if "Human user:" in rendered:
            judged = rendered.split("Human user:\n", 1)[1]
            return GR_HARMFUL if marker in judged else GR_SAFE
        if "Thought: " in rendered:
            return '"Analysis": ok\n"Judgment": ' + ("1" if marker in rendered.split("Thought: ", 1)[1] else "0")
        body = rendered.split("[User]: ", 1)[-1]
        return "<think>\nstep1\n</think>\n" + ("VIO\n90" if marker in body else "SAFE\n5")

    return respond


@pytest.fixture
def guard() -> Guard:
    return Guard(engine=ScriptedEngine(marker_responder()))


def test_three_stages_route_to_their_guards(guard: Guard) -> None:
    assert guard.check_prompt("hello").action is Action.ALLOW
    d = guard.check_prompt("MARKER please")
    assert d.action is Action.BLOCK and d.verdicts[0].guard == "GuardReasoner-1B" and d.verdicts[0].label == "harmful"
    d = guard.check_reasoning(query="q", reasoning="thinking about MARKER")
    assert d.action is Action.BLOCK and d.verdicts[0].guard == "ReasoningShield-1B"
    d = guard.check_response(prompt="q", response="fine answer")
    assert d.action is Action.ALLOW and d.text == "fine answer"


def test_prompt_only_check_sends_none_response(guard: Guard) -> None:
    engine = guard.engine("GuardReasoner-1B")
    guard.check_prompt("hello there")
    assert engine.prompts[-1].endswith("Human user:\nhello there\n\nAI assistant:\nNone\n\n")


def test_windowing_flags_only_the_tail() -> None:
    cfg = GuardConfig(models={
        "GuardReasoner-1B": GuardModelConfig(family="guardreasoner", max_input_chars=1000, window_overlap_chars=100),
        "ReasoningShield-1B": GuardModelConfig(family="reasoningshield"),
    })
    engine = ScriptedEngine(marker_responder())
    guard = Guard(cfg, engine=engine)
    text = ("benign words here. " * 300) + "MARKER at the very end"
    d = guard.check_response(prompt="q", response=text)
    assert d.action is Action.BLOCK
    windows = [v.window for v in d.verdicts]
    assert len(windows) == len(engine.prompts) > 5
    assert windows[0][0] == 0 and windows[-1][1] == len(text)
    flagged = [v for v in d.verdicts if v.risk == 1.0]
    assert len(flagged) == 1 and flagged[0].window == windows[-1]
    assert engine.calls == 1  # all windows went to the engine as one batch


def test_several_guards_per_stage_run_concurrently() -> None:
    cfg = GuardConfig(
        models={
            "GuardReasoner-1B": GuardModelConfig(family="guardreasoner"),
            "ReasoningShield-1B": GuardModelConfig(family="reasoningshield"),
            "FlexGuard": GuardModelConfig(family="flexguard"),
        },
        stages={"prompt": StageConfig(guards=["GuardReasoner-1B", "FlexGuard"])},
    )
    guard = Guard(cfg, engine=ScriptedEngine(marker_responder(), latency_s=1.0))
    t0 = time.perf_counter()
    d = guard.check_prompt("MARKER")
    elapsed = time.perf_counter() - t0
    assert {v.guard for v in d.verdicts} == {"GuardReasoner-1B", "FlexGuard"}
    assert d.categories == ["VIO"]
    assert elapsed < 1.8  # two 1 s guards in parallel, not 2 s in series


def test_engine_exception_fails_closed_and_open() -> None:
    def boom(_: str) -> str:
        raise ConnectionError("engine down")

    d = Guard(engine=ScriptedEngine(boom)).check_prompt("hello")
    assert d.action is Action.BLOCK and d.failure is FailureKind.ENGINE_ERROR and d.reason.startswith("guard_unavailable")
    d = Guard(GuardConfig(fail_mode="open"), engine=ScriptedEngine(boom)).check_prompt("hello")
    assert d.action is Action.ALLOW and d.degraded


def test_deadline_fails_closed_with_timeout_reason() -> None:
    cfg = GuardConfig(models={
        "GuardReasoner-1B": GuardModelConfig(family="guardreasoner", timeout_s=0.2),
        "ReasoningShield-1B": GuardModelConfig(family="reasoningshield"),
    })
    guard = Guard(cfg, engine=ScriptedEngine(marker_responder(), latency_s=5))
    t0 = time.perf_counter()
    d = guard.check_prompt("hello")
    assert time.perf_counter() - t0 < 0.2 * 1.1 + 0.3
    assert d.action is Action.BLOCK and d.failure is FailureKind.TIMEOUT and d.reason.startswith("guard_timeout")


def test_unparseable_guard_output_fails_closed(guard: Guard) -> None:
    g = Guard(engine=ScriptedEngine(["I am not sure."]))
    d = g.check_response(prompt="q", response="a")
    assert d.action is Action.BLOCK and d.failure is FailureKind.UNPARSEABLE and d.reason.startswith("guard_unparseable")


def test_hooks_see_every_decision_and_cannot_break_it(guard: Guard) -> None:
    seen = []
    guard.hooks.append(lambda req, d: seen.append((req.stage, d.action)))
    guard.hooks.append(lambda req, d: 1 / 0)
    assert guard.check_prompt("hi").action is Action.ALLOW
    assert seen == [(Stage.PROMPT, Action.ALLOW)]


async def test_async_twins_and_sync_calls_inside_a_running_loop(guard: Guard) -> None:
    results = await asyncio.gather(*(guard.acheck_prompt(f"text {i} MARKER" if i % 2 else f"text {i}") for i in range(10)))
    assert [r.action for r in results] == [Action.ALLOW, Action.BLOCK] * 5
    # a sync call from inside a running loop (e.g. a sync callback in an async app) still works
    assert guard.check_response(prompt="q", response="ok").action is Action.ALLOW
    assert (await guard.acheck_reasoning(query="q", reasoning="MARKER")).blocked


def test_from_config_yaml_and_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "guard.yaml"
    p.write_text(
        "strictness: strict\n"
        "models:\n  FG:\n    family: flexguard\n    model: /nonexistent/flexguard\n"
        "  GuardReasoner-1B:\n    family: guardreasoner\n  ReasoningShield-1B:\n    family: reasoningshield\n"
        "stages:\n  response:\n    guards: [FG]\n    fail_mode: open\n"
    )
    guard = Guard.from_config(p, engine=ScriptedEngine(marker_responder()))
    assert guard.config.threshold(Stage.RESPONSE) == 0.2
    assert guard.config.fail_mode_for(Stage.RESPONSE) == "open"
    assert guard.config.stage(Stage.PROMPT).guards == ["GuardReasoner-1B"]  # untouched stage keeps defaults
    d = guard.check_response(prompt="q", response="MARKER")
    assert d.action is Action.BLOCK and d.verdicts[0].guard == "FG" and d.risk == 0.9
    monkeypatch.setenv("GUARDRAILS_PLUGIN_STRICTNESS", "loose")
    assert GuardConfig().threshold(Stage.PROMPT) == 0.6


@pytest.mark.parametrize(
    "yaml_text",
    ["strictness: extreme\n", "stages:\n  prompt:\n    guards: [Nope]\n", "- a list\n", "models: {X: {family: llamaguard}}\n"],
)
def test_bad_config_is_a_typed_error(tmp_path: Path, yaml_text: str) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text(yaml_text)
    with pytest.raises(GuardConfigError):
        Guard.from_config(p)


def test_missing_config_file() -> None:
    with pytest.raises(GuardConfigError, match="not found"):
        Guard.from_config("/nonexistent/guard.yaml")


def test_disabled_stage_allows_explicitly() -> None:
    cfg = GuardConfig(stages={"prompt": StageConfig(enabled=False)})
    d = Guard(cfg, engine=ScriptedEngine(marker_responder())).check_prompt("MARKER")
    assert d.action is Action.ALLOW and d.reason == "stage_disabled"


def test_guard_model_that_cannot_judge_a_stage_is_a_config_error() -> None:
    cfg = GuardConfig(stages={"prompt": StageConfig(guards=["ReasoningShield-1B"])})
    with pytest.raises(GuardConfigError, match="cannot judge the prompt stage"):
        Guard(cfg, engine=ScriptedEngine(marker_responder()))


def test_model_size_follows_the_guard_name_when_no_model_is_given() -> None:
    from guardrails_plugin.loading import engine_key

    cfg = GuardConfig(models={
        "GuardReasoner-8B": GuardModelConfig(family="guardreasoner"),
        "ReasoningShield-1B": GuardModelConfig(family="reasoningshield"),
    }, stages={"prompt": StageConfig(guards=["GuardReasoner-8B"]), "response": StageConfig(guards=["GuardReasoner-8B"])})
    guard = Guard(cfg, engine=ScriptedEngine(marker_responder()))
    key = engine_key(cfg.models["GuardReasoner-8B"], guard.model("GuardReasoner-8B"))
    assert key[1] == "yueliu1999/GuardReasoner-8B"
    key = engine_key(cfg.models["ReasoningShield-1B"], guard.model("ReasoningShield-1B"))
    assert key[1] == "ReasoningShield/ReasoningShield-1B"


def test_partial_stage_override_keeps_the_stage_guards() -> None:
    cfg = GuardConfig(stages={"reasoning": {"check_every_tokens": 16}})
    assert cfg.stage(Stage.REASONING).guards == ["ReasoningShield-1B"]
    assert cfg.stage(Stage.REASONING).check_every_tokens == 16


def test_missing_weights_fail_closed_at_check_time_and_loudly_at_warmup(tmp_path: Path) -> None:
    cfg = GuardConfig.build(models={
        "GuardReasoner-1B": {"family": "guardreasoner", "model": str(tmp_path / "missing")},
        "ReasoningShield-1B": {"family": "reasoningshield", "model": str(tmp_path / "missing")},
    })
    guard = Guard(cfg)
    d = guard.check_prompt("hello")
    assert d.action is Action.BLOCK and d.failure is FailureKind.ENGINE_ERROR and d.reason == "guard_unavailable"
    with pytest.raises(GuardConfigError):
        guard.warmup()
    fast = Guard(cfg.model_copy(update={"mode": "fast"}))
    assert fast.check_prompt("hello").action is Action.BLOCK


@pytest.mark.skipif(sys.version_info < (3, 11), reason="Task.cancelling() is 3.11+")
def test_engine_leaking_its_own_cancelled_error_is_an_engine_failure() -> None:
    class Leaky(ScriptedEngine):
        async def generate(self, requests, *, timeout=None):  # type: ignore[override]
            raise asyncio.CancelledError()

    d = Guard(engine=Leaky(["x"])).check_prompt("hello")
    assert d.action is Action.BLOCK and d.failure is FailureKind.ENGINE_ERROR


async def test_cancelling_the_caller_still_cancels_the_check() -> None:
    guard = Guard(engine=ScriptedEngine(marker_responder(), latency_s=5))
    task = asyncio.ensure_future(guard.acheck_prompt("hello"))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# -- failures explain themselves (issue 16) ------------------------------------------------------


def test_fail_mode_decision_logs_the_engine_error_once_and_hides_urls(caplog: pytest.LogCaptureFixture) -> None:
    """The log line has the request id, the guard, the engine and its URL; the decision the caller
    (and a LiteLLM client) sees has risk 1.0 and no internal URL."""
    import logging

    from tests.fake_openai_server import dead_url

    url = dead_url()
    cfg = GuardConfig(models={"GuardReasoner-1B": {"engine": "openai", "base_url": url, "timeout_s": 5}})
    with Guard(cfg) as guard, caplog.at_level(logging.WARNING, logger="guardrails_plugin"):
        d = guard.check_prompt("hello", request_id="req-42")
    assert d.action is Action.BLOCK and d.failure is FailureKind.ENGINE_ERROR and d.risk == 1.0
    host = url.split("://", 1)[1]
    assert host not in (d.detail or "") and all(host not in (v.parse_error or "") for v in d.verdicts)
    assert "<http-url>" in (d.detail or "")
    lines = [r.getMessage() for r in caplog.records if "req-42" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "fail-closed" in lines[0] and "guard=GuardReasoner-1B" in lines[0] and f"engine=openai {url}" in lines[0]
    assert host in lines[0].split("engine_error:", 1)[1]  # the engine's own words, URL kept


def test_fail_open_decision_is_logged_too(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    engine = ScriptedEngine(["no verdict here"])
    guard = Guard(GuardConfig(fail_mode="open"), engine=engine)
    with caplog.at_level(logging.WARNING, logger="guardrails_plugin"):
        d = guard.check_prompt("hello")
    assert d.action is Action.ALLOW and d.degraded and d.failure is FailureKind.UNPARSEABLE
    (line,) = [r.getMessage() for r in caplog.records if d.request_id in r.getMessage()]
    assert "fail-open" in line and "unparseable" in line and "no verdict here" in line


def test_cli_json_of_a_fail_closed_block_says_risk_1(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from guardrails_plugin.cli import app
    from tests.fake_openai_server import dead_url

    url = dead_url()
    r = CliRunner().invoke(app, ["check", "-s", "prompt", "-p", "hello", "--base-url", url, "--json"],
                           catch_exceptions=False)
    assert r.exit_code == 1, r.output
    d = json.loads(r.stdout[r.stdout.index("{"):])
    assert d["action"] == "block" and d["failure"] == "engine_error" and d["risk"] == 1.0
    assert url.split("://", 1)[1] not in json.dumps(d)


def test_checks_never_download_and_warmup_is_the_one_place_that_may(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hub id missing from the cache: a check fails closed at once without asking the hub; warmup()
    asks it and raises one GuardConfigError naming the model and the fix. The hub here is a
    loopback server that counts requests and answers 404 (no such repo)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import huggingface_hub.constants as hc

    seen: list[str] = []

    class Hub(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            seen.append(self.path)
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_HEAD = do_GET

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hc, "ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    try:
        guard = Guard()
        d = guard.check_prompt("hello")
        assert d.action is Action.BLOCK and d.reason == "guard_unavailable" and not seen
        assert "checks never download" in (d.detail or "") and "warmup" in (d.detail or "")
        with pytest.raises(GuardConfigError) as err:
            guard.warmup(["GuardReasoner-1B"])
        assert seen  # warmup did ask the hub
        msg = str(err.value)
        assert "GuardReasoner-1B" in msg and "hf download yueliu1999/GuardReasoner-1B" in msg
        assert "Traceback" not in msg and len(msg.splitlines()) == 1
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        n = len(seen)
        with pytest.raises(GuardConfigError, match="HF_HUB_OFFLINE is set"):
            guard.warmup(["GuardReasoner-1B"])
        assert len(seen) == n
    finally:
        server.shutdown()
