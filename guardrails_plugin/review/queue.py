"""The reviewer's view of the escalation queue, built only on the audit store's public API
(``records``, ``list_escalations``, ``get_escalation``, ``resolve``, ``write``).

* Filters by status, stage, category and age (the store lists by status only).
* ``view(id)``: the escalation with the guard's verdicts (rationale and raw output where content
  is stored), the request's metadata, the other decisions of the same request (context) and the
  re-checks of reviewers' edits.
* ``approve`` / ``reject``: one append-only ``resolve`` each (who, when, decision, note).
* ``edit``: the reviewer's replacement text is checked again by the guard for the escalation's
  stage, and the re-check is recorded as a decision of the same request. The edit is released
  (the escalation approved, its note naming the edit's hash and the re-check) only on a real
  ALLOW (observe/reviews.py ``release_refusal``: not degraded, not a disabled stage). Otherwise
  the escalation stays pending and the reviewer sees why; an edit that the guard escalates again
  opens its own queue entry (every escalation lands in the queue).
* What the page shows as the request's metadata is the caller's (labelled so); the plugin's own
  fields (the query, the review of an edit) come from its namespace only (records.py ``Trail``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ..observe import AuditRecord, AuditStore, Escalation, EscalationAlreadyResolved, EscalationNotFound
from ..observe.reviews import (
    REVIEW_META,
    caller_metadata,
    edit_note,
    edit_sha,
    query_of,
    recheck_metadata,
    release_refusal,
    released_edit,
    review_kind,
    review_of,
    trail_of,
    user_note,
)
from ..errors import GuardConfigError, GuardInputError
from ..types import Action, Decision, Stage

#: age filters of the list page: key -> (label, min age s, max age s)
AGE_FILTERS: dict[str, tuple[str, float | None, float | None]] = {
    "lt1h": ("last hour", None, 3600.0),
    "lt24h": ("last 24 hours", None, 86400.0),
    "gt1h": ("older than 1 hour", 3600.0, None),
    "gt24h": ("older than 24 hours", 86400.0, None),
    "gt7d": ("older than 7 days", 7 * 86400.0, None),
}


class ReviewError(GuardInputError):
    """A review action that cannot be done as asked (empty edit, no guard to re-check with)."""


@dataclass
class EscalationView:
    """Everything the detail page shows about one escalation."""

    escalation: Escalation
    record: AuditRecord | None  #: the escalated decision's audit record, when found
    verdicts: list[dict[str, Any]]
    metadata: dict[str, Any]  #: the caller's metadata (as sent with the request; not the plugin's)
    related: list[AuditRecord] = field(default_factory=list)  #: other decisions of the request
    rechecks: list[AuditRecord] = field(default_factory=list)  #: re-checks of reviewers' edits
    query: str | None = None  #: the user's prompt, when a prompt-stage record of the request stored it
    trail: dict[str, Any] = field(default_factory=dict)  #: the plugin's own fields of the record

    @property
    def kind(self) -> str | None:
        """The review decision: approve / reject / edit, or None while pending."""
        return review_kind(self.escalation)

    @property
    def released_edit(self) -> AuditRecord | None:
        """The re-check record of the edit that was released, if the decision was an edit."""
        return released_edit(self.escalation, self.rechecks)


@dataclass
class EditOutcome:
    released: bool
    decision: Decision  #: the guard's re-check of the edited text
    escalation: Escalation  #: resolved when released, else still pending
    why: str | None = None  #: why the edit was not released (None when it was)


def _stage(value: str) -> Stage:
    return Stage(value)


class ReviewQueue:
    """``store``: an audit store (``open_store``); ``guard``: the Guard that re-checks edits (edits
    are refused without one). The guard should not audit into ``store`` itself: the queue records
    each re-check there once."""

    def __init__(self, store: AuditStore, guard: Any | None = None):
        self.store = store
        self.guard = guard

    # -- reading ---------------------------------------------------------------------------------
    def find(
        self,
        *,
        status: str | None = "pending",
        stage: str | None = None,
        category: str | None = None,
        age: str | None = None,
        now: float | None = None,
    ) -> list[Escalation]:
        """Escalations, newest first. ``status`` None lists all; ``age`` is a key of AGE_FILTERS."""
        if age and age not in AGE_FILTERS:
            raise ReviewError(f"unknown age filter {age!r}; expected one of {sorted(AGE_FILTERS)}")
        if stage:
            _stage(stage)  # a typed error for a bad stage, not an empty page
        items = self.store.list_escalations(status)
        now = time.time() if now is None else now
        lo, hi = AGE_FILTERS[age][1:] if age else (None, None)
        out = []
        for e in items:
            if stage and e.stage != stage:
                continue
            if category and category not in e.categories:
                continue
            if lo is not None and now - e.time < lo:
                continue
            if hi is not None and now - e.time > hi:
                continue
            out.append(e)
        return sorted(out, key=lambda e: (e.time, e.id), reverse=True)

    def categories(self) -> list[str]:
        return sorted({c for e in self.store.list_escalations(None) for c in e.categories})

    def get(self, id: int) -> Escalation:
        esc = self.store.get_escalation(id)
        if esc is None:
            raise EscalationNotFound(id)
        return esc

    def by_request(self, request_id: str) -> Escalation | None:
        """The newest escalation of a request (webhook links name the request id)."""
        found = [e for e in self.store.list_escalations(None) if e.request_id == request_id]
        return max(found, key=lambda e: e.id) if found else None

    def view(self, id: int) -> EscalationView:
        esc = self.get(id)
        records = self.store.records(request_id=esc.request_id)
        rechecks = [r for r in records if review_of(r) == esc.id]
        others = [r for r in records if review_of(r) is None]
        own = [r for r in others if r.action == Action.ESCALATE.value and r.stage == esc.stage
               and r.content_sha256 == esc.content_sha256]
        record = min(own, key=lambda r: abs(r.time - esc.time)) if own else None
        related = [r for r in others if r is not record]
        # The new store keeps verdicts and metadata on the escalation itself; older ones only
        # on the decision record.
        verdicts = list(getattr(esc, "verdicts", None) or (record.verdicts if record else []))
        stored = dict(getattr(esc, "metadata", None) or (record.metadata if record else {}))
        # the question the escalated text was judged against (the plugin's field, stored with the
        # record when content storage is on), else the request's stored prompt check
        query = query_of(stored)
        if query is None:
            query = next((r.content for r in related if r.stage == Stage.PROMPT.value and r.content), None)
        return EscalationView(esc, record, verdicts, caller_metadata(stored), related, rechecks, query,
                              trail_of(stored))

    # -- deciding --------------------------------------------------------------------------------
    def approve(self, id: int, reviewer: str, note: str | None = None) -> Escalation:
        return self.store.resolve(id, True, resolver=reviewer, note=user_note(note))

    def reject(self, id: int, reviewer: str, note: str | None = None) -> Escalation:
        return self.store.resolve(id, False, resolver=reviewer, note=user_note(note))

    def edit(self, id: int, reviewer: str, text: str, note: str | None = None) -> EditOutcome:
        """Re-check ``text`` with the guard; release it (approve) only on a real ALLOW (not degraded,
        not a disabled stage); otherwise the escalation stays pending and ``why`` says why."""
        if self.guard is None:
            raise GuardConfigError("edits are checked again before release: start the review app "
                                   "with a guard (`review serve --config guard.yaml`)")
        if not text.strip():
            raise ReviewError("the edited text is empty: reject the escalation instead")
        view = self.view(id)
        esc = view.escalation
        if esc.status != "pending":
            raise EscalationAlreadyResolved(f"escalation {id} was already {esc.status} by {esc.resolver}")
        stage = _stage(esc.stage)
        fields: dict[str, Any] = {"prompt": text} if stage is Stage.PROMPT else {
            "prompt": view.query or "", stage.value: text}
        meta = recheck_metadata(esc.id, reviewer, "edit", view.metadata)
        request = self.guard.request(stage, request_id=esc.request_id, metadata=meta, **fields)
        decision: Decision = self.guard.check(request)
        # Stored like the original: the edit's text only when the escalation's content was stored.
        record = AuditRecord.from_decision(request, decision, store_content=esc.content is not None)
        self.store.write([record], durable=True)
        why = release_refusal(decision)
        if why is not None:
            return EditOutcome(False, decision, esc, why)
        done = self.store.resolve(id, True, resolver=reviewer, note=edit_note(text, decision, note))
        return EditOutcome(True, decision, done)


__all__ = ["AGE_FILTERS", "REVIEW_META", "EditOutcome", "EscalationView", "ReviewError", "ReviewQueue",
           "edit_sha", "review_kind"]
