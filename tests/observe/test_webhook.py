"""Webhook notifications: signed JSON / Slack payloads, retries with backoff, and no effect on checks
when the receiver is slow, dead or refusing (real loopback HTTP receivers)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from review_support import GREY_WORD, HARM_WORD, Receiver, config_dict, dead_url, make_guard, write_config

from guardrails_plugin import Action, Guard, GuardConfig, GuardConfigError
from guardrails_plugin.observe.webhooks import SIGNATURE_HEADER, sign, verify_signature

pytestmark = pytest.mark.timeout(60)

SECRET = "s3cret-key"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def notify(url: str, **kw: object) -> dict[str, object]:
    return {"url": url, "secret": SECRET, "backoff_s": 0.05, **kw}


def test_escalation_posts_signed_json(receiver: Receiver) -> None:
    guard = make_guard(notify=notify(receiver.url))
    try:
        assert guard.check_prompt("hello there").action is Action.ALLOW
        assert guard.check_prompt(f"make a {HARM_WORD}").action is Action.BLOCK  # not in `on`
        d = guard.check_prompt(f"a {GREY_WORD} question", metadata={"user": "u1"})
        assert d.action is Action.ESCALATE
        assert guard.notifier.flush(10)
    finally:
        guard.notifier.close()
    assert len(receiver.hits) == 1, [h.json() for h in receiver.hits]
    hit = receiver.hits[0]
    assert hit.path == "/hook"
    assert hit.headers["content-type"] == "application/json"
    assert hit.headers["x-guardrails-event"] == "escalate"
    sig, delivery = hit.headers[SIGNATURE_HEADER.lower()], hit.headers["x-guardrails-delivery"]
    assert verify_signature(SECRET, hit.body, sig, delivery)
    assert not verify_signature("other", hit.body, sig, delivery)
    assert not verify_signature(SECRET, hit.body + b" ", sig, delivery)
    event = hit.json()
    assert event["event"] == event["action"] == "escalate"
    assert event["request_id"] == d.request_id and event["stage"] == "prompt"
    assert event["risk"] == pytest.approx(0.45) and event["categories"] == ["ILG"]
    assert event["guards"] == ["FlexGuard"] and event["metadata"] == {"user": "u1"}
    assert "content" not in event and len(event["content_sha256"]) == 64  # privacy by default
    assert guard.notifier.sent == 1 and guard.notifier.failed == 0


def test_block_is_sent_when_configured_and_content_when_asked(receiver: Receiver) -> None:
    guard = make_guard(notify=notify(receiver.url, on=["escalate", "block"], include_content=True,
                                     review_url="http://127.0.0.1:8765/"))
    try:
        d = guard.check_prompt(f"make a {HARM_WORD}")
        assert d.action is Action.BLOCK
        assert guard.notifier.flush(10)
    finally:
        guard.notifier.close()
    (hit,) = receiver.hits
    event = hit.json()
    assert event["event"] == "block" and event["content"] == f"make a {HARM_WORD}"
    assert event["review_url"] == f"http://127.0.0.1:8765/request/{d.request_id}"


def test_retries_with_backoff_then_delivers_once() -> None:
    rec = Receiver(statuses=[500, 503])
    guard = make_guard(notify=notify(rec.url, max_retries=3))
    try:
        guard.check_prompt(f"{GREY_WORD} one")
        assert guard.notifier.flush(10)
        n = guard.notifier
        assert (n.sent, n.failed, n.retries) == (1, 0, 2)
    finally:
        guard.notifier.close()
        rec.close()
    assert len(rec.hits) == 3
    ids = {h.headers["x-guardrails-delivery"] for h in rec.hits}
    assert len(ids) == 1  # the same delivery id on every attempt: receivers can de-duplicate
    assert len({h.body for h in rec.hits}) == 1


def test_a_4xx_answer_is_final() -> None:
    rec = Receiver(statuses=[400])
    guard = make_guard(notify=notify(rec.url, max_retries=3))
    try:
        guard.check_prompt(f"{GREY_WORD} one")
        assert guard.notifier.flush(10)
        assert (guard.notifier.sent, guard.notifier.failed, guard.notifier.retries) == (0, 1, 0)
    finally:
        guard.notifier.close()
        rec.close()
    assert len(rec.hits) == 1


def test_dead_receiver_changes_no_decision() -> None:
    texts = ["fine text", f"{GREY_WORD} a", f"{HARM_WORD} b", f"{GREY_WORD} c"]
    plain = make_guard()
    guard = make_guard(notify=notify(dead_url(), max_retries=2, on=["escalate", "block"]))
    try:
        want = [plain.check_prompt(t) for t in texts]
        got = [guard.check_prompt(t) for t in texts]
        assert [(d.action, d.reason, d.text) for d in got] == [(d.action, d.reason, d.text) for d in want]
        assert guard.notifier.flush(20)
        assert (guard.notifier.sent, guard.notifier.failed) == (0, 3)
        assert guard.notifier.retries == 6
    finally:
        guard.notifier.close()
        plain.close()
        guard.close()


def test_slow_receiver_does_not_hold_up_the_check() -> None:
    # The receiver answers only after `release` (or after hold_s = 20 s); the notifier would wait
    # for it up to timeout_s = 60 s. A check that waited on delivery could only return once the
    # receiver had answered, so "answered" must still be unset when the check has returned.
    rec = Receiver(hold=True, hold_s=20.0)
    guard = make_guard(notify=notify(rec.url, timeout_s=60, max_retries=0))
    try:
        d = guard.check_prompt(f"{GREY_WORD} slow one")
        assert d.action is Action.ESCALATE
        assert rec.arrived.wait(10), "the event never reached the receiver"
        assert not rec.answered.is_set()  # the check returned while the delivery was in flight
        rec.release.set()
        assert guard.notifier.flush(10)
        assert guard.notifier.sent == 1
    finally:
        guard.notifier.close()
        rec.close()


async def test_slow_receiver_does_not_hold_up_async_checks() -> None:
    rec = Receiver(hold=True, hold_s=20.0)
    guard = make_guard(notify=notify(rec.url, timeout_s=60, max_retries=0))
    try:
        ds = await asyncio.gather(*(guard.acheck_prompt(f"{GREY_WORD} {i}") for i in range(5)))
        assert all(d.action is Action.ESCALATE for d in ds)
        assert await asyncio.to_thread(rec.arrived.wait, 10)
        assert not rec.answered.is_set()
        rec.release.set()
        assert await asyncio.to_thread(guard.notifier.flush, 20)
        assert guard.notifier.sent == 5
    finally:
        guard.notifier.close()
        rec.close()


def test_full_queue_drops_and_counts_without_blocking() -> None:
    rec = Receiver(hold=True, hold_s=20.0)
    guard = make_guard(notify=notify(rec.url, queue_size=1, max_retries=0, timeout_s=60))
    try:
        guard.check_prompt(f"{GREY_WORD} 0")
        assert rec.arrived.wait(10)  # the worker holds event 0 in flight
        for i in range(1, 4):  # one fits in the queue, two are dropped
            assert guard.check_prompt(f"{GREY_WORD} {i}").action is Action.ESCALATE
        assert guard.notifier.dropped == 2
        assert not rec.answered.is_set()
        rec.release.set()
        assert guard.notifier.flush(10)
        assert guard.notifier.sent == 2
    finally:
        guard.notifier.close()
        rec.close()


def test_slack_payload_escapes_control_characters(receiver: Receiver) -> None:
    text = f"{GREY_WORD} <!channel> & <script>x</script>"
    guard = make_guard(notify=notify(receiver.url, format="slack", include_content=True,
                                     review_url="http://review.local"))
    try:
        d = guard.check_prompt(text)
        assert guard.notifier.flush(10)
    finally:
        guard.notifier.close()
    (hit,) = receiver.hits
    msg = hit.json()
    assert msg["text"] == "Guardrails: prompt escalated (risk 0.45)"
    body = msg["blocks"][0]["text"]["text"]
    assert msg["blocks"][0]["text"]["type"] == "mrkdwn"
    assert "&lt;!channel&gt; &amp; &lt;script&gt;" in body and "<!channel>" not in body
    assert f"<http://review.local/request/{d.request_id}|Review it>" in body
    sig = hit.headers[SIGNATURE_HEADER.lower()]
    t = int(sig.split(",")[0].removeprefix("t="))
    assert sig == sign(SECRET, hit.body, delivery=hit.headers["x-guardrails-delivery"], timestamp=t)


def test_notify_config_from_yaml_and_validation(tmp_path: Path, receiver: Receiver,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_config(tmp_path / "g.yaml", notify={"url": receiver.url, "on": ["escalate"]})
    monkeypatch.setenv("GUARDRAILS_PLUGIN_NOTIFY__SECRET", "from-env")
    cfg = GuardConfig.from_yaml(path)
    assert cfg.notify is not None and cfg.notify.url == receiver.url
    assert "from-env" not in repr(cfg.notify)  # the secret stays out of reprs and logs
    for bad in ({"url": "ftp://x"}, {"url": receiver.url, "on": ["allow"]},
                {"url": receiver.url, "format": "xml"}, {"url": receiver.url, "max_retries": -1},
                {"url": receiver.url, "bogus": 1}):
        with pytest.raises(GuardConfigError):
            GuardConfig.build(**config_dict(notify=bad))


def test_no_notify_config_means_no_hook_and_no_thread() -> None:
    guard = make_guard()
    assert guard.notifier is None and guard.hooks == []
    g2 = make_guard(notify=notify(dead_url()))
    try:
        g2.check_prompt("fine")  # ALLOW is never sent: the worker thread is not even started
        assert g2.notifier._thread is None
    finally:
        g2.notifier.close()


def test_body_is_what_was_signed(receiver: Receiver) -> None:
    guard: Guard = make_guard(notify=notify(receiver.url))
    try:
        guard.check_prompt(f"{GREY_WORD} é ü \u2028 end")
        assert guard.notifier.flush(10)
    finally:
        guard.notifier.close()
    (hit,) = receiver.hits
    assert json.loads(hit.body.decode("utf-8"))["risk"] == pytest.approx(0.45)
    assert verify_signature(SECRET, hit.body, hit.headers[SIGNATURE_HEADER.lower()], hit.headers["x-guardrails-delivery"])


# -- issue 25, finding 6: the timestamp and the delivery id are signed with the body -----------------
def _signed_parts(hit: Any) -> tuple[str, str, int]:
    sig = hit.headers[SIGNATURE_HEADER.lower()]
    m = re.fullmatch(r"t=(\d+),v1=([0-9a-f]{64})", sig)
    assert m, sig  # the t=...,v1=... shape of well-known webhook senders
    return sig, hit.headers["x-guardrails-delivery"], int(m.group(1))


def test_a_replayed_delivery_with_another_id_or_an_old_timestamp_fails_verification(receiver: Receiver) -> None:
    from guardrails_plugin.observe.webhooks import DEFAULT_TOLERANCE_S, WebhookSignatureError, verify_event

    guard = make_guard(notify=notify(receiver.url))
    try:
        guard.check_prompt(f"{GREY_WORD} replay me")
        assert guard.notifier.flush(10)
    finally:
        guard.notifier.close()
    (hit,) = receiver.hits
    sig, delivery, t = _signed_parts(hit)
    assert abs(time.time() - t) < 120 and DEFAULT_TOLERANCE_S == 300
    assert verify_event(SECRET, hit.body, sig, delivery) == t
    # a replayer changes the delivery id to pass de-duplication: the signature no longer matches
    with pytest.raises(WebhookSignatureError, match="does not match"):
        verify_event(SECRET, hit.body, sig, uuid.uuid4().hex)
    # the same delivery replayed later than the tolerance
    with pytest.raises(WebhookSignatureError, match="tolerance"):
        verify_event(SECRET, hit.body, sig, delivery, now=t + DEFAULT_TOLERANCE_S + 1)
    assert verify_signature(SECRET, hit.body, sig, delivery, now=t + DEFAULT_TOLERANCE_S - 1)
    # a forged timestamp: the signature covers it
    forged = sig.replace(f"t={t}", f"t={t + 60}")
    assert not verify_signature(SECRET, hit.body, forged, delivery, now=t + 60)
    # a body-only HMAC (the old scheme) is no signature now
    old = "sha256=" + hmac.new(SECRET.encode(), hit.body, hashlib.sha256).hexdigest()
    assert not verify_signature(SECRET, hit.body, old, delivery)
    # secret rotation: any of several secrets may match
    assert verify_signature(["new-secret", SECRET], hit.body, sig, delivery)
    assert not verify_signature(SECRET, hit.body, None, delivery) and not verify_signature(SECRET, hit.body, sig, None)


def test_every_attempt_is_signed_afresh_with_the_same_delivery_id() -> None:
    rec = Receiver(statuses=[503])
    guard = make_guard(notify=notify(rec.url, max_retries=2))
    try:
        guard.check_prompt(f"{GREY_WORD} retried")
        assert guard.notifier.flush(10)
    finally:
        guard.notifier.close()
        rec.close()
    assert len(rec.hits) == 2
    parts = [_signed_parts(h) for h in rec.hits]
    assert parts[0][1] == parts[1][1]  # one delivery id
    assert all(verify_signature(SECRET, h.body, sig, d) for h, (sig, d, _) in zip(rec.hits, parts))


def test_a_lone_surrogate_in_metadata_is_delivered_as_valid_json(receiver: Receiver) -> None:
    guard = make_guard(notify=notify(receiver.url))
    try:
        guard.check_prompt(f"{GREY_WORD} x", metadata={"user": "bad \ud800 name \u202e"})
        assert guard.notifier.flush(10)
    finally:
        guard.notifier.close()
    (hit,) = receiver.hits
    assert json.loads(hit.body.decode("utf-8"))["metadata"]["user"] == "bad \ud800 name \u202e"
    assert b"\\u202e" in hit.body  # the bidi control travels escaped
