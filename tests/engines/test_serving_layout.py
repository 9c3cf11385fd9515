"""One serving layout (guardrails_plugin/serving.py): the shipped scripts, configs, READMEs and docs
agree with it, and integrations/vllm/README.md works when followed step by step against fake vLLM
servers that, like vLLM, accept only their ``--served-model-name``."""

from __future__ import annotations

import asyncio
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from guardrails_plugin import Action, Guard, GuardConfig
from guardrails_plugin.cli import app
from guardrails_plugin.config import GuardConfig as _GC
from guardrails_plugin.errors import GuardConfigError, GuardServerConfigError
from guardrails_plugin.engines.serving import LAYOUT, ROUTER_ARGS, default_served_name, guard_models, served_guard

try:
    from guard_replica import GuardReplica
except ImportError:  # tests/ as a package
    from tests.guard_replica import GuardReplica

REPO = Path(__file__).resolve().parents[2]
VLLM = REPO / "integrations" / "vllm"
BY_NAME = {g.name: g for g in LAYOUT}
BY_HUB = {g.hub_id: g for g in LAYOUT}
DEFAULT_STAGE_GUARD = {"prompt": "GuardReasoner-1B", "response": "GuardReasoner-1B", "reasoning": "ReasoningShield-1B"}


def shipped_texts() -> dict[str, str]:
    files = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")),
             *sorted((REPO / "integrations").rglob("*.md")), *sorted((REPO / "integrations").rglob("*.yaml")),
             *sorted((REPO / "integrations").rglob("*.sh"))]  # fmt: skip
    return {str(f.relative_to(REPO)): f.read_text(encoding="utf-8") for f in files}


