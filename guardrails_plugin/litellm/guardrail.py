"""GuardrailsPluginGuardrail: the guard models in the path of a LiteLLM proxy.

Proxy config (see integrations/litellm/config.yaml)::

    guardrails:
      - guardrail_name: guardrails-plugin
        litellm_params:
          guardrail: guardrails_plugin_guardrail.GuardrailsPluginGuardrail
          mode: [pre_call, post_call]        # post_call also guards streams
          default_on: true
          guard_config: /etc/guard.yaml      # or an inline mapping, or "os.environ/VAR"
          guard_settings: {strictness: strict}   # optional overrides of the guard config
          stages: [prompt, reasoning, response]  # optional subset
          fail_mode: closed                  # optional override: closed | open
          on_response_block: refuse          # refuse (200 + refusal) | error (HTTP 400)

Hooks: ``pre_call`` / ``during_call`` check the prompt (BLOCK -> HTTP 400 with the decision in the
JSON body); ``post_call`` checks the answer and its reasoning on non-streaming responses and, for
streams, runs the turn guard over the reasoning, answer and tool-call deltas (see stream.py).

The parameter names avoid LiteLLM's own ``litellm_params`` fields (``mode``, ``config``,
``timeout``, ...), which the proxy would otherwise type-check and coerce.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncGenerator, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from fastapi import HTTPException
from litellm.integrations.custom_guardrail import CustomGuardrail
from litellm.types.guardrails import GuardrailEventHooks

from ..config import GuardConfig
from ..content import normalize_text
from ..errors import GuardConfigError, GuardInputError
from ..guard import Guard
from ..stream import TurnRunner, ajudge, parts_of
from ..types import Action, Decision, GuardRequest, Stage
from .stream import decision_payload, guard_stream

log = logging.getLogger("guardrails_plugin.litellm")

OnResponseBlock = Literal["refuse", "error"]
_ALL_STAGES = (Stage.PROMPT, Stage.REASONING, Stage.RESPONSE)
#: hooks the proxy only finds when they sit in the guardrail class's own __dict__
_OWN_DICT_HOOKS = ("async_post_call_streaming_iterator_hook",)


class GuardrailStartupError(RuntimeError):
    """The guardrail cannot start (bad config). Deliberately not a ValueError: LiteLLM's proxy
    skips guardrails whose constructor raises ValueError/TypeError and serves traffic unguarded."""


def blocked_exception(decision: Decision, guardrail_name: str | None = None) -> HTTPException:
    """HTTP 400 whose ``detail`` carries the decision; the proxy turns it into the error body."""
    payload = decision_payload(decision, guardrail_name)
    payload["error"] = f"{decision.stage.value} blocked by guardrails-plugin: {payload['reason']}"
    return HTTPException(status_code=400, detail=payload)


def _resolve_env(value: Any) -> Any:
    # LiteLLM's convention for secrets and paths in proxy configs.
    if isinstance(value, str) and value.startswith("os.environ/"):
        name = value.split("/", 1)[1]
        try:
            return os.environ[name]
        except KeyError:
            raise GuardConfigError(f"guard_config names env var {name!r}, which is not set") from None
    return value


def build_guard_config(
    guard_config: str | Path | Mapping[str, Any] | GuardConfig | None,
    guard_settings: Mapping[str, Any] | None = None,
    fail_mode: str | None = None,
) -> GuardConfig:
    """A GuardConfig from a YAML path, an inline mapping or a ready config, plus overrides."""
    overrides: dict[str, Any] = dict(guard_settings or {})
    if fail_mode is not None:
        overrides["fail_mode"] = fail_mode
    guard_config = _resolve_env(guard_config)
    if isinstance(guard_config, GuardConfig):
        if not overrides:
            return guard_config
        data = guard_config.model_dump()
        data.update(overrides)
        return GuardConfig.build(**data)
    if isinstance(guard_config, Mapping):
        return GuardConfig.build(**{**dict(guard_config), **overrides})
    if guard_config:
        return GuardConfig.from_yaml(guard_config, **overrides)
    return GuardConfig.build(**overrides)


def _parse_stages(stages: Iterable[str | Stage] | str | None) -> frozenset[Stage]:
    if stages is None:
        return frozenset(_ALL_STAGES)
    if isinstance(stages, (str, Stage)):
        stages = [stages]
    try:
        return frozenset(Stage(s) for s in stages)
    except ValueError as exc:
        raise GuardConfigError(f"stages must be among prompt, reasoning, response: {exc}") from None


def prompt_messages(data: Mapping[str, Any]) -> Any:
    """The user's input in a request body: the user-role messages of a chat request, else the
    ``prompt`` / ``input`` of a completion or embedding request. None when there is none."""
    messages = data.get("messages")
    if isinstance(messages, list):
        users = [m for m in messages if isinstance(m, Mapping) and m.get("role") == "user"]
        return users or None
    for key in ("prompt", "input"):
        value = data.get(key)
        if isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            return value
    return None


class GuardrailsPluginGuardrail(CustomGuardrail):
    """LiteLLM CustomGuardrail running guardrails-plugin's guard models.

    ``GuardrailsPluginGuardrail(guard=None, guard_config=None, **litellm_kwargs)``: a ready Guard,
    or a guard config (YAML path, mapping, GuardConfig); else ``Guard.default()``. The guard's
    engines are built (weights loaded) when the proxy starts, unless ``warmup=False``; a model that
    cannot be loaded is logged as an error and its checks end in their fail mode.
    """

    # Keep our own pre/during/post/stream hooks even if a subclass adds apply_guardrail.
    use_native_lifecycle_hooks = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # The proxy looks for the streaming-iterator hook in type(cb).__dict__ only, so a user's
        # subclass would silently stop guarding streams. Copy the inherited hook into the
        # subclass's own dict (an override the subclass defines itself is left alone).
        super().__init_subclass__(**kwargs)
        for name in _OWN_DICT_HOOKS:
            if name not in cls.__dict__:
                setattr(cls, name, getattr(cls, name))

    def __init__(
        self,
        guard: Guard | None = None,
        guard_config: str | Path | Mapping[str, Any] | GuardConfig | None = None,
        *,
        guard_settings: Mapping[str, Any] | None = None,
        stages: Iterable[str | Stage] | str | None = None,
        fail_mode: Literal["closed", "open"] | None = None,
        on_response_block: OnResponseBlock = "refuse",
        warmup: bool = True,
        **kwargs: Any,
    ):
        kwargs.setdefault(
            "supported_event_hooks",
            [GuardrailEventHooks.pre_call, GuardrailEventHooks.during_call, GuardrailEventHooks.post_call],
        )
        super().__init__(**kwargs)
        try:
            if guard is not None and (guard_config is not None or guard_settings or fail_mode):
                raise GuardConfigError("pass either a ready guard or guard_config/guard_settings/fail_mode")
            if on_response_block not in ("refuse", "error"):
                raise GuardConfigError(f"on_response_block must be 'refuse' or 'error', got {on_response_block!r}")
            self.guard: Guard = guard if guard is not None else Guard(
                build_guard_config(guard_config, guard_settings, fail_mode)
            )
            self.stages = _parse_stages(stages)
        except (ValueError, TypeError) as exc:
            # The proxy catches ValueError/TypeError from a guardrail's constructor, logs it and
            # starts WITHOUT the guardrail: unguarded traffic. Refuse to start instead.
            raise GuardrailStartupError(f"guardrail {self._name()!r} not started: {exc}") from exc
        self.on_response_block: OnResponseBlock = on_response_block
        self.guard.hooks.append(self._log_decision)
        if warmup:  # load the guard models at proxy start rather than on the first request
            try:
                self.guard.warmup()
            except Exception:
                # Still safe: every check then ends in its stage's fail mode (closed by default).
                log.exception("guardrail %r could not load its guard models; checks will fail %s",
                              self._name(), self.guard.config.fail_mode)

    # -- helpers ------------------------------------------------------------------------------
    def _name(self) -> str:
        return self.guardrail_name or "guardrails-plugin"

    def _log_decision(self, request: GuardRequest, decision: Decision) -> None:
        # Runs after every decision; only what an operator acts on is logged.
        if decision.degraded:
            log.warning("guardrails-plugin degraded: %s check passed without a verdict (fail-open, %s) "
                        "guardrail=%s request_id=%s", decision.stage, decision.reason, self._name(), decision.request_id)
        elif decision.blocked:
            log.info("guardrails-plugin blocked %s: %s guardrail=%s request_id=%s",
                     decision.stage, decision.reason, self._name(), decision.request_id)

    def guards(self, stage: Stage) -> bool:
        """True when this guardrail checks ``stage``."""
        return stage in self.stages and self.guard.config.stage(stage).enabled

    async def _check_prompt(self, data: dict[str, Any]) -> Decision | None:
        if not self.guards(Stage.PROMPT):
            return None
        content = prompt_messages(data)
        if content is None:
            return None
        try:
            return await self.guard.acheck_prompt(content, metadata={"guardrail": self._name()})
        except GuardInputError as exc:
            # Content no guard can read is a guard that cannot answer: the stage's fail mode
            # (closed -> 400), never a silent pass of text nobody judged.
            return self.guard.stream_checks().unreadable(Stage.PROMPT, str(exc), {"guardrail": self._name()})

    def query_text(self, data: Mapping[str, Any]) -> str:
        """The request's user text, as the query of reasoning/response checks. Unreadable content
        gives "" (the answer is still judged, without its query) rather than an error."""
        try:
            return normalize_text(prompt_messages(data) or "", what="prompt").value
        except GuardInputError:
            return ""

    def _apply_prompt_decision(self, data: dict[str, Any], decision: Decision | None) -> None:
        if decision is None:
            return
        if decision.blocked:
            raise blocked_exception(decision, self._name())
        if decision.action is Action.REDACT:
            users = [m for m in data.get("messages") or [] if isinstance(m, dict) and m.get("role") == "user"]
            if len(users) == 1 and isinstance(users[0].get("content"), str):
                users[0]["content"] = decision.text
            else:  # a redaction of joined messages cannot be mapped back: do not pass it on unredacted
                raise blocked_exception(
                    decision.model_copy(update={"action": Action.BLOCK, "reason": f"{decision.reason} (redaction not applicable)"}),
                    self._name(),
                )

    # -- LiteLLM hooks ------------------------------------------------------------------------
    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: dict, call_type: Any
    ) -> dict | None:
        self._apply_prompt_decision(data, await self._check_prompt(data))
        return data

    async def async_moderation_hook(self, data: dict, user_api_key_dict: Any, call_type: Any) -> Any:
        # during_call: LiteLLM runs this concurrently with the model call and holds the response.
        self._apply_prompt_decision(data, await self._check_prompt(data))
        return None

    async def async_post_call_success_hook(self, data: dict, user_api_key_dict: Any, response: Any) -> Any:
        query, deps = self.query_text(data), self.guard.stream_checks()
        for choice in getattr(response, "choices", None) or []:
            message = getattr(choice, "message", None)
            if message is None:
                continue
            v = await ajudge(deps, query, parts_of(message), reasoning=self.guards(Stage.REASONING),
                             response=self.guards(Stage.RESPONSE), metadata={"guardrail": self._name()})
            if v.stop is not None:
                if self.on_response_block == "error":
                    raise blocked_exception(v.stop, self._name())
                message.content = v.stop.text
                for attr in ("reasoning_content", "thinking_blocks", "tool_calls", "function_call"):
                    if getattr(message, attr, None) is not None:
                        setattr(message, attr, None)  # a refused turn must not run its tools
                choice.finish_reason = "content_filter"
                continue
            if v.reasoning is not None:
                field = "reasoning_content" if getattr(message, "reasoning_content", None) else "reasoning"
                setattr(message, field, v.reasoning.text)
            if v.answer is not None:
                message.content = v.answer.text
        return response

    async def async_post_call_streaming_iterator_hook(
        self, user_api_key_dict: Any, response: Any, request_data: dict
    ) -> AsyncGenerator[Any, None]:
        reasoning, answer = self.guards(Stage.REASONING), self.guards(Stage.RESPONSE)
        if not (reasoning or answer):
            async for chunk in response:
                yield chunk
            return
        runner = TurnRunner.of(self.guard.stream_checks(), self.query_text(request_data), local=True,
                               reasoning=reasoning, response=answer, metadata={"guardrail": self._name()})
        async for chunk in guard_stream(runner, response, self._name(), request_data.get("model")):
            yield chunk
