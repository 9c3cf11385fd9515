"""What a guard model adapter is: it builds the guard's input and parses its completion.

Adapters know prompts and output formats and nothing about how tokens are produced (engines/).
``parse`` never raises: malformed output gives ``parse_ok=False`` with a reason, so the policy can
apply the stage's fail mode.

A family is one file: a ``GuardModel`` subclass with a ``family`` name registers itself here when
its module is imported (``guardrails_plugin.models`` imports them all); config validation, the CLI
and the fast-scoring runner look families up in that registry (models/registry.py).
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from ..engines.base import GenerationRequest
from ..errors import GuardConfigError
from ..types import FailureKind, GuardRequest, Stage, Verdict

if TYPE_CHECKING:
    from .fast import FastSpec

#: what a forged field line gets in front of it: a quote mark, so the guard still reads the words
QUOTE = "> "

#: family name -> adapter class, filled by GuardModel.__init_subclass__ (one entry per family file)
FAMILIES: dict[str, type[GuardModel]] = {}


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


def judged_text(request: GuardRequest) -> str:
    """What the guard judges as the assistant's message: the answer, or the reasoning trace (every
    new family judges a trace as the assistant turn, as Qwen3Guard's authors evaluate thinking)."""
    if request.stage is Stage.REASONING:
        return request.reasoning or ""
    return request.response or ""


def read_chat_template(model_dir: str | Path | None) -> str | None:
    """The chat template shipped in a local model folder (tokenizer_config.json, chat_template.jinja
    or a processor's chat_template.json), or None. Used to tell variants apart whose templates want
    different message shapes (Llama Guard 3 1B vs 8B)."""
    if model_dir is None:
        return None
    d = Path(model_dir)
    jinja = d / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    for fname in ("tokenizer_config.json", "chat_template.json"):
        p = d / fname
        if not p.is_file():
            continue
        try:
            tpl = json.loads(p.read_text(encoding="utf-8")).get("chat_template")
        except (ValueError, AttributeError):
            continue
        if isinstance(tpl, list):  # [{"name": "default", "template": ...}, ...]
            tpl = next((t.get("template") for t in tpl if isinstance(t, dict) and t.get("name") == "default"), None)
        if isinstance(tpl, str):
            return tpl
    return None


