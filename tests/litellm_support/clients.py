"""Calling a proxy the way clients do, on every endpoint, with the real ``openai`` and ``anthropic``
SDKs, and reducing what came back to one ``Seen``: what the client saw, whole (``raw``: every
byte of text it received, to search for leaks) and in parts (answer, reasoning, tool arguments,
how the turn ended, the guardrail's payload). Test support, not a test module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import anthropic
import openai

from .proxy import MASTER_KEY

ENDPOINTS = ("chat", "completions", "responses", "messages")
#: the proxy's model name per endpoint (tests/litellm/test_bypass_matrix.py, test_litellm_proxy.py)
MODEL = {"chat": "chat", "completions": "chat", "responses": "oai", "messages": "claude"}


@dataclass
class Seen:
    status: int = 200
    error: dict[str, Any] = field(default_factory=dict)  # the guardrail's payload of an HTTP error
    raw: str = ""
    answer: str = ""
    reasoning: str = ""
    tool_args: str = ""
    ended: list[str] = field(default_factory=list)  # finish reasons / status+reason / stop_reason
    payload: dict[str, Any] = field(default_factory=dict)  # the guardrails_plugin payload, if any
    items: list[Any] = field(default_factory=list)  # chunks / events as the SDK parsed them


class Clients:
    def __init__(self, base_url: str, timeout: float = 60):
        self.openai = openai.OpenAI(base_url=base_url + "/v1", api_key=MASTER_KEY, max_retries=0, timeout=timeout)
        self.anthropic = anthropic.Anthropic(base_url=base_url, api_key=MASTER_KEY, max_retries=0, timeout=timeout)

    def call(self, endpoint: str, req: dict[str, Any], *, stream: bool = False, model: str | None = None,
             **extra: Any) -> Seen:
        """``req``: the endpoint's own request fields (messages / prompt / input + instructions /
        system + messages); ``model``: another proxy model than the endpoint's own (LiteLLM then
        translates between formats); ``extra`` goes to the SDK call (n, extra_body, extra_headers)."""
        try:
            return getattr(self, f"_{endpoint}")({"model": model or MODEL[endpoint], **req}, stream, extra)
        except (openai.APIStatusError, anthropic.APIStatusError) as e:
            body = e.response.json() if e.response.content else {}
            err = body.get("error") if isinstance(body, dict) else None
            detail = (err.get("provider_specific_fields") or err) if isinstance(err, dict) else body
            return Seen(status=e.status_code, error=detail if isinstance(detail, dict) else {}, raw=e.response.text)

    # -- one reader per endpoint --------------------------------------------------------------
    def _chat(self, req: dict, stream: bool, extra: dict) -> Seen:
        r = self.openai.chat.completions.create(stream=stream, **req, **extra)
        if not stream:
            s = Seen(raw=r.model_dump_json(), items=[r])
            for c in r.choices:
                s.answer += c.message.content or ""
                s.reasoning += getattr(c.message, "reasoning_content", None) or ""
                s.tool_args += "".join(t.function.arguments for t in c.message.tool_calls or ())
                s.ended.append(c.finish_reason)
            return s
        s = Seen()
        for ch in r:
            s.items.append(ch)
            s.raw += ch.model_dump_json()
            for c in ch.choices:
                s.answer += c.delta.content or ""
                s.reasoning += getattr(c.delta, "reasoning_content", None) or ""
                s.tool_args += "".join(t.function.arguments or "" for t in c.delta.tool_calls or () if t.function)
                if c.finish_reason:
                    s.ended.append(c.finish_reason)
            psf = (ch.model_extra or {}).get("provider_specific_fields") or {}
            s.payload = psf.get("guardrails_plugin") or s.payload
        return s

    def _completions(self, req: dict, stream: bool, extra: dict) -> Seen:
        r = self.openai.completions.create(stream=stream, **req, **extra)
        chunks = [r] if not stream else list(r)
        s = Seen(items=chunks)
        for ch in chunks:
            s.raw += ch.model_dump_json()
            for c in ch.choices:
                s.answer += c.text or ""
                if c.finish_reason:
                    s.ended.append(c.finish_reason)
            s.payload = (ch.model_extra or {}).get("guardrails_plugin") or s.payload
        return s

    def _responses(self, req: dict, stream: bool, extra: dict) -> Seen:
        r = self.openai.responses.create(stream=stream, **req, **extra)
        if not stream:
            s = Seen(raw=r.model_dump_json(), items=[r])
            self._response_output(s, r)
            return s
        s = Seen()
        for ev in r:
            s.items.append(ev)
            s.raw += ev.model_dump_json()
            kind = ev.type
            if kind == "response.output_text.delta":
                s.answer += ev.delta
            elif kind in ("response.reasoning_text.delta", "response.reasoning_summary_text.delta"):
                s.reasoning += ev.delta
            elif kind == "response.function_call_arguments.delta":
                s.tool_args += ev.delta
            elif kind in ("response.completed", "response.incomplete", "response.failed"):
                details = ev.response.incomplete_details
                s.ended.append(f"{ev.response.status}:{details.reason if details else ''}")
                s.payload = (ev.model_extra or {}).get("guardrails_plugin") or {}
        return s

    @staticmethod
    def _response_output(s: Seen, r: Any) -> None:
        for item in r.output:
            if item.type == "message":
                s.answer += "".join(getattr(p, "text", "") or "" for p in item.content)
            elif item.type == "reasoning":
                s.reasoning += "".join(p.text for p in (item.content or []) + (item.summary or []))
            elif item.type == "function_call":
                s.tool_args += item.arguments
        s.ended.append(f"{r.status}:{r.incomplete_details.reason if r.incomplete_details else ''}")
        s.payload = (r.model_extra or {}).get("guardrails_plugin") or {}

    def _messages(self, req: dict, stream: bool, extra: dict) -> Seen:
        req.setdefault("max_tokens", 256)
        r = self.anthropic.messages.create(stream=stream, **req, **extra)
        if not stream:
            s = Seen(raw=r.model_dump_json(), items=[r])
            for b in r.content:
                if b.type == "text":
                    s.answer += b.text
                elif b.type == "thinking":
                    s.reasoning += b.thinking
                elif b.type == "tool_use":
                    s.tool_args += json.dumps(b.input)
            s.ended.append(r.stop_reason or "")
            s.payload = (r.model_extra or {}).get("guardrails_plugin") or {}
            return s
        s = Seen()
        for ev in r:
            s.items.append(ev)
            s.raw += ev.model_dump_json()
            if ev.type == "content_block_delta":
                d = ev.delta
                s.answer += getattr(d, "text", "") if d.type == "text_delta" else ""
                s.reasoning += getattr(d, "thinking", "") if d.type == "thinking_delta" else ""
                s.tool_args += getattr(d, "partial_json", "") if d.type == "input_json_delta" else ""
            elif ev.type == "message_delta":
                s.ended.append(ev.delta.stop_reason or "")
                s.payload = (ev.model_extra or {}).get("guardrails_plugin") or {}
        return s


def request(endpoint: str, user: str, role: str | None = None, text: str = "") -> dict[str, Any]:
    """A request whose user turn says ``user`` and, with ``role``, also carries ``text`` in that
    role (system, developer, user, tool, assistant, thinking, or the endpoint's variants)."""
    if endpoint == "chat":
        msgs: list[dict[str, Any]] = []
        if role in ("system", "developer"):
            msgs.append({"role": role, "content": text})
        if role == "assistant":
            msgs += [{"role": "user", "content": "hi"}, {"role": "assistant", "content": text}]
        if role == "tool":
            msgs += [{"role": "user", "content": "look it up"},
                     {"role": "assistant", "content": None, "tool_calls": [
                         {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]},
                     {"role": "tool", "tool_call_id": "call_1", "content": text}]
        parts = [{"type": "text", "text": user}] + ([{"type": "text", "text": text}] if role == "user-part" else [])
        msgs.append({"role": "user", "content": parts if role == "user-part" else f"{user} {text}".strip()})
        return {"messages": msgs}
    if endpoint == "completions":
        if role == "prompt-list":
            return {"prompt": [user, text]}
        return {"prompt": f"{user} {text}".strip()}
    if endpoint == "responses":
        if role == "input-string":
            return {"input": f"{user} {text}".strip()}
        items: list[dict[str, Any]] = []
        req: dict[str, Any] = {}
        if role == "instructions":
            req["instructions"] = text
        if role == "developer":
            items.append({"role": "developer", "content": text})
        if role == "assistant":
            items += [{"role": "user", "content": "hi"},
                      {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}]
        if role == "tool":
            items += [{"role": "user", "content": "look it up"},
                      {"type": "function_call", "call_id": "call_1", "name": "lookup", "arguments": "{}"},
                      {"type": "function_call_output", "call_id": "call_1", "output": text}]
        content = [{"type": "input_text", "text": user}] + ([{"type": "input_text", "text": text}] if role == "user" else [])
        items.append({"role": "user", "content": content})
        return {**req, "input": items}
    assert endpoint == "messages"
    req = {}
    if role == "system":
        req["system"] = text
    if role == "system-blocks":
        req["system"] = [{"type": "text", "text": "Be helpful."}, {"type": "text", "text": text}]
    msgs = []
    if role in ("assistant", "thinking"):
        block = ({"type": "thinking", "thinking": text, "signature": "sig"} if role == "thinking"
                 else {"type": "text", "text": text})
        msgs += [{"role": "user", "content": "hi"},
                 {"role": "assistant", "content": [block, {"type": "text", "text": "ok"}]}]
    if role == "tool":
        msgs += [{"role": "user", "content": "look it up"},
                 {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {}}]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": text},
                                              {"type": "text", "text": user}]}]
        return {**req, "messages": msgs}
    content = [{"type": "text", "text": user}] + ([{"type": "text", "text": text}] if role == "user" else [])
    msgs.append({"role": "user", "content": content})
    return {**req, "messages": msgs}


#: the roles each endpoint lets a client put text in (``request``'s ``role``)
ROLES = {
    "chat": ("system", "developer", "user", "user-part", "tool", "assistant"),
    "completions": ("user", "prompt-list"),
    "responses": ("instructions", "developer", "user", "input-string", "tool", "assistant"),
    "messages": ("system", "system-blocks", "user", "tool", "assistant", "thinking"),
}
