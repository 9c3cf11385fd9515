"""The review-queue protocol, in one place below the integrations: what the review page
(review/queue.py), the LangChain resume (langchain/hitl.py) and the LiteLLM resend
(litellm/guardrail.py) agree on.

* **Release rule** (``release_refusal``): an edit is released only on a real judgement: an ALLOW
  from an enabled stage, with verdicts, none failed, not degraded. A disabled stage
  (``stage_disabled``) or a fail-open pass (``degraded``) judged nothing.
* **The trail** (``recheck_metadata``, ``review_of``): a re-check of a reviewer's edit carries
  ``guardrails_plugin.review = {escalation_id, reviewer, kind}`` in the plugin's metadata
  namespace (records.py ``Trail``), which caller metadata cannot write.
* **Notes** (``edit_note``, ``user_note``, ``edit_sha``, ``review_kind``): a released edit's note
  starts ``[edit sha256:<16 hex> re-checked allow, risk 0.05]``; a typed note that looks like one
  is prefixed ``note: `` so it never passes for the tag.
* **Approval lookup** (``approved_as_is``): an escalation a resent request may name is one a
  reviewer approved as is (no edit) for exactly this content at this stage.
* **Faithful display** (``visible``, ``hidden_chars``, ``safe_json``, ``clean_text``): what a
  reviewer reads (page, CLI, JSON) shows every invisible or reordering character (bidi controls,
  zero-width and other format characters, C0/C1 controls, lone surrogates, private-use and
  unassigned code points) as ``[U+XXXX]``, and every text can be encoded (a lone surrogate never
  crashes a page or a command).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable
from typing import Any

from ..types import Action, Decision, Stage
from .records import (
    QUERY_KEY,
    TRAIL_KEY,
    TRAIL_PREFIX,
    AuditRecord,
    Escalation,
    Trail,
    caller_metadata,
    content_sha256,
    split_metadata,
    stored_metadata,
    trail_of,
)

#: the plugin's field (``guardrails_plugin.review``) marking a decision as the re-check of an edit
REVIEW_META = "review"
#: Decision.reason of a check whose stage is disabled in the config (guard.py)
STAGE_DISABLED = "stage_disabled"
EDIT_TAG = re.compile(r"^\[edit sha256:(?P<sha>[0-9a-f]{16}) ")


def release_refusal(d: Decision) -> str | None:
    """None when ``d`` (the re-check of an edit) may release the edit; else why it may not."""
    if d.action is not Action.ALLOW:
        return f"the guard's re-check says {d.action} ({d.reason})"
    if d.reason == STAGE_DISABLED or not d.verdicts:
        return (f"nothing judged the edit: the {d.stage} stage is disabled in the guard config "
                f"({d.reason}); an edit is released only on a real allow")
    if d.degraded or d.failure is not None or not all(v.ok for v in d.verdicts):
        return (f"nothing judged the edit: the guard failed ({d.failure or 'unparseable verdict'}) and "
                "fail-open let it through unjudged; an edit is released only on a real allow")
    if d.unguarded:
        return f"part of the edit was not judged ({'; '.join(d.unguarded)})"
    return None


def unjudged(d: Decision) -> bool:
    """True when nothing judged ``d``'s text (a disabled stage, a fail-open pass): the question
    stays open rather than being answered by a verdict nobody gave."""
    return d.action is Action.ALLOW and release_refusal(d) is not None


def recheck_metadata(escalation_id: int | None, reviewer: str, kind: str = "edit",
                     metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """Request metadata for the re-check of a reviewer's edit: the caller's metadata of the
    original (``metadata``, stored form) and the plugin's review field."""
    caller = caller_metadata(metadata)
    return {**caller, TRAIL_KEY: Trail({REVIEW_META: {"escalation_id": escalation_id, "reviewer": reviewer,
                                                      "kind": kind}})}


def review_of(record: AuditRecord) -> int | None:
    """The escalation id a record re-checks an edit of (from the plugin's namespace only)."""
    review = trail_of(record.metadata).get(REVIEW_META)
    if isinstance(review, dict) and isinstance(review.get("escalation_id"), int) \
            and not isinstance(review.get("escalation_id"), bool):
        return int(review["escalation_id"])
    return None


def reviewer_of(record: AuditRecord) -> str | None:
    review = trail_of(record.metadata).get(REVIEW_META)
    return str(review.get("reviewer")) if isinstance(review, dict) and review.get("reviewer") else None


def query_of(metadata: dict[str, Any] | None) -> str | None:
    """The question a stored answer / trace was judged against (the plugin's field only)."""
    q = (metadata or {}).get(QUERY_KEY)
    return q if isinstance(q, str) else None


# -- notes -------------------------------------------------------------------------------------------
def edit_note(text: str, recheck: Decision, note: str | None = None) -> str:
    """The note of an escalation resolved by an edit (the tag names the edit's hash and re-check)."""
    tag = f"[edit sha256:{content_sha256(text)[:16]} re-checked {recheck.action}, risk {recheck.risk:.2f}]"
    return f"{tag} {user_note(note) or ''}".strip()


