"""build_tiny_model: offline, loadable, faithful special tokens / templates / EOS conventions."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from guardrails_plugin.testing import LLAMA3_SPECIAL_TOKENS, QWEN3_ADDED_TOKENS, build_tiny_model  # noqa: E402

MSGS = [
    {"role": "system", "content": "You are a Risk Auditor."},
    {"role": "user", "content": "Query: hi\nThought: ok"},
]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("fixture", ["tiny_llama_dir", "tiny_qwen3_dir"])
def test_folder_is_small_and_loads_offline(fixture, request, monkeypatch):
    path: Path = request.getfixturevalue(fixture)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    names = {p.name for p in path.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= names
    total = sum(p.stat().st_size for p in path.iterdir())
    assert 100_000 < total < 3_000_000
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    assert model.config.vocab_size == len(tok)
    assert model.config.max_position_embeddings == 4096
    import torch

    with torch.no_grad():
        logits = model(**tok("hello world", return_tensors="pt")).logits
    assert logits.shape[-1] == len(tok)


def test_llama_conventions(tiny_llama_dir):
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    assert type(model).__name__ == "LlamaForCausalLM"
    decoder = tok.added_tokens_decoder
    ids = [tok.convert_tokens_to_ids(t) for t in LLAMA3_SPECIAL_TOKENS]
    assert all(
        decoder[i].content == t and decoder[i].special
        for i, t in zip(ids, LLAMA3_SPECIAL_TOKENS, strict=False)
    )
    assert ids == sorted(ids) and ids == list(range(ids[0], ids[0] + len(ids)))  # upstream order
    assert tok.bos_token == "<|begin_of_text|>" and tok.eos_token == "<|eot_id|>"
    assert tok.pad_token == "<|finetune_right_pad_id|>"
    assert tok("hi")["input_ids"][0] == tok.bos_token_id  # Llama-3 prepends BOS on encode
    eos = set(model.generation_config.eos_token_id)
    assert eos == {tok.convert_tokens_to_ids(t) for t in ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")}
    text = tok.apply_chat_template(
        MSGS, tokenize=False, add_generation_prompt=True, date_string="26 Jul 2024"
    )
    assert text == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
        "You are a Risk Auditor.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
        "Query: hi\nThought: ok<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    # No system message: the header is still there, with an empty system text.
    text = tok.apply_chat_template(
        MSGS[1:], tokenize=False, add_generation_prompt=False, date_string="1 Jan 2025"
    )
    assert text.startswith(
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
        "Today Date: 1 Jan 2025\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>"
    )
    assert text.endswith("Thought: ok<|eot_id|>")


def test_qwen3_conventions(tiny_qwen3_dir):
    tok = AutoTokenizer.from_pretrained(tiny_qwen3_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen3_dir)
    assert type(model).__name__ == "Qwen3ForCausalLM"
    added = tok.get_added_vocab()
    ids = [added[t] for t, _ in QWEN3_ADDED_TOKENS]
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    decoder = tok.added_tokens_decoder
    assert all(decoder[added[t]].special == sp for t, sp in QWEN3_ADDED_TOKENS)  # <think> is not special
    assert {"<|im_start|>", "<|im_end|>"} <= set(tok.all_special_tokens)
    assert tok.bos_token is None and tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert tok("hi")["input_ids"][0] != added["<|endoftext|>"]  # no BOS
    assert list(model.generation_config.eos_token_id) == [added["<|im_end|>"], added["<|endoftext|>"]]
    on = tok.apply_chat_template(MSGS, tokenize=False, add_generation_prompt=True, enable_thinking=True)
    off = tok.apply_chat_template(MSGS, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    default = tok.apply_chat_template(MSGS, tokenize=False, add_generation_prompt=True)
    base = (
        "<|im_start|>system\nYou are a Risk Auditor.<|im_end|>\n"
        "<|im_start|>user\nQuery: hi\nThought: ok<|im_end|>\n<|im_start|>assistant\n"
    )
    assert on == default == base
    assert off == base + "<think>\n\n</think>\n\n"
    # History: the last assistant turn after the last query keeps its reasoning block.
    hist = MSGS + [{"role": "assistant", "content": "<think>\nhmm\n</think>\n\nfine"}]
    assert tok.apply_chat_template(hist, tokenize=False).endswith(
        "<|im_start|>assistant\n<think>\nhmm\n</think>\n\nfine<|im_end|>\n"
    )


def test_deterministic_given_seed(tmp_path):
    a = build_tiny_model(tmp_path / "a", "qwen3", seed=3)
    b = build_tiny_model(tmp_path / "b", "qwen3", seed=3)
    c = build_tiny_model(tmp_path / "c", "qwen3", seed=4)
    for name in ("tokenizer.json", "model.safetensors", "config.json"):
        assert _digest(a / name) == _digest(b / name)
    assert _digest(a / "model.safetensors") != _digest(c / "model.safetensors")
    assert _digest(a / "tokenizer.json") == _digest(c / "tokenizer.json")


def test_rejects_unknown_family(tmp_path):
    with pytest.raises(ValueError):
        build_tiny_model(tmp_path, "gpt2")  # type: ignore[arg-type]
