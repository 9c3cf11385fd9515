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
from typing import TYPE_CHECKING, Any

from ..stream import TurnRunner, adrive, parts_of
from ..types import Decision, Stage

if TYPE_CHECKING:
    from .guardrail import GuardrailsPluginGuardrail

log = logging.getLogger("guardrails_plugin.litellm")


async def guard_stream(
    guardrail: GuardrailsPluginGuardrail, response: Any, request_data: dict[str, Any]
) -> AsyncIterator[Any]:
    """The guarded stream (the body of the guardrail's streaming-iterator hook)."""
    reasoning, answer = guardrail.guards(Stage.REASONING), guardrail.guards(Stage.RESPONSE)
    if not (reasoning or answer):
        async for chunk in response:
            yield chunk
        return
    runner = TurnRunner.of(
        guardrail.guard.stream_checks(), guardrail.query_text(request_data), local=True,
        reasoning=reasoning, response=answer, metadata={"guardrail": guardrail._name()},
    )
    async for chunk in adrive(runner, response, parts_of):
        yield chunk
    if runner.stop is not None:
        info = abort_info(runner)
        log.info("guardrails-plugin ended a stream: %s %s (%s) %s",
                 runner.stop.stage, runner.stop.action, runner.stop.reason, info)
        yield refusal_chunk(guardrail, runner, request_data.get("model"), info)


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


def refusal_chunk(guardrail: GuardrailsPluginGuardrail, runner: TurnRunner, model: Any, info: dict) -> Any:
    from litellm.types.utils import Delta, ModelResponseStream, StreamingChoices

    from .guardrail import decision_payload

    d: Decision = runner.stop  # type: ignore[assignment]
    last = runner.turn.last_item
    text = d.text if d.blocked else guardrail.guard.config.refusal_message
    return ModelResponseStream(
        id=getattr(last, "id", None) or f"chatcmpl-{uuid.uuid4().hex}",
        model=getattr(last, "model", None) or model,
        created=getattr(last, "created", None) or int(time.time()),
        choices=[StreamingChoices(index=i, delta=Delta(content=text), finish_reason="content_filter")
                 for i in sorted(runner.turn.choices) or [0]],
        provider_specific_fields={"guardrails_plugin": {**decision_payload(d, guardrail._name()), **info}},
    )
