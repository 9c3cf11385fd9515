"""Bad input: each gets a correct decision or a clear typed error (GuardInputError), never an
unhandled exception and never a silent ALLOW. An ALLOW must come from a verdict, from the explicit
empty-text reason, or be marked degraded (fail-open)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

from guardrails_plugin import (
    Action,
    Decision,
    FailureKind,
    Guard,
    GuardConfig,
    GuardInputError,
    GuardModelConfig,
    Stage,
)
from guardrails_plugin.engines import ScriptedEngine
from guardrails_plugin.windowing import merge_spans, split_windows

try:
    from fake_openai_server import FakeOpenAIServer, Reply
except ImportError:
    from tests.fake_openai_server import FakeOpenAIServer, Reply

GR_SAFE = "ok\nAnswers: \nRequest: unharmful\nCompletion: compliance\nResponse: unharmful\n"
GR_HARMFUL = "bad\nAnswers: \nRequest: harmful\nCompletion: compliance\nResponse: harmful\n"
RS_SAFE = '"Analysis": fine\n"Judgment": 0'
RS_HARMFUL = '"Analysis": weapons\n"Judgment": 1'


def responder(prompt: str) -> str:
    """Judges only the judged text: the marker must appear after the guard's own headers."""
    chat = "<|system|>" in prompt
    body = prompt.split("Human user:\n", 1)[-1] if not chat else prompt.split("<|user|>", 1)[-1]
    if "bomb" in body:
        return RS_HARMFUL if chat else GR_HARMFUL
    return RS_SAFE if chat else GR_SAFE


@pytest.fixture
def engine() -> ScriptedEngine:
    return ScriptedEngine(responder)


@pytest.fixture
def guard(engine: ScriptedEngine) -> Iterator[Guard]:
    with Guard(GuardConfig(), engine=engine) as g:
        yield g


def assert_justified(d: Decision) -> None:
    """No silent ALLOW."""
    if d.action is Action.ALLOW:
        from_verdict = bool(d.verdicts) and all(v.ok for v in d.verdicts) and d.failure is None
        assert from_verdict or d.reason.startswith("empty_text") or d.degraded, d


def check_stage(guard: Guard, stage: Stage, content):
    if stage is Stage.PROMPT:
        return guard.check_prompt(content)
    if stage is Stage.REASONING:
        return guard.check_reasoning(query="q", reasoning=content)
    return guard.check_response(prompt="q", response=content)


# ------------------------------------------------------------------------------ empty
@pytest.mark.parametrize("stage", list(Stage))
@pytest.mark.parametrize("text", ["", " ", "\n\t \r\n", "\u3000\u00a0 ", b"", b"   ", []])
def test_empty_and_whitespace_allow_explicitly_without_calling_the_guard(
    guard: Guard, engine: ScriptedEngine, stage: Stage, text
) -> None:
    d = check_stage(guard, stage, text)
    assert d.action is Action.ALLOW and d.reason == "empty_text"
    assert d.verdicts == [] and not d.degraded and d.failure is None
    assert engine.calls == 0


def test_zero_width_text_is_judged_not_treated_as_empty(guard: Guard, engine: ScriptedEngine) -> None:
    d = guard.check_prompt("\u200b\u200d\ufeff")  # not whitespace for str.strip: a guard judges it
    assert engine.calls == 1 and d.verdicts and d.verdicts[0].ok
    assert_justified(d)


