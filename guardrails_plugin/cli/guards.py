"""The GuardConfig and Guard the command-line options describe (config file, --model, --model-dir,
--engine, --base-url), the scripted-responses test hook, and the preflight load of the weights."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from ..config import GuardConfig, GuardModelConfig
from ..errors import GuardConfigError, GuardError
from ..types import Stage
from .common import EngineChoice

WEIGHTS_HINT = (
    "Get the weights on a machine with network access, e.g.\n"
    "  hf download yueliu1999/GuardReasoner-1B --local-dir models/GuardReasoner-1B\n"
    "  hf download ReasoningShield/ReasoningShield-1B --local-dir models/ReasoningShield-1B\n"
    "then pass --model-dir models (a folder holding one folder per guard, or one model folder).\n"
    "HF_HUB_OFFLINE=1 forbids downloads; where network is allowed, unset it and transformers fetches\n"
    "the weights into the Hugging Face cache. To see the pipeline without weights: `guardrails-plugin demo --tiny`."
)


def load_scripted_engine(path: Path) -> Any:
    """The ScriptedEngine a ``--scripted-responses`` file describes (test hook, see module doc)."""
    from ..engines import ScriptedEngine

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GuardConfigError(f"scripted responses file not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise GuardConfigError(f"scripted responses file {path} is not JSON: {exc}") from None
    if isinstance(data, list) and data and all(isinstance(x, str) for x in data):
        return ScriptedEngine(data)
    if isinstance(data, dict) and ("rules" in data or "default" in data):
        rules = data.get("rules") or []
        if not all(isinstance(r, dict) and isinstance(r.get("contains"), str)
                   and isinstance(r.get("completion"), str) for r in rules):
            raise GuardConfigError("scripted rules must be {\"contains\": str, \"completion\": str}")
        default = data.get("default")

        def respond(rendered: str) -> str:
            for r in rules:
                if r["contains"] in rendered:
                    return r["completion"]
            if default is None:
                raise RuntimeError("no scripted rule matched and no default")
            return str(default)

        return ScriptedEngine(respond)
    raise GuardConfigError(
        f"scripted responses file {path}: expected a list of strings or {{\"rules\": [...], \"default\": ...}}"
    )


def _model_ref(mc: GuardModelConfig) -> str:
    from ..models import get_model_class

    return mc.model or get_model_class(mc.family).default_model_id


def _stage_guards(cfg: GuardConfig, stages: list[Stage]) -> list[str]:
    names: list[str] = []
    for s in stages:
        for g in cfg.stage(s).guards:
            if g not in names:
                names.append(g)
    return names


def apply_model_dir(cfg: GuardConfig, model_dir: Path, names: list[str]) -> GuardConfig:
    """Point guard models at local weights. ``model_dir`` is one model folder (has config.json),
    used for the guards of its family (or all of ``names`` when its name says no family), or a
    folder of model folders named like the guards (``GuardReasoner-1B/``, ``ReasoningShield-1B/``)."""
    from ..models import get_model_class

    d = Path(model_dir).expanduser()
    if not d.is_dir():
        raise GuardConfigError(f"--model-dir {d} is not a folder")
    models = dict(cfg.models)
    if (d / "config.json").exists():
        try:
            family = get_model_class(d.name).family
        except GuardConfigError:
            family = None
        targets = [n for n in names if family is None or models[n].family == family]
        if not targets:
            raise GuardConfigError(f"--model-dir {d} looks like a {family} model; no guard here uses it")
        for n in targets:
            models[n] = models[n].model_copy(update={"model": str(d)})
    else:
        found = []
        for n in names:
            ref = _model_ref(models[n])
            for cand in (d / n, d / ref.rstrip("/").rsplit("/", 1)[-1], d / ref):
                if (cand / "config.json").exists():
                    models[n] = models[n].model_copy(update={"model": str(cand)})
                    found.append(n)
                    break
        missing = [n for n in names if n not in found]
        if missing:
            raise GuardConfigError(
                f"--model-dir {d} has no folder for {', '.join(missing)} "
                f"(expected e.g. {d / missing[0]}/config.json)"
            )
    return cfg.model_copy(update={"models": models})


def build_config(
    config: Path | None,
    *,
    stages: list[Stage],
    model: str | None = None,
    model_dir: Path | None = None,
    engine: EngineChoice | None = None,
    base_url: str | None = None,
    served_model_name: str | None = None,
) -> GuardConfig:
    """The GuardConfig the CLI options describe (YAML file, then --model, --model-dir, --engine).

    A guard on ``engine: openai`` sends ``--served-model-name``, else its configured
    ``served_model_name``, else the serving layout's name (serving.py: the guard's own name, e.g.
    ``GuardReasoner-1B``, as ``integrations/vllm/serve_guards.sh`` serves it)."""
    from pydantic import ValidationError

    from ..models import get_model_class

    cfg = GuardConfig.from_yaml(config) if config else GuardConfig()
    if model:
        cls = get_model_class(model)
        path = Path(model).expanduser()
        if path.is_dir():
            name, ref = path.name, str(path)
        else:
            name = model.rstrip("/").rsplit("/", 1)[-1]
            ref = next((h for h in cls.variants.values() if h.rsplit("/", 1)[-1].lower() == name.lower()),
                       model if "/" in model else None) or cls.default_model_id
        bad = [s for s in stages if s not in cls.stages]
        if bad:
            raise GuardConfigError(f"{name} cannot judge the {bad[0]} stage")
        models = dict(cfg.models)
        models[name] = GuardModelConfig(family=cls.family, model=ref)  # type: ignore[arg-type]
        new_stages = dict(cfg.stages)
        for s in stages:
            new_stages[s] = new_stages[s].model_copy(update={"guards": [name]})
        cfg = cfg.model_copy(update={"models": models, "stages": new_stages})
    names = _stage_guards(cfg, stages)
    if model_dir is not None:
        cfg = apply_model_dir(cfg, model_dir, names)
    if engine is not None or base_url:
        models = dict(cfg.models)
        for n in names:
            update: dict[str, Any] = {}
            if engine is not None:
                update["engine"] = engine.value
            if base_url:
                update["base_url"] = base_url
                if engine is None:
                    update["engine"] = "openai"  # a server URL means the OpenAI-compatible engine
            try:
                models[n] = GuardModelConfig.model_validate({**models[n].model_dump(), **update})
            except ValidationError as exc:
                msg = "; ".join(e["msg"] for e in exc.errors())
                raise GuardConfigError(f"guard {n}: {msg} (use --base-url with --engine openai)") from None
        cfg = cfg.model_copy(update={"models": models})
    return _with_served_names(cfg, names, served_model_name)


def _with_served_names(cfg: GuardConfig, names: list[str], served_model_name: str | None) -> GuardConfig:
    from ..engines.serving import default_served_name

    served = [n for n in names if cfg.models[n].engine == "openai"]
    if served_model_name and not served:
        raise GuardConfigError("--served-model-name needs a guard on a server (--engine openai --base-url URL)")
    models = dict(cfg.models)
    for n in served:
        name = served_model_name or models[n].served_model_name or default_served_name(n)
        models[n] = models[n].model_copy(update={"served_model_name": name})
    return cfg.model_copy(update={"models": models})


def build_guard(cfg: GuardConfig, scripted: Path | None = None) -> Any:
    from ..guard import Guard

    engine = load_scripted_engine(scripted) if scripted else None
    return Guard(cfg, engine=engine)


def preflight(guard: Any, names: list[str]) -> None:
    """Build (load) the engines of ``names`` now, so missing weights are a clear error instead of
    a fail-closed BLOCK for every example. Like ``Guard.warmup``, this is where a hub id missing
    from the cache may be downloaded (checks never download)."""
    for n in names:
        try:
            guard.engine(n, download=True)
        except GuardConfigError as exc:
            raise GuardConfigError(f"cannot load guard {n}: {exc}\n\n{WEIGHTS_HINT}") from None
        except ImportError as exc:
            raise GuardConfigError(
                f"guard {n} needs an optional dependency ({exc}); "
                "install `pip install 'guardrails-plugin[transformers]'`"
            ) from None


def diagnose_servers(guard: Any, names: list[str]) -> None:
    """After a failed check: raise GuardConfigError (exit 2) when a guard's server does not serve
    the model name sent (HTTP 404), rather than reporting a fail-mode BLOCK. A server that does not
    answer stays a fail-mode decision."""
    for n in names:
        probe = getattr(guard.engine(n), "check_ready", None)
        if probe is None:
            continue
        try:
            asyncio.run(probe())
        except GuardConfigError:
            raise
        except GuardError:
            pass

