"""What a fail-mode decision tells whom: the engine's full error goes to the log, once per decision,
with the request id, guard and engine; callers and API clients get the decision without internal
URLs (``Decision.detail`` and the failed verdicts' ``parse_error``)."""

from __future__ import annotations

import re
from collections.abc import Callable

from ..types import Decision

#: URLs in engine errors (internal hosts, ports)
_URL = re.compile(r"\b([a-z][a-z0-9+.-]*)://[^\s'\"<>)\]]+", re.IGNORECASE)


def redact_urls(text: str | None) -> str | None:
    """``text`` with every URL replaced by ``<scheme-url>``; the logs keep the original."""
    return _URL.sub(lambda m: f"<{m.group(1).lower()}-url>", text) if text else text


def explain_failure(decision: Decision, fail_mode: str, engine_of: Callable[[str], str]) -> tuple[str, Decision]:
    """The log line for a fail-mode ``decision`` (every failed guard once: engine, failure kind,
    error, an excerpt of unparseable output) and the decision as callers may see it."""
    failed = [v for v in decision.verdicts if not v.ok]
    seen = dict.fromkeys((v.guard, str(v.failure), v.parse_error or "no verdict", v.raw_output[:200]) for v in failed)
    why = "; ".join(
        f"guard={g} engine={engine_of(g)} {kind}: {err}" + (f" (output: {out!r})" if out else "")
        for g, kind, err, out in seen
    )
    line = (f"guardrails-plugin fail-{fail_mode}: {decision.stage} check -> {decision.action} ({decision.reason}) "
            f"request_id={decision.request_id}: {why or 'no verdict'}")
    verdicts = [v if v.ok else v.model_copy(update={"parse_error": redact_urls(v.parse_error)}) for v in decision.verdicts]
    return line, decision.model_copy(update={"detail": redact_urls(decision.detail), "verdicts": verdicts})
