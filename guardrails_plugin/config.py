"""GuardConfig: which guard models judge which stage, on which engine, under which policy.

Sources, highest priority first: keyword arguments, environment variables ``GUARDRAILS_PLUGIN_*``
(nested fields with ``__``, e.g. ``GUARDRAILS_PLUGIN_STAGES__PROMPT__FAIL_MODE=open``), then a
YAML file given to ``GuardConfig.from_yaml`` / ``Guard.from_config``.

``models`` merges with the default model map: an entry named like a default model overrides only
the fields it sets (``ReasoningShield-1B: {engine: openai, base_url: ...}`` keeps its family),
``Name: null`` removes a default, any other name adds a model. Model names match regardless of
case and of ``-`` / ``_`` (environment variable names are case-folded, and shells know no ``-``:
``GUARDRAILS_PLUGIN_MODELS__GUARDREASONER_1B__ENGINE=openai`` overrides ``GuardReasoner-1B``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .engines.breaker import CircuitConfig
from .errors import GuardConfigError
from .models import get_model_class
from .types import Action, Stage

Strictness = Literal["strict", "moderate", "loose"]
FailMode = Literal["closed", "open"]
EngineKind = Literal["transformers", "openai"]
Mode = Literal["full", "fast", "cascade"]
#: "tools": request fields the model reads beside the messages (tool definitions, schemas,
#: predictions, documents, prompt variables), judged like a system message
PromptRole = Literal["system", "developer", "user", "assistant", "tool", "tools"]
#: the default: every role a client can fill is client text (a forged assistant prefill or tool
#: result is a classic jailbreak)
ALL_PROMPT_ROLES: tuple[str, ...] = ("system", "developer", "user", "assistant", "tool", "tools")
RedactStrategy = Literal["redact", "mask", "hash", "type"]
#: the span detectors a ``redaction.detectors`` list may name (redaction/detectors.py maps each onto
#: Presidio recognizers or detect-secrets patterns)
DETECTORS = ("email", "phone", "credit_card", "iban", "ssn", "national_id", "ip", "mac", "url", "secret")

#: FlexGuard's rubric thresholds (risk score 20 / 40 / 60 of 100), used for every guard's risk.
STRICTNESS_THRESHOLDS: dict[str, float] = {"strict": 0.2, "moderate": 0.4, "loose": 0.6}


class GuardModelConfig(BaseModel):
    """One guard model and the engine that runs it."""

    model_config = ConfigDict(extra="forbid")

    family: str = Field(
        description="Guard family (reasoningshield, guardreasoner, flexguard, ...: every registered "
        "adapter); inferred from `model` when that names a known guard."
    )
    model: str | None = Field(
        None, description="Hub id or local folder; defaults to the family's 1B/8B hub id."
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Family settings, checked by the family (Granite Guardian criteria / think, "
        "ShieldGemma guideline, Qwen3Guard controversial_risk, Llama Guard excluded_categories).",
    )
    engine: EngineKind = "transformers"
    base_url: str | list[str] | None = Field(None, description="OpenAI-compatible server(s).")
    served_model_name: str | None = Field(None, description="Model name the server expects.")
    session_header: str | None = Field(
        "x-session-id",
        description="HTTP header carrying a stream's session key, so vllm-router's consistent_hash "
        "policy keeps every check of one stream on one replica (null: send none).",
    )
    api_key: str | None = None
    max_new_tokens: int | None = Field(None, gt=0)
    timeout_s: float = Field(30.0, gt=0, description="Deadline of one guard call.")
    max_input_chars: int = Field(
        24_000, gt=0, description="Longer texts are split into overlapping windows."
    )
    window_overlap_chars: int = Field(1_000, ge=0)
    device: str | None = None
    dtype: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _infer_family(cls, data: Any) -> Any:
        # `{model: /models/GuardReasoner-8B}` says its family in its name.
        if isinstance(data, Mapping) and data.get("family") is None and isinstance(data.get("model"), str):
            try:
                return {**data, "family": get_model_class(data["model"]).family}
            except GuardConfigError:
                pass
        return data

    @field_validator("family")
    @classmethod
    def _known_family(cls, v: str) -> str:
        # The adapter registry decides, so a new family file needs no change here.
        return get_model_class(v).family

    @model_validator(mode="after")
    def _check(self) -> GuardModelConfig:
        try:  # the family knows its options
            get_model_class(self.family).parse_options(self.options)
        except GuardConfigError as exc:
            raise ValueError(str(exc)) from None
        if self.engine == "openai" and not self.base_url:
            raise ValueError("engine 'openai' needs base_url")
        if self.window_overlap_chars >= self.max_input_chars:
            raise ValueError("window_overlap_chars must be smaller than max_input_chars")
        return self


class CustomDetector(BaseModel):
    """A regex of your own, found like a built-in detector's entity."""

    model_config = ConfigDict(extra="forbid")

    pattern: str
    max_chars: int = Field(64, gt=0, description="Longest match: a stream holds back this much.")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"not a regex: {exc}") from None
        return v


