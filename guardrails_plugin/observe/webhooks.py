"""Webhook notifications on ESCALATE (and, if configured, BLOCK) decisions.

``GuardConfig(notify={"url": ..., "secret": ..., "on": ["escalate"], "format": "json" | "slack"})``
makes the Guard register a ``Notifier`` as a decision hook. The hook only puts the decision on a
bounded queue; one worker thread builds the payload and POSTs it, retrying with exponential backoff.
A slow, dead or erroring receiver therefore never slows or fails a check: at worst events are
dropped (queue full) or given up on (retries spent), and both are counted and logged.

Each POST carries:

* ``X-Guardrails-Signature: t=<unix seconds>,v1=<hex>`` (when a secret is set), in the style of
  Stripe's webhooks: ``v1`` is HMAC-SHA256 under ``secret`` of ``"<t>.<delivery id>." + body``, so
  the timestamp and the delivery id are signed with the body. Each attempt is signed afresh (a
  new ``t``, the same delivery id). Receivers check it with ``verify_signature`` (or
  ``verify_event``), which refuses a timestamp more than ``DEFAULT_TOLERANCE_S`` (300 s) away
  from their clock, and de-duplicate on the delivery id within that window.
* ``X-Guardrails-Delivery``: one id per event, the same on every retry (receivers de-duplicate).
* ``X-Guardrails-Event``: ``escalate`` or ``block``.

The payload's ``metadata`` is the request's as stored (caller keys; the plugin's own fields as
``guardrails_plugin.*``, which caller metadata cannot write: records.py ``Trail``).

Retried: connection errors, timeouts, HTTP 408 / 429 / 5xx. Any other status is final.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import hmac
import logging
import queue
import threading
import time
import uuid
import weakref
from datetime import datetime, timezone
from typing import Any, Protocol

import httpx

from ..config import NotifyConfig
from ..errors import GuardError
from ..types import Action, Decision, GuardRequest
from .records import stored_metadata
from .reviews import safe_json


class _Hooked(Protocol):  # a Guard, without importing the facade (dependencies point down)
    hooks: list[Any]

log = logging.getLogger("guardrails_plugin.webhooks")

SIGNATURE_HEADER = "X-Guardrails-Signature"
DELIVERY_HEADER = "X-Guardrails-Delivery"
EVENT_HEADER = "X-Guardrails-Event"
#: how far a signed timestamp may be from the receiver's clock (seconds), both ways
DEFAULT_TOLERANCE_S = 300.0
_RETRY_STATUS = {408, 425, 429}
_MAX_BACKOFF_S = 30.0


class WebhookSignatureError(GuardError):
    """A webhook's signature header is missing, malformed, stale or does not match."""


def _mac(secret: str, timestamp: int, delivery: str, body: bytes) -> str:
    signed = f"{timestamp}.{delivery}.".encode() + body
    return hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, *, delivery: str, timestamp: int | None = None) -> str:
    """The signature header value: ``t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.delivery." + body>``."""
    t = int(time.time()) if timestamp is None else int(timestamp)
    return f"t={t},v1={_mac(secret, t, delivery, body)}"


def verify_event(secret: str | list[str], body: bytes, header: str | None, delivery: str | None, *,
                 tolerance_s: float = DEFAULT_TOLERANCE_S, now: float | None = None) -> int:
    """Check a delivery; returns its signed timestamp, raises ``WebhookSignatureError`` saying why.

    ``secret``: one, or several while rotating (any may match; so may any ``v1`` in the header).
    ``delivery``: the ``X-Guardrails-Delivery`` header as received (it is signed: a replayer who
    changes it to pass de-duplication breaks the signature). ``tolerance_s``: the most the signed
    timestamp may differ from ``now`` (default 300 s); de-duplicate on the delivery id for that long."""
    if not header or not delivery:
        raise WebhookSignatureError("missing signature or delivery header")
    ts: int | None = None
    sigs: list[str] = []
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t" and value.isdigit() and len(value) <= 12:
            ts = int(value)
        elif key == "v1" and value:
            sigs.append(value)
    if ts is None or not sigs:
        raise WebhookSignatureError("malformed signature header (want t=<unix seconds>,v1=<hex>)")
    clock = time.time() if now is None else now
    if abs(clock - ts) > tolerance_s:
        raise WebhookSignatureError(f"timestamp {ts} is outside the tolerance of {tolerance_s:.0f} s")
    for key in [secret] if isinstance(secret, str) else list(secret):
        want = _mac(key, ts, delivery, body).encode()
        if any(hmac.compare_digest(want, sig.encode("utf-8", "surrogatepass")) for sig in sigs):
            return ts
    raise WebhookSignatureError("signature does not match")


