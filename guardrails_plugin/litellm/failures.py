"""Failures of the model call, as clients see them: never the upstream's own error text.

An upstream error body can carry the model's answer unjudged. With ``"stream": "true"`` (or ``1``)
LiteLLM takes its non-stream path while the upstream streams; parsing fails and the proxy's error
quotes the stream (``Original Response: data: {...}``). Provider errors quote upstream bodies in
general. ``clean_failure`` (the guardrail's ``async_post_call_failure_hook``) replaces every
failure that did not come from the proxy itself with a clean error: a fixed message, the status
chosen here (the upstream's 4xx kept, so clients still tell a rate limit from a bad request; any
other failure is 502) and the decision-style fields below; the upstream's text and headers stay in
the proxy log. Some routes build their error from the original exception and ignore the hook's
replacement (/v1/messages, SSE opened before the first byte), so the original's message is
overwritten in place as well.

Left as they are: the proxy's own errors (authentication, budgets, router cool-downs) and every
guardrail's decision (ours included), which carry no upstream text.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("guardrails_plugin.litellm")

MESSAGE = "the model call failed; guardrails-plugin withheld the upstream's error text"
#: exception classes (by name, so nothing here imports the proxy) raised by the proxy itself
_PROXY_OWN = frozenset({
    "HTTPException", "ProxyException", "GuardrailRaisedException", "ModifyResponseException",
    "BlockedPiiEntityError", "BudgetExceededError", "RouterRateLimitError", "RouterRateLimitErrorBasic",
})


def _proxy_own(exc: BaseException) -> bool:
    return any(c.__name__ in _PROXY_OWN for c in type(exc).__mro__)


def status_of(exc: BaseException) -> int:
    """The status the client gets: the upstream's 4xx, else 502 (the upstream failed)."""
    for value in (getattr(exc, "status_code", None), getattr(getattr(exc, "response", None), "status_code", None)):
        if isinstance(value, int) and 400 <= value < 500:
            return value
    return 502


def scrub(exc: BaseException) -> None:
    """Overwrite every text ``exc`` carries with ``MESSAGE`` (routes that render it see nothing else)."""
    exc.args = (MESSAGE,)
    for attr in ("message", "litellm_debug_info", "body", "response_text"):
        if getattr(exc, attr, None) is not None:
            try:
                setattr(exc, attr, MESSAGE if attr == "message" else None)
            except Exception:  # a read-only attribute: the hook's replacement still covers its route
                log.debug("could not clear %s of %s", attr, type(exc).__name__)


def clean_failure(exc: BaseException, guardrail_name: str, request_data: dict[str, Any]) -> Any:
    """The HTTPException that replaces ``exc`` for the client, or None to leave it (see the module
    docstring)."""
    if _proxy_own(exc):
        return None
    from fastapi import HTTPException

    status = status_of(exc)
    rid = request_data.get("litellm_call_id")
    log.warning("guardrails-plugin replaced an upstream error (%s, status %s) request_id=%s: %s",
                type(exc).__name__, status, rid, str(exc)[:2000])
    scrub(exc)
    return HTTPException(status_code=status, detail={
        "error": MESSAGE, "guardrail": guardrail_name, "reason": "upstream_error",
        "upstream_error": type(exc).__name__, "request_id": rid if isinstance(rid, str) else None,
    })
