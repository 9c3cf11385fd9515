"""Typed values that cross the library's seams: stages, actions, verdicts, decisions, requests.

All are pydantic v2 models (or str enums) so they serialise to JSON for audit logs, HTTP bodies
and the CLI without custom encoders.
"""

from __future__ import annotations

import uuid
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from .errors import FailureKind, GuardrailViolation


class Stage(str, Enum):
    """Where in an agent's turn the checked text comes from."""

    PROMPT = "prompt"  #: the user's input, before the model runs
    REASONING = "reasoning"  #: the model's chain of thought (possibly streaming)
    RESPONSE = "response"  #: the final answer, before the user sees it

    def __str__(self) -> str:  # "prompt", not "Stage.PROMPT", in messages and logs
        return self.value


class Action(str, Enum):
    """What the policy decided to do with the checked text."""

    ALLOW = "allow"
    BLOCK = "block"
    REDACT = "redact"
    ESCALATE = "escalate"

    def __str__(self) -> str:
        return self.value


class GuardRequest(BaseModel):
    """One thing to check. Which fields matter depends on the stage:

    * ``prompt`` stage: ``prompt`` is the user's text.
    * ``reasoning`` stage: ``prompt`` is the user's query, ``reasoning`` the chain of thought.
    * ``response`` stage: ``prompt`` is the user's query, ``response`` the answer.
    """

    model_config = ConfigDict(frozen=True)

    stage: Stage
    prompt: str = Field("", description="User text (the query for reasoning/response checks).")
    reasoning: str | None = Field(None, description="Chain of thought, for the reasoning stage.")
    response: str | None = Field(None, description="Model answer, for the response stage.")
    request_id: str = Field(default_factory=lambda: uuid.uuid4().hex, description="Correlation id.")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Free-form, copied to audit.")

    @property
    def target(self) -> str:
        """The text this stage judges (the one windowing splits and redaction edits)."""
        if self.stage is Stage.PROMPT:
            return self.prompt
        if self.stage is Stage.REASONING:
            return self.reasoning or ""
        return self.response or ""

    def with_target(self, text: str) -> GuardRequest:
        """A copy with the judged text replaced (used for windows of a long text)."""
        field = {Stage.PROMPT: "prompt", Stage.REASONING: "reasoning", Stage.RESPONSE: "response"}
        return self.model_copy(update={field[self.stage]: text})


class Verdict(BaseModel):
    """One guard model's judgement of one text (or one window of it)."""

    guard: str = Field(description="Guard model name, e.g. 'ReasoningShield-1B'.")
    stage: Stage
    risk: float = Field(ge=0.0, le=1.0, description="Normalised risk, 0.0 safe .. 1.0 harmful.")
    harmful: bool | None = Field(None, description="The guard's own binary call, None if unknown.")
    categories: list[str] = Field(default_factory=list, description="Risk categories, if given.")
    label: str | None = Field(None, description="The model's own label ('1', 'harmful', 'VIO').")
    refusal: bool | None = Field(None, description="GuardReasoner's Completion field.")
    rationale: str | None = Field(None, description="The guard's reasoning / analysis text.")
    raw_output: str = Field("", description="The guard's completion, verbatim.")
    parse_ok: bool = True
    parse_error: str | None = Field(None, description="Why parsing failed, when parse_ok=False.")
    failure: FailureKind | None = Field(None, description="Set when no real verdict was obtained.")
    latency_ms: float = 0.0
    window: tuple[int, int] | None = Field(
        None, description="Character span of the judged text this verdict covers (windowing)."
    )
    reused: bool = Field(
        False, description="Judged by an earlier check of the same stream: a closed window of a "
        "streamed text is judged once (judged.py); latency_ms is that check's.",
    )

    @property
    def ok(self) -> bool:
        """True when this is a real judgement (parsed, no engine failure)."""
        return self.parse_ok and self.failure is None


class RedactedSpan(BaseModel):
    """One span a REDACT replaced: offsets in the judged text, who found it, and what it is. Never
    the value itself (audit records spans; the text is stored only with ``store_content``)."""

    model_config = ConfigDict(frozen=True)

    start: int = Field(ge=0)
    end: int = Field(ge=0)
    by: Literal["detector", "guard", "window"] = Field(
        description="detector: a span detector; guard: a piece the guard flagged on its own; "
        "window: the whole flagged window (nothing narrower could be had)."
    )
    source: str = Field(description="The detector ('email', 'custom:ticket') or the guard model's name.")
    category: str | None = Field(None, description="Entity (EMAIL_ADDRESS) or guard category (VIO).")


class Redaction(BaseModel):
    """What a REDACT edited and what finding the spans cost."""

    spans: list[RedactedSpan] = Field(default_factory=list)
    strategy: str = "redact"
    pieces_judged: int = Field(0, description="Pieces of flagged windows the guard judged to localise.")
    detect_ms: float = 0.0
    localise_ms: float = 0.0
    fallback: str | None = Field(None, description="Why a window was redacted whole (a failure, or no piece flagged).")


class Decision(BaseModel):
    """What the policy made of a stage's verdicts."""

    action: Action
    stage: Stage
    text: str = Field(description="What may be shown: the original, a redaction, or the refusal.")
    reason: str = Field(description="Why, e.g. 'risk 1.00 >= 0.40 (ReasoningShield-1B)'.")
    verdicts: list[Verdict] = Field(default_factory=list)
    risk: float = Field(0.0, ge=0.0, le=1.0, description="Worst risk over the verdicts.")
    categories: list[str] = Field(default_factory=list)
    degraded: bool = Field(False, description="Fail-open let content through without a verdict.")
    failure: FailureKind | None = Field(None, description="Set when the fail mode decided.")
    detail: str | None = Field(
        None, description="Free-text detail behind ``reason`` (e.g. the engine's error message)."
    )
    hold: bool = Field(False, description="ESCALATE that holds the content until reviewed.")
    request_id: str = ""
    latency_ms: float = 0.0
    unguarded: list[str] = Field(
        default_factory=list,
        description="Parts of the input that were not checked (e.g. image parts of a message).",
    )
    notes: list[str] = Field(
        default_factory=list,
        description="What normalising the input changed, e.g. invalid UTF-8 replaced with U+FFFD.",
    )
    redaction: Redaction | None = Field(None, description="A REDACT's spans (offsets in the judged text).")
    # the prompt vault's values (redaction/vault.py): never serialised, so never in an audit record
    _vault: Any = PrivateAttr(default=None)

    @property
    def vault(self) -> Any:
        """The prompt stage's Vault (``redaction.vault``): ``vault.restore(answer)`` puts the
        original values back into the model's answer for the user. None without one."""
        return self._vault

    @property
    def blocked(self) -> bool:
        """True when the content must not be shown as is (BLOCK, or a held ESCALATE)."""
        return self.action is Action.BLOCK or (self.action is Action.ESCALATE and self.hold)

    def raise_for_action(self) -> Decision:
        """Raise GuardrailViolation on BLOCK (and on a held ESCALATE); return self otherwise."""
        if self.blocked:
            raise GuardrailViolation(self)
        return self


__all__ = ["Action", "Decision", "FailureKind", "GuardRequest", "RedactedSpan", "Redaction", "Stage", "Verdict"]
