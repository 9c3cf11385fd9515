"""The new-user transcript: every documentation snippet marked to run is run, offline, as a newcomer
would run it, and its printed output is compared with the output shown under it.

Markers are HTML comments (invisible on GitHub) on the line before a fenced block, in any ``*.md``
of the repository (README.md, integrations/*/README.md, docs/, ...). Unmarked blocks are not run:
they need weights, a GPU or a real server.

- ``<!-- test:run -->`` + a ``python`` block: run. The python blocks of one file run in order in one
  fresh interpreter (later blocks see earlier names), from the repository root, offline
  (``HF_HUB_OFFLINE=1``).
- ``<!-- test:run -->`` + a ``bash`` block: run as one ``bash -e`` script from the repository root
  (the virtualenv's ``bin`` first on PATH); it must exit 0.
- ``<!-- test:output -->`` + a ``text`` block right after a run block: that block's expected stdout,
  line by line (trailing spaces ignored; ``...`` inside a line matches any text).
- ``<!-- test:serve port=N ready=/path -->`` + a ``bash`` block: a server (its last line), started
  in the background before the file's python blocks; the test waits until ``GET /path`` answers.
  ``N`` is swapped for a free port in that block and in the file's python blocks (``:N``, ``--port N``).
- ``<!-- test:guard-config -->`` + a ``yaml`` block: must load with ``GuardConfig.from_yaml``.

Adding a section to a README never breaks this test; marking a snippet makes it part of it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from fake_openai_server import free_port

REPO = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".git", ".venv", "node_modules", ".pytest_cache", "build", "dist"}
_MARKER = re.compile(r"^<!--\s*test:([\w-]+)(.*?)-->\s*$")
_FENCE = re.compile(r"^```(\w*)\s*$")
_SENTINEL = "<<<snippet {} done>>>"


@dataclass
class Block:
    kind: str  # run | output | serve | guard-config
    lang: str
    code: str
    line: int
    args: dict[str, str] = field(default_factory=dict)
    expected: str | None = None  # the output block that follows a run block


def parse(path: Path) -> list[Block]:
    """The marked fenced blocks of a markdown file, outputs attached to their run blocks."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    marker: tuple[str, dict[str, str]] | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        m = _MARKER.match(line.strip())
        fence = _FENCE.match(line)
        if m:
            marker = (m.group(1), dict(a.split("=", 1) for a in m.group(2).split() if "=" in a))
        elif fence and line.strip() != "```":
            j = i + 1
            while j < len(lines) and lines[j].strip() != "```":
                j += 1
            if marker is not None:
                kind, args = marker
                block = Block(kind, fence.group(1), "\n".join(lines[i + 1 : j]) + "\n", i + 1, args)
                if kind == "output":
                    assert blocks and blocks[-1].kind == "run", f"{path}:{i + 1}: output without a run block"
                    blocks[-1].expected = block.code
                else:
                    blocks.append(block)
            marker = None
            i = j
        elif line.strip():
            marker = None  # a marker applies to the very next block only
        i += 1
    return blocks


def marked_files() -> list[Path]:
    found = []
    for p in sorted(REPO.rglob("*.md")):
        if SKIP_DIRS.isdisjoint(p.relative_to(REPO).parts) and "<!-- test:" in p.read_text(encoding="utf-8"):
            found.append(p)
    return found


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", LITELLM_LOCAL_MODEL_COST_MAP="True", TOKENIZERS_PARALLELISM="false",
               LITELLM_TELEMETRY="False", PYTHONUNBUFFERED="1")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _with_port(code: str, old: str, new: int) -> str:
    return re.sub(rf"(:|--port\s+){re.escape(old)}\b", rf"\g<1>{new}", code)


def _line_matches(expected: str, actual: str) -> bool:
    if "..." not in expected:
        return expected == actual
    return re.fullmatch(".*".join(re.escape(p) for p in expected.split("...")), actual) is not None


def assert_output(where: str, expected: str, actual: str) -> None:
    exp = [ln.rstrip() for ln in expected.rstrip("\n").splitlines()]
    act = [ln.rstrip() for ln in actual.rstrip("\n").splitlines()]
    ok = len(exp) == len(act) and all(_line_matches(e, a) for e, a in zip(exp, act, strict=True))
    assert ok, f"{where}: output differs\n--- shown in the docs\n{expected}--- printed\n{actual}"


