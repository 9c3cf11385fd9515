"""OpenAIEngine's wire format: request bodies, reply parsing, HTTP error mapping, session keys.

Pure functions over dicts and ``httpx.Response``; the engine (openai_engine.py) owns connections,
deadlines, retries and server choice.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import time
from collections.abc import Mapping
from typing import Any

import httpx

from ..errors import GuardConfigError, GuardEngineError, GuardServerConfigError
from .base import GenerationRequest, defuse_special_tokens

#: Retry-After values above this are ignored (normal backoff applies): a guard's deadline is
#: seconds, so waiting a minute for an overloaded server is never useful.
RETRY_AFTER_CAP_S = 5.0
#: HTTP statuses worth retrying: rate limited / temporarily unavailable. vllm-router answers 503
#: when no replica is available and 429 when its queue is full, in both cases without having sent
#: the request to a replica, so a retry here does not multiply the router's own retries.
RETRY_STATUSES = frozenset({429, 503})
_BODY_EXCERPT = 200


def normalise_base_url(url: str) -> str:
    """``http://h:8000``, ``http://h:8000/`` and ``http://h:8000/v1/`` all mean the same server."""
    url = url.strip().rstrip("/")
    if not url:
        raise GuardConfigError("OpenAIEngine: empty base_url")
    if not url.startswith(("http://", "https://")):
        raise GuardConfigError(f"OpenAIEngine: base_url must start with http:// or https://: {url!r}")
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    return url


def retry_after_s(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date); None if absent/invalid."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def excerpt(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _BODY_EXCERPT else text[:_BODY_EXCERPT] + "..."


class RetryableFailure(Exception):
    """One attempt failed in a way a retry may fix."""

    def __init__(self, message: str, *, delay_hint: float | None = None, connection: bool = False):
        super().__init__(message)
        self.delay_hint = delay_hint
        self.connection = connection


# ------------------------------------------------------------------------------ session keys
def routing_key(request: GenerationRequest) -> str | None:
    """The stream a request belongs to, for sticky routing: the monitor's session id.

    A session key names the stream, the guard model and the window (``SessionKey``); routing uses
    the stream only, so every check of one stream, all its windows included, lands on the replica
    that already holds the stream's prefix in its cache."""
    sid = request.session_id
    return (sid.stream or None) if sid is not None else None


def rendezvous_order(key: str, urls: list[str]) -> list[str]:
    """``urls`` by highest-random-weight hashing of ``key``: the same key always prefers the same
    server, and removing one server moves only the keys it held. Stable across processes."""

    def weight(url: str) -> bytes:
        return hashlib.blake2b(f"{key}\0{url}".encode(), digest_size=8).digest()

    return sorted(urls, key=weight, reverse=True)


# ------------------------------------------------------------------------------ requests
def build_body(
    request: GenerationRequest, model: str, *, defuse: bool = True
) -> tuple[str, dict[str, Any]]:
    """(path, JSON body) of one guard request (see openai_engine's module docstring)."""
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": int(request.max_new_tokens),
        "temperature": 0,
        "stream": False,
    }
    if request.stop:
        body["stop"] = list(request.stop)
    fix = defuse_special_tokens if defuse else (lambda t: t)
    if not request.is_chat:
        body["prompt"] = fix(request.prompt or "") + request.assistant_prefix
        return "/v1/completions", body
    messages = [{**m, "content": _fix_content(m.get("content"), fix)} for m in request.messages or ()]
    if request.assistant_prefix:
        # vLLM prefill: leave the final assistant turn open and continue it.
        messages.append({"role": "assistant", "content": request.assistant_prefix})
        body["add_generation_prompt"] = False
        body["continue_final_message"] = True
    body["messages"] = messages
    if request.chat_template_kwargs:
        body["chat_template_kwargs"] = dict(request.chat_template_kwargs)
    return "/v1/chat/completions", body


def _fix_content(content: Any, fix: Any) -> Any:
    """Defuse a string content, and every text part of a typed-part content (Llama Guard 3-1B / 4
    templates take ``[{"type": "text", "text": ...}]``): user text never reaches the server raw."""
    if isinstance(content, str):
        return fix(content)
    if isinstance(content, list):
        return [{**p, "text": fix(p["text"])} if isinstance(p, Mapping) and isinstance(p.get("text"), str)
                else p for p in content]
    return content


