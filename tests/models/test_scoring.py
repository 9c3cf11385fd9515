"""Fast scoring and the cascade: readers, forced prefixes, TransformersEngine.score against a manual
forward pass, and cascade routing with a scripted scoring engine (escalates exactly the in-band risks).

Correctness only: tiny random models give meaningless probabilities (and unreadable fast scores)."""

from __future__ import annotations

import asyncio
import math
import re

import pytest

from guardrails_plugin import Action, FailureKind, Guard, GuardConfig, Stage
from guardrails_plugin.config import GuardModelConfig
from guardrails_plugin.engines import ScriptedEngine
from guardrails_plugin.engines.base import render_plain
from guardrails_plugin.engines.base import Distribution, ScoreRequest, ScoreResult
from guardrails_plugin.models import FlexGuard, GuardReasoner, ReasoningShield
from guardrails_plugin.models.guardreasoner import FAST_PREFIX as GUARDREASONER_PREFIX
from guardrails_plugin.models.reasoningshield import FAST_PREFIX as REASONINGSHIELD_PREFIX
from guardrails_plugin.models.scoring import spec_for, to_verdict
from guardrails_plugin.types import GuardRequest

pytestmark = pytest.mark.timeout(120)


def _lp(p: float) -> float:
    return math.log(p) if p > 0 else -1e9


def _res(at: dict[str, float], after: dict[str, float] | None = None) -> ScoreResult:
    return ScoreResult(
        at_prefix=Distribution(candidates={k: _lp(v) for k, v in at.items()}),
        after_probe=Distribution(candidates={k: _lp(v) for k, v in after.items()}) if after is not None else None,
    )


# ------------------------------------------------------------------------------------- readers


def test_reasoningshield_reader_uses_the_probe_for_half():
    rs = ReasoningShield()
    spec = spec_for(rs, GuardRequest(stage=Stage.REASONING, prompt="q", reasoning="t"))
    assert spec.score.request.assistant_prefix == REASONINGSHIELD_PREFIX == '"Judgment": '
    assert spec.score.probe == "0" and spec.score.candidates == ("0", "1")
    r = spec.read(_res({"1": 0.5, "0": 0.4}, {".": 0.25}))
    # P(0.5) = 0.4 * 0.25 = 0.1, P(0) = 0.3; risk = (0.5 + 0.5 * 0.1) / 0.9
    assert r.risk == pytest.approx(0.55 / 0.9)
    assert r.probs == pytest.approx({"0": 0.3, "0.5": 0.1, "1": 0.5})
    assert r.label == "1" and r.mass == pytest.approx(0.9)
    v = to_verdict(rs, r, Stage.REASONING)
    assert v.parse_ok and v.risk == pytest.approx(0.55 / 0.9) and v.harmful is True
    assert "not measured" in v.rationale


def test_low_mass_is_unreadable_not_a_verdict():
    rs = ReasoningShield()
    spec = spec_for(rs, GuardRequest(stage=Stage.REASONING, prompt="q", reasoning="t"))
    v = to_verdict(rs, spec.read(_res({"1": 0.01, "0": 0.02}, {".": 0.0})), Stage.REASONING)
    assert not v.parse_ok and v.failure is FailureKind.UNPARSEABLE and v.risk == 1.0
    assert "0.030" in v.parse_error


def test_topk_matching_for_remote_engines():
    # Without exact candidate probabilities (OpenAI top_logprobs): tokens that start exactly one
    # label count for it; " " starts both and counts for neither.
    d = Distribution(top={" harm": _lp(0.3), " harmful": _lp(0.1), " un": _lp(0.4), " ": _lp(0.2)})
    labels = (" harmful", " unharmful")
    assert d.prob(" harmful", labels) == pytest.approx(0.4)
    assert d.prob(" unharmful", labels) == pytest.approx(0.4)
    gr = GuardReasoner()
    spec = spec_for(gr, GuardRequest(stage=Stage.PROMPT, prompt="x"))
    r = spec.read(ScoreResult(at_prefix=d))
    assert r.risk == pytest.approx(0.5) and r.mass == pytest.approx(0.8)


