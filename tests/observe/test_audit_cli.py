# ruff: noqa: F401, F811 - pytest fixtures imported from audit_support / pg_support are parameters here
"""`guardrails-plugin escalations list | show | resolve` on SQLite, PostgreSQL and JSON lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from audit_support import backend, make_guard
from pg_support import pg_server
from typer.testing import CliRunner

from guardrails_plugin.audit import QUERY_KEY, JsonlAuditStore, attach_audit
from guardrails_plugin.cli.escalations import escalations_app

pytestmark = pytest.mark.timeout(120)


@pytest.fixture()
def esc_db(backend: str) -> tuple[str, list[str]]:
    guard = make_guard()
    auditor = attach_audit(guard, path=backend, durability="strict", store_content=True)
    ids = [guard.check(guard.request("reasoning", prompt="q", reasoning=f"thought {i}",
                                     metadata={"user": f"user-{i}"})).request_id for i in range(2)]
    guard.check_prompt("not escalated")
    auditor.close()
    return backend, ids


def test_cli_list_show_resolve(esc_db: tuple[str, list[str]]) -> None:
    db, ids = esc_db
    run = CliRunner().invoke
    r = run(escalations_app, ["list", "--db", db, "--json"])
    assert r.exit_code == 0, r.output
    items = json.loads(r.output)
    assert [i["request_id"] for i in items] == ids and {i["status"] for i in items} == {"pending"}
    eid = items[0]["id"]

    r = run(escalations_app, ["list", "--db", db])
    assert r.exit_code == 0 and "pending" in r.output and "Escalations" in r.output

    r = run(escalations_app, ["show", str(eid), "--db", db])
    assert r.exit_code == 0, r.output
    for want in (ids[0], "thought 0", "reasoning", "user-0", "ReasoningShield-1B"):
        assert want in r.output
    r = run(escalations_app, ["show", str(eid), "--db", db, "--json"])
    shown = json.loads(r.output)
    assert shown["decisions"][0]["request_id"] == ids[0] and shown["decisions"][0]["action"] == "escalate"
    # the question travels with a reasoning record when content is stored
    assert shown["metadata"] == {"user": "user-0", QUERY_KEY: "q"} and shown["verdicts"][0]["rationale"]

    r = run(escalations_app, ["resolve", str(eid), "--approve", "--by", "alice", "--note", "fine", "--db", db])
    assert r.exit_code == 0, r.output
    assert "approved" in r.output and "alice" in r.output

    r = run(escalations_app, ["list", "--db", db, "--status", "approved", "--json"])
    (item,) = json.loads(r.output)
    assert (item["id"], item["resolver"], item["note"]) == (eid, "alice", "fine")
    r = run(escalations_app, ["list", "--db", db, "--json"])
    assert [i["request_id"] for i in json.loads(r.output)] == ids[1:]
    r = run(escalations_app, ["list", "--db", db, "--status", "all", "--json"])
    assert len(json.loads(r.output)) == 2

    r = run(escalations_app, ["resolve", str(eid), "--reject", "--db", db])
    assert r.exit_code == 1  # resolutions are final
    r = run(escalations_app, ["resolve", str(items[1]["id"]), "--reject", "--db", db, "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["status"] == "rejected"
    assert json.loads(r.output)["resolver"]  # defaults to the OS user


def test_cli_errors(esc_db: tuple[str, list[str]], tmp_path: Path) -> None:
    db, _ = esc_db
    run = CliRunner().invoke
    assert run(escalations_app, ["resolve", "1", "--db", db]).exit_code == 2  # neither flag
    assert run(escalations_app, ["resolve", "1", "--approve", "--reject", "--db", db]).exit_code == 2
    assert run(escalations_app, ["resolve", "999", "--approve", "--db", db]).exit_code == 1
    assert run(escalations_app, ["show", "999", "--db", db]).exit_code == 1
    assert run(escalations_app, ["list", "--status", "maybe", "--db", db]).exit_code == 2
    missing = tmp_path / "nope.db"
    assert run(escalations_app, ["list", "--db", str(missing)]).exit_code == 1
    assert not missing.exists()  # the CLI never creates a store
    r = run(escalations_app, ["list", "--db", "postgresql:/typo/db"])
    assert r.exit_code == 2 and "looks like a URL" in r.output  # a configuration error, no file
    # the env var names the store too
    r = run(escalations_app, ["list", "--json"], env={"GUARDRAILS_PLUGIN_AUDIT_DB": db})
    assert r.exit_code == 0 and len(json.loads(r.output)) == 2


def test_cli_on_an_empty_postgres_database_is_no_store(pg_server) -> None:
    r = CliRunner().invoke(escalations_app, ["list", "--db", pg_server.create_db()])
    assert r.exit_code == 1 and "no audit store" in r.output


def test_cli_on_jsonl_store(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    guard = make_guard()
    auditor = attach_audit(guard, path=path, durability="strict")
    e = guard.check_reasoning(query="q", reasoning="r")
    auditor.close()
    run = CliRunner().invoke
    (item,) = json.loads(run(escalations_app, ["list", "--db", str(path), "--json"]).output)
    assert item["request_id"] == e.request_id
    r = run(escalations_app, ["resolve", str(item["id"]), "--reject", "--by", "bob", "--db", str(path)])
    assert r.exit_code == 0 and "rejected" in r.output
    assert JsonlAuditStore(path).get_escalation(item["id"]).status == "rejected"  # type: ignore[union-attr]
