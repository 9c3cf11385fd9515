"""Issue 25, finding 5 on the command line: `escalations show`, `list` (table and --json) and
`resolve --note/--by` with a lone surrogate in the stored metadata, bidi controls and terminal
escape sequences in the content, and arguments that are not UTF-8 (a real process, bytes argv)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from review_support import GREY_WORD, make_guard

from guardrails_plugin import Action
from guardrails_plugin.audit import open_store

pytestmark = pytest.mark.timeout(120)

CONTENT = f"{GREY_WORD} pay 1234\u202e5678\u202c \x1b[2J\x1b[31mRED [bold]x[/bold]"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "audit.db"
    guard = make_guard(audit={"path": str(path), "durability": "strict", "store_content": True})
    try:
        d = guard.check_prompt(CONTENT, metadata={"user": "u-\ud800-broken"})
        assert d.action is Action.ESCALATE
        assert guard.check_prompt(f"{GREY_WORD} a second one").action is Action.ESCALATE
    finally:
        guard.close()
    return path


def cli(db: Path, *args: str | bytes) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "COLUMNS": "200", "PYTHONIOENCODING": "utf-8"}
    return subprocess.run([sys.executable, "-m", "guardrails_plugin.cli", "escalations", *args, "--db", str(db)],
                          capture_output=True, env=env, timeout=90)


def test_show_and_list_with_a_lone_surrogate_and_hidden_characters(db: Path) -> None:
    r = cli(db, "list", "--status", "all", "--json")
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-800:]
    items = json.loads(r.stdout.decode("utf-8"))  # valid UTF-8, valid JSON, for the whole queue
    assert len(items) == 2 and items[0]["metadata"]["user"] == "u-\ud800-broken"  # the same value
    assert b"\\u202e" in r.stdout and "\u202e".encode() not in r.stdout and b"\x1b" not in r.stdout
    r = cli(db, "show", "1", "--json")
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-800:]
    assert json.loads(r.stdout)["content"] == CONTENT
    r = cli(db, "show", "1")
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-800:]
    out = r.stdout.decode("utf-8")
    assert "[U+202E]" in out and "[U+001B]" in out and "\u202e" not in out and "\x1b" not in out
    assert "[bold]x[/bold]" in out  # stored text is never read as Rich markup
    assert "u-\\ud800-broken" in out  # metadata shown as JSON: the surrogate as its escape


def test_resolve_with_arguments_that_are_not_utf8(db: Path) -> None:
    r = cli(db, "resolve", "1", "--approve", "--note", b"ok \xff\xfe caf\xc3\xa9 \xe2\x80\xae", "--by", b"ann \xff")
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-800:]
    assert b"Traceback" not in r.stderr
    store = open_store(str(db))
    try:
        esc = store.get_escalation(1)
    finally:
        store.close()
    assert esc.status == "approved"
    assert esc.note == "ok \ufffd\ufffd café \u202e" and esc.resolver == "ann \ufffd"
    assert "[U+202E]" in r.stdout.decode("utf-8")  # echoed visibly