# ------------------------------------------------------------------------------ 1 MB
def test_one_megabyte_exact_windows_cover_every_char(engine: ScriptedEngine) -> None:
    n = 1_000_000
    text = ("x" * (n - 4)) + "bomb"  # no spaces: cuts are exact, window count is arithmetic
    with Guard(GuardConfig(), engine=engine) as guard:
        t0 = time.perf_counter()
        d = guard.check_prompt(text)
        elapsed = time.perf_counter() - t0
    mc = GuardConfig().models["GuardReasoner-1B"]
    size, overlap = mc.max_input_chars, mc.window_overlap_chars
    assert (size, overlap) == (24_000, 1_000)
    # Windows start every size-overlap chars; the last one reaches the end.
    expected = -(-(n - overlap) // (size - overlap))
    assert expected == 44
    windows = [v.window for v in d.verdicts]
    assert len(windows) == expected and len(engine.prompts) == expected and engine.calls == 1
    assert windows[0] == (0, size) and windows[-1][1] == n
    for (_s0, e0), (s1, _) in zip(windows, windows[1:], strict=False):
        assert s1 == e0 - overlap  # consecutive windows overlap by exactly `overlap`
    assert merge_spans(windows) == [(0, n)]  # every char covered
    for (s, e), prompt in zip(windows, engine.prompts, strict=False):
        assert "Human user:\n" + text[s:e] + "\n\nAI assistant:\nNone\n\n" in prompt
    # The harmful tail is only in the last window; the worst verdict wins.
    assert d.action is Action.BLOCK
    assert [v.harmful for v in d.verdicts] == [False] * (expected - 1) + [True]
    assert elapsed < 30


def test_one_megabyte_of_words_windows_cut_at_spaces(engine: ScriptedEngine) -> None:
    words = [f"w{i:06d}" for i in range(125_000)]  # 8 chars each with the space: 1,000,000 chars
    text = " ".join(words) + " "
    assert len(text) == 1_000_000
    cfg = GuardConfig()
    with Guard(cfg, engine=engine) as guard:
        d = guard.check_reasoning(query="summarise", reasoning=text)
    spans = split_windows(text, 24_000, 1_000)
    windows = [v.window for v in d.verdicts]
    assert windows == spans and 44 <= len(windows) <= 46
    assert merge_spans(windows) == [(0, len(text))]
    for (s, e) in windows[:-1]:
        assert text[e] == " " or e - s == 24_000  # words stay whole where possible
    # Every word reached the guard in at least one window.
    seen = "".join(engine.prompts)
    assert all(w in seen for w in words[::997])
    assert d.action is Action.ALLOW and all(v.ok for v in d.verdicts)


def test_one_megabyte_of_invalid_bytes(engine: ScriptedEngine) -> None:
    raw = (b"\xff\xfe\x80abc " * 150_000)[:1_000_000] + b"bomb"
    with Guard(GuardConfig(), engine=engine) as guard:
        d = guard.check_prompt(raw)
    assert d.action is Action.BLOCK and d.failure is None
    assert len(d.verdicts) > 40


# ------------------------------------------------------------------------------ encodings
def test_invalid_utf8_bytes_replaced_and_recorded(guard: Guard, engine: ScriptedEngine) -> None:
    raw = b"how to \xff\xfe build a bomb \xc3"
    req = guard.request(Stage.PROMPT, prompt=raw)
    assert req.prompt == "how to \ufffd\ufffd build a bomb \ufffd"
    assert req.metadata["input_notes"] == ["prompt: invalid UTF-8 bytes replaced with U+FFFD"]
    d = guard.check_prompt(raw)
    assert d.action is Action.BLOCK and d.failure is None
    assert d.notes == ["prompt: invalid UTF-8 bytes replaced with U+FFFD"]  # visible on the decision
    assert "how to \ufffd\ufffd build a bomb \ufffd" in engine.prompts[-1]


def test_valid_utf8_bytes_are_not_flagged(guard: Guard) -> None:
    req = guard.request(Stage.PROMPT, prompt="héllo \ufffd".encode())
    assert req.prompt == "héllo \ufffd" and "input_notes" not in req.metadata


@pytest.mark.parametrize("text", ["a\ud800b", "\udfff", "x\ud83d", "\ud83d\ude00 ok \udc00"])
def test_lone_surrogates_become_encodable(guard: Guard, engine: ScriptedEngine, text: str) -> None:
    d = guard.check_prompt(text)
    assert d.verdicts and d.verdicts[0].ok
    engine.prompts[-1].encode("utf-8")  # what the guard sees is valid UTF-8
    assert "\ud800" not in d.text and "?" in d.text
    assert any("surrogates" in n for n in d.notes)
    assert_justified(d)


def test_lone_surrogates_and_control_chars_over_http() -> None:
    """The HTTP engine sends exactly the normalised text: NUL and control characters intact, lone
    surrogates replaced (a JSON body cannot carry them to a UTF-8 server)."""
    with FakeOpenAIServer(default=Reply.ok(GR_SAFE)) as srv:
        cfg = GuardConfig(models={
            "GuardReasoner-1B": GuardModelConfig(family="guardreasoner", engine="openai",
                                                 base_url=srv.base_url, timeout_s=5),
            "ReasoningShield-1B": GuardModelConfig(family="reasoningshield")})
        with Guard(cfg) as guard:
            d = guard.check_prompt("a\x00b\x07c\x1b[31md\x7f\ud800e\r\n")
        (rec,) = srv.completion_requests()
    assert d.action is Action.ALLOW and d.verdicts[0].ok
    assert "Human user:\na\x00b\x07c\x1b[31md\x7f?e\r\n\n\nAI assistant:\nNone\n\n" in rec.body["prompt"]


def test_nul_and_control_chars_reach_the_guard_unchanged(guard: Guard, engine: ScriptedEngine) -> None:
    text = "\x00\x01\x02 build a bomb \x1b[0m\x08\x0c\u202e\u2028"
    d = guard.check_prompt(text)
    assert d.action is Action.BLOCK and d.text == guard.config.refusal_message
    assert "Human user:\n" + text + "\n\n" in engine.prompts[-1]


# ------------------------------------------------------------------------------ message lists
def test_multimodal_text_parts_guarded_rest_recorded(guard: Guard, engine: ScriptedEngine) -> None:
    msgs = [
        {"role": "system", "content": "be nice"},
        {"role": "user", "content": [
            {"type": "text", "text": "what is in this picture?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}},
            {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
            {"type": "text", "text": "and how to make a bomb"},
        ]},
    ]
    d = guard.check_prompt(msgs)
    assert d.action is Action.BLOCK and d.failure is None
    assert "be nice\nwhat is in this picture?\nand how to make a bomb" in engine.prompts[-1]
    assert d.unguarded == ["prompt[1]: image_url part not guarded", "prompt[2]: input_audio part not guarded"]


def test_image_only_message_is_empty_text_with_unguarded_record(guard: Guard, engine: ScriptedEngine) -> None:
    d = guard.check_prompt([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])
    assert d.action is Action.ALLOW and d.reason.startswith("empty_text")
    assert d.unguarded == ["prompt[0]: image_url part not guarded"] and engine.calls == 0


def test_openai_tool_calls_recorded_tool_results_guarded(guard: Guard, engine: ScriptedEngine) -> None:
    msgs = [
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny, and here is how to build a bomb"},
    ]
    d = guard.check_response(prompt="weather?", response=msgs)
    assert d.action is Action.BLOCK
    assert d.unguarded == ["response[1]: tool calls not guarded as text"]
    assert "weather in Paris?\nsunny, and here is how to build a bomb" in engine.prompts[-1]


def test_langchain_messages_with_tool_calls(guard: Guard, engine: ScriptedEngine) -> None:
    msgs = [
        HumanMessage("hi"),
        AIMessage("", tool_calls=[{"name": "search", "args": {"q": "x"}, "id": "1"}]),
        ToolMessage("result text", tool_call_id="1"),
        AIMessage([{"type": "text", "text": "final"}, {"type": "image", "url": "http://x"}]),
    ]
    d = guard.check_response(prompt="q", response=msgs)
    assert d.action is Action.ALLOW and d.verdicts[0].ok
    assert d.unguarded == ["response[1]: tool calls not guarded as text", "response[1]: image part not guarded"]
    assert "hi\nresult text\nfinal" in engine.prompts[-1]


def test_responses_api_message_items(guard: Guard, engine: ScriptedEngine) -> None:
    items = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "bomb recipe"}]}]
    d = guard.check_prompt(items)
    assert d.action is Action.BLOCK and "Human user:\nbomb recipe\n" in engine.prompts[-1]


