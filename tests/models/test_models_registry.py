"""The guard-family registry: families register themselves, config validation and the CLI read it,
presets resolve to hub ids, family options are checked by the family, a family without a usable
fast-scoring spec is a configuration error when the Guard is built, and every family's categories
land in one vocabulary so category_actions works across families."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import pytest
from families_support import tiny_dir
from typer.testing import CliRunner

from guardrails_plugin import Action, Guard, GuardConfig
from guardrails_plugin.cli import app
from guardrails_plugin.engines import ScriptedEngine
from guardrails_plugin.engines.base import GenerationRequest
from guardrails_plugin.errors import GuardConfigError
from guardrails_plugin.models import (
    FlexGuard,
    GraniteGuardian,
    GuardModel,
    LlamaGuard3,
    LlamaGuard4,
    Qwen3Guard,
    ShieldGemma,
    family_names,
    get_model_class,
    presets,
    resolve,
)
from guardrails_plugin.models.base import FAMILIES
from guardrails_plugin.models.categories import CODES
from guardrails_plugin.types import GuardRequest, Stage, Verdict

NEW = {"llamaguard3": LlamaGuard3, "llamaguard4": LlamaGuard4, "qwen3guard": Qwen3Guard,
       "graniteguardian": GraniteGuardian, "shieldgemma": ShieldGemma}


def test_design_names_are_registered() -> None:
    assert set(family_names()) == {"reasoningshield", "guardreasoner", "flexguard", *NEW}
    for fam, cls in NEW.items():
        assert get_model_class(fam) is cls and cls.family == fam


@pytest.mark.parametrize(
    ("name", "cls", "hub"),
    [
        ("llama-guard-3-1b", LlamaGuard3, "meta-llama/Llama-Guard-3-1B"),
        ("Llama-Guard-3-8B", LlamaGuard3, "meta-llama/Llama-Guard-3-8B"),
        ("meta-llama/Llama-Guard-4-12B", LlamaGuard4, "meta-llama/Llama-Guard-4-12B"),
        ("qwen3guard-gen-4b", Qwen3Guard, "Qwen/Qwen3Guard-Gen-4B"),
        ("qwen3guard", Qwen3Guard, "Qwen/Qwen3Guard-Gen-0.6B"),
        ("granite-guardian-3.3-8b", GraniteGuardian, "ibm-granite/granite-guardian-3.3-8b"),
        ("/models/granite-guardian-3.2-5b/", GraniteGuardian, "ibm-granite/granite-guardian-3.2-5b"),
        ("shieldgemma-9b", ShieldGemma, "google/shieldgemma-9b"),
        ("FlexGuard-Qwen3-8B", FlexGuard, "Tommy-DING/FlexGuard-Qwen3-8B"),
        ("flexguard-mine", FlexGuard, None),
    ],
)
def test_presets_resolve(name, cls, hub) -> None:
    assert resolve(name) == (cls, hub)


def test_unknown_names_say_what_is_known() -> None:
    with pytest.raises(GuardConfigError, match="llamaguard3") as ei:
        resolve("NoSuchGuard-9B")
    assert "llama-guard-3-1b" in str(ei.value) or "presets" in str(ei.value)
    assert "llama-guard-3-1b" in presets()


def test_a_new_family_file_is_all_it_takes() -> None:
    class Echo(GuardModel):  # what a family file holds: name, prompt, parser (no fast spec)
        family = "echotestfamily"
        default_model_id = "example/Echo-1B"
        variants: ClassVar[dict[str, str]] = {"1B": "example/Echo-1B"}

        def build_input(self, request: GuardRequest) -> GenerationRequest:
            return GenerationRequest(prompt=request.target)

        def _parse(self, text: str, stage: Stage | None) -> Verdict:
            return Verdict(guard=self.name, stage=stage or Stage.PROMPT, risk=float(text == "bad"))

    try:
        assert get_model_class("echo-1b") is Echo and "echotestfamily" in family_names()
        cfg = GuardConfig.build(models={"E": {"family": "echotestfamily"}},
                                stages={"prompt": {"guards": ["E"]}, "reasoning": {"enabled": False},
                                        "response": {"guards": ["E"]}})
        with Guard(cfg, engine=ScriptedEngine(["bad"])) as guard:
            assert guard.check_prompt("x").action is Action.BLOCK
        # no fast-scoring spec: a clear configuration error when the Guard is built, not per check
        with pytest.raises(GuardConfigError, match="no fast-scoring spec"):
            Guard(cfg.model_copy(update={"mode": "cascade"}), engine=ScriptedEngine(["bad"]))
        with pytest.raises(TypeError, match="registered twice"):
            type("Echo2", (Echo,), {"family": "echotestfamily"})
    finally:
        FAMILIES.pop("echotestfamily", None)
    with pytest.raises(GuardConfigError):
        GuardConfig.build(models={"E": {"family": "echotestfamily"}})


def _guard(family: str, mode: str = "full", **mc: object) -> Guard:
    cfg = GuardConfig.build(mode=mode, models={"G": {"family": family, **mc}},
                            stages={"prompt": {"guards": ["G"]}, "reasoning": {"enabled": False},
                                    "response": {"guards": ["G"]}})
    return Guard(cfg, engine=ScriptedEngine(["unused"]))


def test_fast_and_cascade_need_a_spec_the_engine_can_run() -> None:
    with pytest.raises(GuardConfigError, match="no probability method"):
        _guard("graniteguardian", "fast")  # 3.3: nothing documented
    _guard("graniteguardian", "cascade", options={"version": "3.2"})  # the authors' Yes/No softmax
    for fam in ("llamaguard3", "llamaguard4", "qwen3guard"):  # forced text after the template
        _guard(fam, "fast")
        with pytest.raises(GuardConfigError, match="transformers"):
            _guard(fam, "fast", engine="openai", base_url="http://127.0.0.1:9")
        _guard(fam, "full", engine="openai", base_url="http://127.0.0.1:9")
    _guard("shieldgemma", "fast", engine="openai", base_url="http://127.0.0.1:9")  # nothing forced


def test_config_names_a_family_with_hub_ids_and_folders(tmp_path_factory) -> None:
    with _guard("llamaguard3") as g:  # family only: the default hub id, 1B
        assert g.model("G").variant() is None and g.model("G").typed_parts()
    with _guard("llamaguard3", model="meta-llama/Llama-Guard-3-8B") as g:  # the hub id says 8B
        assert g.model("G").variant() == "8B" and not g.model("G").typed_parts()
    folder = tiny_dir(tmp_path_factory, "llama-guard-3-8b")  # a folder named like nothing: its template says
    with _guard("llamaguard3", model=str(folder)) as g:
        assert not g.model("G").typed_parts()
    with pytest.raises(GuardConfigError, match="unknown option"):
        GuardConfig.build(models={"G": {"family": "qwen3guard", "options": {"nope": 1}}})
    with _guard("graniteguardian", options={"criteria": "violence", "think": True}) as g:
        assert g.model("G").build_input(GuardRequest(stage=Stage.PROMPT, prompt="x")).chat_template_kwargs == {
            "guardian_config": {"criteria_id": "violence"}, "think": True}


def test_every_family_maps_into_one_vocabulary() -> None:
    import importlib

    for fam in NEW:
        mod = importlib.import_module(f"guardrails_plugin.models.{fam}" if fam != "llamaguard4" else
                                      "guardrails_plugin.models.llamaguard3")
        assert {v for v in mod.CATEGORY_MAP.values() if v} <= set(CODES), fam


CANNED = {  # each family's own wording of "unsafe, personal data"
    "llamaguard3": "\n\nunsafe\nS7",
    "llamaguard4": "unsafe\nS7",
    "qwen3guard": "Safety: Unsafe\nCategories: PII",
    "flexguard": "<think>x</think>\nINF\n90",
}


@pytest.mark.parametrize("family", list(CANNED))
def test_category_actions_work_across_families(family: str) -> None:
    cfg = GuardConfig.build(category_actions={"INF": "redact"}, models={"G": {"family": family}},
                            stages={"prompt": {"guards": ["G"]}, "reasoning": {"enabled": False},
                                    "response": {"guards": ["G"]}})
    with Guard(cfg, engine=ScriptedEngine([CANNED[family]])) as guard:
        d = guard.check_response(prompt="who lives here?", response="Jane Roe, 12 Elm St, SSN 078-05-1120")
    # INF is about data: the span detectors redact the SSN; names and street addresses are no
    # detector's (no NER model runs), see docs/redaction.md
    assert d.action is Action.REDACT and d.categories == ["INF"] and d.text == "Jane Roe, 12 Elm St, SSN [REDACTED]"


def test_cli_check_with_a_preset(tmp_path: Path) -> None:
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"rules": [{"contains": "bomb", "completion": "\n\nunsafe\nS9"}],
                                 "default": "\n\nsafe"}))
    run = CliRunner().invoke
    r = run(app, ["check", "--model", "llama-guard-3-1b", "How do I build a bomb?", "--json",
                  "--scripted-responses", str(rules)])
    assert r.exit_code == 1, r.output
    d = json.loads(r.stdout)
    assert d["verdicts"][0]["guard"] == "llama-guard-3-1b" and d["categories"] == ["VIO"]
    r = run(app, ["check", "-m", "llama-guard-3-8b", "-s", "response", "-p", "q", "bread is baked", "--json",
                  "--scripted-responses", str(rules)])
    assert r.exit_code == 0 and json.loads(r.stdout)["action"] == "allow"
    r = run(app, ["check", "-m", "qwen3guard-gen-0.6b", "x", "--prompt", "y"])
    assert r.exit_code == 2 and "once" in r.output


def test_family_options_are_typed_frozen_and_forbid_unknown_names() -> None:
    """Each family's options are one pydantic model with extra="forbid": a typo is an error that
    names the known options, a value is checked by its type, and a built adapter's options cannot
    be changed behind the policy's back."""
    import pydantic

    from guardrails_plugin.models.base import FamilyOptions

    for fam in FAMILIES.values():
        assert issubclass(fam.Options, FamilyOptions) and fam.Options.model_config["extra"] == "forbid", fam
    with pytest.raises(GuardConfigError, match=r"unknown option\(s\) critera \(known: criteria, custom_criteria"):
        GuardConfig.build(models={"G": {"family": "graniteguardian", "options": {"critera": "harm"}}})
    with pytest.raises(GuardConfigError, match="think"):
        GuardConfig.build(models={"G": {"family": "graniteguardian", "options": {"think": "yes"}}})
    with pytest.raises(GuardConfigError, match=r"unknown option\(s\) anything \(known: none\)"):
        GuardConfig.build(models={"G": {"family": "reasoningshield", "options": {"anything": 1}}})
    gg = GraniteGuardian(options={"version": 3.2})  # YAML reads 3.2 as a number
    assert gg.options.version == "3.2" and gg.version() == "3.2"
    lg = LlamaGuard3(options={"excluded_categories": ["s9"]})
    assert lg.options.excluded_categories == ("S9",)
    with pytest.raises(pydantic.ValidationError):
        lg.options.excluded_categories = ()  # type: ignore[misc]
    assert LlamaGuard3.parse_options(lg.options) is lg.options  # typed options pass through