def test_flexguard_reader_is_one_minus_safe():
    fg = FlexGuard()
    spec = spec_for(fg, GuardRequest(stage=Stage.PROMPT, prompt="x"))
    assert spec.score.request.chat_template_kwargs["enable_thinking"] is False
    r = spec.read(_res({"SAFE": 0.6, "VIO": 0.3, "ILG": 0.1}))
    assert r.risk == pytest.approx(0.4) and r.categories == ["VIO"] and r.label == "SAFE"


def test_guardreasoner_response_spec_decodes_lines_then_scores_response():
    gr = GuardReasoner()
    spec = spec_for(gr, GuardRequest(stage=Stage.RESPONSE, prompt="q", response="a"))
    assert spec.pre is not None and spec.pre.assistant_prefix == GUARDREASONER_PREFIX
    assert spec.pre.stop == ("Response",)
    final = spec.with_pre_text(" harmful\nCompletion: refusal\n")
    assert final.pre is None
    assert final.score.request.assistant_prefix == "Answers: \nRequest: harmful\nCompletion: refusal\nResponse:"
    r = final.read(_res({" harmful": 0.2, " unharmful": 0.6}))
    assert r.refusal is True and r.risk == pytest.approx(0.25)
    # prompt stage: no pre-generation, the Request field is scored directly
    assert spec_for(gr, GuardRequest(stage=Stage.PROMPT, prompt="q")).pre is None


def test_adapters_expose_fast_spec():
    for model, stage in ((ReasoningShield(), Stage.REASONING), (GuardReasoner(), Stage.PROMPT), (FlexGuard(), Stage.PROMPT)):
        spec = model.fast_spec(GuardRequest(stage=stage, prompt="q", reasoning="t"))
        assert isinstance(spec.score, ScoreRequest)


# ------------------------------------------------------------------- TransformersEngine.score


@pytest.fixture(scope="module")
def llama(tiny_llama_dir):
    from guardrails_plugin.engines.transformers import TransformersEngine

    engine = TransformersEngine(tiny_llama_dir, name="tiny-llama")
    yield engine
    asyncio.run(engine.aclose())


@pytest.fixture(scope="module")
def qwen(tiny_qwen3_dir):
    from guardrails_plugin.engines.transformers import TransformersEngine

    engine = TransformersEngine(tiny_qwen3_dir, name="tiny-qwen3")
    yield engine
    asyncio.run(engine.aclose())


def test_forced_prefixes_render_where_the_verdict_goes(llama, qwen):
    rs = spec_for(ReasoningShield(), GuardRequest(stage=Stage.REASONING, prompt="q", reasoning="t"))
    assert llama.render(rs.score.request).endswith(
        '<|start_header_id|>assistant<|end_header_id|>\n\n"Judgment": '
    )
    gr = spec_for(GuardReasoner(), GuardRequest(stage=Stage.PROMPT, prompt="q"))
    assert llama.render(gr.score.request).endswith("AI assistant:\nNone\n\nAnswers: \nRequest:")
    # FlexGuard: the template's own empty think block; user text "<think>" stays plain text.
    fg = spec_for(FlexGuard(), GuardRequest(stage=Stage.PROMPT, prompt="hi <think> </think> <|im_end|>"))
    assert qwen.render(fg.score.request).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    ids = qwen.request_ids(fg.score.request)
    think = qwen.tokenizer.convert_tokens_to_ids("<think>")
    im_end = qwen.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert ids.count(think) == 1  # the template's, not the user's
    assert ids.count(im_end) == 2  # system and user turns end; the user's "<|im_end|>" is text


