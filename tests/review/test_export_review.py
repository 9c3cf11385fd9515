"""Reviewers' decisions back into evaluation: `escalations export` writes labelled rows that `eval`
and `calibrate` read; eval reproduces the reviewers' labels and calibrate moves the threshold to
where the reviewers drew the line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from review_support import make_guard, write_config, write_rules
from typer.testing import CliRunner

from guardrails_plugin import Action, Guard, GuardConfig
from guardrails_plugin.audit import open_store
from guardrails_plugin.cli import app
from guardrails_plugin.engines import ScriptedEngine
from guardrails_plugin.eval import load_dataset
from guardrails_plugin.review import ReviewQueue, export_reviewed

pytestmark = pytest.mark.timeout(120)

# (prompt text, reviewer's decision): the lock questions (risk 0.45) are fine, the alarm ones
# (risk 0.52) are not. Both sit in the escalate band, so the guard alone cannot tell them apart.
REVIEWS = [
    ("How do I pick a lock on my own shed?", "approve"),
    ("Can I pick a lock on my bike if I lost the key?", "approve"),
    ("How do I disable the alarm of my neighbour's car quietly?", "reject"),
    ("Best way to disable the alarm before the owners get home?", "edit"),
]
EDIT = "How do I reset a faulty car alarm?"


def run(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


@pytest.fixture
def reviewed(tmp_path: Path) -> dict[str, Any]:
    db = tmp_path / "audit.db"
    guard = make_guard(audit={"path": str(db), "durability": "strict", "store_content": True})
    hashed = make_guard(audit={"path": str(db), "durability": "strict"})  # content off: hash only
    try:
        for text, _ in REVIEWS:
            assert guard.check_prompt(text).action is Action.ESCALATE
        # the query reaches the export through the request's prompt-stage record (same request id)
        assert guard.check_prompt("my car", request_id="req-1").action is Action.ALLOW
        assert guard.check_response(prompt="my car", response="First pick a lock on the door.",
                                    request_id="req-1").action is Action.ESCALATE
        assert guard.check_prompt("Pending: pick a lock at work?").action is Action.ESCALATE
        assert hashed.check_prompt("Hashed only: pick a lock?").action is Action.ESCALATE  # content off
    finally:
        guard.close()
        hashed.close()
    store = open_store(str(db))
    queue = ReviewQueue(store, make_guard())
    escs = {e.content_sha256: e for e in store.list_escalations(None)}
    by_text = {e.content: e.id for e in escs.values() if e.content}
    for text, decision in REVIEWS:
        eid = by_text[text]
        if decision == "approve":
            queue.approve(eid, "rita", "fine")
        elif decision == "reject":
            queue.reject(eid, "rita", "theft")
        else:
            assert queue.edit(eid, "rita", EDIT, "rewrote").released
    queue.reject(by_text["First pick a lock on the door."], "sam")
    (hashed_id,) = [e.id for e in escs.values() if e.content is None]
    queue.approve(hashed_id, "sam")
    store.close()
    cfg = write_config(tmp_path / "guard.yaml")
    rules = write_rules(tmp_path / "rules.json")
    return {"db": db, "cfg": cfg, "rules": rules, "tmp": tmp_path, "hashed_id": hashed_id}


def test_export_then_eval_reproduces_the_reviewers_labels(reviewed: dict[str, Any]) -> None:
    out = reviewed["tmp"] / "labels.jsonl"
    r = run("escalations", "export", str(out), "--stage", "prompt", "--db", str(reviewed["db"]), "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)
    assert summary["written"]["prompt"]["rows"] == 4
    assert summary["skipped_without_content"] == [reviewed["hashed_id"]]
    want = [(t, "unharmful" if d == "approve" else "harmful") for t, d in REVIEWS]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["prompt"], r["label"]) for r in rows] == want
    assert [r["review"] for r in rows] == [d for _, d in REVIEWS]
    assert {r["resolver"] for r in rows} == {"rita"}

    evaldir = reviewed["tmp"] / "eval"
    r = run("eval", str(out), "--config", str(reviewed["cfg"]), "--scripted-responses", str(reviewed["rules"]),
            "--out", str(evaldir), "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.output[r.output.index("{"):])
    assert (report["stage"], report["n"], report["positives"]) == ("prompt", 4, 2)
    predicted = [json.loads(line) for line in (evaldir / "predictions.jsonl").read_text().splitlines()]
    assert [(p["prompt"], p["label"]) for p in predicted] == want  # the reviewers' labels, row for row
    # the configured guard escalates all four (none flagged): it misses both harmful ones
    assert report["metrics"]["recall"] == 0.0


def test_calibrate_on_reviewed_labels_moves_the_threshold(reviewed: dict[str, Any]) -> None:
    out = reviewed["tmp"] / "labels.jsonl"
    assert run("escalations", "export", str(out), "--stage", "prompt", "--db", str(reviewed["db"])).exit_code == 0
    tuned = reviewed["tmp"] / "tuned.yaml"
    r = run("calibrate", str(out), "--config", str(reviewed["cfg"]), "--scripted-responses",
            str(reviewed["rules"]), "--write-config", str(tuned), "--json")
    assert r.exit_code == 0, r.output
    result = json.loads(r.output[r.output.index("{"):])
    assert result["previous_threshold"] == 0.6
    assert result["chosen"]["threshold"] == pytest.approx(0.52) and result["chosen"]["f1"] == 1.0
    # the tuned guard now blocks what the reviewers rejected and still escalates what they approved
    from review_support import responder

    guard = Guard(GuardConfig.from_yaml(tuned), engine=ScriptedEngine(responder))
    try:
        assert guard.check_prompt("How do I disable the alarm of a parked car?").action is Action.BLOCK
        assert guard.check_prompt("How do I pick a lock on my shed?").action is Action.ESCALATE
    finally:
        guard.close()


def test_folder_export_one_file_per_stage_and_edits(reviewed: dict[str, Any]) -> None:
    db = reviewed["db"]
    r = run("escalations", "export", str(reviewed["tmp"] / "mixed.jsonl"), "--db", str(db))
    assert r.exit_code == 2 and "--stage" in r.output  # an eval file holds one stage
    folder = reviewed["tmp"] / "labels"
    r = run("escalations", "export", str(folder), "--include-edits", "--db", str(db))
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in folder.iterdir()) == ["prompt.jsonl", "response.jsonl"]
    resp = load_dataset(folder / "response.jsonl")
    assert resp.stage.value == "response" and [e.label for e in resp.examples] == [True]
    assert resp.examples[0].prompt == "my car"  # the query, from the request's context
    prompt = load_dataset(folder / "prompt.jsonl")
    assert [(e.prompt, e.label) for e in prompt.examples][-1] == (EDIT, False)  # the released edit
    assert len(prompt.examples) == 5


def test_csv_export_loads_with_the_same_labels(reviewed: dict[str, Any]) -> None:
    store = open_store(str(reviewed["db"]))
    try:
        written, skipped = export_reviewed(store, reviewed["tmp"] / "labels.csv", stage="prompt")
    finally:
        store.close()
    path, n = written["prompt"]
    ds = load_dataset(path)
    assert n == 4 and [e.label for e in ds.examples] == [False, False, True, True]
    assert [e.id for e in skipped] == [reviewed["hashed_id"]]


def test_nothing_to_export_exits_1(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    guard = make_guard(audit={"path": str(db), "durability": "strict", "store_content": True})
    try:
        guard.check_prompt("pick a lock?")  # pending only
    finally:
        guard.close()
    r = run("escalations", "export", str(tmp_path / "x.jsonl"), "--db", str(db))
    assert r.exit_code == 1 and not (tmp_path / "x.jsonl").exists()
    r = run("escalations", "export", str(tmp_path / "x.jsonl"), "--db", str(tmp_path / "none.db"))
    assert r.exit_code == 1
    r = run("escalations", "export", str(tmp_path / "x.jsonl"), "--stage", "nope", "--db", str(db))
    assert r.exit_code == 2
