"""ReasoningMonitor: off-path checks, coalescing, abort offsets, hold-back, paragraph and final checks.

Guards are ScriptedEngines that call a text harmful iff it contains the marker word; expectations
are computed from what the monitor reports (abort offset, lag), never from wall-clock timing.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from langchain_support import MARKER, filler, pieces, scripted_guard, wait_until

from guardrails_plugin import Action, Stage
from guardrails_plugin.stream.extract import approx_tokens

pytestmark = pytest.mark.timeout(60)


def _marker_token_end(text: str) -> int:
    """Token offset just past the marker (the shortest prefix a marker guard flags)."""
    i = text.index(MARKER) + len(MARKER)
    return approx_tokens(text[:i])


def test_feed_never_waits_for_the_guard():
    guard, engine = scripted_guard(latency_s=0.2)
    mon = guard.reasoning_monitor(query="q", check_every_tokens=8)
    t0 = time.perf_counter()
    for i in range(500):
        mon.feed(f"w{i} ")
    wall = time.perf_counter() - t0
    # 500 feeds with checks due every 8 tokens: all of them together cost far less than one guard call.
    assert mon.stats.feed_time_us_total / 1e6 < 0.2 / 2, mon.stats
    assert wall < 0.2 * 3  # nothing waited on the loop behind the feeds either (wide margin)
    assert mon.stats.checks_run >= 1
    d = mon.close(timeout=10)
    assert d.action is Action.ALLOW
    assert mon.stats.tokens_checked == mon.stats.tokens_fed == 500


def test_due_checks_coalesce_to_the_newest_prefix():
    guard, engine = scripted_guard(latency_s=0.1)
    mon = guard.reasoning_monitor(query="q", check_every_tokens=8, check_paragraphs=False)
    for i in range(200):
        mon.feed(f"w{i} ")  # 25 checks fall due while the first one is in flight
    assert mon.stats.checks_run == 1
    assert mon.stats.checks_coalesced >= 20
    assert wait_until(lambda: mon.stats.checks_run == 2)  # one catch-up check of the newest prefix
    assert wait_until(lambda: mon.stats.tokens_checked == 200)
    mon.close(timeout=10)
    # The catch-up check judged the whole 200-token prefix, not the stale 16-token one.
    assert engine.prompts[1].count("w199 ") == 1
    assert mon.stats.checks_run == 2  # close() found everything covered: no third check


def test_abort_offset_is_the_first_check_covering_the_marker():
    guard, _ = scripted_guard(latency_s=0.0)
    text = filler(37) + f"then a {MARKER} recipe " + filler(60, 37)
    mon = guard.reasoning_monitor(query="q", check_every_tokens=8, check_paragraphs=False)
    for p in pieces(text):
        mon.feed(p)
        # pace the stream so every due check completes before the next token
        assert wait_until(lambda: mon.stats.tokens_checked >= mon.stats.tokens_fed - mon.stats.tokens_fed % 8
                          or mon.aborted)
        if mon.aborted:
            break
    assert mon.aborted and mon.decision is not None and mon.decision.action is Action.BLOCK
    m = _marker_token_end(text)
    assert mon.abort_offset == -(-m // 8) * 8  # first multiple of 8 at or past the marker
    assert mon.stats.detection_lag_tokens == 0  # paced: nothing streamed past the blocking prefix
    assert mon.drain() == text[: len(mon.text)] and MARKER in mon.text


def test_free_running_stream_reports_lag_consistent_with_what_was_released():
    guard, _ = scripted_guard(latency_s=0.02)
    text = filler(60) + f"{MARKER} " + filler(140, 60)
    mon = guard.reasoning_monitor(query="q", check_every_tokens=8)
    released = ""
    for p in pieces(text):
        mon.feed(p)
        released += mon.drain()
        if mon.aborted:
            break
        time.sleep(0.001)
    assert wait_until(lambda: mon.aborted)
    released += mon.drain()
    st = mon.stats
    assert st.abort_offset is not None and st.abort_offset >= _marker_token_end(text)
    # the consumer got exactly the blocking prefix plus the reported lag, never more
    assert approx_tokens(released) == st.abort_offset + st.detection_lag_tokens == st.tokens_released
    fed = st.tokens_fed
    mon.feed("more ")
    assert mon.stats.tokens_fed == fed and mon.drain() == ""  # ignored after the abort


def test_hold_back_releases_nothing_past_a_blocking_prefix():
    guard, _ = scripted_guard(latency_s=0.01)
    text = filler(100) + f"{MARKER} " + filler(100, 100)
    mon = guard.reasoning_monitor(query="q", check_every_tokens=8, hold_back=True)
    released = ""
    for p in pieces(text):
        mon.feed(p)
        released += mon.drain()
        if mon.aborted:
            break
        time.sleep(0.001)
    assert wait_until(lambda: mon.aborted)
    released += mon.drain()
    d = mon.close(timeout=10)
    assert d.blocked
    released += mon.drain()
    assert MARKER not in released  # zero leakage
    assert text.startswith(released)
    assert approx_tokens(released) < mon.abort_offset
    assert mon.stats.detection_lag_tokens == 0


def test_hold_back_releases_everything_once_checked():
    guard, _ = scripted_guard(latency_s=0.01)
    text = filler(50) + "The end.\n\n" + filler(30)
    mon = guard.stream_monitor(Stage.RESPONSE, query="q", check_every_tokens=16)
    assert mon.hold_back  # the answer is held by default
    released = ""
    for p in pieces(text):
        mon.feed(p)
        released += mon.drain()
        assert text.startswith(released)
    d = mon.close(timeout=10)
    released += mon.drain()
    assert d.action is Action.ALLOW
    assert released == text  # byte-identical once the final check covered it
    assert mon.held_text == ""


def test_reasoning_streams_without_hold_back_by_default():
    guard, _ = scripted_guard(latency_s=0.5)
    mon = guard.reasoning_monitor(query="q", check_every_tokens=4)
    assert not mon.hold_back
    mon.feed("one two three four five ")
    assert mon.drain() == "one two three four five "  # out at once, check still in flight
    mon.close(timeout=10)


@pytest.mark.parametrize("deltas", [["First paragraph.\n\n", "Second"], ["First paragraph.\n", "\n", "Second"]])
def test_paragraph_end_triggers_a_check(deltas):
    guard, engine = scripted_guard(latency_s=0.0)
    mon = guard.reasoning_monitor(query="q", check_every_tokens=1000)
    for d in deltas:
        mon.feed(d)
    assert mon.stats.checks_run == 1
    assert wait_until(lambda: engine.calls == 1)
    assert "First paragraph." in engine.prompts[0] and "Second" not in engine.prompts[0]
    mon.close(timeout=10)
    assert mon.stats.checks_run == 2  # the end-of-trace check covered "Second"


def test_close_runs_the_final_check():
    guard, engine = scripted_guard(latency_s=0.0)
    mon = guard.reasoning_monitor(query="q", check_every_tokens=1000, check_paragraphs=False)
    for p in pieces(f"short thought about a {MARKER} here"):
        mon.feed(p)
    assert mon.stats.checks_run == 0
    d = mon.close(timeout=10)
    assert d.action is Action.BLOCK and mon.aborted
    assert mon.abort_offset == mon.stats.tokens_fed == approx_tokens(f"short thought about a {MARKER} here")
    assert engine.calls == 1
    with pytest.raises(RuntimeError):
        mon.feed("more")


def test_feed_from_many_threads_with_instant_guards_does_not_deadlock():
    # A check can complete before add_done_callback runs; the callback then runs on the feeding
    # thread, which holds the monitor's lock (regression: this deadlocked with a plain Lock).
    guard, _ = scripted_guard(latency_s=0.0)
    errors: list[BaseException] = []

    def work():
        try:
            for _ in range(40):
                mon = guard.reasoning_monitor(query="q", check_every_tokens=1)
                for j in range(40):
                    mon.feed(f"w{j} ")
                assert mon.close(timeout=10).action is Action.ALLOW
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=work, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(40)
    assert not any(t.is_alive() for t in threads), "monitor deadlocked"
    assert not errors, errors


async def test_afeed_and_aclose_in_asyncio():
    guard, _ = scripted_guard(latency_s=0.01)
    text = filler(40) + f"{MARKER} " + filler(80, 40)
    mon = guard.reasoning_monitor(query="q", check_every_tokens=8)
    released = ""
    t_feed = 0.0
    for p in pieces(text):
        t0 = time.perf_counter()
        await mon.afeed(p)
        t_feed = max(t_feed, time.perf_counter() - t0)
        released += mon.drain()
        if mon.aborted:
            break
        await asyncio.sleep(0.001)
    d = await mon.aclose()
    assert d.blocked and mon.aborted
    assert t_feed < 0.01  # afeed never awaited a guard call
    st = mon.stats
    assert approx_tokens(released) <= st.abort_offset + st.detection_lag_tokens

    benign = guard.stream_monitor(Stage.RESPONSE, query="q", check_every_tokens=8)
    for p in pieces(filler(30)):
        await benign.afeed(p)
    d = await benign.aclose()
    assert d.action is Action.ALLOW and benign.drain() == filler(30)


def test_discard_drops_pending_checks_and_releases_the_session():
    guard, _ = scripted_guard(latency_s=0.05)
    released: list[str] = []
    guard.release_session = released.append  # type: ignore[method-assign]
    mon = guard.reasoning_monitor(query="q", check_every_tokens=2)
    for w in "a b c d e f g h".split():
        mon.feed(w + " ")
    mon.discard()
    assert released == [mon.metadata["session_id"]]
    with pytest.raises(RuntimeError):
        mon.feed("more")


async def test_cancelling_a_wait_on_check_in_flight_does_not_cancel_the_check():
    # The docstring's own recipe: wait for the next verdict with a timeout. The timeout cancels
    # the wait; before the fix it cancelled the check itself and the stream aborted on a spurious
    # "monitor_error" BLOCK.
    guard, _ = scripted_guard(latency_s=0.3)
    mon = guard.reasoning_monitor(query="q", check_every_tokens=4, check_paragraphs=False)
    for w in "a b c d e f".split():
        await mon.afeed(w + " ")
    f = mon.check_in_flight
    assert f is not None
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.wrap_future(f), 0.01)
    d = await mon.aclose()
    assert d.action is Action.ALLOW and not mon.aborted, d.reason
    assert mon.last_decision is not None and "monitor_error" not in mon.last_decision.reason


def test_check_in_flight_completes_after_the_verdict_is_applied():
    guard, _ = scripted_guard(latency_s=0.05)
    mon = guard.reasoning_monitor(query="q", check_every_tokens=4, check_paragraphs=False)
    for w in f"a b {MARKER} d e".split():
        mon.feed(w + " ")
    f = mon.check_in_flight
    assert f is not None
    assert f.result(timeout=10).blocked
    assert mon.aborted  # applied before the waiter woke
    mon.close(timeout=10)


def test_close_returns_a_block_when_the_inflight_check_raised():
    guard, _ = scripted_guard(latency_s=0.0)

    async def broken(req):
        await asyncio.sleep(0.05)
        raise RuntimeError("bug in a hook")

    guard.acheck = broken  # type: ignore[method-assign]  # what the monitor is handed as its check
    mon = guard.reasoning_monitor(query="q", check_every_tokens=4, check_paragraphs=False)
    for w in "a b c d e".split():
        mon.feed(w + " ")
    assert mon.check_in_flight is not None
    d = mon.close(timeout=10)  # before the fix: raised the in-flight check's RuntimeError
    assert d.blocked and "monitor_error" in d.reason


def test_query_is_normalised_like_guard_request():
    from guardrails_plugin.errors import GuardInputError

    guard, engine = scripted_guard(latency_s=0.0)
    mon = guard.reasoning_monitor(query=[{"role": "user", "content": "the user's question"}])
    mon.feed("some reasoning")
    mon.feed(b" in bytes")
    d = mon.close(timeout=10)
    assert d.action is Action.ALLOW
    assert "the user's question" in engine.prompts[-1] and "in bytes" in engine.prompts[-1]
    with pytest.raises(GuardInputError):
        guard.reasoning_monitor(query=42)
    with pytest.raises(GuardInputError):
        guard.reasoning_monitor(query="q").feed(3.5)
