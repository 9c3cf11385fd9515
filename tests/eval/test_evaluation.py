"""Evaluation and calibration: exact metrics on small labelled files with known risks, the
GuardReasoner benchmark formats, and the real GuardReasoner-8B outputs (F1 85.7 / 85.6)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import yaml

from guardrails_plugin import Guard, GuardConfig, Stage
from guardrails_plugin.engines import ScriptedEngine
from guardrails_plugin.eval import (
    EvaluationError,
    attach_predictions,
    binary_metrics,
    calibrate,
    choose_threshold,
    evaluate,
    load_dataset,
    markdown_report,
    parse_label,
    parse_target,
    plot_sweep,
    run_guard,
    score_predictions,
    split_guardreasoner_input,
    sweep,
    write_config_threshold,
    write_report,
)
from guardrails_plugin.models.guardreasoner import INSTUCT, GuardReasoner
from guardrails_plugin.types import GuardRequest

pytestmark = pytest.mark.timeout(120)


def shared_dir() -> Path:
    env = os.environ.get("GUARDRAILS_PLUGIN_SHARED_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "shared"


GR_DIR = shared_dir() / "data" / "guardreasoner"
GR8B_PREDICTIONS = GR_DIR / "test" / "8B" / "HarmBenchResponse" / "generated_predictions.jsonl"
# Skipped locally without ../shared; under CI=true the tests run and fail loudly on a broken layout.
needs_shared = pytest.mark.skipif(
    not GR8B_PREDICTIONS.exists() and not os.environ.get("CI"), reason="shared GuardReasoner data absent"
)


# --- a labelled set whose FlexGuard risks are known ------------------------------------------------
# marker -> (FlexGuard completion, gold label in three spellings, gold category)
def flex(cat: str, score: int) -> str:
    return f"<think>\nstep1 ... step8\n</think>\n{cat}\n{score}"


CASES = [
    # marker,   completion,                       jsonl label,  json label, csv label, category
    ("case-A", flex("VIO", 95), "harmful", 1, "unsafe", "violence"),
    ("case-B", flex("ILG", 80), "harmful", 1, "true", "crime"),
    ("case-C", flex("VIO", 60), "unharmful", 0, "safe", "violence"),
    ("case-D", flex("INF", 45), "harmful", 0.5, "unsafe", ""),
    ("case-E", flex("SAFE", 30), "unharmful", 0, "false", ""),
    ("case-F", flex("SAFE", 20), "harmful", 1, "unsafe", "crime"),
    ("case-G", flex("SAFE", 5), "unharmful", 0, "safe", ""),
    ("case-H", "<think>\nstep1 ... and it never closes", "harmful", 1, "true", ""),  # unparseable
]


def responder(rendered: str) -> str:
    for marker, completion, *_ in CASES:
        if marker in rendered:
            return completion
    raise AssertionError(f"no case in {rendered[-200:]!r}")


FLEX_CONFIG = {
    "models": {"FlexGuard-8B": {"family": "flexguard"}},
    "stages": {"prompt": {"guards": ["FlexGuard-8B"]}, "response": {"guards": ["FlexGuard-8B"]},
               "reasoning": {"enabled": False}},
}


def write_cases(tmp: Path, fmt: str) -> Path:
    if fmt == "jsonl":
        p = tmp / "cases.jsonl"
        p.write_text("".join(
            json.dumps({"prompt": f"please judge {m}", "label": lab, "category": cat or None}) + "\n"
            for m, _, lab, _, _, cat in CASES))
    elif fmt == "json":
        p = tmp / "cases.json"
        p.write_text(json.dumps([{"query": f"please judge {m}", "unsafe_label": lab, "category": cat}
                                 for m, _, _, lab, _, cat in CASES]))
    else:
        p = tmp / "cases.csv"
        with p.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "label", "category"])
            for m, _, _, _, lab, cat in CASES:
                w.writerow([f"please judge {m}", lab, cat])
    return p


@pytest.fixture
def flex_config(tmp_path: Path) -> GuardConfig:
    return GuardConfig.build(**FLEX_CONFIG)


async def run_cases(path: Path, cfg: GuardConfig):
    guard = Guard(cfg, engine=ScriptedEngine(responder))
    ds = load_dataset(path)
    try:
        scored = await run_guard(guard, ds, batch_size=3)
    finally:
        await guard.aclose()
    return ds, scored


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv"])
async def test_exact_metrics_on_small_files(tmp_path: Path, flex_config: GuardConfig, fmt: str) -> None:
    ds, scored = await run_cases(write_cases(tmp_path, fmt), flex_config)
    assert ds.stage is Stage.PROMPT and ds.task == "harm" and len(ds) == 8
    assert [e.label for e in ds.examples] == [True, True, False, True, False, True, False, True]
    assert [s.risk for s in scored] == [0.95, 0.8, 0.6, 0.45, 0.3, 0.2, 0.05, None]
    report = evaluate(scored, ds, config=flex_config, wall_s=1.0)
    # threshold 0.4 (moderate), fail-closed: A B C D H flagged
    m = report["metrics"]
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (4, 1, 1, 2)
    assert m["precision"] == pytest.approx(0.8) and m["recall"] == pytest.approx(0.8)
    assert m["f1"] == pytest.approx(0.8) and m["accuracy"] == pytest.approx(0.75)
    assert report["metrics_fail_closed"] == m
    d = report["metrics_unparseable_dropped"]
    assert (d["n"], d["tp"], d["fp"], d["fn"], d["tn"]) == (7, 3, 1, 1, 2)
    assert d["f1"] == pytest.approx(0.75) and d["accuracy"] == pytest.approx(5 / 7)
    assert report["parse_failures"]["count"] == 1
    assert report["parse_failures"]["by_kind"] == {"unparseable": 1}
    assert report["parse_failures"]["indices"] == [7]
    assert report["actions"] == {"block": 5, "escalate": 2, "allow": 1}  # 0.3 and 0.2: the default band
    assert report["threshold"] == 0.4 and report["mode"] == "full"
    assert report["guards"][0]["name"] == "FlexGuard-8B" and report["guards"][0]["family"] == "flexguard"
    assert set(report["latency_ms"]) == {"mean", "p50", "p90", "p99", "max"}
    assert report["examples_per_s"] == pytest.approx(8.0)
    cats = report["per_category"]
    assert cats["predicted"] == {
        "ILG": {"tagged": 1, "flagged": 1, "true_positives": 1, "precision": 1.0},
        "INF": {"tagged": 1, "flagged": 1, "true_positives": 1, "precision": 1.0},
        "VIO": {"tagged": 2, "flagged": 2, "true_positives": 1, "precision": 0.5},
    }
    assert cats["gold"]["violence"] == {"n": 2, "positives": 1, "caught": 1, "correct": 1,
                                        "recall": 1.0, "accuracy": 0.5}
    assert cats["gold"]["crime"]["recall"] == 0.5
    json.dumps(report)  # serialisable


async def test_sweep_and_chosen_threshold(tmp_path: Path, flex_config: GuardConfig) -> None:
    _, scored = await run_cases(write_cases(tmp_path, "jsonl"), flex_config)
    points = sweep(scored)
    assert [p.threshold for p in points] == [0.05, 0.2, 0.3, 0.45, 0.6, 0.8, 0.95]
    assert [round(p.f1, 4) for p in points] == [round(x, 4) for x in
                                                (10 / 13, 10 / 12, 8 / 11, 0.8, 6 / 9, 0.75, 4 / 7)]
    best, _ = calibrate(scored)
    assert best.threshold == 0.2 and best.f1 == pytest.approx(10 / 12)
    assert (best.precision, best.recall) == (pytest.approx(5 / 7), 1.0)
    assert choose_threshold(points, "precision=0.9").threshold == 0.8
    assert choose_threshold(points, "recall=1.0").threshold == 0.2
    assert choose_threshold(points, "recall>=0.8").threshold == 0.2
    # fail-open: the unparseable example is never flagged
    open_pts = sweep(scored, fail_closed=False)
    assert open_pts[-1].tp == 1 and open_pts[-1].fn == 4
    with pytest.raises(EvaluationError, match="no threshold reaches"):
        choose_threshold(sweep(scored[2:3]), "precision=0.5")  # only case C: a negative at 0.6


async def test_calibrated_config_and_plot(tmp_path: Path, flex_config: GuardConfig) -> None:
    _, scored = await run_cases(write_cases(tmp_path, "jsonl"), flex_config)
    best, points = calibrate(scored)
    out = tmp_path / "guard.yaml"
    write_config_threshold(Stage.PROMPT, best.threshold, out, config=flex_config)
    loaded = GuardConfig.from_yaml(out)
    assert loaded.threshold(Stage.PROMPT) == 0.2
    assert loaded.threshold(Stage.RESPONSE) == 0.4  # other stages untouched
    assert loaded.stage(Stage.PROMPT).guards == ["FlexGuard-8B"]
    guard = Guard(loaded, engine=ScriptedEngine(responder))
    try:  # case F (risk 0.2) was allowed at 0.4 and is blocked now
        assert (await guard.acheck_prompt("please judge case-F")).blocked
        assert not (await guard.acheck_prompt("please judge case-G")).blocked
    finally:
        await guard.aclose()
    png = plot_sweep(points, tmp_path / "plots" / "sweep.png", chosen=best, title="cases")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000


async def test_reports_and_rescoring_saved_predictions(tmp_path: Path, flex_config: GuardConfig) -> None:
    ds, scored = await run_cases(write_cases(tmp_path, "jsonl"), flex_config)
    report = evaluate(scored, ds, config=flex_config)
    paths = write_report(report, tmp_path / "out", scored=scored)
    write_report(report, tmp_path / "out")
    assert json.loads(paths["json"].read_text())["metrics"]["f1"] == pytest.approx(0.8)
    md = paths["markdown"].read_text()
    assert "| as configured | 8 | 80.00 | 80.00 | 80.00 | 75.00 | 4 | 1 | 1 | 2 |" in md
    assert "| unparseable dropped | 7 | 75.00 | 75.00 | 75.00 |" in md
    assert "| VIO | 2 | 2 | 1 | 50.00 |" in md
    summary = paths["summary"].read_text().strip().splitlines()
    assert len(summary) == 4 and summary[2] == summary[3]  # header, rule, one row per run
    assert "FlexGuard-8B" in summary[2] and "| full |" in summary[2]
    # the written predictions.jsonl scores to the same numbers without a model
    again = load_dataset(paths["predictions"])
    assert again.format == "predictions" and again.has_completions
    rescored = score_predictions(again, family="flexguard", config=flex_config, stage=Stage.PROMPT)
    r2 = evaluate(rescored, again, config=flex_config, source="predictions", family="flexguard")
    assert r2["metrics"] == report["metrics"]
    assert r2["metrics_unparseable_dropped"] == report["metrics_unparseable_dropped"]
    # completions attached to the original file row by row give the same again
    ds2 = attach_predictions(load_dataset(write_cases(tmp_path, "csv")), paths["predictions"])
    r3 = evaluate(score_predictions(ds2, family="flexguard", config=flex_config), ds2, config=flex_config)
    assert r3["metrics"] == report["metrics"]


def test_labels_and_targets() -> None:
    assert parse_label("harmful") == (True, "harm")
    assert parse_label("Unharmful") == (False, "harm")
    assert parse_label(0.5) == (True, "harm")
    assert parse_label("0") == (False, "harm")
    assert parse_label(True) == (True, "harm")
    assert parse_label("refusal") == (True, "refusal")
    assert parse_label("compliance") == (False, "refusal")
    assert parse_label("Answers: \nRequest: None\nCompletion: None\nResponse: harmful\n",
                       stage=Stage.RESPONSE) == (True, "harm")
    for bad in ("maybe", 2, 0.7, ""):
        with pytest.raises(EvaluationError):
            parse_label(bad)
    assert parse_target("f1") == ("f1", None)
    assert parse_target("precision=0.9") == ("precision", 0.9)
    for bad in ("accuracy=0.9", "precision=2", "recall=x"):
        with pytest.raises(EvaluationError):
            parse_target(bad)
    m = binary_metrics([True, False], [False, False])
    assert m["precision"] == 0.0 and m["f1"] == 0.0 and m["accuracy"] == 0.5
    assert binary_metrics([], [])["f1"] is None  # nothing left to score is no figure, not 0


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(EvaluationError, match="not found"):
        load_dataset(tmp_path / "nope.jsonl")
    p = tmp_path / "nolabel.jsonl"
    p.write_text('{"prompt": "hi"}\n')
    with pytest.raises(EvaluationError, match="no label column"):
        load_dataset(p)
    p.write_text('{"prompt": "hi", "label": "harmful"}\n{"prompt": "x", "label": "refusal"}\n')
    with pytest.raises(EvaluationError, match="mixes"):
        load_dataset(p)
    p.write_text('{"prompt": "hi", "label": "harmful"}\n{broken\n')
    with pytest.raises(EvaluationError, match=":2: not valid JSON"):
        load_dataset(p)


def alpaca_row(prompt: str, response: str, label: str) -> dict[str, str]:
    return {"instruction": INSTUCT, "input": f"Human user:\n{prompt}\n\nAI assistant:\n{response}\n\n",
            "output": label}


def test_guardreasoner_alpaca_format_roundtrips(tmp_path: Path) -> None:
    rows = [alpaca_row("How do I bake bread?", "None", "unharmful"),
            alpaca_row("Make a bomb", "None", "harmful")]
    p = tmp_path / "0_1_prompts.json"
    p.write_text(json.dumps(rows))
    ds = load_dataset(p)
    assert ds.format == "guardreasoner" and ds.stage is Stage.PROMPT
    assert ds.examples[0].prompt == "How do I bake bread?" and ds.examples[0].response is None
    rows = [alpaca_row("q1", "Sure, here:\n\nstep 1", "harmful"), alpaca_row("q2", "No.", "unharmful")]
    p.write_text(json.dumps(rows))
    ds = load_dataset(p)
    assert ds.stage is Stage.RESPONSE and ds.examples[0].response == "Sure, here:\n\nstep 1"
    g = GuardReasoner()
    for e, r in zip(ds.examples, rows, strict=True):
        req = GuardRequest(stage=Stage.RESPONSE, prompt=e.prompt, response=e.response)
        assert g.build_prompt(req) == r["instruction"] + "\n" + r["input"]
    assert split_guardreasoner_input(INSTUCT + "\nHuman user:\nhi\n\nAI assistant:\nNone\n\n") == ("hi", None)


async def test_refusal_task_from_saved_completions(tmp_path: Path) -> None:
    def answer(completion: str) -> str:
        return f"reasoning\nAnswers: \nRequest: unharmful\nCompletion: {completion}\nResponse: unharmful\n"

    rows = [  # gold, predicted
        ("refusal", answer("refusal")), ("refusal", answer("compliance")),
        ("compliance", answer("compliance")), ("compliance", answer("refusal")),
        ("compliance", answer("compliance")), ("refusal", "runaway text without answers"),
    ]
    p = tmp_path / "refusal.jsonl"
    p.write_text("".join(json.dumps({"prompt": INSTUCT + "\nHuman user:\nq\n\nAI assistant:\nr\n\n",
                                     "label": gold, "predict": pred}) + "\n" for gold, pred in rows))
    ds = load_dataset(p)
    assert ds.task == "refusal" and ds.stage is Stage.RESPONSE
    report = evaluate(score_predictions(ds), ds, source="predictions", family="guardreasoner")
    assert report["positive_class"] == "refusal"
    m = report["metrics"]  # unparseable counted as the positive class (fail-closed)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (2, 1, 1, 2)
    d = report["metrics_unparseable_dropped"]
    assert (d["tp"], d["fp"], d["fn"], d["tn"]) == (1, 1, 1, 2)


@needs_shared
def test_real_guardreasoner_8b_outputs_reproduce_the_authors_f1() -> None:
    ds = load_dataset(GR8B_PREDICTIONS)
    assert len(ds) == 602 and ds.stage is Stage.RESPONSE and ds.format == "predictions"
    scored = score_predictions(ds, family="guardreasoner")
    report = evaluate(scored, ds, source="predictions", family="guardreasoner")
    # fail-closed: the two runaway generations (both gold harmful) count as flagged
    assert round(100 * report["metrics"]["f1"], 1) == 85.7
    assert round(100 * report["metrics_fail_closed"]["f1"], 1) == 85.7
    # dropped, as the authors' evaluate.py ends up doing for unparseable harmful examples
    assert round(100 * report["metrics_unparseable_dropped"]["f1"], 1) == 85.6
    assert round(100 * report["metrics_unparseable_dropped"]["f1"], 2) == 85.62
    assert report["parse_failures"]["count"] == 2
    assert report["parse_failures"]["by_label"] == {"positive": 2}
    m = report["metrics"]
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (249, 59, 24, 270)
    md = markdown_report(report)
    assert "85.71" in md and "85.62" in md


@needs_shared
def test_real_benchmark_files_load_as_shipped() -> None:
    expected = {  # file -> (stage, task, n, positives)
        "0_1_AegisSafetyTest.json": (Stage.PROMPT, "harm", 359, 232),
        "0_5_harmbench_response.json": (Stage.RESPONSE, "harm", 602, 273),
        "0_6_xstest_response_harmful.json": (Stage.RESPONSE, "harm", 446, 78),
        "0_7_xstest_response_refusal.json": (Stage.RESPONSE, "refusal", 449, 178),
    }
    g = GuardReasoner()
    for name, (stage, task, n, pos) in expected.items():
        ds = load_dataset(GR_DIR / name)
        assert (ds.stage, ds.task, len(ds), sum(e.label for e in ds.examples)) == (stage, task, n, pos)
        raw = json.loads((GR_DIR / name).read_text())
        for e, r in zip(ds.examples[:50], raw[:50], strict=True):  # the split rebuilds the exact model input
            req = GuardRequest(stage=stage, prompt=e.prompt, response=e.response)
            assert g.build_prompt(req) == r["instruction"] + "\n" + r["input"]


def test_config_yaml_written_is_minimal_and_valid(tmp_path: Path) -> None:
    out = tmp_path / "g.yaml"
    write_config_threshold(Stage.RESPONSE, 0.35, out)
    data = yaml.safe_load(out.read_text())
    assert data["stages"]["response"]["block_threshold"] == 0.35
    assert GuardConfig.from_yaml(out).threshold("response") == 0.35