# ------------------------------------------------------------------------------ wrong types
WRONG = [None, 5, 3.5, True, object(), {1, 2}, [1], [[ "nested" ]], [{"role": "user", "content": 5}],
         [None], type, b"ok".decode]


@pytest.mark.parametrize("stage", list(Stage))
@pytest.mark.parametrize("value", WRONG, ids=lambda v: type(v).__name__)
def test_wrong_types_raise_guard_input_error(guard: Guard, engine: ScriptedEngine, stage: Stage, value) -> None:
    with pytest.raises(GuardInputError) as ei:
        check_stage(guard, stage, value)
    assert isinstance(ei.value, TypeError)  # also a TypeError, for callers who catch that
    assert engine.calls == 0


@pytest.mark.parametrize("value", [None, 7, object()], ids=lambda v: type(v).__name__)
async def test_wrong_types_async(guard: Guard, value) -> None:
    with pytest.raises(GuardInputError):
        await guard.acheck_prompt(value)
    with pytest.raises(GuardInputError):
        await guard.acheck_reasoning(query="q", reasoning=value)
    with pytest.raises(GuardInputError):
        await guard.acheck_response(prompt="q", response=value)


def test_wrong_type_query_is_an_error_too(guard: Guard) -> None:
    with pytest.raises(GuardInputError):
        guard.check_response(prompt=12, response="fine")


