"""Start-up: building the guardrail's Guard and refusing to start on anything that would leave the
proxy serving unguarded traffic.

LiteLLM's proxy catches ``ValueError`` / ``TypeError`` from a guardrail's constructor, logs one
ERROR line and starts WITHOUT the guardrail. So every start-up error here is a
``GuardrailStartupError`` (a ``RuntimeError``), which stops the proxy:

* a bad guard config (``build_guard_config``), bad guardrail parameters;
* a ``mode`` that is not ``pre_call`` / ``during_call`` / ``post_call`` (``logging_only``, which
  would only log, ``[pre_call, logging_only]``, a typo such as ``post-call``), checked by LiteLLM's
  own validation and again here, whatever ``LITELLM_STRICT_GUARDRAIL_MODES`` says;
* a proxy config with routes that reach a model without calling any guardrail hook
  (``unguarded_routes``), unless the admin lists them in ``allow_unguarded_routes``.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..config import GuardConfig
from ..errors import GuardConfigError
from ..types import Stage

_ALL_STAGES = (Stage.PROMPT, Stage.REASONING, Stage.RESPONSE)
#: the hooks this guardrail runs in; any other mode would leave traffic unjudged
MODES = frozenset({"pre_call", "during_call", "post_call"})
#: proxy routes that reach a model without running guardrail hooks, and the config that opens them
UNGUARDED_ROUTES: dict[str, str] = {
    "assistants": "assistant_settings (the Assistants API: /v1/assistants, /v1/threads, runs)",
}


class GuardrailStartupError(RuntimeError):
    """The guardrail cannot start (bad config). Deliberately not a ValueError: LiteLLM's proxy
    skips guardrails whose constructor raises ValueError/TypeError and serves traffic unguarded."""


def _resolve_env(value: Any) -> Any:
    # LiteLLM's convention for secrets and paths in proxy configs.
    if isinstance(value, str) and value.startswith("os.environ/"):
        name = value.split("/", 1)[1]
        try:
            return os.environ[name]
        except KeyError:
            raise GuardConfigError(f"guard_config names env var {name!r}, which is not set") from None
    return value


def build_guard_config(
    guard_config: str | Path | Mapping[str, Any] | GuardConfig | None,
    guard_settings: Mapping[str, Any] | None = None,
    fail_mode: str | None = None,
) -> GuardConfig:
    """A GuardConfig from a YAML path, an inline mapping or a ready config, plus overrides."""
    overrides: dict[str, Any] = dict(guard_settings or {})
    if fail_mode is not None:
        overrides["fail_mode"] = fail_mode
    guard_config = _resolve_env(guard_config)
    if isinstance(guard_config, GuardConfig):
        if not overrides:
            return guard_config
        data = guard_config.model_dump()
        data.update(overrides)
        return GuardConfig.build(**data)
    if isinstance(guard_config, Mapping):
        return GuardConfig.build(**{**dict(guard_config), **overrides})
    if guard_config:
        return GuardConfig.from_yaml(guard_config, **overrides)
    return GuardConfig.build(**overrides)


def parse_stages(stages: Iterable[str | Stage] | str | None) -> frozenset[Stage]:
    if stages is None:
        return frozenset(_ALL_STAGES)
    if isinstance(stages, (str, Stage)):
        stages = [stages]
    try:
        return frozenset(Stage(s) for s in stages)
    except ValueError as exc:
        raise GuardConfigError(f"stages must be among prompt, reasoning, response: {exc}") from None


def check_modes(event_hook: Any) -> None:
    """Refuse any ``mode`` but pre_call / during_call / post_call (lists and tag modes included)."""
    if event_hook is None:
        return  # a guardrail built in code without a mode: LiteLLM runs every hook it has
    values: list[Any]
    if hasattr(event_hook, "tags") and hasattr(event_hook, "default"):  # LiteLLM's tag-based Mode
        values = [v for tag in (*event_hook.tags.values(), event_hook.default) if tag is not None
                  for v in (tag if isinstance(tag, list) else [tag])]
    else:
        values = list(event_hook) if isinstance(event_hook, (list, tuple)) else [event_hook]
    names = [str(getattr(v, "value", v)) for v in values]
    bad = [n for n in names if n not in MODES]
    if bad or not names:
        raise GuardConfigError(f"mode must be pre_call, during_call and/or post_call, got {names or event_hook!r}"
                               + (f" ({', '.join(bad)} would leave traffic unjudged)" if bad else ""))


def check_allowed_routes(allowed: Iterable[str] | None) -> frozenset[str]:
    if isinstance(allowed, str) or not all(isinstance(r, str) for r in allowed or ()):
        raise GuardConfigError("allow_unguarded_routes must be a list, e.g. [assistants]")
    unknown = sorted(set(allowed or ()) - set(UNGUARDED_ROUTES))
    if unknown:
        raise GuardConfigError(f"allow_unguarded_routes: unknown route(s) {unknown}; known: {sorted(UNGUARDED_ROUTES)}")
    return frozenset(allowed or ())


def proxy_config_state() -> Mapping[str, Any] | None:
    """The config the running proxy is loading, or None outside a proxy (the guardrail built in
    code). Only read when the proxy module is already imported: importing it here is slow."""
    server = sys.modules.get("litellm.proxy.proxy_server")
    cfg = getattr(server, "proxy_config", None)
    try:
        state = cfg.get_config_state() if cfg is not None else None
    except Exception:
        return None
    return state if isinstance(state, Mapping) else None


def unguarded_routes(config: Mapping[str, Any] | None) -> list[str]:
    """The routes ``config`` opens that reach a model without any guardrail hook."""
    if not config:
        return []
    return [name for name, key in UNGUARDED_ROUTES.items() if config.get(key.split(" ", 1)[0])]


def check_routes(allowed: frozenset[str], config: Mapping[str, Any] | None = None) -> None:
    """Refuse to start when the proxy config opens a hook-less route the admin did not allow."""
    open_ = [r for r in unguarded_routes(config if config is not None else proxy_config_state()) if r not in allowed]
    if open_:
        raise GuardConfigError(
            "the proxy config opens routes that reach a model without calling this guardrail: "
            + "; ".join(f"{r} via {UNGUARDED_ROUTES[r]}" for r in open_)
            + ". Remove them, or list them in allow_unguarded_routes to serve them unguarded")


_FROZEN = False


def freeze_startup_heap() -> None:
    """Move the objects alive at start-up (LiteLLM, the guard models) out of the cyclic collector's
    scans, once per process (``gc.freeze``). Each guarded request allocates a few thousand objects,
    so collections run more often with the guardrail; without this every full collection rescans
    the whole start-up heap (profiled: the largest part of the guardrail's proxy CPU per request,
    benchmarks/litellm_load.py). Frozen objects are never collected: only start-up state is."""
    global _FROZEN
    if not _FROZEN:
        _FROZEN = True
        gc.collect()
        gc.freeze()