# ------------------------------------------------------------------------------ replies
def http_error(name: str, resp: httpx.Response, url: str, body: Mapping[str, Any]) -> GuardEngineError:
    """The error for a non-retryable HTTP status. A 404 is a configuration error: the server does
    not serve the model name sent (vLLM: "The model `X` does not exist.") or has no such endpoint."""
    status, text = resp.status_code, resp.text
    err: GuardEngineError
    if status == 404:
        if "model" in text.lower():
            err = GuardServerConfigError(
                f"{name}: {url} does not serve model {body.get('model')!r} (HTTP 404: {excerpt(text)}). "
                f"Set served_model_name (CLI: --served-model-name) to the server's --served-model-name; "
                f"GET {url.split('/v1/', 1)[0]}/v1/models lists what it serves"
            )
        else:
            err = GuardServerConfigError(f"{name}: no such endpoint {url} (HTTP 404: {excerpt(text)}); check base_url")
        err.status_code = status  # type: ignore[attr-defined]
        return err
    hint = ""
    if status in (400, 422) and body.get("continue_final_message") and "continue_final_message" in text:
        # e.g. `transformers serve` rejects vLLM's prefill fields with 422.
        hint = " (this server does not support assistant prefill / continue_final_message; use vLLM)"
    err = GuardEngineError(f"{name}: HTTP {status} from {url}: {excerpt(text)}{hint}")
    err.status_code = status  # type: ignore[attr-defined]
    return err


def parse_completion(name: str, resp: httpx.Response, url: str, chat: bool) -> str:
    """The completion text of a 200 reply; ``<think>`` blocks split off by a reasoning parser are
    put back so guard parsers see what the model wrote."""
    try:
        data = resp.json()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        raise GuardEngineError(f"{name}: malformed JSON from {url}: {excerpt(resp.text)}") from None
    choices = data.get("choices") if isinstance(data, Mapping) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
        raise GuardEngineError(f"{name}: reply from {url} has no choices: {excerpt(resp.text)}")
    choice = choices[0]
    if not chat:
        text = choice.get("text")
        if not isinstance(text, str):
            raise GuardEngineError(f"{name}: completion from {url} has no text")
        return text
    message = choice.get("message")
    if not isinstance(message, Mapping):
        raise GuardEngineError(f"{name}: chat reply from {url} has no message")
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise GuardEngineError(f"{name}: chat reply from {url} has non-text content")
    reasoning = message.get("reasoning_content")
    if not isinstance(reasoning, str) or not reasoning:
        reasoning = message.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        closed = content is not None or choice.get("finish_reason") != "length"
        return "<think>" + reasoning + ("</think>" if closed else "") + (content or "")
    if content is None:
        raise GuardEngineError(f"{name}: chat reply from {url} has no content")
    return content


def parse_logprobs(name: str, resp: httpx.Response, url: str) -> tuple[list[str], list[dict[str, float]]]:
    """(generated tokens, top-k {token: logprob} per generated position) of a logprobs reply."""
    try:
        data = resp.json()
        choice = data["choices"][0]
        lp = choice["logprobs"]
        if "content" in lp:  # chat format
            items = lp["content"] or []
            tokens = [str(it["token"]) for it in items]
            tops = [
                {str(t["token"]): float(t["logprob"]) for t in it.get("top_logprobs") or []}
                for it in items
            ]
            for it, top in zip(items, tops, strict=False):
                top.setdefault(str(it["token"]), float(it["logprob"]))
        else:  # completions format
            tokens = [str(t) for t in lp.get("tokens") or []]
            tops = [{str(k): float(v) for k, v in (d or {}).items()} for d in lp.get("top_logprobs") or []]
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise GuardEngineError(
            f"{name}: reply from {url} has no usable logprobs ({exc!r}): {excerpt(resp.text)}"
        ) from None
    if not tops:
        raise GuardEngineError(f"{name}: reply from {url} has no logprobs: {excerpt(resp.text)}")
    return tokens, tops


def served_names(resp: httpx.Response) -> list[str] | None:
    """Model ids of a ``GET /v1/models`` reply; None when it is not one."""
    try:
        data = resp.json().get("data")
        return [str(m["id"]) for m in data if isinstance(m, Mapping) and "id" in m]
    except (ValueError, AttributeError, TypeError, KeyError):
        return None
