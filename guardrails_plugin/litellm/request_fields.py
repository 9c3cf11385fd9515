"""Request fields beside the messages: which ones the model reads (judged), which carry no text the
model reads (passed), and what happens to the rest (unknown is unsafe).

The model reads more than the messages: tool and function definitions (names, descriptions,
parameter schemas), response-format schemas, predicted outputs, vLLM ``documents`` and chat
templates, Responses ``text.format`` and ``prompt.variables``, LiteLLM's own prompt injections
(``litellm_system_prompt``, ``user_continue_message``, ...). Those fields are judged at the prompt
stage in the ``tools`` role (``GuardConfig.prompt_roles``), as one system-like message per field:
``[request field tools] <the field as JSON>``, so a marker in a parameter description or a schema
property name is judged like a system message saying it.

A body field in neither list that carries a string goes to the prompt stage's fail mode (closed:
refused), since nothing says the model does not read it (``chat_template_kwargs``, ``mcp_servers``,
a field a new API version adds). Fields holding only numbers, booleans or null carry no prose and
pass. The guardrail's ``allow_request_fields`` lets an admin pass named fields unchecked.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from typing import Any

#: the prompt role request fields are judged in (``GuardConfig.prompt_roles``)
FIELDS_ROLE = "tools"

#: LiteLLM request params that put text in front of the model (prompt templates and injections)
_LITELLM_TEXT = ("litellm_system_prompt", "user_continue_message", "assistant_continue_message",
                 "prompt_variables", "custom_prompt_dict", "roles", "initial_prompt_value",
                 "final_prompt_value", "bos_token", "eos_token")
#: per endpoint: fields whose text the model reads, judged in the ``tools`` role
READ_BY_MODEL: dict[str, tuple[str, ...]] = {
    "chat": ("tools", "functions", "response_format", "prediction", "documents", "chat_template",
             "guided_json", "guided_choice", "guided_regex", "guided_grammar", "structured_outputs",
             *_LITELLM_TEXT),
    "completions": ("response_format", "guided_json", "guided_choice", "guided_regex", "guided_grammar",
                    "structured_outputs", *_LITELLM_TEXT),
    "responses": ("tools", "text", "prompt", *_LITELLM_TEXT),
    "messages": ("tools", "output_format", *_LITELLM_TEXT),
}
#: the fields the prompt translation reads (prompt.py INPUT_FIELDS), per endpoint
_MESSAGES = {"chat": ("messages",), "completions": ("prompt", "suffix"), "responses": ("instructions", "input"),
             "messages": ("system", "messages")}
#: client fields that carry no text the model reads: sampling, limits, ids, names, routing
_NO_MODEL_TEXT = frozenset({
    "model", "stream", "stream_options", "temperature", "top_p", "top_k", "n", "stop", "stop_sequences",
    "max_tokens", "max_completion_tokens", "max_output_tokens", "presence_penalty", "frequency_penalty",
    "logit_bias", "logprobs", "top_logprobs", "user", "seed", "tool_choice", "function_call",
    "parallel_tool_calls", "modalities", "audio", "reasoning_effort", "reasoning", "verbosity",
    "safety_identifier", "service_tier", "store", "prompt_cache_key", "prompt_cache_retention", "metadata",
    "thinking", "include", "background", "truncation", "previous_response_id", "conversation",
    "max_tool_calls", "echo", "best_of", "context_management", "web_search_options", "extra_headers",
    "timeout", "guardrails", "disable_global_guardrails", "opted_out_global_guardrails", "guardrail_config",
    "tags", "mock_response", "mock_testing_fallbacks", "num_retries", "fallbacks", "caching", "cache", "ttl",
    "context_window_fallback_dict", "deployment_id", "api_version", "min_p", "repetition_penalty",
    "length_penalty", "ignore_eos", "min_tokens", "skip_special_tokens", "spaces_between_special_tokens",
    "include_stop_str_in_output", "add_generation_prompt", "continue_final_message", "add_special_tokens",
    "return_tokens_as_token_ids", "priority", "request_id", "use_beam_search", "stop_token_ids",
    "allowed_token_ids", "bad_words", "prompt_logprobs", "truncate_prompt_tokens",
})


def _litellm_params() -> frozenset[str]:
    try:
        from litellm.types.utils import all_litellm_params
    except ImportError:  # pragma: no cover - litellm is a dependency of this subpackage
        return frozenset()
    return frozenset(all_litellm_params)


_KNOBS: frozenset[str] | None = None


def known_fields(kind: str, allowed: Iterable[str] = ()) -> frozenset[str]:
    """Every body field of endpoint ``kind`` the guardrail knows (judged or passed): messages,
    fields the model reads, fields without model text, LiteLLM's own params and ``allowed``."""
    global _KNOBS
    if _KNOBS is None:  # LiteLLM's knobs (routing, pricing, logging), minus those that add prompt text
        _KNOBS = _litellm_params() - set(_LITELLM_TEXT)
    return frozenset((*_MESSAGES[kind], *READ_BY_MODEL[kind], *allowed)) | _NO_MODEL_TEXT | _KNOBS


