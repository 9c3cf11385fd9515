"""Tiny offline models for tests and examples.

``build_tiny_model(path, family=...)`` writes a complete Hugging Face model folder (tokenizer +
random-weight causal LM + generation config) that loads with ``AutoTokenizer.from_pretrained(path)``
/ ``AutoModelForCausalLM.from_pretrained(path)`` without any network. The weights are random, so
completions are gibberish; what is faithful is everything the engines and guard adapters depend on:
the family's real special tokens (same names, same relative order), its real chat template, its
BOS/EOS/pad conventions and its generation-config EOS ids. That lets tests exercise rendering,
tokenisation, special-token injection defences, batching and stopping as they run against the real
guards. ``script_completion`` then makes a tiny model write one chosen completion (a guard verdict),
so a parser downstream reads real generated text.

Families (``FAMILIES``): ``llama`` (Llama-3.2 Instruct: ReasoningShield, GuardReasoner), ``qwen3``
(FlexGuard), and each new guard's own tokenizer + chat template: ``llama-guard-3-1b``,
``llama-guard-3-8b``, ``llama-guard-4``, ``qwen3guard``, ``granite-guardian-3.3``,
``granite-guardian-3.0``, ``shieldgemma``. Architectures are tiny stand-ins of the real ones (Llama
Guard 4's is a plain Llama: its tokenizer and template are what the tests need).

Heavy imports (torch, transformers, tokenizers) happen inside the functions so that importing this
module stays cheap.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import guard_templates as gt
from .chat_templates import LLAMA32_CHAT_TEMPLATE, QWEN3_CHAT_TEMPLATE
from .tokenizers import LLAMA3_SPECIAL_TOKENS, QWEN3_ADDED_TOKENS, Kind, train_tokenizer

Family = str


@dataclass(frozen=True)
class _Spec:
    kind: Kind
    template: str
    arch: str  # llama | qwen3 | granite | gemma2
    bos: str | None
    eos: str
    pad: str
    eos_ids: tuple[str, ...]  # generation-config EOS tokens
    sampling: dict[str, Any] = field(default_factory=dict)  # upstream defaults (engines force greedy)
    guard: bool = True  # trained on the guard-prompt corpus too


_LLAMA_EOS = ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")
_LLAMA_SAMPLING = {"temperature": 0.6, "top_p": 0.9}

FAMILIES: dict[str, _Spec] = {
    "llama": _Spec("llama3", LLAMA32_CHAT_TEMPLATE, "llama", "<|begin_of_text|>", "<|eot_id|>",
                   "<|finetune_right_pad_id|>", _LLAMA_EOS, _LLAMA_SAMPLING, guard=False),
    "qwen3": _Spec("qwen3", QWEN3_CHAT_TEMPLATE, "qwen3", None, "<|im_end|>", "<|endoftext|>",
                   ("<|im_end|>", "<|endoftext|>"), {"temperature": 0.6, "top_p": 0.95, "top_k": 20}, guard=False),
    "llama-guard-3-1b": _Spec("llama3", gt.LLAMA_GUARD_3_1B_CHAT_TEMPLATE, "llama", "<|begin_of_text|>",
                              "<|eot_id|>", "<|finetune_right_pad_id|>", _LLAMA_EOS),
    "llama-guard-3-8b": _Spec("llama3", gt.LLAMA_GUARD_3_8B_CHAT_TEMPLATE, "llama", "<|begin_of_text|>",
                              "<|eot_id|>", "<|finetune_right_pad_id|>", _LLAMA_EOS),
    # eos/pad as a third-party run of the real checkpoint printed: eos [200001, 200007, 200008], pad 200018
    "llama-guard-4": _Spec("llama4", gt.LLAMA_GUARD_4_CHAT_TEMPLATE, "llama", "<|begin_of_text|>", "<|eot|>",
                           "<|finetune_right_pad|>", ("<|end_of_text|>", "<|eom|>", "<|eot|>")),
    "qwen3guard": _Spec("qwen3", gt.QWEN3GUARD_GEN_CHAT_TEMPLATE, "qwen3", None, "<|im_end|>", "<|endoftext|>",
                        ("<|im_end|>", "<|endoftext|>")),
    "granite-guardian-3.3": _Spec("granite", gt.GRANITE_GUARDIAN_3_3_CHAT_TEMPLATE, "granite", "<|end_of_text|>",
                                  "<|end_of_text|>", "<|end_of_text|>", ("<|end_of_text|>",)),
    "granite-guardian-3.0": _Spec("granite", gt.GRANITE_GUARDIAN_3_0_CHAT_TEMPLATE, "granite", "<|end_of_text|>",
                                  "<|end_of_text|>", "<|end_of_text|>", ("<|end_of_text|>",)),
    "shieldgemma": _Spec("gemma", gt.SHIELDGEMMA_CHAT_TEMPLATE, "gemma2", "<bos>", "<eos>", "<pad>",
                         ("<eos>", "<end_of_turn>")),
}


def build_tiny_model(
    path: str | Path,
    family: Family = "llama",
    *,
    vocab_size: int = 1024,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 4096,
) -> Path:
    """Write a tiny random-weight model of ``family`` (a key of ``FAMILIES``) to ``path`` and return
    the path.

    ``vocab_size`` is the size of the trained BPE vocabulary (256 byte symbols included); the
    family's special tokens are appended after it, so the model's embedding has
    ``vocab_size + len(special tokens)`` rows (a little less if the corpus cannot fill the BPE
    vocabulary). The result is deterministic for a given ``seed`` and argument set.
    """
    import torch
    from transformers import GenerationConfig, PreTrainedTokenizerFast

    if family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, not {family!r}")
    spec = FAMILIES[family]
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)

    raw = train_tokenizer(spec.kind, vocab_size, guard_corpus=spec.guard)
    extra: dict[str, Any] = {}
    if spec.kind == "qwen3":
        # As upstream tokenizer_config.json: the special added tokens other than <|endoftext|>.
        extra["additional_special_tokens"] = [t for t, sp in QWEN3_ADDED_TOKENS if sp and t != "<|endoftext|>"]
        extra["errors"] = "replace"
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token=spec.bos,
        eos_token=spec.eos,
        pad_token=spec.pad,
        chat_template=spec.template,
        model_max_length=131072,
        clean_up_tokenization_spaces=spec.kind == "llama3",
        model_input_names=["input_ids", "attention_mask"],
        **extra,
    )
    tokenizer.save_pretrained(out)

    def tid(t: str) -> int:
        return int(raw.token_to_id(t))

    # Qwen's config.bos_token_id is <|endoftext|> upstream, never prepended.
    bos_id = tid(spec.bos) if spec.bos else tid("<|endoftext|>")
    eos_ids = [tid(t) for t in spec.eos_ids]
    pad_id = tid(spec.pad)
    n_vocab = raw.get_vocab_size(with_added_tokens=True)
    torch.manual_seed(seed)
    common: dict[str, Any] = dict(
        vocab_size=n_vocab,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=hidden_size // num_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=bos_id,
        eos_token_id=eos_ids if spec.arch != "qwen3" else eos_ids[0],
        pad_token_id=pad_id,
        attention_bias=False,
        use_cache=True,
    )
    model = _model(spec.arch, common)
    model.eval()
    # The upstream sampling defaults, so tests prove that engines force greedy decoding themselves.
    model.generation_config = GenerationConfig(
        bos_token_id=bos_id,
        eos_token_id=eos_ids,
        pad_token_id=pad_id if spec.arch in ("qwen3", "gemma2") else None,  # Llama's has no pad
        do_sample=bool(spec.sampling),
        **spec.sampling,
    )
    model.save_pretrained(out)
    (out / "tiny_model.json").write_text(
        json.dumps({"family": family, "seed": seed, "vocab_size": n_vocab}, indent=2) + "\n"
    )
    return out


def _model(arch: str, common: dict[str, Any]) -> Any:
    cfg: Any
    if arch == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(**common, hidden_act="silu", rms_norm_eps=1e-5, tie_word_embeddings=True,
                          rope_theta=500000.0, mlp_bias=False)  # as Llama-3.2-1B/3B
        return LlamaForCausalLM(cfg)
    if arch == "qwen3":
        from transformers import Qwen3Config, Qwen3ForCausalLM

        cfg = Qwen3Config(**common, hidden_act="silu", rms_norm_eps=1e-6, tie_word_embeddings=False,
                          rope_theta=1000000.0)  # as Qwen3-8B
        return Qwen3ForCausalLM(cfg)
    if arch == "granite":
        from transformers import GraniteConfig, GraniteForCausalLM

        return GraniteForCausalLM(GraniteConfig(**common, hidden_act="silu", tie_word_embeddings=True))
    from transformers import Gemma2Config, Gemma2ForCausalLM

    cfg = Gemma2Config(**common, hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=16,
                       sliding_window=256, tie_word_embeddings=True)
    return Gemma2ForCausalLM(cfg)


def script_completion(
    model_dir: str | Path, messages: list[dict[str, Any]], completion: str, **chat_template_kwargs: Any
) -> list[int]:
    """Make the tiny model at ``model_dir`` answer any prompt that ends like ``messages`` rendered
    with its chat template (generation prompt added) with exactly ``completion`` and then EOS.

    A generation-config ``sequence_bias`` of +100 on each prefix of the chain "last two prompt
    tokens, completion tokens, EOS" (so a token that repeats in the completion still has one
    successor) overrides the random logits, so greedy decoding really generates the completion
    (in-process and under ``transformers serve``). Guard templates end in fixed text, so one script
    covers every input. Returns the completion's token ids."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    out: Any = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, **chat_template_kwargs)
    ids: list[int] = list(out["input_ids"] if hasattr(out, "keys") else out)
    body = tok.encode(completion, add_special_tokens=False)
    chain = [int(ids[-2]), int(ids[-1]), *body, int(tok.eos_token_id)]
    path = Path(model_dir) / "generation_config.json"
    cfg = json.loads(path.read_text())
    for key in ("temperature", "top_k", "top_p"):
        cfg.pop(key, None)
    cfg["do_sample"] = False
    cfg["sequence_bias"] = [[chain[: j + 1], 100.0] for j in range(2, len(chain))]
    path.write_text(json.dumps(cfg, indent=2))
    return body


__all__ = [
    "FAMILIES",
    "LLAMA32_CHAT_TEMPLATE",
    "LLAMA3_SPECIAL_TOKENS",
    "QWEN3_ADDED_TOKENS",
    "QWEN3_CHAT_TEMPLATE",
    "build_tiny_model",
    "script_completion",
]