def user_note(note: str | None) -> str | None:
    """A typed note as recorded: valid text, stripped, and never passing for the tag of a released edit."""
    note = clean_text(note or "").strip()
    if EDIT_TAG.match(note):
        note = "note: " + note
    return note or None


def edit_sha(esc: Escalation) -> str | None:
    """The 16-hex prefix of the released edit's SHA-256, when the escalation was approved by an edit."""
    m = EDIT_TAG.match(esc.note or "") if esc.status == "approved" else None
    return m.group("sha") if m else None


def review_kind(esc: Escalation) -> str | None:
    """approve / reject / edit, or None while pending."""
    if esc.status == "pending":
        return None
    if esc.status == "rejected":
        return "reject"
    return "edit" if edit_sha(esc) else "approve"


def released_edit(esc: Escalation, records: Iterable[AuditRecord]) -> AuditRecord | None:
    """The re-check record of the edit that resolved ``esc``: a judged ALLOW of the hashed text."""
    sha = edit_sha(esc)
    if not sha:
        return None
    return next((r for r in records if review_of(r) == esc.id and r.action == Action.ALLOW.value
                 and not r.degraded and r.content_sha256.startswith(sha)), None)


def approved_as_is(esc: Escalation | None, stage: Stage, text: str) -> bool:
    """True when ``esc`` is a reviewer's approval, as is (not an edit), of exactly ``text`` at
    ``stage``: what a resent request naming the escalation may pass on."""
    return (esc is not None and esc.status == "approved" and review_kind(esc) == "approve"
            and esc.stage == stage.value and esc.content_sha256 == content_sha256(text))


# -- faithful display ----------------------------------------------------------------------------------
#: invisible characters whose Unicode category does not say so (Hangul fillers, CGJ, Khmer vowels)
_INVISIBLE = frozenset("\u115f\u1160\u3164\uffa0\u034f\u17b4\u17b5\u180e\u2800")


def _is_hidden(ch: str, keep: str) -> bool:
    if ch in keep:
        return False
    if ch in _INVISIBLE:
        return True
    if ch.isprintable():
        return False
    return unicodedata.category(ch) != "Zs"  # other spaces are visible as spaces


def hidden_chars(text: str, keep: str = "\n\t\r") -> list[str]:
    """The characters of ``text`` that ``visible`` escapes, in order."""
    if text.isprintable() and not _INVISIBLE.intersection(text):
        return []
    return [ch for ch in text if _is_hidden(ch, keep)]


def escape_code(ch: str) -> str:
    return f"[U+{ord(ch):04X}]"


def char_name(ch: str) -> str:
    return unicodedata.name(ch, "surrogate" if 0xD800 <= ord(ch) <= 0xDFFF else "unnamed")


def visible(text: str, keep: str = "\n\t\r") -> str:
    """``text`` with every hidden character (see the module doc) written as ``[U+XXXX]``; the
    result is printable and encodable. ``keep``: controls shown as themselves (line breaks)."""
    if not hidden_chars(text, keep):
        return text
    return "".join(escape_code(ch) if _is_hidden(ch, keep) else ch for ch in text)


def _json_escape(ch: str) -> str:
    cp = ord(ch)
    if cp > 0xFFFF:
        cp -= 0x10000
        return f"\\u{0xD800 + (cp >> 10):04x}\\u{0xDC00 + (cp & 0x3FF):04x}"
    return f"\\u{cp:04x}"


def safe_json(value: Any, *, indent: int | None = None, sort_keys: bool = False) -> str:
    """JSON text as ``json.dumps(ensure_ascii=False)`` writes it, except that every hidden
    character (bidi controls, lone surrogates, ...) is a ``\\uXXXX`` escape: the same JSON value,
    encodable as UTF-8, and nothing in it reorders or hides text on a terminal."""
    s = json.dumps(value, ensure_ascii=False, indent=indent, sort_keys=sort_keys, default=str)
    if not hidden_chars(s, keep="\n"):
        return s
    return "".join(_json_escape(ch) if _is_hidden(ch, "\n") else ch for ch in s)


def clean_text(text: str) -> str:
    """Text as it can be stored: bytes that were not UTF-8 (a command line's surrogateescape
    characters) and lone surrogates become U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    raw = bytearray()
    for ch in text:
        cp = ord(ch)
        if 0xDC80 <= cp <= 0xDCFF:  # surrogateescape: the byte that was not UTF-8
            raw.append(cp - 0xDC00)
        elif 0xD800 <= cp <= 0xDFFF:
            raw += "\ufffd".encode()
        else:
            raw += ch.encode("utf-8")
    return raw.decode("utf-8", "replace")


__all__ = [
    "EDIT_TAG",
    "QUERY_KEY",
    "REVIEW_META",
    "STAGE_DISABLED",
    "TRAIL_KEY",
    "TRAIL_PREFIX",
    "Trail",
    "approved_as_is",
    "caller_metadata",
    "char_name",
    "clean_text",
    "edit_note",
    "edit_sha",
    "escape_code",
    "hidden_chars",
    "query_of",
    "recheck_metadata",
    "release_refusal",
    "released_edit",
    "review_kind",
    "review_of",
    "reviewer_of",
    "safe_json",
    "split_metadata",
    "stored_metadata",
    "trail_of",
    "unjudged",
    "user_note",
    "visible",
]
