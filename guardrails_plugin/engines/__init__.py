"""Engines produce guard completions: in-process transformers, an OpenAI-compatible server (vLLM,
SGLang, ``transformers serve``), or canned outputs for tests.

Heavy engines are imported lazily so ``import guardrails_plugin`` does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import Engine, GenerationRequest, render_plain
from .scripted import ScriptedEngine

if TYPE_CHECKING:
    from ..config import GuardModelConfig
    from ..models.base import GuardModel
    from .openai_engine import OpenAIEngine
    from .transformers_engine import TransformersEngine

__all__ = [
    "Engine",
    "GenerationRequest",
    "OpenAIEngine",
    "ScriptedEngine",
    "TransformersEngine",
    "build_engine",
    "engine_key",
    "render_plain",
]


def __getattr__(name: str) -> Any:
    if name == "TransformersEngine":
        from .transformers_engine import TransformersEngine

        return TransformersEngine
    if name == "OpenAIEngine":
        from .openai_engine import OpenAIEngine

        return OpenAIEngine
    raise AttributeError(name)


def _model_ref(cfg: GuardModelConfig, model: GuardModel) -> str:
    """The configured folder / hub id, else the hub id of the size the guard's name says
    ("GuardReasoner-8B" -> yueliu1999/GuardReasoner-8B), else the family default."""
    if cfg.model:
        return cfg.model
    name = model.name.lower()
    for size, hub_id in model.variants.items():
        if name.endswith("-" + size.lower()):
            return hub_id
    return model.default_model_id


def engine_key(cfg: GuardModelConfig, model: GuardModel) -> tuple[Any, ...]:
    """Guard models whose engines would be identical share one engine (one copy of the weights)."""
    if cfg.engine == "openai":
        urls = tuple(cfg.base_url) if isinstance(cfg.base_url, list) else (cfg.base_url,)
        # The api_key is part of the identity: a guard configured with its own key must not be
        # sent with another guard's (the engine holds one Authorization header).
        return ("openai", urls, cfg.served_model_name or _model_ref(cfg, model), cfg.api_key)
    return ("transformers", _model_ref(cfg, model), cfg.device, cfg.dtype)


def build_engine(cfg: GuardModelConfig, model: GuardModel) -> Engine:
    """The engine a GuardModelConfig describes."""
    ref = _model_ref(cfg, model)
    if cfg.engine == "openai":
        from .openai_engine import OpenAIEngine

        assert cfg.base_url is not None
        return OpenAIEngine(
            cfg.base_url,
            model=cfg.served_model_name or ref,
            api_key=cfg.api_key,
            timeout_s=cfg.timeout_s,
        )
    from .transformers_engine import TransformersEngine

    return TransformersEngine(ref, device=cfg.device, dtype=cfg.dtype)