class RedactionConfig(BaseModel):
    """How a REDACT edits the text (redaction/): exact spans for data, guard-localised pieces for the rest."""

    model_config = ConfigDict(extra="forbid")

    detectors: list[str] | Literal["auto"] = Field(
        "auto", description="Span detectors for data categories (config.DETECTORS); auto: all of them "
        "when Presidio is installed (the `redaction` extra), else none. Listing any needs Presidio.",
    )
    strategy: RedactStrategy = Field(
        "redact", description="redact: the placeholder; mask: '*' per character; hash: SHA-256; "
        "type: <ENTITY> (a guard-localised piece: <CATEGORY>).",
    )
    custom: dict[str, str | CustomDetector] = Field(
        default_factory=dict, description="Your own detectors: name -> regex (or {pattern, max_chars}).",
    )
    hash_salt: str | None = Field(
        None, repr=False, min_length=16, description="hash: a fixed salt (same value, same hash); default a "
        "random salt per value (Presidio's), so a hashed SSN cannot be found by hashing every SSN.",
    )
    data_categories: list[str] = Field(["INF"], description="Categories about data: spans come from detectors.")
    min_score: float = Field(0.0, ge=0.0, le=1.0, description="Detector results scored below this are ignored.")
    localise: bool = Field(True, description="Judge a flagged window's sentences to redact only the flagged ones.")
    max_pieces: int = Field(16, gt=0, description="Most pieces judged per window (more are merged).")
    hold_chars: int | None = Field(
        None, ge=0, description="Streams: text held back behind the judged end (default: the longest "
        "match of the configured detectors).",
    )
    vault: bool = Field(False, description="Prompt stage: restore the original values in the model's answer.")
    tool_calls: Literal["drop", "edit"] = Field(
        "drop", description="A tool call whose arguments a REDACT touches: dropped (default) or run edited.",
    )

    @field_validator("detectors")
    @classmethod
    def _known(cls, v: Any) -> Any:
        if isinstance(v, list):
            bad = [d for d in v if d not in DETECTORS]
            if bad:
                raise ValueError(f"unknown detector(s) {bad}; known: {list(DETECTORS)}")
        return v


