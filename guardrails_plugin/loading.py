"""Which engine runs each configured guard model, and where its weights come from.

Guard models whose engines would be identical share one (``engine_key``). Weights are resolved
once, local files first (``resolve_weights``): a folder, else the hub id's snapshot in the Hugging
Face cache. Only ``Guard.warmup()`` may download (``download=True``), so the hub's retries never
sit on a check's path; ``HF_HUB_OFFLINE=1`` forbids downloads everywhere.

``ModelPool`` holds the adapters and engines a Guard's checks use; the runner is handed the pool,
so a check never climbs back up to the facade. This sits above config, models and engines (it
reads all three), so engines never import the configuration.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from pathlib import Path
from typing import Any

from .config import GuardConfig, GuardModelConfig, find_model
from .engines import Engine, as_engine
from .engines.breaker import BreakerEngine, CircuitBreaker
from .engines.scripted import ScriptedEngine
from .errors import GuardConfigError
from .models import GuardModel, families, get_model_class

__all__ = ["ModelPool", "build_engine", "describe_engine", "engine_key", "hub_offline", "resolve_weights"]

log = logging.getLogger("guardrails_plugin")

#: what a guard checkpoint needs from a hub repo (no duplicate .bin / original/ weights)
WEIGHT_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "tokenizer*"]
_TRUTHY = {"1", "ON", "YES", "TRUE"}


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
        return ("openai", urls, cfg.served_model_name or _model_ref(cfg, model), cfg.api_key, cfg.session_header)
    return ("transformers", _model_ref(cfg, model), cfg.device, cfg.dtype)


def describe_engine(cfg: GuardModelConfig, model: GuardModel) -> str:
    """The engine for logs: kind, URLs or weights, served model name; never the API key."""
    key = engine_key(cfg, model)
    return f"openai {','.join(key[1])} model={key[2]}" if key[0] == "openai" else f"transformers {key[1]}"


def hub_offline() -> bool:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE, read now (huggingface_hub caches it at import)."""
    return any(os.environ.get(v, "").strip().upper() in _TRUTHY for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _looks_like_path(ref: str) -> bool:
    return ref.startswith((".", "/", "~")) or ref.count("/") > 1 or "\\" in ref or Path(ref).expanduser().exists()


def resolve_weights(ref: str, *, download: bool = False, name: str | None = None) -> str:
    """A local folder holding the weights ``ref`` names: the folder itself, else the hub id's
    snapshot in the Hugging Face cache; with ``download`` (and HF_HUB_OFFLINE unset) the hub id is
    downloaded into the cache first. Raises one short GuardConfigError naming the model, what was
    tried and how to fix it."""
    who = f"guard model {name!r} ({ref})" if name and name != ref else f"guard model {ref!r}"
    local = Path(ref).expanduser()
    if local.is_dir():
        return str(local)
    if _looks_like_path(ref):
        raise GuardConfigError(f"{who}: folder {str(local)!r} does not exist. Point `model:` at a folder "
                               "holding the checkpoint (config.json, *.safetensors, tokenizer files).")
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        return str(snapshot_download(ref, local_files_only=True))
    except HFValidationError as exc:
        raise GuardConfigError(f"{who}: not a folder and not a valid hub id ({exc})") from None
    except Exception:  # noqa: BLE001 - not cached; decide below whether to fetch it
        pass
    cache = constants.HF_HUB_CACHE
    fix = (f"Fix: where there is network, `hf download {ref} --local-dir /models/{ref.rsplit('/', 1)[-1]}`, "
           "then set the guard's `model:` to that folder")
    if hub_offline():
        raise GuardConfigError(f"{who}: not in the Hugging Face cache ({cache}) and HF_HUB_OFFLINE is set, "
                               f"so it is not downloaded. {fix}.")
    if not download:
        raise GuardConfigError(f"{who}: not in the Hugging Face cache ({cache}); checks never download. "
                               f"{fix}, or call guard.warmup() once with network access to fetch it into the cache.")
    try:
        return str(snapshot_download(ref, allow_patterns=WEIGHT_FILES))
    except Exception as exc:  # noqa: BLE001 - network, auth, missing repo: one line, no traceback
        why = str(exc).strip().splitlines()
        raise GuardConfigError(f"{who}: download from the Hugging Face hub failed ({type(exc).__name__}: "
                               f"{why[0] if why else ''}). {fix}; HF_HUB_OFFLINE=1 skips the attempt.") from None


def build_engine(cfg: GuardModelConfig, model: GuardModel, *, download: bool = False) -> Engine:
    """The engine a GuardModelConfig describes. ``download``: a hub id missing from the cache may
    be fetched (``Guard.warmup``); otherwise only local files are used (see ``resolve_weights``)."""
    ref = _model_ref(cfg, model)
    if cfg.engine == "openai":
        from .engines.openai_engine import OpenAIEngine

        assert cfg.base_url is not None
        return OpenAIEngine(
            cfg.base_url,
            model=cfg.served_model_name or ref,
            api_key=cfg.api_key,
            timeout_s=cfg.timeout_s,
            session_header=cfg.session_header,
        )
    from .engines.transformers import TransformersEngine

    folder = resolve_weights(ref, download=download, name=model.name)
    # named after the hub id / folder, not the cache's snapshot hash
    return TransformersEngine(folder, device=cfg.device, dtype=cfg.dtype, name=ref.rstrip("/").rsplit("/", 1)[-1])


class ModelPool:
    """The configured guard models' adapters and engines, built on first use and shared.

    Built by the Guard and handed to the runner, so a check asks the pool, never the facade.
    ``engine`` (an ``engine=`` override) replaces the configured engine of every guard model.
    Engines sit behind their circuit breakers when ``config.circuit.enabled``.
    """

    def __init__(self, config: GuardConfig, *, engine: Engine | None = None):
        self.config = config
        self._models: dict[str, GuardModel] = {}
        self._engines: dict[tuple[Any, ...], Engine] = {}
        self._lock = threading.RLock()  # two first checks at once must not load the weights twice
        #: the override, completed to the Engine protocol now (a TypeError for an object that is
        #: no engine) and wrapped in its circuit breaker on first use
        self._given: Engine | None = as_engine(engine) if engine is not None else None
        if isinstance(self._given, ScriptedEngine):  # a rules engine answers in our families' formats
            self._given.use_families(families().values())
        self._override: Engine | None = None

    def model(self, name: str) -> GuardModel:
        """The adapter of the configured guard model ``name`` (names match case-insensitively)."""
        found = self._models.get(name)
        if found is not None:
            return found
        key = find_model(self.config.models, name)
        if key is None:
            raise GuardConfigError(f"no guard model named {name!r} in the config")
        if key not in self._models:
            mc = self.config.models[key]
            model_dir = mc.model if mc.model and Path(mc.model).is_dir() else None
            # from_config: model id, family options, and a GuardConfigError now (not per check) when
            # mode fast/cascade meets a family without a fast-scoring spec for this engine
            self._models[key] = get_model_class(mc.family).from_config(
                key, mc, mode=self.config.mode, model_dir=model_dir, max_new_tokens=mc.max_new_tokens)
        return self._models[key]

    def engine(self, name: str, *, download: bool = False) -> Engine:
        """The engine that runs guard model ``name``; see ``Guard.engine``."""
        with self._lock:
            if self._given is not None:
                if self._override is None:
                    self._override = self._with_breaker(self._given)
                return self._override
            model = self.model(name)
            mc = self.config.models[model.name]
            key = engine_key(mc, model)
            if key not in self._engines:
                self._engines[key] = self._with_breaker(build_engine(mc, model, download=download))
            return self._engines[key]

    async def aengine(self, name: str) -> Engine:
        """``engine(name)``, built in a worker thread on first use: loading weights takes seconds
        and must not stall the caller's event loop."""
        if self._override is not None:
            return self._override
        model = self.model(name)
        built = self._engines.get(engine_key(self.config.models[model.name], model))
        return built if built is not None else await asyncio.to_thread(self.engine, name)

    def describe(self, name: str) -> str:
        """The engine of guard model ``name`` for logs; never raises, never the API key."""
        if self._given is not None:
            return self._given.name
        try:
            model = self.model(name)
            return describe_engine(self.config.models[model.name], model)
        except GuardConfigError:
            return "?"

    def _with_breaker(self, engine: Engine) -> Engine:
        cc = self.config.circuit
        if not cc.enabled:
            return engine
        return BreakerEngine(engine, CircuitBreaker.from_config(engine.name, cc))

    def built(self) -> list[Engine]:
        """The engines built so far (the override, or one per distinct configuration)."""
        return [self._override] if self._override is not None else list(self._engines.values())

    def circuit_breakers(self) -> list[CircuitBreaker]:
        return [e.breaker for e in self.built() if isinstance(e, BreakerEngine)]

    async def aclose(self) -> None:
        """Close every engine built (an override even when no check used it: it was handed over)."""
        engines = [self._override or self._given] if self._given is not None else self.built()
        for e in engines:
            try:
                await e.aclose()
            except Exception:
                log.exception("closing engine %s failed", e.name)
        self._engines.clear()
