"""GuardrailsPluginGuardrail: the guard models in the path of a LiteLLM proxy.

Proxy config (see integrations/litellm/config.yaml)::

    guardrails:
      - guardrail_name: guardrails-plugin
        litellm_params:
          guardrail: guardrails_plugin_guardrail.GuardrailsPluginGuardrail
          mode: [pre_call, post_call]        # post_call also guards streams
          default_on: true
          guard_config: /etc/guard.yaml      # or an inline mapping, or "os.environ/VAR"
          guard_settings: {strictness: strict, prompt_roles: [system, developer, user, tool]}
          stages: [prompt, reasoning, response]  # optional subset
          fail_mode: closed                  # optional override: closed | open
          on_response_block: refuse          # refuse (200 + refusal) | error (HTTP 400)
          allow_endpoints: [embedding]       # optional: more call types passed unchecked

Endpoints: /v1/chat/completions, /v1/completions, /v1/responses and /v1/messages are judged, in
and out, whole or streamed (prompt.py, answers.py, stream.py). Embeddings, moderation and rerank
carry no model text back and pass; any other endpoint is unreadable and goes to the fail mode.

Hooks: ``pre_call`` / ``during_call`` check every client-supplied role in ``prompt_roles`` (BLOCK
-> HTTP 400 with the decision in the JSON body; an escalation held for review -> HTTP 403 naming
its escalation id; once a reviewer approved it, the identical request resent with header
``x-guardrails-escalation-id: <id>`` passes the prompt check); ``post_call`` checks the answer, its reasoning and tool calls, and for streams
runs the turn guard over them. Every hook's decisions go to LiteLLM's standard guardrail logging.

What the client sends cannot switch the guardrail off: whether it runs is LiteLLM's
``should_run_guardrail``, which for a ``default_on`` guardrail reads only the admin's key and team
settings (``disable_global_guardrails``, ``opted_out_global_guardrails``), never the body's
``guardrails`` list or metadata (tests/litellm/test_bypass_matrix.py tries each).

The parameter names avoid LiteLLM's own ``litellm_params`` fields (``mode``, ``config``,
``timeout``, ...), which the proxy would otherwise type-check and coerce.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

from litellm.integrations.custom_guardrail import CustomGuardrail
from litellm.types.guardrails import GuardrailEventHooks

from ..observe.reviews import approved_as_is
from ..config import GuardConfig
from ..content import normalize_text
from ..errors import GuardConfigError, GuardInputError
from ..guard import Guard
from ..stream import TurnRunner
from ..types import Action, Decision, Stage
from .answers import ajudge_for, judge, kind_of
from .failures import clean_failure
from .prompt import NO_MODEL_TEXT, Prompt, call_type_name, endpoint, extract
from .report import CHECK_KEY, Reporter, blocked_exception, client_payload, decision_payload, escalation_id
from .routes import RouteHooks, is_applied
from .startup import (GuardrailStartupError, build_guard_config, check_allowed_routes, check_modes, check_routes,
                      freeze_startup_heap, parse_stages)
from .stream import guard_stream

log = logging.getLogger("guardrails_plugin.litellm")

OnResponseBlock = Literal["refuse", "error"]
#: the header a client resends a held request with, once a reviewer approved its escalation
ESCALATION_HEADER = "x-guardrails-escalation-id"
#: hooks the proxy only finds when they sit in the guardrail class's own __dict__
_OWN_DICT_HOOKS = ("async_post_call_streaming_iterator_hook",)


def prompt_messages(data: Mapping[str, Any]) -> Any:
    """The user's own text in a request body (the query the reasoning and answer checks see): the
    user-role messages of a chat / Messages request, else the ``prompt`` / ``input``."""
    messages = data.get("messages")
    if isinstance(messages, list):
        users = [m for m in messages if isinstance(m, Mapping) and m.get("role") == "user"]
        return users or None
    for key in ("prompt", "input"):
        value = data.get(key)
        if isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, (str, Mapping)) for v in value)):
            return value
    return None


class GuardrailsPluginGuardrail(RouteHooks, CustomGuardrail):
    """LiteLLM CustomGuardrail running guardrails-plugin's guard models.

    ``GuardrailsPluginGuardrail(guard=None, guard_config=None, **litellm_kwargs)``: a ready Guard,
    or a guard config (YAML path, mapping, GuardConfig); else ``Guard.default()``. The guard's
    engines are built (weights loaded) when the proxy starts, unless ``warmup=False``; a model that
    cannot be loaded is logged as an error and its checks end in their fail mode.
    """

    # Keep our own pre/during/post/stream hooks even if a subclass adds apply_guardrail.
    use_native_lifecycle_hooks = True
    # Decisions are reported by the guardrail itself (report.py), once per judged stage.
    records_own_guardrail_information: ClassVar[bool] = True

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
        allow_endpoints: Iterable[str] | None = None,
        allow_request_fields: Iterable[str] | None = None,
        allow_unguarded_routes: Iterable[str] | None = None,
        warmup: bool = True,
        gc_freeze: bool = True,
        **kwargs: Any,
    ):
        kwargs.setdefault(
            "supported_event_hooks",
            [GuardrailEventHooks.pre_call, GuardrailEventHooks.during_call, GuardrailEventHooks.post_call],
        )
        try:
            # LiteLLM's own mode check raises ValueError in here: inside the try (startup.py)
            super().__init__(**kwargs)
            check_modes(kwargs.get("event_hook"))
            if isinstance(allow_request_fields, str) or not all(isinstance(f, str) for f in allow_request_fields or ()):
                raise GuardConfigError("allow_request_fields must be a list of request body field names")
            #: body fields passed unchecked (request_fields.py: unknown fields that carry text are refused)
            self.allow_request_fields = tuple(allow_request_fields or ())
            check_routes(check_allowed_routes(allow_unguarded_routes))
            if guard is not None and (guard_config is not None or guard_settings or fail_mode):
                raise GuardConfigError("pass either a ready guard or guard_config/guard_settings/fail_mode")
            if on_response_block not in ("refuse", "error"):
                raise GuardConfigError(f"on_response_block must be 'refuse' or 'error', got {on_response_block!r}")
            if isinstance(allow_endpoints, str) or not all(isinstance(e, str) for e in allow_endpoints or ()):
                raise GuardConfigError("allow_endpoints must be a list of LiteLLM call types, e.g. [embedding]")
            self.guard: Guard = guard if guard is not None else Guard(
                build_guard_config(guard_config, guard_settings, fail_mode)
            )
            self.stages = parse_stages(stages)
        except (ValueError, TypeError) as exc:
            # The proxy catches ValueError/TypeError from a guardrail's constructor, logs it and
            # starts WITHOUT the guardrail: unguarded traffic. Refuse to start instead.
            name = kwargs.get("guardrail_name") or "guardrails-plugin"
            raise GuardrailStartupError(f"guardrail {name!r} not started: {exc}") from exc
        self.on_response_block: OnResponseBlock = on_response_block
        #: call types passed unchecked: no model text comes back (plus what the admin adds)
        self.allow_endpoints = frozenset(NO_MODEL_TEXT) | frozenset(
            n for e in allow_endpoints or () for n in (e, f"a{e}"))
        self.reporter = Reporter(self)
        self.guard.hooks.append(self._log_decision)
        self.guard.hooks.append(self.reporter.hook)
        if warmup:  # load the guard models at proxy start rather than on the first request
            try:
                self.guard.warmup()
            except Exception:
                # Still safe: every check then ends in its stage's fail mode (closed by default).
                log.exception("guardrail %r could not load its guard models; checks will fail %s",
                              self._name(), self.guard.config.fail_mode)
        if gc_freeze:
            freeze_startup_heap()

    # -- helpers ------------------------------------------------------------------------------
    def _name(self) -> str:
        return self.guardrail_name or "guardrails-plugin"

    def _log_decision(self, request: Any, decision: Decision) -> None:
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

    def _meta(self, data: Mapping[str, Any], key: str) -> dict[str, Any]:
        meta = {"guardrail": self._name(), CHECK_KEY: key}
        if isinstance(data.get("litellm_call_id"), str):
            meta["litellm_call_id"] = data["litellm_call_id"]
        return meta

    def query_text(self, data: Mapping[str, Any]) -> str:
        """The request's user text, as the query of reasoning/response checks. Unreadable content
        gives "" (the answer is still judged, without its query) rather than an error."""
        try:
            return normalize_text(prompt_messages(data) or "", what="prompt").value
        except GuardInputError:
            return ""

    async def _refuse(self, decision: Decision) -> Exception:
        """The HTTP error for a refused request: 403 naming the escalation when held for review."""
        esc = await escalation_id(self.guard, decision) if decision.action is Action.ESCALATE else None
        return blocked_exception(decision, self._name(), esc)

    async def _payload(self, decision: Decision) -> dict[str, Any]:
        return await client_payload(self.guard, decision, self._name())

    def _unreadable(self, stage: Stage, why: str, data: Mapping[str, Any], key: str) -> Decision:
        return self.guard.stream_checks().unreadable(stage, why, self._meta(data, key))

    # -- the prompt ---------------------------------------------------------------------------
    async def _check_prompt(self, data: dict[str, Any], call_type: Any, event: GuardrailEventHooks) -> None:
        if not self.guards(Stage.PROMPT):
            return
        name = call_type_name(call_type)
        kind = endpoint(name)
        if kind is None and (name in self.allow_endpoints or name == "apply_guardrail"):
            return  # no model text (apply_guardrail's own text is judged in routes.py)
        self.mark_pre_call_hook_ran(data)  # the deployment hook (routes.py) then leaves it alone
        with self.reporter.collect(data, event) as got:
            decision: Decision | None
            if kind is None:  # an endpoint we cannot read: unknown is unsafe
                decision = self._unreadable(Stage.PROMPT, f"endpoint {name!r} is not one the guardrail reads",
                                            data, got.key)
                got.items.append(decision)
            else:
                try:
                    prompt = await extract(data, kind, self.guard.config.prompt_roles, self.allow_request_fields)
                except Exception as exc:  # the translation failed on this body
                    log.warning("guardrails-plugin could not read a %s request: %r", kind, exc)
                    prompt = Prompt(unreadable=[f"request not readable: {type(exc).__name__}"])
                decision = await self._judge_prompt(prompt, data, got.key)
                if decision is not None and decision not in got.items:  # decided without a guard check
                    got.items.append(decision)
            if decision is not None:
                await self._apply_prompt_decision(data, decision, prompt if kind is not None else None)

    async def _judge_prompt(self, prompt: Prompt, data: Mapping[str, Any], key: str) -> Decision | None:
        if prompt.unreadable:
            d = self._unreadable(Stage.PROMPT, "; ".join(prompt.unreadable), data, key)
            if d.blocked or prompt.messages is None:
                return d
        if prompt.messages is None:
            return None
        content: Any = prompt.messages
        if prompt.single_user is not None:
            content = prompt.single_user[1]  # judged as the plain string the user sent
        rid = data.get("litellm_call_id") if isinstance(data.get("litellm_call_id"), str) else None
        approved = await self._approved(data, content)
        if approved is not None:
            return Decision(action=Action.ALLOW, stage=Stage.PROMPT, text="", request_id=rid or "",
                            reason=f"escalation {approved.id} approved by {approved.resolver or 'a reviewer'}")
        try:
            return await self.guard.acheck_prompt(content, request_id=rid, metadata=self._meta(data, key))
        except GuardInputError as exc:
            # Content no guard can read is a guard that cannot answer: the stage's fail mode.
            return self._unreadable(Stage.PROMPT, str(exc), data, key)

    async def _approved(self, data: Mapping[str, Any], content: Any) -> Any:
        """The approved escalation a resent request names in ``ESCALATION_HEADER``, when it was
        raised at the prompt stage for exactly this prompt (same SHA-256 of the judged text) and a
        reviewer approved it as is (an edit approves other text); else None. One store lookup, and
        only for requests that carry the header."""
        headers = (data.get("proxy_server_request") or {}).get("headers") or {}
        raw = next((v for k, v in headers.items() if str(k).lower() == ESCALATION_HEADER), None)
        auditor = getattr(self.guard, "auditor", None)
        if raw is None or auditor is None:
            return None
        try:
            esc = await asyncio.to_thread(auditor.store.get_escalation, int(str(raw).strip()))
            target = self.guard.request(Stage.PROMPT, prompt=content).target
        except Exception:  # a bad id or an unreadable store: judge the request as usual
            return None
        return esc if approved_as_is(esc, Stage.PROMPT, target) else None  # observe/reviews.py

    async def _apply_prompt_decision(self, data: dict[str, Any], decision: Decision, prompt: Prompt | None) -> None:
        if decision.blocked:
            raise await self._refuse(decision)
        if decision.action is Action.REDACT:
            if prompt is not None and prompt.single_user is not None:
                data["messages"][prompt.single_user[0]]["content"] = decision.text
            else:  # a redaction of joined messages cannot be mapped back: do not pass it on unredacted
                raise blocked_exception(decision.model_copy(update={
                    "action": Action.BLOCK, "reason": f"{decision.reason} (redaction not applicable)"}), self._name())

    # -- LiteLLM hooks ------------------------------------------------------------------------
    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: dict, call_type: Any
    ) -> dict | None:
        await self._check_prompt(data, call_type, GuardrailEventHooks.pre_call)
        return data

    async def async_moderation_hook(self, data: dict, user_api_key_dict: Any, call_type: Any) -> Any:
        # during_call: LiteLLM runs this concurrently with the model call and holds the response.
        await self._check_prompt(data, call_type, GuardrailEventHooks.during_call)
        return None

    async def async_post_call_success_hook(self, data: dict, user_api_key_dict: Any, response: Any) -> Any:
        reasoning, answer = self.guards(Stage.REASONING), self.guards(Stage.RESPONSE)
        if not (reasoning or answer):
            return response
        kind = kind_of(response)
        if kind == "none" or (kind is None and (self._allowed_route(user_api_key_dict) or is_applied(response))):
            return response
        with self.reporter.collect(data, GuardrailEventHooks.post_call) as got:
            if kind is None:
                d = self._unreadable(Stage.RESPONSE, f"a response of type {type(response).__name__}", data, got.key)
                got.items.append(d)
                if d.blocked:
                    raise await self._refuse(d)
                return response
            run = ajudge_for(self.guard.stream_checks(), self.query_text(data), reasoning=reasoning,
                             response=answer, metadata=self._meta(data, got.key))
            outcome = await judge(response, kind, run, self._refusal_text, self._payload)
            if outcome.stop is not None:
                if outcome.stop.failure is not None and outcome.stop not in got.items:
                    got.items.append(outcome.stop)
                if self.on_response_block == "error" or outcome.stop.action is Action.ESCALATE:
                    raise await self._refuse(outcome.stop)
        return response

    async def async_post_call_failure_hook(self, request_data: dict, original_exception: Exception,
                                           user_api_key_dict: Any, traceback_str: str | None = None) -> Any:
        # An upstream error body can quote the answer unjudged: the client gets a clean error (failures.py).
        return clean_failure(original_exception, self._name(), request_data)

    def _refusal_text(self, decision: Decision) -> str:
        return decision.text if decision.blocked else self.guard.config.refusal_message

    def _allowed_route(self, user_api_key_dict: Any) -> bool:
        route = getattr(user_api_key_dict, "request_route", None)
        if not route:
            return False
        try:
            from litellm.litellm_core_utils.api_route_to_call_types import get_call_types_for_route

            return any(call_type_name(c) in self.allow_endpoints for c in get_call_types_for_route(route) or ())
        except Exception:
            return False

    async def async_post_call_streaming_iterator_hook(
        self, user_api_key_dict: Any, response: Any, request_data: dict
    ) -> AsyncGenerator[Any, None]:
        reasoning, answer = self.guards(Stage.REASONING), self.guards(Stage.RESPONSE)
        if not (reasoning or answer):
            async for chunk in response:
                yield chunk
            return
        with self.reporter.collect(request_data, GuardrailEventHooks.post_call) as got:
            rid = request_data.get("litellm_call_id")
            runner = TurnRunner.of(self.guard.stream_checks(), self.query_text(request_data), local=True,
                                   reasoning=reasoning, response=answer, metadata=self._meta(request_data, got.key),
                                   request_id=rid if isinstance(rid, str) else None)
            async for chunk in guard_stream(runner, response, request_data.get("model"), self._payload):
                yield chunk
            if runner.stop is not None and runner.stop.failure is not None and runner.stop not in got.items:
                got.items.append(runner.stop)


__all__ = ["GuardrailStartupError", "GuardrailsPluginGuardrail", "blocked_exception", "build_guard_config",
           "decision_payload"]
