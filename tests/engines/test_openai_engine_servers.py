"""OpenAIEngine against real server processes: the vLLM launch command and launcher, and a real
``transformers serve`` process with a tiny local model (offline, 127.0.0.1 only). The misbehaving
loopback server cases are in test_openai_engine.py.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_openai_server import dead_url, free_port

from guardrails_plugin.engines.base import GenerationRequest
from guardrails_plugin.engines.openai_engine import OpenAIEngine
from guardrails_plugin.engines.vllm_launcher import (
    LaunchedServer,
    launch_server,
    vllm_serve_command,
)
from guardrails_plugin.errors import FailureKind, GuardConfigError, GuardEngineError, GuardTimeoutError

CHAT = GenerationRequest(
    messages=({"role": "system", "content": "sys"}, {"role": "user", "content": "hello"}),
    chat_template_kwargs={"enable_thinking": True},
    max_new_tokens=16,
)




# ------------------------------------------------------------------------------ vllm command
def test_vllm_serve_command() -> None:
    cmd = vllm_serve_command(
        "ReasoningShield/ReasoningShield-1B",
        port=8001,
        gpu_memory_utilization=0.35,
        max_model_len=8192,
        served_model_name="ReasoningShield-1B",
    )
    assert cmd == [
        "vllm", "serve", "ReasoningShield/ReasoningShield-1B",
        "--host", "127.0.0.1", "--port", "8001",
        "--gpu-memory-utilization", "0.35", "--max-model-len", "8192",
        "--served-model-name", "ReasoningShield-1B", "--enable-prefix-caching",
    ]  # fmt: skip
    cmd = vllm_serve_command(
        "m", port=1, gpu_memory_utilization=1.0, max_model_len=1, served_model_name="s",
        enable_prefix_caching=False, extra=("--reasoning-parser", "qwen3"),
    )  # fmt: skip
    assert "--enable-prefix-caching" not in cmd and cmd[-2:] == ["--reasoning-parser", "qwen3"]
    for bad in (
        {"gpu_memory_utilization": 0.0},
        {"gpu_memory_utilization": 1.5},
        {"port": 0},
        {"max_model_len": 0},
        {"served_model_name": ""},
        {"extra": "--x"},
    ):
        kw: dict[str, object] = dict(
            port=1, gpu_memory_utilization=0.3, max_model_len=8, served_model_name="s"
        )
        kw.update(bad)
        with pytest.raises(GuardConfigError):
            vllm_serve_command("m", **kw)  # type: ignore[arg-type]


def test_launch_server_reports_early_exit(tmp_path: Path) -> None:
    cmd = [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"]
    with pytest.raises(GuardEngineError, match="exited with code 3"):
        launch_server(cmd, dead_url(), ready_timeout_s=10, log_path=tmp_path / "log.txt")


def test_launch_server_that_never_answers_raises_the_timeout_error(tmp_path: Path) -> None:
    cmd = [sys.executable, "-c", "import time; print('starting', flush=True); time.sleep(30)"]
    with pytest.raises(GuardTimeoutError, match="not ready after") as ei:
        launch_server(cmd, dead_url(), ready_timeout_s=0.5, log_path=tmp_path / "log.txt")
    assert ei.value.kind is FailureKind.TIMEOUT and "starting" in str(ei.value)  # the log tail is kept


# ------------------------------------------------------------------------------ (a) transformers serve
def _transformers_cli() -> str | None:
    exe = Path(sys.executable).with_name("transformers")
    if exe.exists():
        return str(exe)
    return shutil.which("transformers")


#: what the scripted tiny Qwen3 answers to any chat turn: a think block, then a verdict
SCRIPTED_THINK, SCRIPTED_ANSWER = "step", "SAFE\n7"


def _script_think_block(model_dir: Path) -> None:
    """Make the random-weight model answer a chat turn with ``<think>step</think>SAFE<|im_end|>``.

    A generation-config ``sequence_bias`` of +100 on each (previous token, next token) pair of that
    chain overrides the random logits, so the real server really generates a think block and its
    Qwen3 response parser really splits it into ``reasoning_content``. The chain starts from the
    last token of the generation prompt (``assistant\n``)."""
    import json

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    prompt_ids = tok.apply_chat_template(
        [{"role": "user", "content": "x"}], add_generation_prompt=True, tokenize=True, enable_thinking=True
    )
    if isinstance(prompt_ids, dict) or hasattr(prompt_ids, "keys"):
        prompt_ids = prompt_ids["input_ids"]
    # Tri-grams, not pairs: a token that occurs twice in the chain ("\n") must not have two
    # competing successors.
    chain = [int(prompt_ids[-2]), int(prompt_ids[-1]), tok.convert_tokens_to_ids("<think>")]
    chain += tok.encode(SCRIPTED_THINK, add_special_tokens=False)
    chain += [tok.convert_tokens_to_ids("</think>")]
    chain += tok.encode(SCRIPTED_ANSWER, add_special_tokens=False)
    chain += [tok.convert_tokens_to_ids("<|im_end|>")]
    path = model_dir / "generation_config.json"
    cfg = json.loads(path.read_text())
    for key in ("temperature", "top_k", "top_p"):
        cfg.pop(key, None)
    cfg["do_sample"] = False
    cfg["sequence_bias"] = [[[a, b, c], 100.0] for a, b, c in zip(chain, chain[1:], chain[2:], strict=False)]
    path.write_text(json.dumps(cfg, indent=2))


@pytest.fixture(scope="session")
def tiny_served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LaunchedServer, str]]:
    """A real ``transformers serve`` on 127.0.0.1 serving a tiny Qwen3 (random weights, local
    tokenizer). Skips when transformers serve or its serving extras are missing."""
    cli = _transformers_cli()
    if cli is None:
        pytest.skip("`transformers` CLI not installed")
    try:
        help_out = subprocess.run([cli, "serve", "--help"], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"`transformers serve --help` failed: {exc}")
    if help_out.returncode != 0:
        pytest.skip("`transformers serve` unavailable: " + (help_out.stderr or help_out.stdout)[-300:])
    for mod in ("fastapi", "uvicorn", "accelerate"):
        try:
            __import__(mod)
        except ImportError:
            pytest.skip(f"`transformers serve` needs {mod} (pip install 'transformers[serving]' accelerate)")
    try:
        from guardrails_plugin.testing import build_tiny_model
    except ImportError:
        pytest.skip("guardrails_plugin.testing.build_tiny_model not available")
    root = tmp_path_factory.mktemp("tserve")
    model_dir = root / "tiny-qwen3"
    build_tiny_model(model_dir, family="qwen3")
    _script_think_block(model_dir)
    hub_cache = root / "hub-cache"
    hub_cache.mkdir()
    port = free_port()
    env = {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_CACHE": str(hub_cache),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "OMP_NUM_THREADS": "1",
    }
    cmd = [cli, "serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    server = launch_server(
        cmd, f"http://127.0.0.1:{port}", ready_timeout_s=120, env=env, log_path=root / "serve.log"
    )
    try:
        yield server, str(model_dir)
    finally:
        server.stop()


async def test_transformers_serve_chat(tiny_served: tuple[LaunchedServer, str]) -> None:
    server, model = tiny_served
    e = OpenAIEngine(server.base_url + "/v1", model=model, timeout_s=60)
    reqs = [
        GenerationRequest(messages=({"role": "user", "content": f"hi {i}"},), max_new_tokens=6,
                          chat_template_kwargs={"enable_thinking": False})
        for i in range(2)
    ]  # fmt: skip
    out = await e.generate(reqs)
    assert len(out) == 2 and all(isinstance(o, str) for o in out)
    assert e.stats["failures"] == 0
    await e.aclose()


async def test_transformers_serve_think_block_is_reassembled(
    tiny_served: tuple[LaunchedServer, str],
) -> None:
    """transformers serve splits Qwen3's think block into reasoning_content; the engine puts it back."""
    server, model = tiny_served
    e = OpenAIEngine(server.base_url, model=model, timeout_s=60)
    req = GenerationRequest(
        messages=({"role": "user", "content": "is this safe?"},),
        chat_template_kwargs={"enable_thinking": True},
        max_new_tokens=16,
    )
    (out,) = await e.generate([req])
    assert out == f"<think>{SCRIPTED_THINK}</think>{SCRIPTED_ANSWER}"
    await e.aclose()