def _has_text(value: Any) -> bool:
    if isinstance(value, str):
        return bool(value)
    if isinstance(value, Mapping):
        return any(isinstance(k, str) and k for k in value) or any(_has_text(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_text(v) for v in value)
    return False


def field_messages(data: Mapping[str, Any], kind: str, known: frozenset[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """The request's model-read fields as system messages to judge, and the fields nobody can
    read (unknown fields that carry text)."""
    judged: list[dict[str, Any]] = []
    for name in READ_BY_MODEL[kind]:
        value = data.get(name)
        if value is None or not _has_text(value):
            continue
        if name == "prompt" and kind == "responses" and isinstance(value, Mapping):
            # a stored prompt is referenced by id; the client's text is in its variables
            value = {k: v for k, v in value.items() if k not in ("id", "version")}
            if not _has_text(value):
                continue
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
        judged.append({"role": "system", "content": [{"type": "text", "text": f"[request field {name}] {text}"}]})
    unknown = [f"request field {k!r} is not one the guardrail reads" for k, v in data.items()
               if k not in known and not k.startswith("_") and _has_text(v)]
    return judged, unknown[:5]


# -- text files sent as content parts -------------------------------------------------------------
_TEXT_MIME = ("text/", "application/json", "application/xml", "application/x-yaml", "application/yaml",
              "application/csv")


def _is_text_mime(mime: str | None) -> bool:
    return isinstance(mime, str) and mime.split(";", 1)[0].strip().lower().startswith(_TEXT_MIME)


def _decode(data: str) -> str | None:
    try:
        raw = base64.b64decode(data, validate=False)
    except (binascii.Error, ValueError):
        return None
    return raw.decode("utf-8", errors="replace")


def file_text(part: Mapping[str, Any]) -> str | None:
    """The text of a text file sent inline (chat ``file.file_data`` / Responses ``input_file``
    data URLs, Anthropic ``document`` blocks with a text or base64 text source); None for media
    and files sent by reference (those stay "not guarded")."""
    kind = part.get("type")
    if kind == "image_url":  # LiteLLM turns an Anthropic base64 document into a data URL "image"
        url = part.get("image_url")
        return _data_url_text(url.get("url") if isinstance(url, Mapping) else url)
    if kind == "file" and isinstance(part.get("file"), Mapping):
        return _data_url_text(part["file"].get("file_data"))
    if kind == "input_file":
        return _data_url_text(part.get("file_data"))
    if kind == "document" and isinstance(part.get("source"), Mapping):
        src = part["source"]
        if src.get("type") == "text" and isinstance(src.get("data"), str):
            return src["data"]
        if src.get("type") == "base64" and _is_text_mime(src.get("media_type")) and isinstance(src.get("data"), str):
            return _decode(src["data"])
        if src.get("type") == "content" and isinstance(src.get("content"), (str, list)):
            c = src["content"]
            return c if isinstance(c, str) else "\n".join(
                b.get("text", "") for b in c if isinstance(b, Mapping) and isinstance(b.get("text"), str))
    return None


def file_texts(value: Any) -> list[str]:
    """The texts of every inline text file inside ``value`` (a request's input fields)."""
    out: list[str] = []
    if isinstance(value, Mapping):
        text = file_text(value) if value.get("type") in _FILE_PARTS else None
        if text is not None:
            out.append(text)
        else:
            for v in value.values():
                out += file_texts(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            out += file_texts(v)
    return out


_FILE_PARTS = frozenset({"file", "input_file", "document", "image_url"})


def _data_url_text(url: Any) -> str | None:
    if not isinstance(url, str) or not url.startswith("data:") or "," not in url:
        return None
    head, _, payload = url.partition(",")
    mime = head[5:].split(";", 1)[0]
    if not _is_text_mime(mime):
        return None
    if ";base64" in head:
        return _decode(payload)
    from urllib.parse import unquote

    return unquote(payload)