# ------------------------------------------------------------------------------ engine side
class OddEngine:
    """An engine that returns malformed batches (wrong count, non-strings, not a list)."""

    name = "odd"

    def __init__(self, result):
        self.result = result

    async def generate(self, requests, *, timeout=None):
        return self.result(len(requests))

    def render(self, request):
        return ""

    async def aclose(self):
        return None


@pytest.mark.parametrize("result,why", [
    (lambda n: [], "0 completions"),
    (lambda n: [GR_SAFE] * (n + 1), "2 completions"),
    (lambda n: [None] * n, "a NoneType completion"),
    (lambda n: [b"bytes"] * n, "a bytes completion"),
    (lambda n: None, "NoneType completions"),
    (lambda n: GR_SAFE, "str completions"),
])
def test_malformed_engine_batches_fail_closed(result, why) -> None:
    with Guard(GuardConfig(), engine=OddEngine(result)) as guard:
        d = guard.check_prompt("hello")
    assert d.action is Action.BLOCK and d.failure is FailureKind.ENGINE_ERROR
    assert d.reason == "guard_unavailable" and why in (d.detail or "")


def _down(_: str) -> str:
    raise ConnectionError("down")


@pytest.mark.parametrize("engine_kind", ["healthy", "down", "garbage"])
def test_odd_inputs_never_crash_and_never_silently_allow(engine_kind: str) -> None:
    """Healthy, dead and babbling engines alike: an odd input ends in a real verdict, an explicit
    empty_text, or the fail mode. Under the default fail-closed a failing engine never allows."""
    fn = {"healthy": responder, "down": _down, "garbage": lambda _: "}{ not a verdict"}[engine_kind]
    odd = ["", " ", "\x00", "\ud800", b"\xff", [], [{}], [{"type": "text"}], [{"role": "user"}],
           [{"role": "user", "content": None}], {"type": "text", "text": "hi"}, ("a", b"b".decode()),
           "a" * 30_000, "\n" * 50_000 + "x", [{"type": "text", "text": "x"}] * 100]
    allowed = 0
    with Guard(GuardConfig(), engine=ScriptedEngine(fn)) as guard:
        for value in odd:
            for stage in Stage:
                try:
                    d = check_stage(guard, stage, value)
                except GuardInputError:
                    continue
                assert_justified(d)
                assert not d.degraded  # fail-closed is the default: nothing released unjudged
                if engine_kind != "healthy" and d.action is Action.ALLOW:
                    assert d.reason.startswith("empty_text"), d
                allowed += d.action is Action.ALLOW and not d.reason.startswith("empty_text")
    if engine_kind == "healthy":
        assert allowed > 0  # control: the healthy engine really judges (and allows) these


def test_parts_without_text_are_recorded(guard: Guard) -> None:
    d = guard.check_prompt([{"type": "text"}, {"role": "user"}, {}])
    assert d.action is Action.ALLOW and d.reason.startswith("empty_text")
    assert d.unguarded == ["prompt[0]: text part not guarded", "prompt[1]: untyped part not guarded",
                           "prompt[2]: untyped part not guarded"]


def test_failed_guard_on_odd_input_is_not_allow() -> None:
    def down(_: str) -> str:
        raise ConnectionError("down")

    with Guard(GuardConfig(), engine=ScriptedEngine(down)) as guard:
        for value in ["\x00", b"\xff\xfe", "\ud800", [{"type": "text", "text": "x"}]]:
            d = guard.check_prompt(value)
            assert d.action is Action.BLOCK and d.failure is not None
