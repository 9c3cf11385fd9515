"""What the guardrail tells clients and the proxy about its decisions.

* ``decision_payload``: the decision as clients see it (400 / 403 bodies, the terminal of a
  refused stream): action, stage, risk, categories, reason (a fail-mode reason cut to its kind:
  the engine's error, internal URLs included, is for the proxy's log), request id and, for an
  escalation, its id in the review queue.
* ``blocked_exception``: HTTP 400 for a block; HTTP 403 for an escalation held for review.
* ``escalation_id``: the queue entry the Guard's audit store made for an escalated decision.
* ``Decisions`` / ``slgi``: every decision of one hook call, reported through LiteLLM's standard
  guardrail logging (``StandardLoggingGuardrailInformation``): the proxy's logs, UI and logging
  callbacks (Langfuse, OTel, ...) show what was checked, the action, the risk and the latency.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from litellm.litellm_core_utils.core_helpers import get_or_create_metadata_bucket

from ..types import Action, Decision, GuardRequest, Stage

log = logging.getLogger("guardrails_plugin.litellm")

#: metadata key that ties a guard check to the hook call that asked for it
CHECK_KEY = "guardrails_plugin_check"


def decision_payload(decision: Decision, guardrail_name: str | None = None) -> dict[str, Any]:
    """The decision as the JSON the client sees (see the module docstring)."""
    reason = decision.reason.split(":", 1)[0] if decision.failure is not None else decision.reason
    return {
        "guardrail": guardrail_name or "guardrails-plugin",
        "action": decision.action.value,
        "stage": decision.stage.value,
        "risk": round(decision.risk, 4),
        "categories": list(decision.categories),
        "reason": reason,
        "degraded": decision.degraded,
        "request_id": decision.request_id,
    }


def escalation_body(payload: dict[str, Any], escalation: int | None) -> dict[str, Any]:
    """``payload`` of a held escalation: its queue id and what it means for the client."""
    return {**payload, "escalation_id": escalation, "review_status": "pending",
            "error": f"{payload['stage']} held for human review by guardrails-plugin"
                     + (f" (escalation {escalation})" if escalation is not None else "")}


def blocked_exception(decision: Decision, guardrail_name: str | None = None, escalation: int | None = None) -> Exception:
    """HTTP 400 carrying the decision; a held escalation is HTTP 403 naming its queue id.

    A LiteLLM ``ProxyException``: every route (chat, /v1/completions, /v1/responses, /v1/messages)
    passes it through as JSON with the decision under ``error.provider_specific_fields`` (an
    HTTPException's detail reaches /v1/completions clients only as a string). ``status_code`` and
    ``detail`` are there for callers that expect an HTTPException's."""
    from litellm.proxy._types import ProxyException

    payload = decision_payload(decision, guardrail_name)
    if decision.action is Action.ESCALATE:
        payload, status, kind, code = escalation_body(payload, escalation), 403, "permission_error", "escalated_for_review"
    else:
        payload["error"] = f"{decision.stage.value} blocked by guardrails-plugin: {payload['reason']}"
        status, kind, code = 400, "invalid_request_error", "guardrail_blocked"
    exc = ProxyException(message=payload["error"], type=kind, param=None, code=status, openai_code=code,
                         provider_specific_fields=payload)
    exc.status_code = status  # type: ignore[attr-defined]
    exc.detail = payload  # type: ignore[attr-defined]
    return exc


def _find_escalation(auditor: Any, decision: Decision) -> int | None:
    if getattr(auditor, "durability", "strict") == "background":
        auditor.flush(timeout=5.0)  # the record may still be queued
    for esc in reversed(auditor.store.list_escalations("pending")):  # newest last: scan back
        if esc.request_id == decision.request_id and esc.stage == decision.stage.value:
            return int(esc.id)
    return None


async def escalation_id(guard: Any, decision: Decision) -> int | None:
    """The review-queue id of an escalated ``decision`` (None without an audit store, or when the
    store cannot be read: the body still names the request id)."""
    auditor = getattr(guard, "auditor", None)
    if auditor is None or decision.action is not Action.ESCALATE:
        return None
    try:
        return await asyncio.to_thread(_find_escalation, auditor, decision)
    except Exception:
        log.exception("guardrails-plugin: could not read the escalation id of %s", decision.request_id)
        return None


async def client_payload(guard: Any, decision: Decision, guardrail_name: str) -> dict[str, Any]:
    """The decision as a stream's terminal carries it (with the escalation id when escalated)."""
    payload = decision_payload(decision, guardrail_name)
    if decision.action is Action.ESCALATE:
        payload = escalation_body(payload, await escalation_id(guard, decision))
        payload.pop("error", None)
    return payload


class Decisions:
    """The decisions of guard checks tagged with one hook call's key (see ``Reporter.collect``)."""

    def __init__(self) -> None:
        self.key = uuid.uuid4().hex
        self.items: list[Decision] = []
        self.started = time.time()


class Reporter:
    """Collects decisions per hook call (a Guard hook) and writes them to LiteLLM's standard
    guardrail logging when the call ends."""

    def __init__(self, guardrail: Any):
        self.guardrail = guardrail
        self._open: dict[str, Decisions] = {}

    def hook(self, request: GuardRequest, decision: Decision) -> None:
        got = self._open.get(request.metadata.get(CHECK_KEY))  # type: ignore[arg-type]
        if got is not None:
            got.items.append(decision)

    @contextmanager
    def collect(self, data: dict[str, Any], event: Any) -> Iterator[Decisions]:
        """Decisions of checks whose metadata carries ``CHECK_KEY: collected.key``, reported on exit."""
        got = Decisions()
        self._open[got.key] = got
        try:
            yield got
        finally:
            self._open.pop(got.key, None)
            try:
                slgi(self.guardrail, data, got, event)
            except Exception:  # logging must never change an outcome
                log.exception("guardrails-plugin: standard guardrail logging failed")


def _status(d: Decision) -> str:
    if d.failure is not None:
        return "guardrail_failed_to_respond"
    if d.blocked or d.action is Action.REDACT:
        return "guardrail_intervened"
    if d.action is Action.ESCALATE:
        return "guardrail_flagged"
    return "success"


def slgi(guardrail: Any, data: dict[str, Any], got: Decisions, event: Any) -> None:
    """One ``StandardLoggingGuardrailInformation`` per judged stage: the deciding check (the one
    that stopped or flagged, else the last), how many checks ran and their guard time."""
    if not got.items:
        return
    end = time.time()
    by_stage: dict[Stage, list[Decision]] = {}
    for d in got.items:
        by_stage.setdefault(d.stage, []).append(d)
    for stage, ds in by_stage.items():
        worst = next((d for d in ds if d.action is not Action.ALLOW), ds[-1])
        body = {**decision_payload(worst, guardrail.guardrail_name), "checks": len(ds),
                "guard_latency_ms": round(sum(d.latency_ms for d in ds), 2),
                "guards": sorted({v.guard for d in ds for v in d.verdicts})}
        # The entry CustomGuardrail.add_standard_logging_guardrail_information_to_request_data
        # builds, appended directly: its sanitising passes (exceptions, matched spans, credential
        # keys) walk the payload three times, and ours holds only the plain fields above (about
        # a quarter of the guardrail's proxy CPU per request, measured with benchmarks/litellm_load.py).
        entry = {"guardrail_name": guardrail.guardrail_name, "guardrail_provider": "guardrails-plugin",
                 "guardrail_mode": event, "guardrail_response": body, "guardrail_status": _status(worst),
                 "start_time": got.started, "end_time": end, "duration": end - got.started,
                 "masked_entity_count": None, "detection_method": "llm-judge",
                 "confidence_score": round(worst.risk, 4),
                 "classification": {"action": worst.action.value, "stage": stage.value,
                                    "categories": list(worst.categories)}}
        _, bucket = get_or_create_metadata_bucket(data)
        have = bucket.get("standard_logging_guardrail_information")
        if isinstance(have, list):
            have.append(entry)
        else:
            bucket["standard_logging_guardrail_information"] = [entry] if have is None else [have, entry]
