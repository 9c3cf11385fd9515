"""Tokenisation with special-token safety: only the chat template's structure may produce added
token ids; contents, raw prompts and assistant prefixes are encoded as plain text."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ...errors import GuardConfigError, GuardEngineError
from ..base import GenerationRequest

if TYPE_CHECKING:
    from .state import EngineHost as _Host
else:
    _Host = object

logger = logging.getLogger(__name__)


class _EncodingMixin(_Host):
    """TransformersEngine's tokenizer side (the tokenizer and model are loaded by the engine)."""

    def _setup_tokens(self) -> None:
        tok, model = self.tokenizer, self.model
        eos: set[int] = set()

        def add(x: Any) -> None:
            if isinstance(x, int):
                eos.add(x)
            elif isinstance(x, (list, tuple)):
                eos.update(int(i) for i in x if i is not None)

        add(tok.eos_token_id)
        gen_cfg = getattr(model, "generation_config", None)
        add(getattr(gen_cfg, "eos_token_id", None))
        if not eos:
            add(getattr(model.config, "eos_token_id", None))
        if not eos:
            raise GuardConfigError(f"{self.name}: no EOS token id in the tokenizer or generation config")
        self.eos_token_ids: tuple[int, ...] = tuple(sorted(eos))
        pad = tok.pad_token_id
        self.pad_token_id: int = int(pad) if pad is not None else self.eos_token_ids[0]

        # Every added token (special or not: Qwen's <think>/<tool_call> are added but "not special")
        # may only come from the template's structure.
        added = tok.get_added_vocab()
        self._added_strings: tuple[str, ...] = tuple(sorted(added, key=len, reverse=True))
        self._added_ids: frozenset[int] = frozenset(added.values()) | frozenset(tok.all_special_ids)

        probe = tok("a", add_special_tokens=True)["input_ids"]
        bos = tok.bos_token_id
        self._raw_bos: str = tok.bos_token if bos is not None and probe[:1] == [bos] else ""

        if gen_cfg is not None:
            # Greedy regardless of the checkpoint's sampling defaults (e.g. Llama-3.2-Instruct's T=0.6):
            # guards must be deterministic.
            gen_cfg.do_sample = False
            for attr in ("temperature", "top_p", "top_k", "min_p", "typical_p"):
                if hasattr(gen_cfg, attr):
                    setattr(gen_cfg, attr, None)

    # ------------------------------------------------------------------ tokenisation

    def _encode_trusted(self, text: str) -> list[int]:
        """Template structure: special-token strings become their ids."""
        with self._tok_lock:
            return list(
                self.tokenizer(text, add_special_tokens=False, split_special_tokens=False)["input_ids"]
            )

    def _encode_plain(self, text: str) -> list[int]:
        """Untrusted text: never any added-token id (special or not), exactly the ids the BPE model
        gives the same characters as ordinary text."""
        if not text:
            return []
        with self._tok_lock:
            backend = getattr(self.tokenizer, "backend_tokenizer", None)
            if backend is not None and getattr(backend, "model", None) is not None:
                s = backend.normalizer.normalize_str(text) if backend.normalizer is not None else text
                splits = (
                    [p for p, _ in backend.pre_tokenizer.pre_tokenize_str(s)]
                    if backend.pre_tokenizer is not None
                    else [s]
                )
                return [t.id for p in splits for t in backend.model.tokenize(p)]
            # Slow tokenizers: split_special_tokens covers the special tokens.
            return list(
                self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
            )

    def _decode(self, ids: Sequence[int]) -> str:
        with self._tok_lock:
            # No clean-up: the guard's output must reach the parser verbatim (vLLM does the same).
            return self.tokenizer.decode(
                list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False
            )

    def _chat_pieces(
        self, messages: Sequence[Mapping[str, Any]], kwargs: Mapping[str, Any]
    ) -> list[tuple[str, bool]]:
        """Split the rendered chat into (text, trusted) pieces: template structure is trusted,
        message contents are not.

        The template is rendered twice: once with the real messages (the exact text) and once with a
        unique sentinel per content (the structure). The real text is then aligned against the
        structure; a content the template transformed (Llama's ``| trim``) is matched through a few
        known transforms. If the two renders cannot be aligned (a template whose structure depends
        on the content itself, e.g. Qwen3 splitting an assistant turn on ``</think>``), the
        structure render is used with the raw contents: still safe, only not byte-identical to
        ``apply_chat_template``.
        """
        msgs = [dict(m) for m in messages]
        nonce = uuid.uuid4().hex[:12]
        sentinel = "\ue000{}:{}\ue001"
        # Content is a string, or a list of typed text parts (Llama Guard 3-1B / 4 templates read
        # only those; a string would render an empty conversation). Every text is one slot.
        contents: list[str] = []
        skel_msgs: list[dict[str, Any]] = []
        for m in msgs:
            c = m.get("content")
            if isinstance(c, str):
                skel_msgs.append({**m, "content": sentinel.format(nonce, len(contents))})
                contents.append(c)
            elif isinstance(c, list) and c and all(
                isinstance(p, Mapping) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in c
            ):
                parts_skel = []
                for p in c:
                    parts_skel.append({**p, "text": sentinel.format(nonce, len(contents))})
                    contents.append(p["text"])
                skel_msgs.append({**m, "content": parts_skel})
            else:
                raise GuardEngineError(
                    f"{self.name}: message content must be a string or text parts, got {c!r:.60}"
                )
        kw = dict(kwargs)
        add_gen = kw.pop("add_generation_prompt", True)
        with self._tok_lock:
            real = self.tokenizer.apply_chat_template(
                msgs, tokenize=False, add_generation_prompt=add_gen, **kw
            )
            skeleton = self.tokenizer.apply_chat_template(
                skel_msgs, tokenize=False, add_generation_prompt=add_gen, **kw
            )
        parts = re.split("\ue000" + nonce + r":(\d+)\ue001", skeleton)
        structure = parts[0::2]  # P0, P1, ..., Pn
        slots = [int(i) for i in parts[1::2]]  # which content sits between P_k and P_k+1

        aligned = self._align(real, structure, [contents[i] for i in slots])
        pieces: list[tuple[str, bool]] = [(structure[0], True)]
        if aligned is None:
            logger.debug("%s: chat render not alignable; using the raw-content render", self.name)
            aligned = [contents[i] for i in slots]
        for text, struct in zip(aligned, structure[1:], strict=False):
            pieces.append((text, False))
            pieces.append((struct, True))
        return pieces

    @staticmethod
    def _align(real: str, structure: list[str], contents: list[str]) -> list[str] | None:
        """Find, for each slot, the form of its content that makes structure + contents == real."""
        if not real.startswith(structure[0]):
            return None

        def forms(c: str) -> list[str]:
            out: list[str] = []
            for f in (c, c.strip(), c.strip("\n"), c.lstrip("\n"), c.rstrip("\n"), c.lstrip(), c.rstrip()):
                if f not in out:
                    out.append(f)
            return out

        result: list[str] = []

        def walk(k: int, pos: int) -> bool:  # depth-first over the few candidate forms
            if k == len(contents):
                return pos == len(real)
            nxt = structure[k + 1]
            for f in forms(contents[k]):
                end = pos + len(f)
                if real.startswith(f, pos) and real.startswith(nxt, end):
                    result.append(f)
                    if walk(k + 1, end + len(nxt)):
                        return True
                    result.pop()
            return False

        return result if walk(0, len(structure[0])) else None

    def _pieces(self, request: GenerationRequest) -> list[tuple[str, bool]]:
        if request.messages is not None:
            pieces = self._chat_pieces(request.messages, request.chat_template_kwargs)
        else:
            # Raw completion prompt (GuardReasoner): BOS as the tokenizer/vLLM would add it, the rest
            # is untrusted text.
            pieces = [(self._raw_bos, True), (request.prompt or "", False)]
        # The forced answer start is text, never structure (it may echo guard output).
        pieces.append((request.assistant_prefix, False))
        return pieces

    def _encode_pieces(self, pieces: Sequence[tuple[str, bool]]) -> list[int]:
        merged: list[list[Any]] = []
        for text, trusted in pieces:
            if not text:
                continue
            if merged and merged[-1][1] == trusted:
                merged[-1][0] += text
            else:
                merged.append([text, trusted])
        # Fast path: if no untrusted piece holds an added-token string, the whole text encodes to
        # exactly what apply_chat_template(tokenize=True) / vLLM produce (no piece-boundary effects).
        # The count check guards against a special token formed across a piece boundary.
        if not any(not trusted and any(s in text for s in self._added_strings) for text, trusted in merged):
            ids = self._encode_trusted("".join(t for t, _ in merged))
            n_struct = sum(
                sum(1 for i in self._encode_trusted(t) if i in self._added_ids) for t, tr in merged if tr
            )
            if sum(1 for i in ids if i in self._added_ids) == n_struct:
                return ids
        out: list[int] = []
        for text, trusted in merged:
            out.extend(self._encode_trusted(text) if trusted else self._encode_plain(text))
        return out

    def render(self, request: GenerationRequest) -> str:
        """The exact text the model sees: the chat template output (+ assistant prefix), or BOS +
        the raw prompt (+ prefix). Special-token strings inside contents appear here as text but are
        tokenised as plain text (see ``tokenize``)."""
        return "".join(text for text, _ in self._pieces(request))

    def request_ids(self, request: GenerationRequest) -> list[int]:
        """The exact token ids the model sees for ``request``."""
        return self._encode_pieces(self._pieces(request))

    def tokenize(
        self, messages_or_text: str | Sequence[Mapping[str, Any]], **chat_template_kwargs: Any
    ) -> list[int]:
        """The exact ids the model sees for chat messages (template applied, generation prompt
        added) or for a raw prompt string (BOS added as vLLM does)."""
        if isinstance(messages_or_text, str):
            req = GenerationRequest(prompt=messages_or_text)
        else:
            req = GenerationRequest(
                messages=tuple(messages_or_text), chat_template_kwargs=dict(chat_template_kwargs)
            )
        return self.request_ids(req)

    def _pad_batch(self, ids_list: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-pad token id lists into (input_ids, attention_mask) on the model's device.
        Shared by generation and (later) prefill-only scoring."""
        width = max(len(ids) for ids in ids_list)
        input_ids = torch.full((len(ids_list), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(ids_list), width), dtype=torch.long)
        for i, ids in enumerate(ids_list):
            if ids:
                input_ids[i, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                mask[i, width - len(ids) :] = 1
        return input_ids.to(self.device), mask.to(self.device)