async def test_transformers_serve_rejects_prefill(tiny_served: tuple[LaunchedServer, str]) -> None:
    """transformers serve has no continue_final_message: a clear, immediate engine error."""
    server, model = tiny_served
    e = OpenAIEngine(server.base_url, model=model, timeout_s=60)
    req = GenerationRequest(messages=({"role": "user", "content": "q"},), assistant_prefix="<think>")
    with pytest.raises(GuardEngineError, match="continue_final_message") as ei:
        await e.generate([req])
    assert getattr(ei.value, "status_code", None) == 422 and e.stats["retries"] == 0
    await e.aclose()


async def test_transformers_serve_completions(tiny_served: tuple[LaunchedServer, str]) -> None:
    server, model = tiny_served
    e = OpenAIEngine(server.base_url, model=model, timeout_s=60)
    (out,) = await e.generate([GenerationRequest(prompt="Human user: hi\nAnswers:", max_new_tokens=5)])
    assert isinstance(out, str)
    await e.aclose()


async def test_transformers_serve_unknown_model_is_an_engine_error(
    tiny_served: tuple[LaunchedServer, str],
) -> None:
    server, _ = tiny_served
    e = OpenAIEngine(server.base_url, model="/no/such/model", timeout_s=30, max_retries=0)
    with pytest.raises(GuardEngineError):
        await e.generate([CHAT])
    await e.aclose()