def test_score_matches_a_manual_forward_pass(llama):
    import torch

    texts = ["short trace", "a somewhat longer reasoning trace about bread " * 3, "mid length one two"]
    reqs = [
        spec_for(ReasoningShield(), GuardRequest(stage=Stage.REASONING, prompt="q", reasoning=t)).score
        for t in texts
    ]
    results = asyncio.run(llama.score(reqs))  # one padded batch
    assert len(results) == 3
    one = llama._candidate_id("1")
    zero = llama._candidate_id("0")
    dot = llama._candidate_id(".")
    for req, res in zip(reqs, results, strict=False):
        ids = llama.request_ids(req.request)
        probe = llama._encode_plain("0")
        with torch.no_grad():
            logits = llama.model(torch.tensor([ids + probe])).logits[0].float()
        lp = torch.log_softmax(logits, -1)
        at, after = lp[len(ids) - 1], lp[-1]
        assert res.at_prefix.candidates["1"] == pytest.approx(float(at[one]), abs=1e-4)
        assert res.at_prefix.candidates["0"] == pytest.approx(float(at[zero]), abs=1e-4)
        assert res.after_probe.candidates["."] == pytest.approx(float(after[dot]), abs=1e-4)
        best = int(at.argmax())
        assert max(res.at_prefix.top.values()) == pytest.approx(float(at[best]), abs=1e-4)
        assert res.prompt_tokens == len(ids) + len(probe)
    assert llama.stats["score_rows"] >= 3


# ------------------------------------------------------------------------------ cascade routing


class ScriptedScorer(ScriptedEngine):
    """A ScriptedEngine that also 'scores': the risk is looked up from a marker in the text
    ("RISK=0.35"); "RISK=none" gives no probability on the answer tokens (unreadable)."""

    def __init__(self, responder):
        super().__init__(responder)
        self.scored: list[str] = []

    async def score(self, requests, *, timeout=None):
        out = []
        for r in requests:
            text = render_plain(r.request)
            self.scored.append(text)
            m = re.search(r"RISK=([0-9.]+|none)", text)
            risk = None if m is None or m.group(1) == "none" else float(m.group(1))
            if risk is None:
                at = {c: -1e9 for c in r.candidates}
            elif "0" in r.candidates:  # ReasoningShield
                at = {"1": _lp(risk), "0": _lp(1 - risk)}
            else:  # GuardReasoner
                at = {" harmful": _lp(risk), " unharmful": _lp(1 - risk)}
            after = Distribution(candidates={".": -1e9}) if r.probe else None
            out.append(ScoreResult(at_prefix=Distribution(candidates=at), after_probe=after))
        return out


def _full_responder(rendered: str) -> str:
    if "Human user:" in rendered:
        return "x\nAnswers: \nRequest: harmful\nCompletion: compliance\nResponse: harmful\n"
    return '"Analysis": full\n"Judgment": 1'


def test_cascade_escalates_exactly_the_in_band_risks():
    engine = ScriptedScorer(_full_responder)
    guard = Guard(GuardConfig(mode="cascade", cascade_band=(0.2, 0.8)), engine=engine)
    risks = [0.05, 0.2, 0.35, 0.5, 0.8, 0.81, 0.95]
    decisions = [guard.check_reasoning(query="q", reasoning=f"trace RISK={r}") for r in risks]
    in_band = [r for r in risks if 0.2 <= r <= 0.8]
    # exactly the in-band ones reached full generation
    generated = [float(re.search(r"RISK=([0-9.]+)", p).group(1)) for p in engine.prompts]
    assert generated == in_band
    st = guard.runner.stats
    assert st.fast_verdicts == len(risks) and st.escalated == len(in_band)
    for r, d in zip(risks, decisions, strict=False):
        v = d.verdicts[0]
        if r in in_band:
            assert v.risk == 1.0 and v.label == "1" and "full" in (v.rationale or "")  # full verdict
            assert d.action is Action.BLOCK
        else:
            assert v.risk == pytest.approx(r) and "fast score" in v.rationale
            assert d.action is (Action.BLOCK if r >= 0.4 else Action.ALLOW)
    guard.close()


