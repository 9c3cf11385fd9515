"""What a LiteLLM request puts in front of the model, as the messages the prompt stage judges.

LiteLLM's own endpoint translation (``llms/*/guardrail_translation``, the code behind its
``apply_guardrail`` interface) turns each endpoint's request into OpenAI-style messages with roles:
chat messages, Responses ``instructions`` and ``input`` items (function-call outputs become
``tool`` messages), Anthropic ``system`` and ``messages`` blocks (``tool_result`` blocks become
``tool`` messages, thinking blocks the assistant's reasoning), text-completion prompts. It runs on
a copy of the request with a collector standing in for the guardrail; the roles in
``GuardConfig.prompt_roles`` are judged.

Unknown is unsafe, twice over:

* **Coverage.** Every text in the request's model-input fields must come out of the translation.
  One it drops (an input item of a type it does not know, an Anthropic text document) makes the
  request unreadable: the prompt stage's fail mode decides. (A completion's ``suffix``, which the
  translation skips, is judged with the prompt.)
* **Reading.** Every field of a judged message must be one we read (text, reasoning, tool calls,
  a name) or media we note as not guarded (images, audio, files). Anything else is unreadable.

Endpoints: those in ``GUARDED`` are judged; ``NO_MODEL_TEXT`` (embeddings, moderation, rerank: no
model text comes back) pass unchecked, and the guardrail's ``allow_endpoints`` can add to that
list; any other call type is unreadable.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..content import reasoning_text
from .request_fields import FIELDS_ROLE, field_messages, file_text, file_texts, known_fields

#: call type (sync and async names) -> the endpoint it is
ENDPOINTS: dict[str, str] = {
    "completion": "chat", "acompletion": "chat",
    "text_completion": "completions", "atext_completion": "completions",
    "responses": "responses", "aresponses": "responses",
    "anthropic_messages": "messages", "aanthropic_messages": "messages",
}
#: LiteLLM's translation handler per endpoint, and the request fields whose text reaches the model
_TRANSLATION = {"chat": "completion", "completions": "text_completion", "responses": "responses",
                "messages": "anthropic_messages"}
INPUT_FIELDS: dict[str, tuple[str, ...]] = {
    "chat": ("messages",), "completions": ("prompt", "suffix"), "responses": ("instructions", "input"),
    "messages": ("system", "messages"),
}
#: call types that carry no model text back (their input is not turned into an answer)
NO_MODEL_TEXT = frozenset({"embedding", "aembedding", "moderation", "amoderation", "rerank", "arerank"})

_TEXT_PARTS = frozenset({"text", "input_text", "output_text", "summary_text", "reasoning_text"})
_REASONING_PARTS = frozenset({"thinking", "reasoning", "redacted_thinking"})
_MEDIA_PARTS = frozenset({"image_url", "input_image", "image", "input_audio", "audio", "file", "input_file",
                          "document", "video_url", "output_audio"})
#: message fields that carry no text the model reads as words
_META_FIELDS = frozenset({"role", "tool_call_id", "cache_control", "id", "type", "status", "index",
                          "provider_specific_fields", "prefix", "annotations", "audio"})
#: keys whose values are identifiers, encodings or media, never prose (skipped by the coverage walk)
_NOT_PROSE = frozenset({"role", "type", "id", "call_id", "tool_call_id", "tool_use_id", "status", "signature",
                        "encrypted_content", "cache_control", "media_type", "mime_type", "url", "image_url",
                        "file_id", "file_data", "file_url", "filename", "detail", "format", "index", "model"})


@dataclass
class Prompt:
    """The judged messages (``None``: nothing to judge) and what could not be read."""

    messages: list[dict[str, Any]] | None = None
    unreadable: list[str] = field(default_factory=list)
    #: the one judged text when the request is a single string user message (a REDACT can be
    #: written back there; otherwise a redaction cannot be mapped back and blocks)
    single_user: tuple[int, str] | None = None


def endpoint(call_type: Any) -> str | None:
    """The endpoint a hook's ``call_type`` names: chat, completions, responses, messages; None
    for a call type with no model text or one we do not know (``call_type_known`` tells which)."""
    return ENDPOINTS.get(str(getattr(call_type, "value", call_type)))


def call_type_name(call_type: Any) -> str:
    return str(getattr(call_type, "value", call_type))


async def extract(data: Mapping[str, Any], kind: str, roles: Iterable[str],
                  allowed_fields: Iterable[str] = ()) -> Prompt:
    """The messages of ``roles`` in request ``data`` of endpoint ``kind``, read through LiteLLM's
    translation (see the module docstring), the request fields the model reads beside them (role
    ``tools``, request_fields.py) and inline text files. Never raises for bad content: it is
    reported. ``allowed_fields``: body fields the admin lets pass unchecked."""
    from litellm.llms import get_guardrail_translation_mapping
    from litellm.types.utils import CallTypes

    fields = INPUT_FIELDS[kind]
    wanted = set(roles)
    if not isinstance(data.get("stream", False), bool) and data.get("stream") is not None:
        # LiteLLM reads a non-bool stream as "no stream" while the upstream streams: refused
        return Prompt(unreadable=[f"stream must be true or false, got {data['stream']!r}"])
    if kind == "completions" and not _prompt_is_text(data.get("prompt")):
        return Prompt(unreadable=["prompt is not text (token ids or an unknown shape)"])
    allowed = tuple(allowed_fields)
    extra, unknown_fields = field_messages(data, kind, known_fields(kind, allowed))
    if FIELDS_ROLE not in wanted:
        extra = []
    plain = _plain_chat(data) if kind == "chat" else None
    if plain is not None:  # string messages only: the translation would hand them back as they are
        judged = [*extra, *({"role": _role(m), "content": [{"type": "text", "text": m["content"]}]} for m in plain
                            if m["content"] and (_role(m) in wanted or _role(m) not in _KNOWN_ROLES))]
        out = Prompt(messages=judged or None, unreadable=unknown_fields)
        users = [i for i, m in enumerate(plain) if m["role"] == "user"]
        if len(judged) == 1 and len(users) == 1 and judged[0]["role"] == "user":
            out.single_user = (users[0], plain[users[0]]["content"])
        return out
    work = copy.deepcopy({k: data[k] for k in (*fields, "model") if k in data})
    work.setdefault("model", "")  # the Messages translation needs one; which does not matter here
    work["_gp_inputs"] = []
    handler = get_guardrail_translation_mapping(CallTypes(_TRANSLATION[kind]))()
    await handler.process_input_messages(data=work, guardrail_to_apply=_collector())
    inputs: list[Mapping[str, Any]] = work["_gp_inputs"]
    structured = [m for i in inputs for m in (i.get("structured_messages") or ())]
    if not structured:  # prompts without roles (text completions) are the user's
        structured = [{"role": "user", "content": t} for i in inputs for t in i.get("texts") or ()]
    if kind == "completions" and isinstance(data.get("suffix"), str):  # the translation skips it
        structured.append({"role": "user", "content": data["suffix"]})
        inputs = [*inputs, {"texts": [data["suffix"]]}]
    files = [t for f in fields for t in file_texts(data.get(f))]
    out = Prompt(unreadable=unknown_fields + _uncovered(data, fields, inputs, files))
    judged: list[dict[str, Any]] = list(extra)
    for m in structured:
        role = _role(m)
        if role not in wanted and role in _KNOWN_ROLES:
            continue
        content, unknown = message_content(m)
        out.unreadable += [f"{role} message: {u}" for u in unknown]
        if content:
            judged.append({"role": role, "content": content})
    # inline text files are client text in whatever message carries them: judged as the user's
    judged += [{"role": "user", "content": [{"type": "text", "text": f"[file] {t}"}]} for t in files if t.strip()]
    out.messages = judged or None
    users = [m for m in judged if m["role"] == "user"]
    if len(judged) == 1 and len(users) == 1 and kind == "chat":
        raw = [i for i, m in enumerate(data.get("messages") or ()) if isinstance(m, Mapping) and m.get("role") == "user"]
        text = users[0]["content"]
        if len(raw) == 1 and isinstance(data["messages"][raw[0]].get("content"), str) and len(text) == 1:
            out.single_user = (raw[0], data["messages"][raw[0]]["content"])
    return out


_KNOWN_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})


def _plain_chat(data: Mapping[str, Any]) -> list[Mapping[str, Any]] | None:
    """The chat messages when each is just a role and a string (the common request), else None."""
    msgs = data.get("messages")
    if not isinstance(msgs, list) or not msgs:
        return None
    for m in msgs:
        if not (isinstance(m, Mapping) and isinstance(m.get("content"), str) and isinstance(m.get("role"), str)
                and m.keys() <= {"role", "content"}):
            return None
    return msgs


def _role(m: Mapping[str, Any]) -> str:
    role = str(m.get("role") or "user").lower()
    return "tool" if role == "function" else role  # an unknown role is judged whatever prompt_roles says


def message_content(m: Mapping[str, Any]) -> tuple[list[Any], list[str]]:
    """A message as content parts a guard reads (text parts, media parts that get noted as not
    guarded), and the fields nobody can read."""
    parts: list[Any] = []
    unknown: list[str] = []

    def text(value: Any) -> None:
        if isinstance(value, str) and value:
            parts.append({"type": "text", "text": value})

    content = m.get("content")
    if isinstance(content, str):
        text(content)
    elif isinstance(content, list):
        for p in content:
            if isinstance(p, str):
                text(p)
                continue
            kind = p.get("type") if isinstance(p, Mapping) else None
            if kind in _TEXT_PARTS and isinstance(p.get("text"), str):
                text(p["text"])
            elif kind in _REASONING_PARTS and (r := reasoning_text(p)) is not None:
                text(r)
            elif kind == "refusal":
                text(p.get("refusal"))
            elif kind in _MEDIA_PARTS:
                if file_text(p) is None:  # a text file is judged from the request itself (extract)
                    parts.append(dict(p))  # noted as "not guarded" by the guard's input normalisation
            else:
                unknown.append(f"content part of type {kind!r}")
    elif content is not None:
        unknown.append(f"content of type {type(content).__name__}")
    reasoning: list[str] = []
    for key in ("reasoning_content", "thinking_blocks"):
        value = m.get(key)
        if value:
            r = reasoning_text(value)
            if r is None:
                unknown.append(f"{key} of an unknown shape")
            elif r not in reasoning:  # LiteLLM carries Anthropic thinking under both keys
                reasoning.append(r)
    for r in reasoning:
        text(r)
    calls = list(m.get("tool_calls") or ())
    if m.get("function_call"):
        calls.append({"function": m["function_call"]})
    for call in calls:
        fn = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(fn, Mapping):
            unknown.append("a tool call of an unknown shape")
            continue
        args = fn.get("arguments")
        args = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False, default=str)
        text(f"[tool call] {fn.get('name')}({args})")
    text(m.get("refusal"))
    if isinstance(m.get("name"), str):
        text(m["name"])
    for key, value in m.items():
        if key in _META_FIELDS or key in ("content", "reasoning_content", "thinking_blocks", "tool_calls",
                                          "function_call", "refusal", "name"):
            continue
        if any(_leaves(value)):
            unknown.append(f"field {key!r}")
    return parts, unknown


def _prompt_is_text(prompt: Any) -> bool:
    return prompt is None or isinstance(prompt, str) or (
        isinstance(prompt, list) and all(isinstance(p, str) for p in prompt))


def _uncovered(data: Mapping[str, Any], fields: tuple[str, ...], inputs: list[Mapping[str, Any]],
               files: list[str]) -> list[str]:
    """Texts of the request's input fields that the translation did not hand over (inline text
    files, judged on their own, count as handed over)."""
    carried = "\x00".join([*_leaves([i.get(k) for i in inputs for k in ("texts", "structured_messages", "tool_calls")]),
                           *files])
    missing = [f"{f}: {_clip(s)!r} not read by the endpoint translation"
               for f in fields for s in _leaves(data.get(f), prose=True) if s.strip() and s not in carried]
    return missing[:5]


def _clip(s: str, n: int = 40) -> str:
    return s if len(s) <= n else s[:n] + "..."


def _leaves(value: Any, *, prose: bool = False) -> Iterator[str]:
    """The strings inside ``value`` (JSON strings, e.g. tool arguments, opened up). ``prose``:
    skip identifiers, encodings and media (``_NOT_PROSE`` keys, base64 sources)."""
    if isinstance(value, str):
        if value[:1] in "{[":
            try:
                yield from _leaves(json.loads(value), prose=prose)
                return
            except ValueError:
                pass
        yield value
    elif isinstance(value, Mapping):
        base64 = value.get("type") == "base64"
        for k, v in value.items():
            if prose and (k in _NOT_PROSE or (base64 and k == "data")):
                continue
            yield from _leaves(v, prose=prose)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _leaves(v, prose=prose)


_COLLECTOR: Any = None


def _collector() -> Any:
    """A CustomGuardrail that hands every role to LiteLLM's translation and records what it gets."""
    global _COLLECTOR
    if _COLLECTOR is None:
        from litellm.integrations.custom_guardrail import CustomGuardrail

        class _Collector(CustomGuardrail):
            records_own_guardrail_information = True
            skip_system_message_in_guardrail = False
            skip_tool_message_in_guardrail = False
            scan_only_tool_results = False

            def add_standard_logging_guardrail_information_to_request_data(self, *a: Any, **kw: Any) -> None:
                pass  # the real guardrail reports its decisions itself

        async def apply_guardrail(self: Any, inputs: Any, request_data: dict, input_type: Any, logging_obj: Any = None) -> Any:
            request_data["_gp_inputs"].append(inputs)
            return inputs

        _Collector.apply_guardrail = apply_guardrail  # type: ignore[method-assign]  # after class creation: not wrapped for logging
        _COLLECTOR = _Collector(guardrail_name="guardrails-plugin-reader")
    return _COLLECTOR
