"""What the audit store holds: one ``AuditRecord`` per Decision, one ``Escalation`` per ESCALATE,
and the store's errors. Pure data: no I/O here."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from ..errors import GuardError
from ..types import Action, Decision, GuardRequest, Stage

Durability = Literal["background", "strict"]
EscalationStatus = Literal["pending", "approved", "rejected"]
STATUSES: tuple[str, ...] = ("pending", "approved", "rejected")
#: verdict fields that quote the judged text: stored only with store_content, purged with content
CONTENT_VERDICT_FIELDS = ("raw_output", "rationale")


class AuditError(GuardError):
    """The audit store could not be opened, read or written."""


class AuditUnavailable(AuditError):
    """The store cannot be reached right now (connection refused or lost, database locked past
    the busy timeout, disk full). Worth retrying, unlike a write the database rejects."""


class AuditWriteError(AuditError):
    """A strict-durability write failed: the Decision is not on record.

    Guard re-raises this one from its hooks (every other hook error is only logged), so a caller
    never holds a strict-mode Decision that the audit trail does not have."""


class EscalationNotFound(AuditError, KeyError):
    """No escalation with that id."""


class EscalationAlreadyResolved(AuditError):
    """The escalation was resolved before; resolutions are final."""


def content_sha256(text: str) -> str:
    # surrogatepass: a lone surrogate that slipped through normalisation must not break the audit
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def dumps(value: Any) -> str:
    """JSON for the store. NUL is escaped by JSON itself; a lone surrogate cannot be encoded as
    UTF-8, so such a value falls back to ASCII escapes (still the same JSON value)."""
    s = json.dumps(value, ensure_ascii=False)
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        s = json.dumps(value, ensure_ascii=True)
    return s


def jsonable(value: Any) -> Any:
    """Metadata is free-form: round-trip through JSON with str() for anything exotic. Never raises:
    a value JSON cannot hold at all (a circular structure, odd keys) is kept as its repr, so the
    Decision is still recorded (in strict mode a failure here would have lost it)."""
    try:
        return json.loads(json.dumps(value, default=str))
    except (ValueError, TypeError, RecursionError):
        if isinstance(value, dict):
            return {str(k): _jsonable_or_repr(v) for k, v in value.items()}
        return repr(value)


def _jsonable_or_repr(value: Any) -> Any:
    try:
        return json.loads(json.dumps(value, default=str))
    except (ValueError, TypeError, RecursionError):
        return repr(value)


def strip_content(verdicts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Verdict dicts without the fields that quote the judged text."""
    return [{k: v for k, v in d.items() if k not in CONTENT_VERDICT_FIELDS} for d in verdicts]


#: The plugin's own namespace in stored metadata. Request metadata is the caller's and free-form;
#: what the plugin writes about a request (the question it was judged against, the re-check of a
#: reviewer's edit, a paused run's ids) is stored under keys starting with this prefix, and only the
#: plugin can put them there: a caller's key with the prefix is kept, renamed (``CALLER_PREFIX``).
TRAIL_PREFIX = "guardrails_plugin."
#: request-metadata key of the plugin's fields (a ``Trail``; any other value there is the caller's)
TRAIL_KEY = "guardrails_plugin"
#: a caller's metadata key that would land in the plugin's namespace is stored with this in front
CALLER_PREFIX = "caller:"
#: the question an answer or trace was judged against (stored only with content storage on)
QUERY_KEY = TRAIL_PREFIX + "query"


class Trail(dict):  # type: ignore[type-arg]
    """The plugin's fields about one request, handed to a check as ``metadata[TRAIL_KEY]``.

    Only this type is trusted there: metadata that came over a wire (JSON, a LiteLLM request, a
    LangChain config) cannot hold it, so a caller cannot write into the plugin's namespace."""