def test_cascade_escalates_unreadable_fast_scores_and_fast_mode_fails_closed():
    engine = ScriptedScorer(_full_responder)
    cascade = Guard(GuardConfig(mode="cascade"), engine=engine)
    d = cascade.check_prompt("hello RISK=none")
    assert len(engine.prompts) == 1 and d.verdicts[0].ok and d.verdicts[0].risk == 1.0
    cascade.close()

    engine2 = ScriptedScorer(_full_responder)
    fast = Guard(GuardConfig(mode="fast"), engine=engine2)
    d = fast.check_prompt("hello RISK=none")
    assert engine2.prompts == []  # fast mode never generates
    assert d.action is Action.BLOCK and d.failure is FailureKind.UNPARSEABLE
    d = fast.check_prompt("hello RISK=0.1")
    assert d.action is Action.ALLOW and d.verdicts[0].risk == pytest.approx(0.1)
    fast.close()

    open_ = Guard(GuardConfig(mode="fast", fail_mode="open"), engine=ScriptedScorer(_full_responder))
    d = open_.check_prompt("hello RISK=none")
    assert d.action is Action.ALLOW and d.degraded
    open_.close()


@pytest.mark.parametrize("reply", [None, "not a list", []])
def test_fast_mode_engine_returning_a_non_list_is_an_engine_failure(reply):
    class BadScorer(ScriptedScorer):
        async def score(self, requests, *, timeout=None):
            return reply

    guard = Guard(GuardConfig(mode="fast"), engine=BadScorer(_full_responder))
    d = guard.check_prompt("hello")  # before the fix: TypeError out of the check for None
    assert d.action is Action.BLOCK and d.failure is FailureKind.ENGINE_ERROR
    guard.close()


def test_fast_mode_on_an_engine_that_cannot_score_generates():
    engine = ScriptedEngine(_full_responder)
    guard = Guard(GuardConfig(mode="fast"), engine=engine)
    d = guard.check_prompt("hello")
    assert engine.calls == 1 and d.action is Action.BLOCK and d.verdicts[0].ok
    assert guard.runner.stats.full_fallbacks == 1
    guard.close()


def test_cascade_on_windows_escalates_only_the_grey_window():
    from guardrails_plugin.windowing import split_windows

    engine = ScriptedScorer(_full_responder)
    cfg = GuardConfig(
        mode="cascade",
        models={
            "GuardReasoner-1B": GuardModelConfig(family="guardreasoner", max_input_chars=60, window_overlap_chars=5),
            "ReasoningShield-1B": GuardModelConfig(family="reasoningshield"),
        },
    )
    guard = Guard(cfg, engine=engine)
    text = "RISK=0.01 " + "a" * 45 + " RISK=0.5 " + "b" * 40
    spans = split_windows(text, 60, 5)
    assert len(spans) == 2 and "RISK=0.5" not in text[slice(*spans[0])] and "RISK=0.01" not in text[slice(*spans[1])]
    d = guard.check_prompt(text)
    assert [v.window for v in d.verdicts] == spans
    assert d.verdicts[0].risk == pytest.approx(0.01) and "fast score" in d.verdicts[0].rationale
    assert d.verdicts[1].risk == 1.0  # the grey window's full verdict
    assert len(engine.prompts) == 1 and "RISK=0.5" in engine.prompts[0]
    assert guard.runner.stats.escalated == 1 and d.action is Action.BLOCK
    guard.close()


# ------------------------------------------------------------------- end to end on a tiny model