def test_guard_end_to_end_through_transformers_serve(tiny_served: tuple[LaunchedServer, str]) -> None:
    """Guard -> FlexGuard adapter -> OpenAIEngine -> a real `transformers serve` -> parser -> policy.

    The tiny Qwen3's generation config is biased to write a FlexGuard answer (think block, SAFE, 7),
    so the verdict is a real parse of what came over HTTP, not a fail-mode outcome."""
    from guardrails_plugin import Action, Guard, GuardConfig

    server, model = tiny_served
    cfg = GuardConfig.build(
        models={"FlexGuard": {"family": "flexguard", "engine": "openai", "base_url": server.base_url,
                              "served_model_name": model, "max_new_tokens": 32, "timeout_s": 60}},
        stages={"prompt": {"guards": ["FlexGuard"]}, "reasoning": {"enabled": False},
                "response": {"guards": ["FlexGuard"]}},
    )
    with Guard(cfg) as guard:
        d = guard.check_prompt("is this safe?")
        assert d.action is Action.ALLOW, d
        (v,) = d.verdicts
        assert v.parse_ok and v.guard == "FlexGuard" and v.label == "SAFE"
        assert v.risk == pytest.approx(0.07) and v.rationale == SCRIPTED_THINK


def test_guards_with_different_api_keys_do_not_share_an_engine() -> None:
    from guardrails_plugin import Guard, GuardConfig, GuardModelConfig

    url = "http://127.0.0.1:9"
    cfg = GuardConfig(
        models={
            "a": GuardModelConfig(family="guardreasoner", engine="openai", base_url=url, served_model_name="m",
                                  api_key="key-a"),
            "b": GuardModelConfig(family="guardreasoner", engine="openai", base_url=url, served_model_name="m",
                                  api_key="key-b"),
            "c": GuardModelConfig(family="guardreasoner", engine="openai", base_url=url, served_model_name="m",
                                  api_key="key-a"),
        },
        stages={"prompt": {"guards": ["a", "b", "c"]}, "reasoning": {"enabled": False},
                "response": {"enabled": False}},
        circuit={"enabled": False},
    )
    guard = Guard(cfg)
    assert guard.engine("a").api_key == "key-a" and guard.engine("b").api_key == "key-b"
    assert guard.engine("a") is guard.engine("c")  # identical configs still share
    guard.close()