class StageConfig(BaseModel):
    """How one stage is guarded."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    guards: list[str] = Field(default_factory=list, description="Names of entries in `models`.")
    fail_mode: FailMode | None = Field(None, description="Overrides GuardConfig.fail_mode.")
    block_threshold: float | None = Field(None, ge=0.0, le=1.0)
    escalate_threshold: float | None = Field(None, ge=0.0, le=1.0)
    flagged_action: Action = Field(Action.BLOCK, description="Action when risk >= threshold.")
    hold_back: bool | None = Field(
        None,
        description="Streaming: release tokens only after a check covered them "
        "(default: on for the response, off for reasoning).",
    )
    check_every_tokens: int = Field(64, gt=0, description="Streaming check interval.")
    redaction: RedactionConfig = Field(default_factory=RedactionConfig, description="How a REDACT edits text.")


class NotifyConfig(BaseModel):
    """Webhook on escalations (and, if listed, blocks); delivered off the request path (observe/webhooks.py)."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="http(s) URL that receives a POST per event.")
    secret: str | None = Field(
        None, repr=False, description="HMAC-SHA256 key: signs timestamp, delivery id and body (X-Guardrails-Signature)."
    )
    on: list[Literal["escalate", "block"]] = Field(["escalate"])  # pydantic copies the default per instance
    format: Literal["json", "slack"] = "json"
    timeout_s: float = Field(5.0, gt=0, description="Deadline of one delivery attempt.")
    max_retries: int = Field(3, ge=0, description="Retries after a failed attempt (backoff doubles).")
    backoff_s: float = Field(0.5, gt=0, description="Delay before the first retry.")
    queue_size: int = Field(1000, gt=0, description="Events waiting beyond this are dropped and counted.")
    include_content: bool = Field(False, description="Put the judged text in the payload.")
    review_url: str | None = Field(None, description="Base URL of `guardrails-plugin review serve`.")

    @field_validator("url", "review_url")
    @classmethod
    def _http(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError(f"must be an http(s) URL, got {v!r}")
        return v


class AuditConfig(BaseModel):
    """The audit trail and escalation review queue (guardrails_plugin/observe; docs/observability.md)."""

    model_config = ConfigDict(extra="forbid")

    path: str | None = Field(
        None, description="SQLite file, *.jsonl file, or postgresql://user@host:5432/db "
        "(default: $GUARDRAILS_PLUGIN_AUDIT_DB, else ./guardrails_audit.db).",
    )
    sink: Literal["sqlite", "jsonl"] | None = Field(None, description="Force the format of a file path.")
    durability: Literal["background", "strict"] = Field(
        "background", description="strict: on record before the Decision returns; background: batched."
    )
    store_content: bool = Field(False, description="Store the judged text (else only its SHA-256).")
    queue_size: int = Field(10_000, gt=0, description="Background records waiting beyond this are dropped, counted.")
    batch_size: int = Field(256, gt=0, description="Most records per background commit.")
    batch_window_s: float = Field(0.02, ge=0, description="How long the writer lingers to fill a batch.")
    retries: int = Field(3, ge=0, description="Attempts for a batch the store rejects (not for an outage).")
    max_backoff_s: float = Field(5.0, gt=0, description="Longest wait between retries while the store is down.")
    retention_days: float | None = Field(None, gt=0, description="Purge records older than this.")
    content_retention_days: float | None = Field(
        None, gt=0, description="Erase stored text older than this; hashes stay."
    )
    purge_interval_s: float = Field(3600.0, gt=0, description="How often a retention purge runs.")
    pool_size: int = Field(5, gt=0, description="Database connections per process (SQL stores).")
    connect_timeout_s: float = Field(10.0, gt=0, description="PostgreSQL connect / pool checkout timeout.")

    @field_validator("path", mode="before")
    @classmethod
    def _path_str(cls, v: Any) -> Any:
        return str(v) if isinstance(v, Path) else v


def _default_models() -> dict[str, GuardModelConfig]:
    return {
        "GuardReasoner-1B": GuardModelConfig(family="guardreasoner"),
        "ReasoningShield-1B": GuardModelConfig(family="reasoningshield"),
    }


def model_key(name: str) -> str:
    """How model names are compared: case-insensitive, ``-`` / ``_`` / ``.`` / spaces alike."""
    return re.sub(r"[-_.\s]+", "-", name.strip().lower())


def find_model(models: Mapping[str, Any], name: str) -> str | None:
    """The key of ``models`` that ``name`` refers to (exact, else by ``model_key``), or None."""
    if name in models:
        return name
    want = model_key(name)
    return next((k for k in models if model_key(k) == want), None)


def merge_models(entries: Mapping[Any, Any]) -> dict[str, Any]:
    """The default model map with ``entries`` merged in (see the module docstring)."""
    merged: dict[str, Any] = dict(_default_models())
    for name, entry in entries.items():
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"model names must be non-empty strings, got {name!r}")
        key = find_model(merged, name)
        if entry is None:  # explicit removal of a default (or of an entry merged above)
            if key is None:
                raise ValueError(f"models.{name}: null removes a model, but there is no model named {name!r}")
            del merged[key]
            continue
        if isinstance(entry, Mapping):
            base = merged.get(key) if key is not None else None
            if isinstance(base, GuardModelConfig):
                base = base.model_dump(exclude_unset=True)
            fields = dict(entry)
            if isinstance(base, Mapping):
                same_family = "family" not in fields or _family_of(fields["family"]) == _family_of(base.get("family"))
                # another family is another model: it inherits nothing from the entry it replaces
                fields = {**base, **fields} if same_family else fields
            elif fields.get("family") is None and fields.get("model") is None:
                fields["family"] = _family_from_name(name)
            merged[key or name] = fields
        else:  # a ready GuardModelConfig replaces the entry; anything else fails validation
            merged[key or name] = entry
    return merged