class Server:
    """A ``test:serve`` block running in the background (its own process group, ended by us)."""

    def __init__(self, block: Block, port: int, log: Path):
        lines = [ln for ln in block.code.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        lines[-1] = "exec " + lines[-1]
        self.log = log
        self.proc = subprocess.Popen(["bash", "-ec", "\n".join(lines)], cwd=REPO, env=_env(),
                                     stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}{block.args.get('ready', '/')}"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited ({self.proc.returncode}):\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(url, timeout=2.0).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise AssertionError(f"{url} not ready:\n{log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the group we started: bash and its exec'd server
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


FILES = marked_files()


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_marked_snippets_run_and_print_what_the_docs_show(path: Path, tmp_path: Path) -> None:
    blocks = parse(path)
    rel = path.relative_to(REPO)
    assert blocks, f"{rel}: markers but no marked block"
    servers: list[Server] = []
    ports: dict[str, int] = {}
    try:
        for b in blocks:
            if b.kind == "serve":
                old = b.args["port"]
                ports[old] = free_port()
                servers.append(Server(Block(b.kind, b.lang, _with_port(b.code, old, ports[old]), b.line, b.args),
                                      ports[old], tmp_path / f"serve-{b.line}.log"))
            elif b.kind == "guard-config":
                from guardrails_plugin import GuardConfig

                cfg_file = tmp_path / f"config-{b.line}.yaml"
                cfg_file.write_text(b.code, encoding="utf-8")
                GuardConfig.from_yaml(cfg_file)  # GuardConfigError names what is wrong
            elif b.kind == "run" and b.lang == "bash":
                r = subprocess.run(["bash", "-ec", b.code], cwd=REPO, env=_env(), capture_output=True,
                                   text=True, timeout=300)
                assert r.returncode == 0, f"{rel}:{b.line}: exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
                if b.expected is not None:
                    assert_output(f"{rel}:{b.line}", b.expected, r.stdout)
            elif b.kind != "run":
                pytest.fail(f"{rel}:{b.line}: unknown marker test:{b.kind}")
        pys = [b for b in blocks if b.kind == "run" and b.lang == "python"]
        if pys:
            script = ""
            for n, b in enumerate(pys):
                code = b.code
                for old, new in ports.items():
                    code = _with_port(code, old, new)
                script += f"{code}\nprint({_SENTINEL.format(n)!r}, flush=True)\n"
            (tmp_path / "transcript.py").write_text(script, encoding="utf-8")
            r = subprocess.run([sys.executable, str(tmp_path / "transcript.py")], cwd=REPO, env=_env(),
                               capture_output=True, text=True, timeout=300)
            outs = r.stdout.split("\n")
            done = [i for i, ln in enumerate(outs) if ln.startswith("<<<snippet ")]
            assert r.returncode == 0 and len(done) == len(pys), (
                f"{rel}: snippet {len(done) + 1} of {len(pys)} (line {pys[len(done)].line if len(done) < len(pys) else '?'}) "
                f"failed\n{r.stdout[-3000:]}\n{r.stderr[-4000:]}"
            )
            start = 0
            for b, end in zip(pys, done, strict=True):
                if b.expected is not None:
                    assert_output(f"{rel}:{b.line}", b.expected, "\n".join(outs[start:end]) + "\n")
                start = end + 1
    finally:
        for s in servers:
            s.stop()


def test_the_offline_paths_stay_documented() -> None:
    """Removing the markers would make the transcript pass by running nothing."""
    def count(rel: str, kind: str, lang: str | None = None, with_output: bool = False) -> int:
        return sum(1 for b in parse(REPO / rel) if b.kind == kind and (lang is None or b.lang == lang)
                   and (not with_output or b.expected is not None))

    assert count("README.md", "run", "python", with_output=True) >= 2
    assert count("README.md", "guard-config") >= 1
    assert count("integrations/langchain/README.md", "run", "python", with_output=True) >= 1
    assert count("integrations/langchain/README.md", "run", "bash") >= 1
    assert count("integrations/litellm/README.md", "serve") >= 1
    assert count("integrations/litellm/README.md", "run", "python", with_output=True) >= 1


def test_parser_conventions(tmp_path: Path) -> None:
    md = tmp_path / "x.md"
    md.write_text("<!-- test:run -->\n```python\nprint(1)\n```\n\n<!-- test:output -->\n```text\n1\n```\n\n"
                  "```python\nunmarked()\n```\n<!-- test:run -->\n\nprose breaks the marker\n```bash\nfalse\n```\n")
    (b,) = parse(md)
    assert (b.kind, b.lang, b.code, b.expected) == ("run", "python", "print(1)\n", "1\n")
    assert _line_matches("...I can't help with that.", "Sure. I can't help with that.")
    assert not _line_matches("block", "allow")
    assert _with_port("url='http://127.0.0.1:4000'; --port 4000; 40001", "4000", 5) == "url='http://127.0.0.1:5'; --port 5; 40001"


def test_make_demo_transcript() -> None:
    """`make demo` runs `guardrails-plugin demo --tiny`: the full pipeline on tiny random models,
    with its warning printed once (it used to print twice)."""
    r = subprocess.run([str(Path(sys.executable).parent / "guardrails-plugin"), "demo", "--tiny"], cwd=REPO,
                       env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    both = r.stdout + r.stderr
    assert both.count("TINY RANDOM MODEL: these verdicts are meaningless") == 1, both
    assert "guard_unparseable" in r.stdout and "fail-closed:" not in both  # no per-example log lines