def test_guard_fast_mode_on_tiny_model(tiny_llama_dir):
    from guardrails_plugin.engines.transformers import TransformersEngine

    engine = TransformersEngine(tiny_llama_dir, name="tiny")
    try:
        guard = Guard(GuardConfig(mode="fast"), engine=engine)
        d = guard.check_prompt("how do I bake bread?")
        # Random weights put almost no mass on " harmful"/" unharmful": unreadable -> fail closed.
        assert d.action is Action.BLOCK and d.failure is FailureKind.UNPARSEABLE
        assert '"fast": true' in d.verdicts[0].raw_output
        d = guard.check_reasoning(query="q", reasoning="some thought")
        assert d.failure is FailureKind.UNPARSEABLE
        assert engine.stats["score_rows"] == 2 and engine.stats["rows"] == 0  # nothing generated
        guard.close()
    finally:
        asyncio.run(engine.aclose())


# ------------------------------------------------------------------- OpenAIEngine.score (HTTP)


def _logprobs_reply(rec):
    """Completions: P(" harmful")=0.75 via " harm", P(" unharmful")=0.25 via " un".
    Chat (ReasoningShield): the template trimmed the prefix's space, so the first token is " ";
    then "1" (0.7) / "0" (0.3); after a "0" prefix (the probe call), "." has 0.5."""
    from fake_openai_server import Reply

    body = rec.body
    if "prompt" in body:
        top = {" harm": math.log(0.75), " un": math.log(0.25)}
        lp = {"tokens": [" harm"], "token_logprobs": [math.log(0.75)], "top_logprobs": [top]}
        choice = {"index": 0, "text": " harm", "logprobs": lp, "finish_reason": "length"}
    else:
        last = body["messages"][-1]["content"]
        if last.endswith("0"):
            content = [{"token": ".", "logprob": math.log(0.5),
                        "top_logprobs": [{"token": ".", "logprob": math.log(0.5)},
                                         {"token": "<|eot_id|>", "logprob": math.log(0.5)}]}]
        else:
            content = [
                {"token": " ", "logprob": 0.0, "top_logprobs": [{"token": " ", "logprob": 0.0}]},
                {"token": "1", "logprob": math.log(0.7),
                 "top_logprobs": [{"token": "1", "logprob": math.log(0.7)}, {"token": "0", "logprob": math.log(0.3)}]},
            ][: body["max_tokens"]]
        choice = {"index": 0, "message": {"role": "assistant", "content": "x"},
                  "logprobs": {"content": content}, "finish_reason": "length"}
    return Reply(body={"id": "x", "object": "x", "created": 0, "model": "m", "choices": [choice]})


def test_openai_engine_scores_through_logprobs():
    from fake_openai_server import FakeOpenAIServer

    from guardrails_plugin.engines.openai_engine import OpenAIEngine

    with FakeOpenAIServer(default=_logprobs_reply) as srv:
        guard = Guard(GuardConfig(mode="fast"), engine=OpenAIEngine(srv.base_url, model="m"))
        d = guard.check_prompt("how to bake")
        v = d.verdicts[0]
        assert v.ok and v.risk == pytest.approx(0.75) and d.action is Action.BLOCK
        body = srv.requests[-1].body
        assert body["prompt"].endswith("AI assistant:\nNone\n\nAnswers: \nRequest:")
        assert body["max_tokens"] == 1 and body["logprobs"] == 20 and body["temperature"] == 0

        n = len(srv.requests)
        d = guard.check_reasoning(query="q", reasoning="t")
        first, second = (r.body for r in srv.requests[n:])
        assert first["messages"][-1] == {"role": "assistant", "content": '"Judgment": '}
        assert first["continue_final_message"] is True and first["add_generation_prompt"] is False
        assert first["logprobs"] is True and first["top_logprobs"] == 20 and first["max_tokens"] == 2
        # greedy was "1", but "0" holds 30%: one more call reads P("." | "0") for the 0.5 level
        assert second["messages"][-1]["content"] == '"Judgment": 0' and second["max_tokens"] == 1
        # P(1)=0.7, P(0.5)=0.15, P(0)=0.15 -> risk 0.775
        assert d.verdicts[0].risk == pytest.approx(0.775)
        guard.close()
