"""Webhook notifications on ESCALATE (and, if configured, BLOCK) decisions.

``GuardConfig(notify={"url": ..., "secret": ..., "on": ["escalate"], "format": "json" | "slack"})``
makes the Guard register a ``Notifier`` as a decision hook. The hook only puts the decision on a
bounded queue; one worker thread builds the payload and POSTs it, retrying with exponential backoff.
A slow, dead or erroring receiver therefore never slows or fails a check: at worst events are
dropped (queue full) or given up on (retries spent), and both are counted and logged.

Each POST carries:

* ``X-Guardrails-Signature-256: sha256=<hex>``: HMAC-SHA256 of the exact body with ``secret``
  (when one is set); receivers check it with ``verify_signature``.
* ``X-Guardrails-Delivery``: one id per event, the same on every retry (receivers de-duplicate).
* ``X-Guardrails-Event``: ``escalate`` or ``block``.

Retried: connection errors, timeouts, HTTP 408 / 429 / 5xx. Any other status is final.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import hmac
import json
import logging
import queue
import threading
import uuid
import weakref
from datetime import datetime, timezone
from typing import Any, Protocol

import httpx

from ..config import NotifyConfig
from ..types import Action, Decision, GuardRequest


class _Hooked(Protocol):  # a Guard, without importing the facade (dependencies point down)
    hooks: list[Any]

log = logging.getLogger("guardrails_plugin.webhooks")

SIGNATURE_HEADER = "X-Guardrails-Signature-256"
DELIVERY_HEADER = "X-Guardrails-Delivery"
EVENT_HEADER = "X-Guardrails-Event"
_RETRY_STATUS = {408, 425, 429}
_MAX_BACKOFF_S = 30.0


def sign(secret: str, body: bytes) -> str:
    """The signature header value for ``body``: ``sha256=<hex HMAC-SHA256>``."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify_signature(secret: str, body: bytes, header: str | None) -> bool:
    """True when ``header`` is the signature of ``body`` under ``secret`` (constant-time compare)."""
    if not header:
        return False
    return hmac.compare_digest(sign(secret, body).encode(), header.strip().encode())


def _jsonable(value: Any) -> Any:
    try:
        return json.loads(json.dumps(value, default=str))
    except (TypeError, ValueError, RecursionError):
        return repr(value)


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
        "metadata": _jsonable(dict(request.metadata)),
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
        return json.dumps(payload, ensure_ascii=False).encode("utf-8")

    def _deliver(self, client: httpx.Client, request: GuardRequest, decision: Decision) -> bool:
        cfg = self.config
        body = self.body(request, decision)
        headers = {
            "Content-Type": "application/json",
            DELIVERY_HEADER: uuid.uuid4().hex,
            EVENT_HEADER: str(decision.action),
        }
        if cfg.secret:
            headers[SIGNATURE_HEADER] = sign(cfg.secret, body)
        delay = cfg.backoff_s
        for attempt in range(cfg.max_retries + 1):
            if attempt:
                with self._cond:
                    self.retries += 1
                if self._closing.wait(delay):  # closing: no more waiting, the event is given up
                    return self._gave_up(headers[DELIVERY_HEADER], "notifier closing")
                delay = min(delay * 2, _MAX_BACKOFF_S)
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
    "DELIVERY_HEADER",
    "EVENT_HEADER",
    "SIGNATURE_HEADER",
    "Notifier",
    "attach_notifier",
    "event_payload",
    "sign",
    "slack_payload",
    "verify_signature",
]