def split_metadata(metadata: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(caller's metadata, the plugin's fields)`` of a request's metadata. The plugin's fields
    are those of a ``Trail`` at ``TRAIL_KEY``; every caller key that names the plugin's namespace
    (``TRAIL_KEY`` itself or ``guardrails_plugin.*``) is kept under ``caller:<key>``."""
    caller: dict[str, Any] = {}
    ours: dict[str, Any] = {}
    for k, v in dict(metadata or {}).items():
        key = str(k)
        if key == TRAIL_KEY and isinstance(v, Trail):
            ours.update({str(f): x for f, x in v.items()})
        elif key == TRAIL_KEY or key.startswith(TRAIL_PREFIX):
            caller[CALLER_PREFIX + key] = v
        else:
            caller[key] = v
    return caller, ours


def stored_metadata(metadata: Any, **ours: Any) -> dict[str, Any]:
    """Request metadata as the audit store (and a webhook) keeps it: the caller's keys, then the
    plugin's fields as ``guardrails_plugin.<field>`` (``ours`` adds or overrides plugin fields)."""
    caller, trail = split_metadata(metadata)
    trail.update({k: v for k, v in ours.items() if v is not None})
    out = jsonable(caller)
    if not isinstance(out, dict):
        out = {"caller": out}
    out.update({TRAIL_PREFIX + k: _jsonable_or_repr(v) for k, v in trail.items()})
    return out


def trail_of(metadata: dict[str, Any] | None) -> dict[str, Any]:
    """The plugin's fields of stored metadata (``{"query": ..., "review": {...}}``)."""
    n = len(TRAIL_PREFIX)
    return {k[n:]: v for k, v in (metadata or {}).items() if k.startswith(TRAIL_PREFIX)}


def caller_metadata(metadata: dict[str, Any] | None) -> dict[str, Any]:
    """The caller's part of stored metadata (as sent; nothing the plugin vouches for)."""
    return {k: v for k, v in (metadata or {}).items() if not k.startswith(TRAIL_PREFIX)}


@dataclass
class AuditRecord:
    """One Decision as stored. ``verdicts`` are JSON-ready dicts."""

    request_id: str
    time: float
    stage: str
    guards: list[str]
    action: str
    reason: str
    risk: float
    categories: list[str]
    verdicts: list[dict[str, Any]]
    latency_ms: float
    guard_latency_ms: dict[str, float]
    degraded: bool
    failure: str | None
    hold: bool
    content_sha256: str
    content: str | None = None
    unguarded: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    detail: str | None = None
    notes: list[str] = field(default_factory=list)
    #: unique per record: a batch retried after an ambiguous commit is not written twice
    record_id: str | None = field(default_factory=lambda: uuid.uuid4().hex)

    @classmethod
    def from_decision(
        cls,
        request: GuardRequest,
        decision: Decision,
        *,
        store_content: bool = False,
        now: float | None = None,
    ) -> AuditRecord:
        text = request.target
        drop = set() if store_content else set(CONTENT_VERDICT_FIELDS)
        verdicts = [v.model_dump(mode="json", exclude=drop) for v in decision.verdicts]
        guards = list(dict.fromkeys(v.guard for v in decision.verdicts))
        # The question an answer or trace was judged against: a reviewer needs it, and a labelled
        # export needs it as the row's prompt, even when no prompt check was stored. It is the
        # plugin's field: a caller's metadata cannot replace it (split_metadata).
        query = request.prompt if store_content and request.stage is not Stage.PROMPT and request.prompt else None
        metadata = stored_metadata(request.metadata, query=query)
        per_guard: dict[str, float] = {}
        for v in decision.verdicts:  # windows of one guard share a call: keep the slowest
            per_guard[v.guard] = max(per_guard.get(v.guard, 0.0), v.latency_ms)
        return cls(
            request_id=decision.request_id or request.request_id,
            time=time.time() if now is None else now,
            stage=str(decision.stage),
            guards=guards,
            action=str(decision.action),
            reason=decision.reason,
            risk=decision.risk,
            categories=list(decision.categories),
            verdicts=verdicts,
            latency_ms=decision.latency_ms,
            guard_latency_ms=per_guard,
            degraded=decision.degraded,
            failure=str(decision.failure) if decision.failure else None,
            hold=decision.hold,
            content_sha256=content_sha256(text),
            content=text if store_content else None,
            unguarded=list(decision.unguarded),
            metadata=metadata,
            detail=decision.detail,
            notes=list(decision.notes),
        )

    @property
    def escalates(self) -> bool:
        return self.action == Action.ESCALATE.value

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Escalation:
    """An entry of the review queue: the escalated Decision with its context, and its review.

    ``content``, and the ``raw_output`` / ``rationale`` of ``verdicts``, are there only when the
    auditor stored content (and until a content purge). ``status`` / ``resolver`` / ``note`` /
    ``resolved_at`` come from the one review decision appended by ``resolve()``."""

    id: int
    request_id: str
    time: float
    stage: str
    reason: str
    risk: float
    categories: list[str]
    content_sha256: str
    content: str | None = None
    status: str = "pending"
    resolver: str | None = None
    note: str | None = None
    resolved_at: float | None = None
    guards: list[str] = field(default_factory=list)
    verdicts: list[dict[str, Any]] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    hold: bool = False
    record_id: str | None = None  #: the escalated decision's record (``AuditRecord.record_id``)

    @property
    def created_at(self) -> float:
        """When the escalation was raised (epoch seconds; the same as ``time``)."""
        return self.time

    @property
    def pending(self) -> bool:
        return self.status == "pending"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["created_at"] = self.time
        return d

    @classmethod
    def from_record(cls, id: int, r: AuditRecord) -> Escalation:
        return cls(
            id=id, request_id=r.request_id, time=r.time, stage=r.stage, reason=r.reason, risk=r.risk,
            categories=list(r.categories), content_sha256=r.content_sha256, content=r.content,
            guards=list(r.guards), verdicts=list(r.verdicts), metadata=dict(r.metadata), hold=r.hold,
            record_id=r.record_id,
        )


@dataclass
class PurgeResult:
    """What one ``purge()`` removed."""

    records: int = 0  #: audit records deleted
    escalations: int = 0  #: resolved escalations deleted (with their review)
    content: int = 0  #: records and escalations whose stored text was erased (hashes kept)
    kept_pending: int = 0  #: escalations past the cut-off kept because nobody reviewed them yet

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def check_status(status: str | None) -> None:
    if status is not None and status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")


def cutoff(days: float | None, now: float | None) -> float | None:
    """The epoch time ``days`` before ``now`` (None: no cut-off)."""
    if days is None:
        return None
    if days < 0:
        raise ValueError(f"retention days must be >= 0, got {days}")
    return (time.time() if now is None else now) - days * 86400.0
