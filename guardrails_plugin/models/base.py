"""What a guard model adapter is: it builds the guard's input and parses its completion.

Adapters know prompts and output formats and nothing about how tokens are produced (engines/).
``parse`` never raises: malformed output gives ``parse_ok=False`` with a reason, so the policy can
apply the stage's fail mode.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

from ..engines.base import GenerationRequest
from ..types import GuardRequest, Stage, Verdict


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

    @abstractmethod
    def parse(self, text: str, stage: Stage | None = None) -> Verdict:
        """The verdict in ``text`` (the guard's completion only, never the prompt). Never raises."""

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