def _family_of(value: Any) -> Any:
    try:
        return get_model_class(value).family if isinstance(value, str) else value
    except GuardConfigError:
        return value


def _family_from_name(name: str) -> str:
    try:
        return get_model_class(name).family
    except GuardConfigError:
        raise ValueError(
            f"models.{name}: no `family` given and none follows from the name; "
            "set family: (e.g. guardreasoner, reasoningshield, flexguard)"
        ) from None


def _default_stages() -> dict[Stage, StageConfig]:
    return {
        Stage.PROMPT: StageConfig(guards=["GuardReasoner-1B"]),
        Stage.REASONING: StageConfig(guards=["ReasoningShield-1B"]),
        Stage.RESPONSE: StageConfig(guards=["GuardReasoner-1B"]),
    }


class GuardConfig(BaseSettings):
    """Everything a Guard needs. See the README for a YAML example."""

    model_config = SettingsConfigDict(
        env_prefix="GUARDRAILS_PLUGIN_", env_nested_delimiter="__", extra="forbid"
    )

    strictness: Strictness = "moderate"
    block_threshold: float | None = Field(
        None, ge=0.0, le=1.0, description="Overrides the strictness preset."
    )
    # 0.2 is FlexGuard's "strict" cut: grey verdicts (Qwen3Guard's Controversial, mid-scale
    # ShieldGemma / Granite / FlexGuard scores) under a moderate or loose policy go to a person
    # instead of passing unseen. Without escalation_hold the content still passes; null disables.
    escalate_threshold: float | None = Field(
        0.2, ge=0.0, le=1.0, description="Risks in [escalate, block) escalate instead of allow."
    )
    escalation_hold: bool = Field(False, description="Hold (block) escalated content until reviewed.")
    prompt_roles: list[PromptRole] = Field(
        default_factory=lambda: list(ALL_PROMPT_ROLES), min_length=1,
        description="Client-supplied roles the prompt stage judges (default: all). Narrowing it "
        "passes the dropped roles unjudged: tool (tool results), assistant (replayed or prefilled "
        "assistant turns, their reasoning and tool calls), tools (tool definitions, schemas and "
        "other request fields the model reads).",
    )
    fail_mode: FailMode = "closed"
    category_actions: dict[str, Action] = Field(
        default_factory=dict, description="Per-category action when flagged, e.g. {INF: redact}."
    )
    redact_placeholder: str = "[REDACTED]"
    refusal_message: str = "I can't help with that."
    mode: Mode = Field("full", description="full generation; fast (opt-in) or cascade scoring.")
    cascade_band: tuple[float, float] = Field(
        (0.2, 0.8), description="Fast risks inside this band get a full generation (cascade)."
    )
    models: dict[str, GuardModelConfig] = Field(
        default_factory=_default_models,
        description="Merged with the default models; `Name: null` removes one (module docstring).",
    )
    stages: dict[Stage, StageConfig] = Field(default_factory=_default_stages)
    audit: AuditConfig | None = Field(None, description="Audit trail and review queue (see observe/).")
    notify: NotifyConfig | None = Field(None, description="Webhook on escalations (see observe/webhooks.py).")
    circuit: CircuitConfig = Field(
        default_factory=CircuitConfig, description="Per-engine circuit breaker (see engines/breaker.py)."
    )

    @field_validator("stages", mode="before")
    @classmethod
    def _fill_stages(cls, v: Any) -> Any:
        # A YAML that configures one stage keeps the defaults of the others.
        if isinstance(v, dict):
            merged: dict[Any, Any] = {s: c for s, c in _default_stages().items()}
            for k, c in v.items():
                stage = Stage(k)
                if isinstance(c, dict):  # a partial override keeps the stage's other defaults
                    c = {**merged[stage].model_dump(exclude_unset=True), **c}
                merged[stage] = c
            return merged
        return v

    @field_validator("models", mode="before")
    @classmethod
    def _merge_models(cls, v: Any) -> Any:
        if v is None:  # `models:` with nothing under it keeps the defaults
            return _default_models()
        return merge_models(v) if isinstance(v, Mapping) else v

    @model_validator(mode="after")
    def _check_refs(self) -> GuardConfig:
        for stage, sc in list(self.stages.items()):
            if not sc.enabled:  # a disabled stage may keep default guard names the config dropped
                continue
            found = [find_model(self.models, g) for g in sc.guards]
            missing = [g for g, k in zip(sc.guards, found, strict=True) if k is None]
            if missing:
                raise ValueError(
                    f"stage {stage}: unknown guard model(s) {missing}; models are {sorted(self.models)}"
                )
            if found != sc.guards:  # refer to models by their configured names from here on
                self.stages[stage] = sc.model_copy(update={"guards": found})
            if not sc.guards:
                raise ValueError(f"stage {stage} is enabled but lists no guards")
        lo, hi = self.cascade_band
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError("cascade_band must be 0 <= low <= high <= 1")
        return self

    # -- derived values -----------------------------------------------------------------------
    def stage(self, stage: Stage | str) -> StageConfig:
        return self.stages[Stage(stage)]

    def threshold(self, stage: Stage | str) -> float:
        sc = self.stage(stage)
        if sc.block_threshold is not None:
            return sc.block_threshold
        if self.block_threshold is not None:
            return self.block_threshold
        return STRICTNESS_THRESHOLDS[self.strictness]

    def escalate_at(self, stage: Stage | str) -> float | None:
        sc = self.stage(stage)
        return sc.escalate_threshold if sc.escalate_threshold is not None else self.escalate_threshold

    def fail_mode_for(self, stage: Stage | str) -> FailMode:
        return self.stage(stage).fail_mode or self.fail_mode

    def may_redact(self, stage: Stage | str) -> bool:
        """True when a check of ``stage`` can end in REDACT (its flagged action or a category override)."""
        return self.stage(stage).flagged_action is Action.REDACT or Action.REDACT in self.category_actions.values()

    def hold_back_for(self, stage: Stage | str) -> bool:
        sc = self.stage(stage)
        if sc.hold_back is not None:
            return sc.hold_back
        return Stage(stage) is Stage.RESPONSE  # answer held until checked; reasoning streams first

    # -- loading ------------------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> GuardConfig:
        p = Path(path)
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except FileNotFoundError as exc:
            raise GuardConfigError(f"guard config not found: {p}") from exc
        except yaml.YAMLError as exc:
            raise GuardConfigError(f"guard config {p} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise GuardConfigError(f"guard config {p} must be a mapping, got {type(data).__name__}")
        data.update(overrides)
        return cls.build(**data)

    @classmethod
    def build(cls, **data: Any) -> GuardConfig:
        """Like the constructor, but configuration mistakes raise GuardConfigError."""
        try:
            return cls(**data)
        except ValidationError as exc:
            raise GuardConfigError(f"invalid guard config: {exc}") from exc

    def to_yaml(self, path: str | Path) -> None:
        data = self.model_dump(mode="json", exclude_none=True)
        Path(path).write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")

    def with_model_dir(self, model_dir: str | Path, *, names: list[str] | None = None) -> GuardConfig:
        """A copy whose guard models (all, or ``names``) load from a local folder."""
        models = {
            n: m.model_copy(update={"model": str(model_dir)}) if names is None or n in names else m
            for n, m in self.models.items()
        }
        return self.model_copy(update={"models": models})
