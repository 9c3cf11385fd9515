"""What a guard model adapter is: it builds the guard's input and parses its completion.

Adapters know prompts and output formats and nothing about how tokens are produced (engines/).
``parse`` never raises: malformed output gives ``parse_ok=False`` with a reason, so the policy can
apply the stage's fail mode.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

from ..engines.base import GenerationRequest
from ..types import GuardRequest, Stage, Verdict

#: what a forged field line gets in front of it: a quote mark, so the guard still reads the words
QUOTE = "> "


@cache
def _field_line(markers: tuple[str, ...]) -> re.Pattern[str]:
    names = "|".join(re.escape(m) for m in markers)
    # After a line break, optional indentation, then a marker and its colon (ASCII or full-width).
    return re.compile(rf"(?<=[\n\r])(?=[ \t]*(?:{names})[ \t]*[:：])", re.IGNORECASE)


def neutralize_fields(text: str, markers: Sequence[str]) -> str:
    """``text`` with every line that would open one of the guard's own input fields quoted.

    The guards' inputs are plain-text fields (ReasoningShield ``Query: ..\nThought: ..``,
    GuardReasoner ``Human user:\n..\n\nAI assistant:\n..``, FlexGuard ``[User]: ..\n[Assistant]: ..``).
    User text in a field that the template follows with another field could otherwise start a fake
    next field (a query containing ``\nThought: all fine``) and move where the guard thinks the
    judged text begins. Such lines get ``"> "`` in front: the guard still reads every word, but not
    as a field boundary. Only lines starting (after a line break) with a marker of this guard are
    touched, so ordinary text stays byte-exact with the upstream prompts; the last field of a
    template has nothing after it to displace and is passed verbatim.
    """
    if not text or not markers:
        return text
    return _field_line(tuple(markers)).sub(QUOTE, text)


class GuardModel(ABC):
    """Base class of the per-family adapters."""

    family: ClassVar[str]
    #: hub id used when the config names no local folder
    default_model_id: ClassVar[str]
    #: sizes the family ships, name suffix -> hub id
    variants: ClassVar[dict[str, str]] = {}
    default_max_new_tokens: ClassVar[int] = 1024
    #: stages this family can judge
    stages: ClassVar[frozenset[Stage]] = frozenset(Stage)
    #: what canned_output writes where a format has room for words: never mistaken for a guard
    canned_note: ClassVar[str] = "scripted try-out answer (ScriptedEngine.from_rules), not a guard judgement"

    def __init__(
        self,
        name: str | None = None,
        *,
        model_dir: str | Path | None = None,
        max_new_tokens: int | None = None,
    ):
        self.name = name or self.default_name()
        self.model_dir = Path(model_dir) if model_dir else None
        self.max_new_tokens = max_new_tokens or self.default_max_new_tokens

    @classmethod
    def default_name(cls) -> str:
        return cls.default_model_id.rsplit("/", 1)[-1]

    @abstractmethod
    def build_input(self, request: GuardRequest) -> GenerationRequest:
        """The engine request for ``request`` (raw prompt or chat messages), byte-exact."""

    def parse(self, text: Any, stage: Stage | None = None) -> Verdict:
        """The verdict in ``text`` (the guard's completion only, never the prompt). Never raises:
        non-text input and parser bugs give an unparseable verdict (the stage's fail mode)."""
        stage = _coerce_stage(stage)
        if not isinstance(text, str):
            why = f"completion is {type(text).__name__}, not str"
            return self.unparseable(_as_text(text), stage, why)
        try:
            return self._parse(text, stage)
        except Exception as exc:  # a bug here fails closed, visibly
            return self.unparseable(text, stage, f"parser error: {exc!r}")

    @abstractmethod
    def _parse(self, text: str, stage: Stage | None) -> Verdict:
        """Family-specific parsing of a completion (may raise; ``parse`` contains it)."""

    def fast_spec(self, request: GuardRequest) -> Any:
        """The fast-scoring spec (one forward pass, verdict read from next-token probabilities;
        see guardrails_plugin/scoring.py). Opt-in; accuracy against full generation not measured."""
        from .. import scoring

        return getattr(scoring, f"{self.family}_spec")(self, request)

    def canned_output(
        self, stage: Stage, *, harmful: bool, risk: float, categories: list[str] | tuple[str, ...] = ()
    ) -> str:
        """A completion in this family's output format that ``parse`` reads back as this verdict,
        as far as the format can say it (ReasoningShield: 0 / 0.5 / 1; GuardReasoner: harmful or
        not). For ScriptedEngine.from_rules, a try-out double that is NOT a guard. A family that
        does not write one raises NotImplementedError (its prompts then fail in the try-out)."""
        raise NotImplementedError(f"guard family {self.family!r} has no canned_output")

    def unparseable(self, text: str, stage: Stage | None, why: str) -> Verdict:
        """The verdict for output that does not follow the protocol."""
        from ..types import FailureKind

        return Verdict(
            guard=self.name,
            stage=stage or Stage.RESPONSE,
            risk=1.0,
            harmful=None,
            raw_output=text,
            parse_ok=False,
            parse_error=why,
            failure=FailureKind.UNPARSEABLE,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def _coerce_stage(stage: Any) -> Stage | None:
    try:
        return Stage(stage) if stage is not None else None
    except ValueError:
        return None


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    try:
        return repr(value)
    except Exception:
        return f"<{type(value).__name__}>"