class FamilyOptions(BaseModel):
    """A family's ``options:`` (none by default). Subclasses add typed fields and validators."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _options_problem(options: type[FamilyOptions], exc: ValidationError) -> str:
    """One line for the first thing wrong: unknown names listed with the known ones, else the
    field and pydantic's message (a validator's own message as written)."""
    errors = exc.errors()
    unknown = sorted(str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden")
    if unknown:
        known = ", ".join(sorted(options.model_fields)) or "none"
        return f"unknown option(s) {', '.join(unknown)} (known: {known})"
    first = errors[0]
    where = ".".join(str(x) for x in first["loc"])
    msg = str(first["msg"]).removeprefix("Value error, ")
    return f"{where}: {msg}" if where else msg


class GuardModel(ABC):
    """Base class of the per-family adapters."""

    family: ClassVar[str]
    #: hub id used when the config names no local folder
    default_model_id: ClassVar[str]
    #: sizes the family ships, name suffix -> hub id (the hub ids' last parts are CLI presets)
    variants: ClassVar[dict[str, str]] = {}
    default_max_new_tokens: ClassVar[int] = 1024
    #: stages this family can judge
    stages: ClassVar[frozenset[Stage]] = frozenset(Stage)
    #: what canned_output writes where a format has room for words: never mistaken for a guard
    canned_note: ClassVar[str] = "scripted try-out answer (ScriptedEngine.from_rules), not a guard judgement"
    #: per-model settings the family accepts (config ``options:``): a pydantic model with
    #: ``extra="forbid"``, so a misspelt option is a configuration error, never ignored
    Options: ClassVar[type[FamilyOptions]] = FamilyOptions

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        fam = cls.__dict__.get("family")
        if isinstance(fam, str):
            other = FAMILIES.get(fam)
            if other is not None and other.__qualname__ != cls.__qualname__:
                raise TypeError(f"guard family {fam!r} registered twice ({other.__name__}, {cls.__name__})")
            FAMILIES[fam] = cls

    def __init__(
        self,
        name: str | None = None,
        *,
        model_dir: str | Path | None = None,
        max_new_tokens: int | None = None,
        model_id: str | None = None,
        options: Mapping[str, Any] | None = None,
    ):
        self.name = name or self.default_name()
        self.model_dir = Path(model_dir) if model_dir else None
        #: the configured hub id or folder (None: the family default); variants are read from it
        self.model_id = model_id or (str(model_dir) if model_dir else None)
        self.options = self.parse_options(options or {})
        self.max_new_tokens = max_new_tokens or self.default_max_new_tokens

    @classmethod
    def default_name(cls) -> str:
        return cls.default_model_id.rsplit("/", 1)[-1]

    @classmethod
    def from_config(
        cls,
        name: str,
        mc: Any,
        *,
        mode: str = "full",
        model_dir: str | Path | None = None,
        max_new_tokens: int | None = None,
    ) -> GuardModel:
        """The adapter for configured guard model ``name`` (a GuardModelConfig ``mc``). Raises
        GuardConfigError when ``mode`` is fast/cascade and this model cannot be fast-scored on its
        configured engine: a configuration mistake is reported when the Guard is built, never as
        a fail-mode verdict per check."""
        model = cls(
            name,
            model_dir=model_dir,
            max_new_tokens=max_new_tokens if max_new_tokens is not None else getattr(mc, "max_new_tokens", None),
            model_id=getattr(mc, "model", None),
            options=getattr(mc, "options", None) or {},
        )
        if mode in ("fast", "cascade"):
            problem = model.fast_scoring_problem(getattr(mc, "engine", "transformers"))
            if problem:
                raise GuardConfigError(f"guard model {name!r} ({cls.family}): mode {mode!r} needs fast scoring, "
                                       f"but {problem}. Use mode 'full' for this guard.")
        return model

    @classmethod
    def parse_options(cls, options: Mapping[str, Any] | FamilyOptions) -> Any:
        """``options`` as the family's ``Options``; one GuardConfigError naming what is wrong."""
        if isinstance(options, cls.Options):
            return options
        if not isinstance(options, Mapping):
            raise GuardConfigError(f"{cls.family}: options must be a mapping, got {type(options).__name__}")
        try:
            return cls.Options.model_validate(dict(options))
        except ValidationError as exc:
            raise GuardConfigError(f"{cls.family}: {_options_problem(cls.Options, exc)}") from None

    def variant(self) -> str | None:
        """The ``variants`` key this model is (matched in the configured id or folder, then the
        guard's name), or None when neither says."""
        for ref in (self.model_id, self.name):
            if not ref:
                continue
            base = ref.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1].lower()
            for key, hub in sorted(self.variants.items(), key=lambda kv: -len(kv[0])):
                if base == hub.rsplit("/", 1)[-1].lower() or base.endswith("-" + key.lower()):
                    return key
        return None

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

    def fast_spec(self, request: GuardRequest) -> FastSpec:
        """The fast-scoring spec (one forward pass, verdict read from next-token probabilities;
        see guardrails_plugin/scoring.py). Families that have one override this."""
        raise NotImplementedError(f"no fast scoring for guard family {self.family!r}")

    def fast_scoring_problem(self, engine: str = "transformers") -> str | None:
        """Why this model cannot be fast-scored on an engine of kind ``engine`` ("transformers",
        "openai"), or None when it can."""
        if type(self).fast_spec is GuardModel.fast_spec:
            return f"the {self.family} family has no fast-scoring spec"
        return None

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
