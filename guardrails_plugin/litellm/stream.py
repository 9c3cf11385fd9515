"""Guarding a LiteLLM proxy stream: chunks in, the TurnGuard's releases out, one refusal chunk.

The rules (reasoning streamed and cut early, the answer and tool calls held until checked, the
answer gated on the whole reasoning's verdict, one set of checks per choice index) live in
``guardrails_plugin.stream``; this module only translates. Upstream chunks are passed on as the
very objects LiteLLM produced, in order, so allowed traffic is byte-identical to an unguarded
proxy's. On a stop the upstream is closed and the stream ends with one chunk carrying the refusal
and ``finish_reason="content_filter"`` for each choice (the decision under
``provider_specific_fields["guardrails_plugin"]``). Nothing is raised once the stream has
started: an exception there drops the client's connection mid-body.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from ..stream import TurnRunner, adrive, parts_of
from ..types import Decision, Stage

log = logging.getLogger("guardrails_plugin.litellm")


async def guard_stream(runner: TurnRunner, response: Any, guardrail: str, model: Any) -> AsyncIterator[Any]:
    """The upstream ``response`` through ``runner``'s turn guard, ended by a refusal chunk on a stop."""
    async for chunk in adrive(runner, response, parts_of):
        yield chunk
    if runner.stop is not None:
        info = abort_info(runner)
        log.info("guardrails-plugin ended a stream: %s %s (%s) %s",
                 runner.stop.stage, runner.stop.action, runner.stop.reason, info)
        yield refusal_chunk(runner, guardrail, model, info)


def decision_payload(decision: Decision, guardrail_name: str | None = None) -> dict[str, Any]:
    """The decision as the JSON the client sees (400 bodies, the last chunk of a blocked stream).

    A fail-mode reason ("guard_unavailable: <engine error with internal URLs>") is cut to its
    kind: the engine's details are for the proxy's logs, not for API clients."""
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



def abort_info(runner: TurnRunner) -> dict[str, Any]:
    """What reached the client (chars of choice 0) and where the stream was cut (in the monitors'
    token units, approx_tokens)."""
    turn = runner.turn
    info: dict[str, Any] = {
        "reasoning_chars_sent": len(turn.released_text(Stage.REASONING)),
        "content_chars_sent": len(turn.released_text(Stage.RESPONSE)),
    }
    t = turn.stopped_track()
    if t is not None:
        info["abort_offset_tokens"] = t.abort_offset
        info["detection_lag_tokens"] = t.detection_lag
    return info


def refusal_chunk(runner: TurnRunner, guardrail: str, model: Any, info: dict[str, Any]) -> Any:
    from litellm.types.utils import Delta, ModelResponseStream, StreamingChoices

    d: Decision = runner.stop  # type: ignore[assignment]
    last = runner.turn.last_item
    text = d.text if d.blocked else runner.deps.config.refusal_message
    return ModelResponseStream(
        id=getattr(last, "id", None) or f"chatcmpl-{uuid.uuid4().hex}",
        model=getattr(last, "model", None) or model,
        created=getattr(last, "created", None) or int(time.time()),
        choices=[StreamingChoices(index=i, delta=Delta(content=text), finish_reason="content_filter")
                 for i in sorted(runner.turn.choices) or [0]],
        provider_specific_fields={"guardrails_plugin": {**decision_payload(d, guardrail), **info}},
    )