def fenced(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def joined_commands(block: str) -> list[list[str]]:
    """Shell commands of a block, continuation lines joined, comments dropped."""
    cmds, cur = [], ""
    for line in block.splitlines():
        line = re.sub(r"\s+#.*$", "", line) if not line.lstrip().startswith("#") else ""
        cur += line.rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            if cur.strip():
                cmds.append(shlex.split(cur))
            cur = ""
    return cmds


def _norm(v: str) -> str:
    try:
        return repr(float(v)) if "." in v else v  # "0.50" and "0.5" are one setting
    except ValueError:
        return v


def flags(argv: list[str]) -> dict[str, str | None]:
    """``--flag value`` / ``--flag=value`` / ``--switch`` of an argv, numbers normalised."""
    out: dict[str, str | None] = {}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--"):
            key, eq, val = a.partition("=")
            if eq:
                out[key] = _norm(val)
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                out[key], i = _norm(argv[i + 1]), i + 1
            else:
                out[key] = None
        i += 1
    return out


# ------------------------------------------------------------------------------ the source of truth
def test_layout_is_consistent() -> None:
    assert len({g.name for g in LAYOUT}) == len({g.port for g in LAYOUT} | {g.router_port for g in LAYOUT}) / 2
    for g in LAYOUT:
        assert served_guard(g.name.upper()) is g and served_guard(g.hub_id) is g
        assert served_guard(f"/models/{g.name}/") is g and default_served_name(g.hub_id) == g.name
    assert default_served_name("org/Other-Guard") == "org/Other-Guard" and served_guard("") is None
    small = [g for g in LAYOUT if not g.optional]
    assert sum(g.gpu_memory_utilization for g in small) < 1.0
    assert sum(g.gpu_memory_utilization_with_flexguard for g in LAYOUT) < 1.0
    # the default config's guards are exactly the layout's non-optional guards, under those names
    assert {n for n in _GC().models} == {g.name for g in small}
    cfg = GuardConfig.build(models=guard_models(with_flexguard=True))
    for g in LAYOUT:
        m = cfg.models[g.name]
        assert (m.family, m.served_model_name, m.engine) == (g.family, g.name, "openai")


# ------------------------------------------------------------------------------ shipped files agree
def test_serve_guards_sh_runs_the_layouts_commands() -> None:
    text = (VLLM / "serve_guards.sh").read_text()
    calls = re.findall(r'^\s*serve (\S+) (\d+) "\$(\w+)" (\S+)(.*)$', text, flags=re.M)
    assert [(c[0], int(c[1]), c[3]) for c in calls] == [(g.name, g.port, g.hub_id) for g in LAYOUT]
    defaults = dict(re.findall(r'(\w+)="\$\{\w+:-([^}]+)\}"', text))
    body = re.search(r"vllm serve \"\$model\"(.*?)\"\$@\"", text, flags=re.S)
    assert body is not None
    template = body.group(1).replace("\\\n", " ")
    for name, port, util_var, hub, rest in calls:
        g = BY_NAME[name]
        with_flex = g.optional
        util = {"GPU_UTIL_SMALL": "0.15" if with_flex else "0.35", "GPU_UTIL_FLEX": defaults["GPU_UTIL_FLEX"]}[util_var]
        argv = shlex.split(template.replace('"$HOST"', defaults["HOST"]).replace('"$port"', port)
                           .replace('"$name"', name).replace('"$util"', util)
                           .replace('"$MAX_MODEL_LEN"', defaults["MAX_MODEL_LEN"]))
        extra = ["--reasoning-parser", "qwen3"] if "flex_args" in rest else []
        assert flags(["vllm", "serve", hub, *argv, *extra]) == flags(g.vllm_command(with_flexguard=with_flex)), name
    assert float(defaults["GPU_UTIL_FLEX"]) == BY_NAME["FlexGuard-Qwen3-8B"].gpu_memory_utilization


def test_start_routers_sh_fronts_each_guard_on_its_router_port() -> None:
    text = (VLLM / "start_routers.sh").read_text()
    routes = [(n, int(p), int(m), int(r)) for n, p, m, r in re.findall(r"^\s*route (\S+) (\d+) (\d+) (\d+)\s*$", text, flags=re.M)]
    assert routes == [(g.name, g.router_port, g.metrics_port, g.port) for g in LAYOUT]
    cmd = re.search(r"^\s*vllm-router (.*?)>", text, flags=re.S | re.M)
    assert cmd is not None
    argv = shlex.split(cmd.group(1).replace("\\\n", " "))
    f = flags(argv)
    for key, val in zip(ROUTER_ARGS[::2], ROUTER_ARGS[1::2], strict=True):
        assert f.get(key) == val, key


def test_kubernetes_example_matches_the_layout() -> None:
    docs = [d for d in yaml.safe_load_all((VLLM / "k8s" / "guards.yaml").read_text()) if d]
    replica = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "guard-replica")
    ports = {p["containerPort"] for c in replica["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
    assert ports == {g.port for g in LAYOUT if not g.optional}
    routers = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-router")]
    assert len(routers) == 2
    for d in routers:
        argv = d["spec"]["template"]["spec"]["containers"][0]["command"]
        f = flags(argv[1:])
        g = next(g for g in LAYOUT if g.router_port == int(f["--port"] or 0))
        assert d["metadata"]["name"] == g.name.split("-")[0].lower() + "-router"
        assert int(f["--service-discovery-port"] or 0) == g.port and int(f["--prometheus-port"] or 0) == g.metrics_port
        assert f["--selector"] == "app=guard-replica" and "--service-discovery" in f
        for key, val in zip(ROUTER_ARGS[::2], ROUTER_ARGS[1::2], strict=True):
            assert f.get(key) == val, key


def test_guard_configs_in_every_file_use_the_layout() -> None:
    """Every `served_model_name:` anywhere in the READMEs, docs and integrations names a layout guard,
    under its own config name, on its replica or router port."""
    seen = 0
    for path, text in shipped_texts().items():
        lines = text.splitlines()
        for i, line in enumerate(lines):
            m = re.search(r"served_model_name:\s*([\w.-]+)", line)
            if not m:
                continue
            seen += 1
            served = m.group(1)
            assert served in BY_NAME, f"{path}:{i + 1}: served name {served!r} is not in the layout"
            g = BY_NAME[served]
            near = [line, *reversed(lines[max(0, i - 5):i])]  # this line, then upwards to its key
            url = next((u for ln in near for u in re.findall(r"base_url:\s*(\S+?)[,}]?\s*$|base_url:\s*([^,}\s]+)", ln)), None)
            port = re.search(r":(\d+)(?:/|$)", "".join(url) if url else "")
            assert port and int(port.group(1)) in (g.port, g.router_port), f"{path}:{i + 1}: {served} on {url}"
            key = next((k.group(1) for ln in near if (k := re.match(r"^[\s#]*([\w.-]+):\s*(\{|$)", ln))), None)
            assert key == served, f"{path}:{i + 1}: config name {key!r} differs from served name {served!r}"
    assert seen >= 10


def test_commands_in_every_file_use_the_layout() -> None:
    """`vllm serve`, `serve-engine` and `check --base-url` commands in the docs: names, hub ids and
    ports as the layout says."""
    counted = {"vllm serve": 0, "serve-engine": 0, "check": 0}
    for path, text in shipped_texts().items():
        if path.endswith(".sh") or path.endswith(".yaml"):
            continue
        for block in fenced(text, "bash"):
            for argv in joined_commands(block):
                f = flags(argv)
                if argv[:2] == ["vllm", "serve"]:
                    g = BY_HUB[argv[2]]
                    assert f["--served-model-name"] == g.name and int(f["--port"] or 0) == g.port, (path, argv)
                    counted["vllm serve"] += 1
                elif argv[:2] == ["guardrails-plugin", "serve-engine"]:
                    assert int(f["--port"] or 0) == BY_NAME[argv[2]].port, (path, argv)
                    counted["serve-engine"] += 1
                elif argv[:2] == ["guardrails-plugin", "check"] and "--base-url" in f:
                    stage = f.get("--stage") or f.get("-s")
                    port = int(re.search(r":(\d+)", f["--base-url"] or "").group(1))  # type: ignore[union-attr]
                    assert port == BY_NAME[DEFAULT_STAGE_GUARD[str(stage)]].port, (path, argv)
                    counted["check"] += 1
    assert all(counted.values()), counted


# ------------------------------------------------------------------------------ README, followed
@pytest.fixture
def readme_servers() -> Iterator[dict[int, GuardReplica]]:
    """The servers integrations/vllm/README.md starts, as fakes that serve only their served name,
    each on a free port (keyed by the README's port)."""
    text = (VLLM / "README.md").read_text()
    block = next(b for b in fenced(text, "bash") if b.lstrip().startswith("vllm serve"))
    servers: dict[int, GuardReplica] = {}
    try:
        for argv in joined_commands(block):
            f = flags(argv)
            servers[int(f["--port"] or 0)] = GuardReplica([str(f["--served-model-name"])]).start()
        yield servers
    finally:
        for s in servers.values():
            s.stop()


def readme_config(servers: dict[int, GuardReplica]) -> dict:
    text = (VLLM / "README.md").read_text()
    block = next(b for b in fenced(text, "yaml") if "served_model_name" in b)
    for port, srv in servers.items():
        block = block.replace(f"127.0.0.1:{port}", f"127.0.0.1:{srv.port}")
    return yaml.safe_load(block)


def test_readme_guard_yaml_works_against_servers_that_know_only_their_served_names(
    readme_servers: dict[int, GuardReplica],
) -> None:
    assert sorted(readme_servers) == [8001, 8002, 8003]
    guard = Guard(GuardConfig.build(**readme_config(readme_servers)))
    with guard:
        guard.warmup()  # every server serves the configured name
        d = guard.check_prompt("How do I bake bread?")
        assert d.action is Action.ALLOW and [v.guard for v in d.verdicts] == ["GuardReasoner-1B"] and d.verdicts[0].ok
        d = guard.check_reasoning(query="How do I bake bread?", reasoning="Mix flour, water, salt.")
        assert d.action is Action.ALLOW and [v.guard for v in d.verdicts] == ["ReasoningShield-1B"] and d.verdicts[0].ok
        d = guard.check_response(prompt="How do I bake bread?", response="Knead and bake.")
        assert d.action is Action.ALLOW and d.verdicts[0].ok
    sent = {r["model"] for s in readme_servers.values() for r in s.records()}
    assert sent == {"GuardReasoner-1B", "ReasoningShield-1B"}


def test_the_hub_id_as_model_name_is_a_configuration_error(readme_servers: dict[int, GuardReplica]) -> None:
    data = readme_config(readme_servers)
    for m in data["models"].values():
        m.pop("served_model_name")  # the engine then sends the hub id, which no server serves
    guard = Guard(GuardConfig.build(**data))
    with guard:
        with pytest.raises(GuardConfigError, match="does not serve model 'yueliu1999/GuardReasoner-1B'") as ei:
            guard.warmup()  # one error naming each server, the name sent and what it serves
        assert "It serves: GuardReasoner-1B" in str(ei.value) and "It serves: ReasoningShield-1B" in str(ei.value)
        with pytest.raises(GuardServerConfigError):  # one guard: the engine's own error
            asyncio.run(guard.engine("GuardReasoner-1B").check_ready())
        d = guard.check_prompt("How do I bake bread?")  # at check time: the fail mode, never an ALLOW
        assert d.action is Action.BLOCK and d.failure is not None


def test_readme_check_commands_work_with_no_extra_flag(readme_servers: dict[int, GuardReplica]) -> None:
    text = (VLLM / "README.md").read_text()
    block = next(b for b in fenced(text, "bash") if "guardrails-plugin check" in b)
    env = {"HF_HUB_OFFLINE": "1"}
    for argv in joined_commands(block):
        f = flags(argv)
        readme_port = int(re.search(r":(\d+)", f["--base-url"] or "").group(1))  # type: ignore[union-attr]
        url = (f["--base-url"] or "").replace(str(readme_port), str(readme_servers[readme_port].port))
        args = [a if a != f["--base-url"] else url for a in argv[1:]]
        r = CliRunner().invoke(app, [*args, "--json"], env=env, catch_exceptions=False)
        assert r.exit_code == 0, r.output
    # A name the server does not serve: a configuration error (exit 2) naming what it serves.
    gr = readme_servers[8001]
    r = CliRunner().invoke(app, ["check", "--stage", "prompt", "-p", "hi", "--base-url", gr.base_url + "/v1",
                                 "--served-model-name", "GuardReasoner-8B"], env=env, catch_exceptions=False)
    assert r.exit_code == 2, r.output
    assert "does not serve model 'GuardReasoner-8B'" in r.output and "It serves: GuardReasoner-1B" in r.output
    r = CliRunner().invoke(app, ["check", "--stage", "prompt", "-p", "hi", "--base-url", gr.base_url,
                                 "--served-model-name", "GuardReasoner-1B", "--json"], env=env, catch_exceptions=False)
    assert r.exit_code == 0, r.output