def verify_signature(secret: str | list[str], body: bytes, header: str | None, delivery: str | None, *,
                     tolerance_s: float = DEFAULT_TOLERANCE_S, now: float | None = None) -> bool:
    """True when ``header`` signs ``body`` and ``delivery`` under ``secret`` with a timestamp
    within ``tolerance_s`` of ``now`` (see ``verify_event``, which says why not)."""
    try:
        verify_event(secret, body, header, delivery, tolerance_s=tolerance_s, now=now)
    except WebhookSignatureError:
        return False
    return True


def event_payload(request: GuardRequest, decision: Decision, config: NotifyConfig) -> dict[str, Any]:
    """The JSON event for one decision (also the source of the Slack message)."""
    payload: dict[str, Any] = {
        "type": "guardrails.decision",
        "event": str(decision.action),
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "request_id": decision.request_id or request.request_id,
        "stage": str(decision.stage),
        "action": str(decision.action),
        "hold": decision.hold,
        "reason": decision.reason,
        "risk": decision.risk,
        "categories": list(decision.categories),
        "guards": list(dict.fromkeys(v.guard for v in decision.verdicts)),
        "degraded": decision.degraded,
        "failure": str(decision.failure) if decision.failure else None,
        "content_sha256": hashlib.sha256(request.target.encode("utf-8", "surrogatepass")).hexdigest(),
        "metadata": stored_metadata(request.metadata),
    }
    if config.include_content:
        payload["content"] = request.target
    if config.review_url:
        payload["review_url"] = f"{config.review_url.rstrip('/')}/request/{payload['request_id']}"
    return payload


def _slack_escape(text: str) -> str:
    # Slack mrkdwn control characters; everything else is shown as written
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_payload(event: dict[str, Any]) -> dict[str, Any]:
    """A Slack incoming-webhook message (``text`` fallback plus Block Kit sections)."""
    verb = "held for review" if event["hold"] else "escalated" if event["action"] == "escalate" else "blocked"
    head = f"Guardrails: {event['stage']} {verb} (risk {event['risk']:.2f})"
    lines = [
        f"*{_slack_escape(head)}*",
        f"*Reason:* {_slack_escape(event['reason'])}",
        f"*Categories:* {_slack_escape(', '.join(event['categories']) or '-')}",
        f"*Request:* `{_slack_escape(event['request_id'])}`",
    ]
    if "content" in event:
        lines.append("*Content:*\n```" + _slack_escape(event["content"][:2500]) + "```")
    if event.get("review_url"):
        lines.append(f"<{event['review_url']}|Review it>")
    return {
        "text": head,
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)}}],
    }


_live: weakref.WeakSet[Notifier] = weakref.WeakSet()


@atexit.register
def _drain_at_exit() -> None:
    for n in list(_live):
        with contextlib.suppress(Exception):
            n.close(timeout=2.0)


