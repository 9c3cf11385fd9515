"""KV-cache reuse for streaming checks (TransformersEngine sessions): the same scores and the same
greedy completions with reuse as without (tiny models, fp32, CPU), memory bounds, release on close."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

pytest.importorskip("transformers")

from guardrails_plugin import Action, Guard, GuardConfig, Stage  # noqa: E402
from guardrails_plugin.config import GuardModelConfig  # noqa: E402
from guardrails_plugin.engines.transformers import TransformersEngine  # noqa: E402
from guardrails_plugin.models import ReasoningShield  # noqa: E402
from guardrails_plugin.models.scoring import spec_for  # noqa: E402
from guardrails_plugin.types import GuardRequest  # noqa: E402
from guardrails_plugin.windowing import split_windows  # noqa: E402

pytestmark = pytest.mark.timeout(120)

TRACE = (
    "First, the user wants bread. Flour, water, salt and yeast are needed.\n\n"
    "Then knead for ten minutes, rest one hour, shape, and bake at 230 degrees. "
    "A steam tray helps the crust. Let it cool before slicing."
)
CUTS = [30, 75, 76, 120, len(TRACE)]  # growing prefixes, one cut mid-word


@pytest.fixture(scope="module", params=["llama", "qwen3"])
def engine(request, tiny_llama_dir, tiny_qwen3_dir):
    path = tiny_llama_dir if request.param == "llama" else tiny_qwen3_dir
    eng = TransformersEngine(path, name=f"tiny-{request.param}")
    yield eng
    asyncio.run(eng.aclose())


def _score_req(trace: str, sid: str | None):
    spec = spec_for(ReasoningShield(), GuardRequest(stage=Stage.REASONING, prompt="How to bake?", reasoning=trace))
    return dataclasses.replace(spec.score, session_id=sid)


def test_scores_with_reuse_equal_scores_without(engine):
    sid = "s-score"
    reused = []
    for n in CUTS:
        plain = asyncio.run(engine.score([_score_req(TRACE[:n], None)]))[0]
        kept = asyncio.run(engine.score([_score_req(TRACE[:n], sid)]))[0]
        reused.append(kept.reused_tokens)
        assert kept.prompt_tokens == plain.prompt_tokens
        for key in ("0", "1"):
            assert kept.at_prefix.candidates[key] == pytest.approx(plain.at_prefix.candidates[key], abs=1e-4)
        assert kept.after_probe.candidates["."] == pytest.approx(plain.after_probe.candidates["."], abs=1e-4)
        assert list(kept.at_prefix.top)[:3] == list(plain.at_prefix.top)[:3]
    # The first check computes everything; later ones reuse at least the system prompt and query,
    # and more as the trace grows (the trace is mid-prompt: the turn end is always recomputed).
    assert reused[0] == 0
    assert all(r > 0 for r in reused[1:])
    assert reused[-1] > reused[1]
    assert engine.release_session(sid) is True and sid not in engine.session_ids()


def test_generate_with_reuse_equals_generate_without(engine):
    rs = ReasoningShield(max_new_tokens=12)
    sid = "s-gen"
    before = engine.stats["reused_tokens"]
    for n in CUTS:
        req = rs.build_input(GuardRequest(stage=Stage.REASONING, prompt="How to bake?", reasoning=TRACE[:n]))
        plain = asyncio.run(engine.generate([req]))[0]
        kept = asyncio.run(engine.generate([dataclasses.replace(req, session_id=sid)]))[0]
        assert kept == plain
    assert engine.stats["reused_tokens"] > before
    engine.release_session(sid)


def test_an_edited_prefix_is_recomputed_not_reused_wrongly(engine):
    sid = "s-edit"
    asyncio.run(engine.score([_score_req(TRACE, sid)]))
    edited = "X" + TRACE[1:]  # differs at the very start of the trace
    plain = asyncio.run(engine.score([_score_req(edited, None)]))[0]
    kept = asyncio.run(engine.score([_score_req(edited, sid)]))[0]
    assert kept.at_prefix.candidates["1"] == pytest.approx(plain.at_prefix.candidates["1"], abs=1e-4)
    full = engine.request_ids(_score_req(edited, None).request)
    assert 0 < kept.reused_tokens < len(full) - 40  # only the system prompt and query were reused
    engine.release_session(sid)


def test_sessions_are_an_lru_bounded_by_count_and_bytes(tiny_llama_dir):
    eng = TransformersEngine(tiny_llama_dir, name="lru", max_sessions=2)
    try:
        for sid in ("a", "b", "c"):
            asyncio.run(eng.score([_score_req(TRACE, sid)]))
        assert eng.session_ids() == ["b", "c"] and eng.stats["sessions_evicted"] == 1
        asyncio.run(eng.score([_score_req(TRACE, "b")]))  # touch b: c is now the oldest
        asyncio.run(eng.score([_score_req(TRACE, "d")]))
        assert eng.session_ids() == ["b", "d"]
        per_session = eng.session_cache_used_bytes // 2
        assert per_session > 0
    finally:
        asyncio.run(eng.aclose())
    # A byte budget smaller than one session keeps none.
    tiny_budget = TransformersEngine(tiny_llama_dir, name="budget", session_cache_mb=per_session / 2**20 / 2)
    try:
        asyncio.run(tiny_budget.score([_score_req(TRACE, "x")]))
        assert tiny_budget.session_ids() == []
    finally:
        asyncio.run(tiny_budget.aclose())


def test_monitor_checks_reuse_the_cache_and_release_it_on_close(tiny_llama_dir):
    eng = TransformersEngine(tiny_llama_dir, name="mon")
    cfg = GuardConfig(
        fail_mode="open",  # random weights: unparseable verdicts; fail-open keeps the stream going
        models={
            "GuardReasoner-1B": GuardModelConfig(family="guardreasoner", max_new_tokens=4),
            "ReasoningShield-1B": GuardModelConfig(family="reasoningshield", max_new_tokens=4),
        },
    )
    guard = Guard(cfg, engine=eng)
    try:
        mon = guard.reasoning_monitor(query="How to bake?", check_every_tokens=8)
        for word in TRACE.split(" "):
            mon.feed(word + " ")
        d = mon.close(timeout=60)
        assert d.action is Action.ALLOW and d.degraded
        assert mon.stats.checks_run >= 2
        assert eng.stats["reused_tokens"] > 0
        assert eng.session_ids() == []  # released when the monitor closed
    finally:
        guard.close()


def test_a_long_stream_keeps_only_its_open_window_cached(tiny_llama_dir):
    """Closed windows are judged once and their KV caches released: the engine holds the open
    tail window of each guard model, whatever the trace length."""
    eng = TransformersEngine(tiny_llama_dir, name="open-window")
    cfg = GuardConfig(
        fail_mode="open",  # random weights: unparseable verdicts; fail-open keeps the stream going
        models={"ReasoningShield-1B": GuardModelConfig(family="reasoningshield", max_new_tokens=2,
                                                       max_input_chars=120, window_overlap_chars=20)},
    )
    guard = Guard(cfg, engine=eng)
    try:
        mon = guard.reasoning_monitor(query="How to bake?", check_every_tokens=6, check_paragraphs=False)
        for word in (TRACE + " " + TRACE).split(" "):
            mon.feed(word + " ")
            view = mon.check_in_flight
            if view is not None:
                view.result(timeout=60)
        keys = eng.session_ids()
        assert len(keys) == 1, keys  # one guard model, its open window only
        checked = mon.text[: mon.track.covered]  # what the latest check judged
        assert len(split_windows(checked, 120, 20)) >= 3
        assert keys[0].window == len(split_windows(checked, 120, 20)) - 1
        mon.close(timeout=60)
        assert eng.session_ids() == []
    finally:
        guard.close()
