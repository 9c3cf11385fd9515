"""The `guardrails-plugin` CLI through typer's CliRunner: check (panel, JSON, exit codes), demo (tiny
random model, missing weights), eval and calibrate (scripted guard with known risks, saved
predictions), serve-engine, the escalations mount.

Guards run on a ScriptedEngine through the CLI's documented test hook ``--scripted-responses``."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from guardrails_plugin import GuardConfig
from guardrails_plugin.cli import app

pytestmark = pytest.mark.timeout(180)

ENV = {"HF_HUB_OFFLINE": "1", "LITELLM_LOCAL_MODEL_COST_MAP": "True", "TOKENIZERS_PARALLELISM": "false",
       "COLUMNS": "160"}


def shared_dir() -> Path:
    env = os.environ.get("GUARDRAILS_PLUGIN_SHARED_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "shared"


GR8B_PREDICTIONS = shared_dir() / "data" / "guardreasoner" / "test" / "8B" / "HarmBenchResponse" / \
    "generated_predictions.jsonl"


def invoke(args: list[str], **env: str):
    return CliRunner().invoke(app, [str(a) for a in args], env={**ENV, **env}, catch_exceptions=False)


def gr_answer(request: str, response: str = "None", completion: str = "None") -> str:
    return f"# Task 1\nreasoning\nAnswers: \nRequest: {request}\nCompletion: {completion}\nResponse: {response}\n"


@pytest.fixture
def gr_rules(tmp_path: Path) -> Path:
    """GuardReasoner completions: harmful when the rendered prompt mentions a bomb."""
    p = tmp_path / "gr.json"
    p.write_text(json.dumps({
        "rules": [{"contains": "bomb", "completion": gr_answer("harmful", "harmful", "compliance")}],
        "default": gr_answer("unharmful", "unharmful", "compliance"),
    }))
    return p


# --- check -----------------------------------------------------------------------------------------

def test_check_json_block_and_allow(gr_rules: Path) -> None:
    r = invoke(["check", "--stage", "prompt", "--prompt", "how do I build a bomb", "--json",
                "--scripted-responses", gr_rules])
    assert r.exit_code == 1, r.output
    d = json.loads(r.stdout)
    assert d["action"] == "block" and d["stage"] == "prompt"
    assert d["verdicts"][0]["guard"] == "GuardReasoner-1B" and d["verdicts"][0]["label"] == "harmful"
    assert d["text"] == "I can't help with that."

    r = invoke(["check", "--stage", "response", "--prompt", "bread?", "--response", "Knead it.",
                "--json", "--scripted-responses", gr_rules])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["action"] == "allow" and d["text"] == "Knead it." and d["verdicts"][0]["refusal"] is False


def test_check_panel_and_fail_closed(gr_rules: Path, tmp_path: Path) -> None:
    r = invoke(["check", "-s", "prompt", "-p", "a bomb please", "--scripted-responses", gr_rules])
    assert r.exit_code == 1 and "BLOCK" in r.stdout and "GuardReasoner-1B" in r.stdout
    garbage = tmp_path / "garbage.json"
    garbage.write_text(json.dumps(["no answers here"]))
    r = invoke(["check", "-s", "prompt", "-p", "hello", "--json", "--scripted-responses", garbage])
    d = json.loads(r.stdout)
    assert r.exit_code == 1 and d["failure"] == "unparseable" and d["reason"].startswith("guard_unparseable")
    cfg = tmp_path / "open.yaml"
    cfg.write_text("fail_mode: open\n")
    r = invoke(["check", "-s", "prompt", "-p", "hello", "--json", "--config", cfg,
                "--scripted-responses", garbage])
    d = json.loads(r.stdout)
    assert r.exit_code == 0 and d["action"] == "allow" and d["degraded"] is True


def test_check_model_option_routes_the_stage(tmp_path: Path) -> None:
    flex = tmp_path / "flex.json"
    flex.write_text(json.dumps(["<think>\nsteps\n</think>\nVIO, ILG\n85"]))
    r = invoke(["check", "-s", "response", "-p", "q", "--response", "a", "--model", "FlexGuard-Qwen3-8B",
                "--json", "--scripted-responses", flex])
    d = json.loads(r.stdout)
    assert r.exit_code == 1 and d["categories"] == ["ILG", "VIO"] and d["risk"] == 0.85
    assert d["verdicts"][0]["guard"] == "FlexGuard-Qwen3-8B"


def test_check_against_an_openai_compatible_server() -> None:
    """--engine openai --base-url: a real HTTP round trip to a server on 127.0.0.1."""
    try:
        from fake_openai_server import FakeOpenAIServer, Reply
    except ImportError:  # pragma: no cover - run from the repo root
        from tests.fake_openai_server import FakeOpenAIServer, Reply

    with FakeOpenAIServer() as srv:
        srv.script(Reply.ok(gr_answer("harmful")), Reply.ok(gr_answer("unharmful")))
        r = invoke(["check", "-s", "prompt", "-p", "build a bomb", "--engine", "openai", "--base-url",
                    srv.base_url, "--json"])
        assert r.exit_code == 1, r.output
        assert json.loads(r.stdout)["verdicts"][0]["label"] == "harmful"
        r = invoke(["check", "-s", "prompt", "-p", "bake bread", "--base-url", srv.base_url, "--json"])
        assert r.exit_code == 0, r.output
        sent = srv.requests[-1]
        assert sent.path.endswith("/completions") and "Human user:\nbake bread" in sent.body["prompt"]


def test_check_usage_and_config_errors(gr_rules: Path, tmp_path: Path) -> None:
    r = invoke(["check", "--stage", "reasoning", "--query", "q", "--scripted-responses", gr_rules])
    assert r.exit_code == 2 and "--reasoning" in r.output
    r = invoke(["check", "--stage", "nonsense", "--prompt", "x"])
    assert r.exit_code == 2
    r = invoke(["check", "-s", "prompt", "-p", "x", "--config", tmp_path / "missing.yaml"])
    assert r.exit_code == 2 and "not found" in r.output
    r = invoke(["check", "-s", "prompt", "-p", "x", "--engine", "openai"])
    assert r.exit_code == 2 and "base_url" in r.output
    r = invoke(["check", "-s", "prompt", "-p", "x", "--model", "NoSuchGuard-9B"])
    assert r.exit_code == 2 and "unknown guard model" in r.output
    r = invoke(["check", "-s", "prompt", "-p", "x", "--model", "ReasoningShield-1B"])
    assert r.exit_code == 2 and "cannot judge the prompt stage" in r.output


def test_check_without_weights_says_how_to_get_them(tmp_path: Path) -> None:
    r = invoke(["check", "-s", "prompt", "-p", "hello"], HF_HOME=str(tmp_path / "hf"))
    assert r.exit_code == 2, r.output
    assert "HF_HUB_OFFLINE" in r.output and "--model-dir" in r.output and "Traceback" not in r.output


# --- demo ------------------------------------------------------------------------------------------

def test_demo_without_weights_fails_clearly(tmp_path: Path) -> None:
    r = invoke(["demo"], HF_HOME=str(tmp_path / "hf"))
    assert r.exit_code == 2, r.output
    assert "hf download" in r.output and "HF_HUB_OFFLINE" in r.output
    assert "demo --tiny" in r.output and "Traceback" not in r.output


def test_demo_scripted_table(gr_rules: Path, tmp_path: Path) -> None:
    rules = json.loads(gr_rules.read_text())
    rules["rules"].append({"contains": "wifi", "completion": '"Analysis": breaks into a network\n"Judgment": 1'})
    rules["rules"].append({"contains": "Query:", "completion": '"Analysis": fine\n"Judgment": 0'})
    f = tmp_path / "demo.json"
    f.write_text(json.dumps(rules))
    r = invoke(["demo", "--json", "--scripted-responses", f])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["stage"] for row in rows] == ["prompt", "prompt", "reasoning", "reasoning", "response", "response"]
    assert [row["action"] for row in rows] == ["allow", "block", "allow", "block", "allow", "allow"]


def test_demo_tiny_runs_the_real_pipeline_and_says_verdicts_are_meaningless() -> None:
    t0 = time.perf_counter()
    r = invoke(["demo", "--tiny"])
    elapsed = time.perf_counter() - t0
    assert r.exit_code == 0, r.output
    assert "TINY RANDOM MODEL" in r.output and "meaningless" in r.output
    for name in ("GuardReasoner-1B", "ReasoningShield-1B"):
        assert name in r.stdout
    # random weights -> unparseable -> fail-closed BLOCK, on every example
    assert r.stdout.count("│ block ") == 6 and "allow" not in r.stdout
    assert r.stdout.count("guard_unparseable") >= 6  # the reason of each of the 6 rows (+ the notice)
    assert elapsed < 60, f"demo --tiny took {elapsed:.1f}s"


# --- eval / calibrate ------------------------------------------------------------------------------

def flex(cat: str, score: int) -> str:
    return f"<think>\nsteps\n</think>\n{cat}\n{score}"


RISKS = [("c1", "VIO", 90, 1), ("c2", "ILG", 70, 1), ("c3", "VIO", 50, 0), ("c4", "SAFE", 35, 1),
         ("c5", "SAFE", 10, 0), ("c6", "SAFE", 0, 0)]


@pytest.fixture
def flex_setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    data = tmp_path / "dev.jsonl"
    data.write_text("".join(json.dumps({"query": f"judge item {m}.", "label": y}) + "\n" for m, _, _, y in RISKS))
    rules = tmp_path / "flex.json"
    rules.write_text(json.dumps({"rules": [{"contains": f"item {m}.", "completion": flex(c, s)}
                                           for m, c, s, _ in RISKS]}))
    cfg = tmp_path / "guard.yaml"
    cfg.write_text(yaml.safe_dump({
        "strictness": "moderate",
        "models": {"FlexGuard-8B": {"family": "flexguard"}},
        "stages": {"prompt": {"guards": ["FlexGuard-8B"]}, "response": {"guards": ["FlexGuard-8B"]},
                   "reasoning": {"enabled": False}},
    }))
    return data, rules, cfg


def test_eval_scripted_exact_metrics_and_outputs(flex_setup: tuple[Path, Path, Path], tmp_path: Path) -> None:
    data, rules, cfg = flex_setup
    out = tmp_path / "results"
    r = invoke(["eval", data, "--stage", "prompt", "--config", cfg, "--batch-size", "2", "--out", out,
                "--json", "--scripted-responses", rules])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    m = rep["metrics"]  # threshold 0.4: c1 c2 c3 flagged
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (2, 1, 1, 2)
    assert m["f1"] == pytest.approx(2 / 3) and m["accuracy"] == pytest.approx(4 / 6)
    assert rep["guards"][0]["name"] == "FlexGuard-8B" and rep["mode"] == "full" and rep["source"] == "guard"
    assert rep["per_category"]["predicted"]["VIO"]["precision"] == 0.5
    assert rep["latency_ms"]["p50"] >= 0
    assert json.loads((out / "results.json").read_text())["metrics"] == m
    assert "| FlexGuard-8B |" in (out / "summary.md").read_text()
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 6
    # the saved predictions score to the same numbers without a model
    r = invoke(["eval", "--predictions", out / "predictions.jsonl", "--family", "flexguard", "--stage",
                "prompt", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["metrics"] == m
    # human-readable output
    r = invoke(["eval", data, "--config", cfg, "--scripted-responses", rules])
    assert r.exit_code == 0 and "66.67" in r.stdout and "confusion matrix" in r.stdout


def test_calibrate_writes_config_and_png(flex_setup: tuple[Path, Path, Path], tmp_path: Path) -> None:
    data, rules, cfg = flex_setup
    out_cfg, png = tmp_path / "calibrated.yaml", tmp_path / "sweep.png"
    r = invoke(["calibrate", data, "--config", cfg, "--write-config", out_cfg, "--plot", png, "--json",
                "--scripted-responses", rules])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    # thresholds 0, .1, .35, .5, .7, .9 -> best F1 6/7 at 0.35 (c1 c2 c3 c4 flagged)
    assert [p["threshold"] for p in res["sweep"]] == [0.0, 0.1, 0.35, 0.5, 0.7, 0.9]
    assert res["chosen"]["threshold"] == 0.35 and res["chosen"]["f1"] == pytest.approx(6 / 7)
    assert GuardConfig.from_yaml(out_cfg).threshold("prompt") == 0.35
    assert GuardConfig.from_yaml(out_cfg).stage("prompt").guards == ["FlexGuard-8B"]
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 5_000
    r = invoke(["calibrate", data, "--config", cfg, "--target", "precision=1.0", "--json",
                "--scripted-responses", rules])
    assert json.loads(r.stdout)["chosen"]["threshold"] == 0.7
    r = invoke(["calibrate", data, "--config", cfg, "--target", "recall=1.0", "--scripted-responses", rules])
    assert r.exit_code == 0 and "0.35" in r.stdout
    r = invoke(["calibrate", data, "--config", cfg, "--target", "bogus", "--scripted-responses", rules])
    assert r.exit_code == 2 and "bad target" in r.output


def test_calibrate_unreachable_target_exits_1(tmp_path: Path) -> None:
    preds = tmp_path / "p.jsonl"
    preds.write_text(json.dumps({"prompt": "a", "label": 0, "predict": flex("VIO", 90)}) + "\n"
                     + json.dumps({"prompt": "b", "label": 1, "predict": flex("SAFE", 10)}) + "\n")
    r = invoke(["calibrate", "--predictions", preds, "--family", "flexguard", "--stage", "prompt",
                "--target", "precision=0.9"])
    assert r.exit_code == 1 and "no threshold reaches precision" in r.output


@pytest.mark.skipif(  # under CI=true a missing ../shared fails loudly instead
    not GR8B_PREDICTIONS.exists() and not os.environ.get("CI"), reason="shared GuardReasoner data absent")
def test_eval_real_guardreasoner_8b_predictions(tmp_path: Path) -> None:
    r = invoke(["eval", "--predictions", GR8B_PREDICTIONS, "--json", "--out", tmp_path])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["stage"] == "response" and rep["family"] == "guardreasoner" and rep["n"] == 602
    assert round(100 * rep["metrics_fail_closed"]["f1"], 1) == 85.7
    assert round(100 * rep["metrics_unparseable_dropped"]["f1"], 1) == 85.6
    md = (tmp_path / "results.md").read_text()
    assert "85.71" in md and "85.62" in md
    r = invoke(["eval", "--predictions", GR8B_PREDICTIONS])
    assert r.exit_code == 0 and "85.71" in r.stdout and "85.62" in r.stdout


def test_eval_data_errors(tmp_path: Path) -> None:
    r = invoke(["eval"])
    assert r.exit_code == 2 and "DATA" in r.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "label": "perhaps"}\n')
    r = invoke(["eval", bad, "--scripted-responses", bad])
    assert r.exit_code == 2 and "unknown label" in r.output


def test_model_dir_resolution(tmp_path: Path) -> None:
    from guardrails_plugin.cli import build_config
    from guardrails_plugin.errors import GuardConfigError
    from guardrails_plugin.types import Stage

    all_stages = [Stage.PROMPT, Stage.REASONING, Stage.RESPONSE]
    for name in ("GuardReasoner-1B", "ReasoningShield-1B"):
        (tmp_path / "models" / name).mkdir(parents=True)
        (tmp_path / "models" / name / "config.json").write_text("{}")
    cfg = build_config(None, stages=all_stages, model_dir=tmp_path / "models")
    assert cfg.models["GuardReasoner-1B"].model == str(tmp_path / "models" / "GuardReasoner-1B")
    assert cfg.models["ReasoningShield-1B"].model == str(tmp_path / "models" / "ReasoningShield-1B")
    # one model folder: used for the guards of its family only
    cfg = build_config(None, stages=all_stages, model_dir=tmp_path / "models" / "ReasoningShield-1B")
    assert cfg.models["ReasoningShield-1B"].model.endswith("ReasoningShield-1B")
    assert cfg.models["GuardReasoner-1B"].model is None
    (tmp_path / "models" / "ReasoningShield-1B" / "config.json").unlink()
    with pytest.raises(GuardConfigError, match="no folder for ReasoningShield-1B"):
        build_config(None, stages=all_stages, model_dir=tmp_path / "models")
    cfg = build_config(None, stages=[Stage.PROMPT], model="GuardReasoner-8B", engine=None,
                       base_url="http://127.0.0.1:9/v1")
    assert cfg.stage("prompt").guards == ["GuardReasoner-8B"]
    assert cfg.models["GuardReasoner-8B"].model == "yueliu1999/GuardReasoner-8B"
    assert cfg.models["GuardReasoner-8B"].engine == "openai"  # --base-url implies the server engine
    assert cfg.stage("response").guards == ["GuardReasoner-1B"]


# --- the rest --------------------------------------------------------------------------------------

def test_serve_engine_prints_vllm_command() -> None:
    r = invoke(["serve-engine", "ReasoningShield-1B", "--port", "8001", "--gpu-memory-utilization", "0.35"])
    assert r.exit_code == 0
    assert r.stdout.strip().startswith("vllm serve ReasoningShield/ReasoningShield-1B --host 127.0.0.1 --port 8001")
    assert "--served-model-name ReasoningShield-1B" in r.stdout and "--enable-prefix-caching" in r.stdout


def test_help_version_and_mounted_commands() -> None:
    r = invoke(["--help"])
    assert r.exit_code == 0
    for cmd in ("check", "demo", "eval", "calibrate", "bench", "serve-engine", "escalations"):
        assert cmd in r.stdout
    assert "--scripted-responses" not in invoke(["check", "--help"]).stdout  # hidden test hook
    assert invoke(["--version"]).stdout.startswith("guardrails-plugin ")
    assert invoke(["escalations", "--help"]).exit_code == 0


def test_bench_measures_the_tiny_model_and_writes_its_report(tmp_path: Path) -> None:
    """`bench` is a typer command like the rest: typed options, a clear error, real numbers."""
    out = tmp_path / "bench"
    r = invoke(["bench", "--batches", "1,2", "--reps", "1", "--monitor-tokens", "64", "--input-tokens", "32",
                "--output-tokens", "2", "--max-full-batch", "2", "--out", out])
    assert r.exit_code == 0, r.output
    report = json.loads((out / "bench.json").read_text())
    (tiny,) = report["results"]
    assert tiny["shape"] == "tiny" and report["args"]["batches"] == [1, 2]
    assert "| verdicts/s | batch 1 | batch 2 |" in (out / "bench.md").read_text()
    bad = CliRunner().invoke(app, ["bench", "--shape", "huge"], env=ENV)
    assert bad.exit_code == 2 and "unknown shape" in bad.output
    assert CliRunner().invoke(app, ["bench", "--batches", "1,x"], env=ENV).exit_code == 2
