"""Routes beside the four model endpoints: ``/guardrails/apply_guardrail`` and the calls that reach a
model without the proxy's pre/post-call hooks.

* ``apply_guardrail`` (LiteLLM's ``/guardrails/apply_guardrail``, ``default_on`` or not): the text
  is judged by the configured stages, ``input_type: request`` as a prompt (with the request's
  ``messages`` when given), ``response`` as an answer to the request's user messages. A block is
  the guardrail's usual HTTP 400 (403 for a held escalation), a redaction returns the redacted
  text. The endpoint's own pre/post-call hook calls carry no model text and pass (guardrail.py).
* **Deployment hooks.** LiteLLM runs ``async_pre_call_deployment_hook`` before every model call it
  makes, on every route. A chat / completions / Responses / Messages call whose request did not go
  through this guardrail's pre-call hook (``/v1/rag/query`` calls ``litellm.aquery`` without the
  proxy's hooks) is judged there, retrieved context included, and its whole answer is judged in
  ``async_post_call_success_deployment_hook`` (a stream is judged by the streaming hook the route
  runs). LiteLLM's default deployment hooks (run only for model-level ``guardrails`` lists, where
  the post-call hook would judge every answer twice) are replaced by these.
* The Assistants API calls the model with no hook at all: start-up refuses a proxy config with
  ``assistant_settings`` unless ``allow_unguarded_routes: [assistants]`` (startup.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from litellm.types.guardrails import GuardrailEventHooks

from ..errors import GuardInputError
from ..types import Action, Stage
from .prompt import endpoint

#: metadata flag: this guardrail judged the request in the deployment hook (so it judges the answer)
DEPLOYMENT_CHECKED = "guardrails_plugin_deployment_checked"


def _meta_dicts(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [m for m in (data.get("metadata"), data.get("litellm_metadata")) if isinstance(m, dict)]


class RouteHooks:
    """Mixin of GuardrailsPluginGuardrail (see the module docstring); uses its guard and hooks."""

    # -- /guardrails/apply_guardrail ---------------------------------------------------------------
    async def apply_guardrail(self, inputs: Any, request_data: dict, input_type: Any, logging_obj: Any = None) -> Any:
        rail: Any = self  # the guardrail itself (this is its mixin)
        texts = [t for t in (inputs or {}).get("texts") or () if isinstance(t, str)]
        stage = Stage.RESPONSE if input_type == "response" else Stage.PROMPT
        if not texts or not rail.guards(stage):
            return inputs
        rid = request_data.get("litellm_call_id") if isinstance(request_data.get("litellm_call_id"), str) else None
        meta = {"guardrail": rail._name(), "route": "apply_guardrail"}
        out: list[str] = []
        for text in texts:
            try:
                if stage is Stage.PROMPT:
                    msgs = request_data.get("messages")
                    content: Any = [*msgs, {"role": "user", "content": text}] if isinstance(msgs, list) and msgs else text
                    d = await rail.guard.acheck_prompt(content, request_id=rid, metadata=meta)
                else:
                    d = await rail.guard.acheck_response(prompt=rail.query_text(request_data), response=text,
                                                      request_id=rid, metadata=meta)
            except GuardInputError as exc:
                d = rail.guard.stream_checks().unreadable(stage, str(exc), meta)
            if d.blocked or d.action is Action.ESCALATE and rail.guard.config.escalation_hold:
                raise await rail._refuse(d)
            out.append(d.text if d.action is Action.REDACT else text)
        return {**inputs, "texts": out}

    # -- deployment hooks: model calls that skipped the proxy's hooks -----------------------------------
    async def async_pre_call_deployment_hook(self, kwargs: dict, call_type: Any) -> dict | None:
        rail: Any = self  # the guardrail itself (this is its mixin)
        kind = endpoint(getattr(call_type, "value", call_type))
        if kind is None or rail._pre_call_hook_already_ran(kwargs) or not rail.guards(Stage.PROMPT):
            return kwargs  # an endpoint we do not read here keeps what its route decided
        if rail.should_run_guardrail(data=kwargs, event_type=GuardrailEventHooks.pre_call) is not True:
            return kwargs
        await rail._check_prompt(kwargs, call_type, GuardrailEventHooks.pre_call)
        for meta in _meta_dicts(kwargs):
            meta[DEPLOYMENT_CHECKED] = True
        return kwargs

    async def async_post_call_success_deployment_hook(self, request_data: dict, response: Any, call_type: Any) -> Any:
        rail: Any = self  # the guardrail itself (this is its mixin)
        if not any(m.get(DEPLOYMENT_CHECKED) for m in _meta_dicts(request_data)) or request_data.get("stream") is True:
            return None
        if rail.should_run_guardrail(data=request_data, event_type=GuardrailEventHooks.post_call) is not True:
            return None
        return await rail.async_post_call_success_hook(request_data, None, response)



def is_applied(response: Any) -> bool:
    """``/guardrails/apply_guardrail``'s answer: text a guardrail already judged, no model's."""
    return type(response).__name__ == "ApplyGuardrailResponse"