class Notifier:
    """Decision hook that posts webhook events from a background thread (see the module doc)."""

    #: Guard runs hooks inline unless they say they block: this one never does
    blocking = False

    def __init__(self, config: NotifyConfig, *, transport: httpx.BaseTransport | None = None):
        self.config = config
        self.on = {Action(a) for a in config.on}
        self.sent = 0  #: events the receiver accepted (2xx)
        self.failed = 0  #: events given up on (final status, or retries spent)
        self.dropped = 0  #: events lost to a full queue or a closed notifier
        self.retries = 0  #: extra attempts made
        self._enqueued = 0
        self._transport = transport
        self._queue: queue.Queue[tuple[GuardRequest, Decision] | None] = queue.Queue(config.queue_size)
        self._cond = threading.Condition()
        self._closing = threading.Event()  # cuts backoff waits short when closing
        self._closed = False
        self._thread: threading.Thread | None = None
        _live.add(self)

    # -- the hook (request path: never blocks) -------------------------------------------------
    def __call__(self, request: GuardRequest, decision: Decision) -> None:
        if decision.action not in self.on:
            return
        with self._cond:
            if self._closed:
                self.dropped += 1
                return
            if self._thread is None:  # started lazily: a Guard that never escalates has no thread
                self._thread = threading.Thread(target=self._run, name="guardrails-plugin-notify", daemon=True)
                self._thread.start()
            try:
                self._queue.put_nowait((request, decision))
                self._enqueued += 1
                return
            except queue.Full:
                self.dropped += 1
                n = self.dropped
        if n == 1 or n % 1000 == 0:
            log.error("webhook queue full: %d event(s) dropped so far", n)

    # -- the worker ------------------------------------------------------------------------------
    def _run(self) -> None:
        with httpx.Client(transport=self._transport, timeout=self.config.timeout_s,
                          follow_redirects=False) as client:
            while True:
                item = self._queue.get()
                if item is None:
                    return
                try:
                    ok = self._deliver(client, *item)
                except Exception:  # a payload bug must not kill the worker
                    log.exception("webhook: building or sending an event failed")
                    ok = False
                with self._cond:
                    if ok:
                        self.sent += 1
                    else:
                        self.failed += 1
                    self._cond.notify_all()

    def body(self, request: GuardRequest, decision: Decision) -> bytes:
        event = event_payload(request, decision, self.config)
        payload = slack_payload(event) if self.config.format == "slack" else event
        return safe_json(payload).encode("utf-8")  # a lone surrogate in metadata cannot break the body

    def _deliver(self, client: httpx.Client, request: GuardRequest, decision: Decision) -> bool:
        cfg = self.config
        body = self.body(request, decision)
        delivery = uuid.uuid4().hex
        headers = {
            "Content-Type": "application/json",
            DELIVERY_HEADER: delivery,
            EVENT_HEADER: str(decision.action),
        }
        delay = cfg.backoff_s
        for attempt in range(cfg.max_retries + 1):
            if attempt:
                with self._cond:
                    self.retries += 1
                if self._closing.wait(delay):  # closing: no more waiting, the event is given up
                    return self._gave_up(headers[DELIVERY_HEADER], "notifier closing")
                delay = min(delay * 2, _MAX_BACKOFF_S)
            if cfg.secret:  # signed per attempt: a retry carries a fresh timestamp, the same delivery id
                headers[SIGNATURE_HEADER] = sign(cfg.secret, body, delivery=delivery)
            try:
                r = client.post(cfg.url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                why = f"{type(exc).__name__}: {exc}"
            else:
                if r.is_success:
                    return True
                why = f"HTTP {r.status_code}"
                if r.status_code < 500 and r.status_code not in _RETRY_STATUS:
                    return self._gave_up(headers[DELIVERY_HEADER], f"refused: {why}")
            # per attempt only at debug level: a dead receiver must not flood the logs
            log.debug("webhook %s attempt %d/%d failed: %s", cfg.url, attempt + 1, cfg.max_retries + 1, why)
        return self._gave_up(headers[DELIVERY_HEADER], f"{cfg.max_retries + 1} attempt(s) failed, last: {why}")

    def _gave_up(self, delivery: str, why: str) -> bool:
        """Log a lost event: the first one, then every 100th (with the count). Returns False."""
        with self._cond:
            n = self.failed + 1
        if n == 1 or n % 100 == 0:
            log.error("webhook %s: gave up on delivery %s (%s); %d event(s) lost so far",
                      self.config.url, delivery, why, n)
        return False

    # -- lifecycle -------------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        with self._cond:
            return self._enqueued - self.sent - self.failed

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event queued so far was delivered or given up on. False on timeout."""
        with self._cond:
            target = self._enqueued
            return self._cond.wait_for(lambda: self.sent + self.failed >= target, timeout)

    def close(self, timeout: float | None = 5.0) -> None:
        """Send what is queued (no more backoff waits), then stop the worker. Idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        _live.discard(self)
        if thread is not None:
            self._closing.set()
            self._queue.put(None)
            thread.join(timeout)
            if thread.is_alive():
                log.error("webhook worker did not finish within %ss; %d event(s) pending", timeout, self.pending)


def attach_notifier(guard: _Hooked, config: NotifyConfig | dict[str, Any]) -> Notifier:
    """Register a Notifier on ``guard``'s decision hooks; it closes when the guard is collected."""
    cfg = config if isinstance(config, NotifyConfig) else NotifyConfig.model_validate(config)
    notifier = Notifier(cfg)
    guard.hooks.append(notifier)
    weakref.finalize(guard, notifier.close, 1.0)
    return notifier


__all__ = [
    "DEFAULT_TOLERANCE_S",
    "DELIVERY_HEADER",
    "EVENT_HEADER",
    "SIGNATURE_HEADER",
    "Notifier",
    "attach_notifier",
    "event_payload",
    "sign",
    "slack_payload",
    "verify_event",
    "verify_signature",
    "WebhookSignatureError",
]
