from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guardrails_plugin.windowing import merge_spans, redact_spans, split_windows


@given(st.text(max_size=3000), st.integers(20, 500), st.integers(0, 19))
def test_windows_cover_every_char_and_respect_budget(text: str, max_chars: int, overlap: int) -> None:
    spans = split_windows(text, max_chars, overlap)
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    for (s1, e1), (s2, _e2) in zip(spans, spans[1:], strict=False):
        assert s2 < e1 or e1 == s2  # contiguous or overlapping: no gap
        assert s2 > s1  # progress
    assert all(e - s <= max_chars for s, e in spans)


def test_overlap_keeps_a_straddling_phrase_whole() -> None:
    text = "a" * 95 + " harmful phrase " + "b" * 100
    spans = split_windows(text, 100, 30)
    assert any("harmful phrase" in text[s:e] for s, e in spans)


def test_bad_args() -> None:
    with pytest.raises(ValueError):
        split_windows("x", 10, 10)


def test_merge_and_redact() -> None:
    assert merge_spans([(5, 8), (0, 3), (2, 4)]) == [(0, 4), (5, 8)]
    assert redact_spans("0123456789", [(2, 4), (3, 6)], "*") == "01*6789"


def test_clip_context_keeps_head_and_tail_and_says_what_it_cut() -> None:
    from guardrails_plugin.windowing import clip_context

    assert clip_context("short", 10) == "short"
    clipped = clip_context("A" * 50 + "B" * 50, 20)
    assert clipped.startswith("A" * 10) and clipped.endswith("B" * 10)
    assert "[... 80 characters of the query omitted ...]" in clipped


def test_huge_query_is_clipped_as_context_but_judged_whole_at_the_prompt_stage() -> None:
    from guardrails_plugin import Guard, GuardConfig
    from guardrails_plugin.engines import ScriptedEngine

    safe = '"Analysis": ok\n"Judgment": 0'
    gr_safe = "Answers: \nRequest: unharmful\nCompletion: compliance\nResponse: unharmful\n"
    engine = ScriptedEngine(lambda p: safe if "Thought: " in p else gr_safe)
    cfg = GuardConfig.build(models={
        "GuardReasoner-1B": {"family": "guardreasoner", "max_input_chars": 4000, "window_overlap_chars": 100},
        "ReasoningShield-1B": {"family": "reasoningshield", "max_input_chars": 4000, "window_overlap_chars": 100},
    })
    guard = Guard(cfg, engine=engine)
    query = "q" * 1_000_000
    d = guard.check_reasoning(query=query, reasoning="short trace")
    assert d.action.value == "allow" and len(engine.prompts) == 1
    assert len(engine.prompts[0]) < 10_000 and "characters of the query omitted" in engine.prompts[0]
    engine.prompts.clear()
    guard.check_prompt(query)
    assert len(engine.prompts) > 250  # the prompt stage windows the whole query
