"""The guard-family registry: what config validation, the CLI and the runner look families up in.

Families register themselves (``GuardModel.__init_subclass__`` in base.py) when their module is
imported; ``guardrails_plugin.models`` imports every family module, so importing this module (which
imports that package first) sees them all. Adding a family is one new file plus its import there.

Presets are the names people type (``guardrails-plugin check --model llama-guard-3-1b``): the last
part of every hub id a family lists in ``variants``, lower-cased, and the family name itself (its
default hub id). ``resolve`` turns a preset, a hub id or a local folder into (class, hub id).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import GuardConfigError
from .base import FAMILIES, GuardModel


def families() -> dict[str, type[GuardModel]]:
    """Family name -> adapter class, in registration order."""
    return dict(FAMILIES)


def family_names() -> list[str]:
    return list(FAMILIES)


def presets() -> dict[str, tuple[type[GuardModel], str]]:
    """Preset name -> (adapter class, hub id)."""
    out: dict[str, tuple[type[GuardModel], str]] = {}
    for fam, cls in FAMILIES.items():
        out.setdefault(fam, (cls, cls.default_model_id))
        for hub in (cls.default_model_id, *cls.variants.values()):
            out.setdefault(hub.rsplit("/", 1)[-1].lower(), (cls, hub))
    return out


def _base(ref: str) -> str:
    return ref.strip().replace("\\", "/").rstrip("/").rsplit("/", 1)[-1].lower()


def resolve(name: str) -> tuple[type[GuardModel], str | None]:
    """(adapter class, hub id) for a family name, a preset (``llama-guard-3-1b``), a hub id
    (``meta-llama/Llama-Guard-3-8B``) or a local folder named like one (``models/Llama-Guard-3-8B``).
    The hub id is None when only the family is known (a folder named ``qwen3guard-mine``).
    Case-insensitive; GuardConfigError if nothing matches."""
    if not isinstance(name, str) or not name.strip():
        raise GuardConfigError(f"guard model name must be a non-empty string, got {name!r}")
    key = name.strip().lower()
    table = presets()
    for cls in FAMILIES.values():  # a full hub id
        for hub in (cls.default_model_id, *cls.variants.values()):
            if key == hub.lower():
                return cls, hub
    base = _base(key)
    if base in table:
        return table[base]
    # Older naming: a folder or name that starts with the family name ("flexguard-8b").
    for fam, cls in FAMILIES.items():
        if base.startswith((fam + "-", fam + "_")):
            return cls, None
    known = ", ".join(FAMILIES)
    examples = ", ".join(sorted(k for k in table if k not in FAMILIES)[:6])
    raise GuardConfigError(f"unknown guard model {name!r} (families: {known}; presets e.g. {examples})")


def get_model_class(family_or_name: str) -> type[GuardModel]:
    """The adapter class for a family ("guardreasoner"), a preset or model name ("GuardReasoner-8B",
    "llama-guard-3-1b") or a hub id ("yueliu1999/GuardReasoner-8B"); case-insensitive. Raises
    GuardConfigError if unknown."""
    return resolve(family_or_name)[0]


def check_family(family: Any) -> str:
    """``family`` as a registered family name (config's ``family:`` field); ValueError listing the
    known families otherwise (pydantic reports it as a validation error)."""
    if isinstance(family, str) and family.strip().lower() in FAMILIES:
        return family.strip().lower()
    raise ValueError(f"unknown guard family {family!r}; known families: {', '.join(FAMILIES)}")


def parse_options(family: str, options: Mapping[str, Any]) -> Any:
    """The family's typed ``Options`` for ``options``; ValueError naming the bad option."""
    try:
        return FAMILIES[family].parse_options(options)
    except GuardConfigError as exc:
        raise ValueError(str(exc)) from None


__all__ = ["check_family", "parse_options", "families", "family_names", "get_model_class", "presets", "resolve"]
