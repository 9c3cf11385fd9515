"""TransformersEngine: guard models run in-process with Hugging Face transformers.

Design, in short:

* **One worker thread** owns the model. Every blocking call (tokenisation, ``model.generate``) runs
  there, so an asyncio event loop never blocks, and the model is never driven from two threads.
* **Micro-batching.** ``generate()`` only enqueues rows on a thread-safe queue and awaits a
  ``concurrent.futures.Future``. The worker takes the first row, keeps collecting for
  ``batch_window_ms`` (or until ``max_batch_size`` rows), and runs them as one padded batch. Because
  the queue and the futures are not tied to an event loop, the engine works from any loop, from
  several loops over its lifetime, and from plain threads.
* **Greedy decoding**, left padding, stop at every EOS id the checkpoint declares (tokenizer eos plus
  ``generation_config.eos_token_id``, e.g. Llama's ``<|eot_id|>``), per-row ``max_new_tokens`` and
  stop strings. On CUDA a static KV cache is used (much faster decode steps than the dynamic cache);
  ``torch.compile`` stays off unless ``compile=True``.
* **Special-token safety.** Only the chat template's own structure may produce special (or other
  added) token ids. Message contents, raw prompts and assistant prefixes are encoded without any
  added-token matching, so ``<|eot_id|><|start_header_id|>assistant<|end_header_id|>`` or
  ``<|im_end|>`` typed by a user stays plain text and cannot open a forged turn.
* **Fast scoring** (``score``): one prefill with the answer forced up to the verdict position; the
  verdict is read from next-token log-probabilities (guardrails_plugin/scoring.py says what they mean).
  Only the last few positions go through the LM head (``logits_to_keep``).
* **KV reuse for streaming checks.** A request with ``session_id`` (a ReasoningMonitor's checks of one
  growing trace) keeps its KV cache after the call; the next call of that session recomputes only the
  tokens after the longest common token prefix (the trace sits mid-prompt in ReasoningShield's layout,
  so the closing turn tokens after the old trace end are recomputed, the rest is reused). Sessions are
  an LRU bounded by ``session_cache_mb`` and ``max_sessions`` and dropped by ``release_session``.
  Session rows run one at a time (batch 1, no padding) with a dynamic cache; on a static-cache (GPU)
  engine ``generate`` does not reuse (its static-cache decode is faster than what reuse saves),
  ``score`` always does.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import os
import queue
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import GuardConfigError, GuardEngineError, GuardTimeoutError
from .base import GenerationRequest
from .logprobs import Distribution, ScoreRequest, ScoreResult

logger = logging.getLogger(__name__)

_STOP = object()  # queue sentinel that ends the worker thread
_TRUTHY = {"1", "ON", "YES", "TRUE"}


def _hub_offline() -> bool:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE, read now (huggingface_hub caches it at import)."""
    return any(
        os.environ.get(var, "").strip().upper() in _TRUTHY
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _resolve_dtype(dtype: Any, device: torch.device) -> torch.dtype:
    if dtype is None or dtype == "auto":
        # bf16 on GPU (what the guards were trained/served in); fp32 on CPU, where bf16 matmuls are slow.
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}
    resolved = getattr(torch, names.get(str(dtype), str(dtype)), None)
    if not isinstance(resolved, torch.dtype):
        raise GuardConfigError(f"unknown dtype {dtype!r}")
    return resolved


@dataclass(eq=False)
class _Job:
    """One generate() call: its rows share a future that completes when every row has a result."""

    requests: Sequence[Any]  # GenerationRequest, or ScoreRequest when kind == "score"
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    results: list[Any] = field(default_factory=list)
    remaining: int = 0
    kind: str = "generate"

    def __post_init__(self) -> None:
        self.results = [None] * len(self.requests)
        self.remaining = len(self.requests)

    @property
    def abandoned(self) -> bool:  # timed out or cancelled by the caller: skip or stop its rows
        return self.future.done()

    def fail(self, exc: BaseException) -> None:
        try:
            if not self.future.done():
                self.future.set_exception(exc)
        except concurrent.futures.InvalidStateError:  # cancelled by the caller meanwhile
            pass

    def finish_row(self, index: int, text: Any) -> None:
        self.results[index] = text
        self.remaining -= 1
        if self.remaining == 0:
            try:
                if not self.future.done():
                    self.future.set_result(list(self.results))
            except concurrent.futures.InvalidStateError:
                pass


@dataclass(eq=False)
class _Row:
    job: _Job
    index: int

    @property
    def request(self) -> Any:
        return self.job.requests[self.index]


def _crop_to(cache: Any, length: int) -> None:
    """Keep the first ``length`` positions. A negative count to remove means the same to every
    transformers release (5.x only accepts that form)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


@dataclass(eq=False)
class _Session:
    """The KV cache of a session's last checked input (ids: the tokens it holds)."""

    ids: list[int]
    cache: Any
    nbytes: int


class _RowStopper:
    """Per-row stopping: a row is done at its own max_new_tokens, at one of its stop strings, or when
    its caller gave up (timeout). EOS is handled by generate() itself."""

    def __init__(self, engine: TransformersEngine, rows: Sequence[_Row], prompt_len: int):
        self.engine = engine
        self.rows = rows
        self.prompt_len = prompt_len
        self.caps = [max(1, r.request.max_new_tokens) for r in rows]
        self.stops = [tuple(s for s in r.request.stop if s) for r in rows]
        # Enough trailing tokens to contain any stop string (a token is at least one character,
        # except for partial UTF-8 byte tokens; the slack covers those).
        self.tail = [max((len(s) for s in st), default=0) + 8 for st in self.stops]

    def __call__(self, input_ids: torch.LongTensor, scores: Any = None, **kwargs: Any) -> torch.BoolTensor:
        n_new = input_ids.shape[1] - self.prompt_len
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for i, row in enumerate(self.rows):
            if n_new >= self.caps[i] or row.job.abandoned:
                done[i] = True
            elif self.stops[i] and n_new > 0:
                k = min(n_new, self.tail[i])
                text = self.engine._decode(input_ids[i, -k:].tolist())
                if any(s in text for s in self.stops[i]):
                    done[i] = True
        return done


class TransformersEngine:
    """In-process engine over a local Hugging Face checkpoint (or a hub id when online/cached).

    ``stats`` counts work for monitoring and tests: ``calls`` (generate() calls), ``batches``
    (forward batches, i.e. ``model.generate`` invocations), ``rows`` (requests generated),
    ``max_batch_rows`` (largest batch so far).
    """

    def __init__(
        self,
        model: str | Path,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        max_batch_size: int = 32,
        batch_window_ms: float = 2.0,
        static_cache: bool | None = None,
        name: str | None = None,
        trust_remote_code: bool = False,
        compile: bool = False,
        session_cache_mb: float = 1024.0,
        max_sessions: int = 256,
        reuse_in_generate: bool | None = None,
    ):
        if max_batch_size < 1:
            raise GuardConfigError("max_batch_size must be >= 1")
        self.source = str(model)
        self.name = name or Path(self.source.rstrip("/")).name or self.source
        self.device = torch.device(device) if device is not None else self._default_device()
        self.dtype = _resolve_dtype(dtype, self.device)
        self.max_batch_size = int(max_batch_size)
        self.batch_window_s = max(0.0, float(batch_window_ms)) / 1000.0
        # Static KV cache pays off on GPU (fixed shapes); on CPU the dynamic cache is as fast.
        self.static_cache = (self.device.type == "cuda") if static_cache is None else bool(static_cache)
        self.compile = bool(compile)
        self.stats: dict[str, int] = {
            "calls": 0, "batches": 0, "rows": 0, "max_batch_rows": 0,
            # fast scoring and KV reuse: rows scored, input tokens computed / served from a kept cache
            "score_rows": 0, "prefill_tokens": 0, "reused_tokens": 0, "sessions_evicted": 0,
        }
        self.session_cache_bytes = int(max(0.0, float(session_cache_mb)) * 2**20)
        self.max_sessions = max(0, int(max_sessions))
        # Reuse in generate() only on the dynamic-cache path (see the module docstring).
        self.reuse_in_generate = (not self.static_cache) if reuse_in_generate is None else bool(reuse_in_generate)
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self._sessions_lock = threading.Lock()
        self._candidate_ids: dict[str, int | None] = {}

        from .workers import warn_if_multi_worker  # N server workers = N copies of the weights

        warn_if_multi_worker(self.source)
        self.tokenizer, self.model = self._load(trust_remote_code)
        self._tok_lock = threading.RLock()  # HF fast tokenizers mutate state per call
        self._setup_tokens()

        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()
        self._closed = False

    # ------------------------------------------------------------------ loading

    @staticmethod
    def _default_device() -> torch.device:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def _load(self, trust_remote_code: bool) -> tuple[Any, Any]:
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        src = self.source
        local = Path(src).expanduser()
        is_local = local.is_dir()
        looks_like_path = (
            src.startswith((".", "/", "~")) or src.count("/") > 1 or "\\" in src or local.exists()
        )
        if not is_local and looks_like_path:
            raise GuardConfigError(f"model folder {src!r} does not exist (or is not a folder)")
        offline = _hub_offline()
        load_from = str(local) if is_local else src
        common: dict[str, Any] = {"trust_remote_code": trust_remote_code}
        if offline or is_local:
            common["local_files_only"] = True
        # transformers >= 4.56 names it `dtype`; older releases only know `torch_dtype`.
        major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
        dtype_kw = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
        try:
            tokenizer = AutoTokenizer.from_pretrained(load_from, **common)
            model = AutoModelForCausalLM.from_pretrained(load_from, **{dtype_kw: self.dtype}, **common)
        except (OSError, ValueError) as exc:
            if not is_local and offline:
                raise GuardConfigError(
                    f"{src!r} is not a local model folder and is not in the Hugging Face cache, and "
                    "HF_HUB_OFFLINE is set, so it cannot be downloaded. Download it where there is "
                    f"network (e.g. `hf download {src} --local-dir /models/NAME`) and pass "
                    "that folder: TransformersEngine('/models/NAME') (or set the guard's model to the "
                    "folder path in the config)."
                ) from exc
            where = "local folder" if is_local else "model id"
            raise GuardConfigError(f"cannot load {where} {src!r}: {exc}") from exc
        model.to(self.device)
        model.eval()
        tokenizer.padding_side = "left"  # decoder-only batches pad on the left
        return tokenizer, model

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

    # ------------------------------------------------------------------ generation (worker thread)

    def _generate_rows(
        self, rows: Sequence[_Row], ids_list: Sequence[list[int]], cache: Any = None
    ) -> list[str]:
        """One forward batch. Runs on the worker thread only. ``cache``: a pre-filled dynamic KV
        cache holding a prefix of the (single) row's ids (session reuse)."""
        from transformers import StoppingCriteriaList

        input_ids, mask = self._pad_batch(ids_list)
        prompt_len = input_ids.shape[1]
        stopper = _RowStopper(self, rows, prompt_len)
        max_new = max(stopper.caps)
        kwargs: dict[str, Any] = dict(
            input_ids=input_ids,
            attention_mask=mask,
            max_new_tokens=max_new,
            do_sample=False,
            num_beams=1,
            eos_token_id=list(self.eos_token_ids),
            pad_token_id=self.pad_token_id,
            stopping_criteria=StoppingCriteriaList([stopper]),
        )
        if cache is not None:
            kwargs["past_key_values"] = cache  # generate() computes only the uncached tail
        elif self.static_cache:
            kwargs["cache_implementation"] = "static"
            kwargs["disable_compile"] = not self.compile  # generate() would auto-compile otherwise
        self.stats["batches"] += 1
        self.stats["rows"] += len(rows)
        self.stats["max_batch_rows"] = max(self.stats["max_batch_rows"], len(rows))
        with torch.inference_mode():
            out = self.model.generate(**kwargs)
        gen = out[:, prompt_len:].tolist()
        eos = set(self.eos_token_ids)
        texts: list[str] = []
        for i, _row in enumerate(rows):
            toks = gen[i][: stopper.caps[i]]
            for j, t in enumerate(toks):  # cut at the row's first EOS (the rest is padding)
                if t in eos:
                    toks = toks[:j]
                    break
            text = self._decode(toks)
            for s in stopper.stops[i]:  # stop strings are excluded from the output, as in vLLM
                cut = text.find(s)
                if cut >= 0:
                    text = text[:cut]
            texts.append(text)
        return texts

    def _run_batch(self, rows: list[_Row]) -> None:
        scored = [r for r in rows if r.job.kind == "score"]
        if scored:
            self._run_score_batch(scored)
        rows = [r for r in rows if r.job.kind != "score"]
        if self.reuse_in_generate and self.max_sessions:
            for r in [r for r in rows if r.request.session_id]:
                self._run_session_generate(r)
            rows = [r for r in rows if not r.request.session_id]
        if not rows:
            return
        ids_list: list[list[int]] = []
        ready: list[_Row] = []
        for row in rows:
            if row.job.abandoned:
                continue
            try:
                ids = self.request_ids(row.request)
                if not ids:
                    raise ValueError("empty prompt")
            except GuardEngineError as exc:
                row.job.fail(exc)
                continue
            except Exception as exc:  # bad template kwargs, bad content: that job only
                row.job.fail(GuardEngineError(f"{self.name}: cannot build model input: {exc!r}"))
                continue
            ids_list.append(ids)
            ready.append(row)
        ready_ids = [(r, i) for r, i in zip(ready, ids_list, strict=False) if not r.job.abandoned]
        if not ready_ids:
            return
        try:
            texts = self._generate_rows([r for r, _ in ready_ids], [i for _, i in ready_ids])
        except Exception as exc:
            err = GuardEngineError(f"{self.name}: generation failed: {exc!r}", retryable=True)
            err.__cause__ = exc
            for r, _ in ready_ids:
                r.job.fail(err)
            return
        for (r, _), text in zip(ready_ids, texts, strict=False):
            if not r.job.abandoned:
                r.job.finish_row(r.index, text)

    # ------------------------------------------------------------------ sessions (KV reuse)

    def _kv_bytes_per_token(self) -> int:
        cfg = self.model.config
        cfg = getattr(cfg, "get_text_config", lambda: cfg)()
        heads = getattr(cfg, "num_attention_heads", 1)
        kv = getattr(cfg, "num_key_value_heads", None) or heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        elem = torch.finfo(self.dtype).bits // 8
        return 2 * cfg.num_hidden_layers * kv * head_dim * elem

    def _session_take(self, session_id: str, ids: Sequence[int], keep_last: int) -> tuple[Any, int]:
        """(cache, reused): the session's cache cropped to the longest common prefix with ``ids``
        (leaving at least ``keep_last`` tokens to compute), or a fresh cache and 0."""
        from transformers import DynamicCache

        with self._sessions_lock:
            entry = self._sessions.pop(session_id, None)
        if entry is not None:
            n = 0
            limit = min(len(entry.ids), len(ids) - keep_last)
            old = entry.ids
            while n < limit and old[n] == ids[n]:
                n += 1
            if n > 0:
                _crop_to(entry.cache, n)
                return entry.cache, n
        return DynamicCache(config=self.model.config), 0

    def _session_put(self, session_id: str, ids: list[int], cache: Any) -> None:
        if not self.max_sessions or not self.session_cache_bytes:
            return
        _crop_to(cache, len(ids))  # generated tokens are never part of the next input's prefix
        entry = _Session(list(ids), cache, len(ids) * self._kv_bytes_per_token())
        if entry.nbytes > self.session_cache_bytes:
            return
        with self._sessions_lock:
            self._sessions[session_id] = entry
            self._sessions.move_to_end(session_id)
            total = sum(e.nbytes for e in self._sessions.values())
            while len(self._sessions) > self.max_sessions or total > self.session_cache_bytes:
                _, old = self._sessions.popitem(last=False)  # least recently used
                total -= old.nbytes
                self.stats["sessions_evicted"] += 1

    def release_session(self, session_id: str) -> bool:
        """Drop a session's KV cache (a monitor closed). Safe from any thread; True if one was kept."""
        with self._sessions_lock:
            return self._sessions.pop(session_id, None) is not None

    def session_ids(self) -> list[str]:
        """Sessions holding a KV cache, least recently used first."""
        with self._sessions_lock:
            return list(self._sessions)

    @property
    def session_cache_used_bytes(self) -> int:
        with self._sessions_lock:
            return sum(e.nbytes for e in self._sessions.values())

    def _run_session_generate(self, row: _Row) -> None:
        if row.job.abandoned:
            return
        try:
            ids = self.request_ids(row.request)
            if not ids:
                raise ValueError("empty prompt")
        except Exception as exc:
            row.job.fail(exc if isinstance(exc, GuardEngineError)
                         else GuardEngineError(f"{self.name}: cannot build model input: {exc!r}"))
            return
        sid = row.request.session_id
        try:
            cache, reused = self._session_take(sid, ids, keep_last=1)
            self.stats["reused_tokens"] += reused
            self.stats["prefill_tokens"] += len(ids) - reused
            text = self._generate_rows([row], [ids], cache=cache)[0]
            self._session_put(sid, ids, cache)
        except Exception as exc:
            self._fail_session_row(row, sid, "generation", exc)
            return
        if not row.job.abandoned:
            row.job.finish_row(row.index, text)

    def _fail_session_row(self, row: _Row, sid: str | None, what: str, exc: Exception) -> None:
        """A session row failed: its cached prefix may be half-updated, so drop it; fail the row."""
        self.release_session(sid)
        err = GuardEngineError(f"{self.name}: {what} failed: {exc!r}", retryable=True)
        err.__cause__ = exc
        row.job.fail(err)

    # ------------------------------------------------------------------ fast scoring (worker thread)

    def _candidate_id(self, text: str) -> int | None:
        """First token of ``text`` as plain text (the forced prefix ends at a token boundary)."""
        if text not in self._candidate_ids:
            ids = self._encode_plain(text)
            self._candidate_ids[text] = ids[0] if ids else None
        return self._candidate_ids[text]

    def _distribution(self, logprobs: torch.Tensor, top_k: int, candidates: Sequence[str]) -> Distribution:
        dist = Distribution()
        if top_k > 0:
            vals, idx = torch.topk(logprobs, min(top_k, logprobs.shape[-1]))
            for v, i in zip(vals.tolist(), idx.tolist(), strict=True):
                tok = self._decode([i]) if i not in self._added_ids else self.tokenizer.convert_ids_to_tokens(i)
                dist.top[tok] = max(v, dist.top.get(tok, -math.inf))
        for c in candidates:
            cid = self._candidate_id(c)
            if cid is not None:
                dist.candidates[c] = float(logprobs[cid])
        return dist

    def _score_inputs(self, req: ScoreRequest) -> tuple[list[int], int]:
        ids = self.request_ids(req.request)
        probe = self._encode_plain(req.probe) if req.probe else []
        if not ids:
            raise ValueError("empty prompt")
        return ids + probe, len(probe)

    def _result(self, req: ScoreRequest, lp: torch.Tensor, n_probe: int, n_ids: int, reused: int) -> ScoreResult:
        """``lp``: log-probs of the last ``n_probe + 1`` positions of one row, [n_probe + 1, vocab]."""
        at = self._distribution(lp[0], req.top_k, req.candidates)
        after = self._distribution(lp[-1], req.top_k, req.probe_candidates) if n_probe else None
        return ScoreResult(at_prefix=at, after_probe=after, prompt_tokens=n_ids, reused_tokens=reused)

    def _run_score_batch(self, rows: Sequence[_Row]) -> None:
        plain: list[tuple[_Row, list[int], int]] = []
        for row in rows:
            if row.job.abandoned:
                continue
            try:
                ids, n_probe = self._score_inputs(row.request)
            except Exception as exc:
                row.job.fail(exc if isinstance(exc, GuardEngineError)
                             else GuardEngineError(f"{self.name}: cannot build model input: {exc!r}"))
                continue
            if row.request.session_id and self.max_sessions:
                self._score_session(row, ids, n_probe)
            else:
                plain.append((row, ids, n_probe))
        for i in range(0, len(plain), self.max_batch_size):
            chunk = plain[i : i + self.max_batch_size]
            try:
                results = self._score_forward(chunk)
            except Exception as exc:
                err = GuardEngineError(f"{self.name}: scoring failed: {exc!r}", retryable=True)
                err.__cause__ = exc
                for r, _, _ in chunk:
                    r.job.fail(err)
                continue
            for (r, _, _), res in zip(chunk, results, strict=True):
                if not r.job.abandoned:
                    r.job.finish_row(r.index, res)

    def _score_forward(self, chunk: Sequence[tuple[_Row, list[int], int]]) -> list[ScoreResult]:
        """One padded prefill; only the last positions go through the LM head."""
        input_ids, mask = self._pad_batch([ids for _, ids, _ in chunk])
        keep = max(n for _, _, n in chunk) + 1
        # Left padding: positions count real tokens only (generate() does the same).
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        self.stats["batches"] += 1
        self.stats["score_rows"] += len(chunk)
        self.stats["max_batch_rows"] = max(self.stats["max_batch_rows"], len(chunk))
        self.stats["prefill_tokens"] += sum(len(ids) for _, ids, _ in chunk)
        with torch.inference_mode():
            out = self.model(
                input_ids=input_ids, attention_mask=mask, position_ids=position_ids,
                use_cache=False, logits_to_keep=keep,
            )
            lp = torch.log_softmax(out.logits.float(), dim=-1)  # [B, keep, V]
        results = []
        for b, (row, ids, n_probe) in enumerate(chunk):
            rows_lp = lp[b, keep - 1 - n_probe :]
            results.append(self._result(row.request, rows_lp, n_probe, len(ids), 0))
        return results

    def _score_session(self, row: _Row, ids: list[int], n_probe: int) -> None:
        sid = row.request.session_id
        try:
            cache, reused = self._session_take(sid, ids, keep_last=n_probe + 1)
            self.stats["batches"] += 1
            self.stats["score_rows"] += 1
            self.stats["reused_tokens"] += reused
            self.stats["prefill_tokens"] += len(ids) - reused
            new = torch.tensor([ids[reused:]], dtype=torch.long, device=self.device)
            with torch.inference_mode():
                out = self.model(input_ids=new, past_key_values=cache, use_cache=True, logits_to_keep=n_probe + 1)
                lp = torch.log_softmax(out.logits.float(), dim=-1)[0]
            result = self._result(row.request, lp, n_probe, len(ids), reused)
            self._session_put(sid, ids, cache)
        except Exception as exc:
            self._fail_session_row(row, sid, "scoring", exc)
            return
        if not row.job.abandoned:
            row.job.finish_row(row.index, result)

    def _worker(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                break
            batch: list[_Row] = [item]
            deadline = time.monotonic() + self.batch_window_s
            stop_after = False
            while len(batch) < self.max_batch_size:
                wait = deadline - time.monotonic()
                try:
                    nxt = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop_after = True
                    break
                batch.append(nxt)
            try:
                self._run_batch(batch)
            except BaseException as exc:  # never let the worker die with callers waiting
                for row in batch:
                    row.job.fail(GuardEngineError(f"{self.name}: worker error: {exc!r}"))
            if stop_after:
                break
        # Fail whatever is still queued (closing engine).
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                item.job.fail(GuardEngineError(f"{self.name}: engine closed"))

    def _enqueue(self, rows: Sequence[_Row]) -> None:
        """Start the worker if needed and queue ``rows``, atomically with respect to ``aclose``:
        rows are either queued ahead of its stop sentinel (and answered) or refused. Queued after
        it, they would wait for a worker that has already drained the queue and exited."""
        with self._thread_lock:
            if self._closed:
                raise GuardEngineError(f"{self.name}: engine is closed")
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._worker, name=f"guard-engine-{self.name}", daemon=True
                )
                self._thread.start()
            for row in rows:
                self._queue.put(row)

    # ------------------------------------------------------------------ public async API

    async def generate(
        self, requests: Sequence[GenerationRequest], *, timeout: float | None = None
    ) -> list[str]:
        """One completion per request, in order. Concurrent calls share forward batches."""
        requests = list(requests)
        self.stats["calls"] += 1
        if not requests:
            return []
        return await self._submit(_Job(requests), timeout)

    async def _submit(self, job: _Job, timeout: float | None) -> list[Any]:
        requests = job.requests
        if timeout is not None and timeout <= 0:
            raise GuardTimeoutError(f"{self.name}: deadline already passed")
        self._enqueue([_Row(job, i) for i in range(len(requests))])
        waiter = asyncio.wrap_future(job.future)  # bound to whichever loop is running now
        try:
            result = await asyncio.wait_for(waiter, timeout)
        except asyncio.TimeoutError:
            job.future.cancel()  # its rows are skipped, or stopped mid-generation by _RowStopper
            raise GuardTimeoutError(
                f"{self.name}: no completion within {timeout:.3g}s for {len(requests)} request(s)"
            ) from None
        except asyncio.CancelledError:
            job.future.cancel()
            raise
        except GuardEngineError:
            raise
        except Exception as exc:
            raise GuardEngineError(f"{self.name}: {exc!r}") from exc
        return result

    async def score(
        self, requests: Sequence[ScoreRequest], *, timeout: float | None = None
    ) -> list[ScoreResult]:
        """Fast scoring: one prefill per request, next-token log-probs at the forced verdict
        position (and after ``probe``). Concurrent calls share forward batches."""
        requests = list(requests)
        self.stats["calls"] += 1
        if not requests:
            return []
        return await self._submit(_Job(requests, kind="score"), timeout)

    async def aclose(self) -> None:
        """Stop the worker (queued calls fail with GuardEngineError) and free the model."""
        with self._thread_lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        self._queue.put(_STOP)
        if thread is not None:
            await asyncio.to_thread(thread.join)
        else:
            self._worker_drain()
        self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _worker_drain(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP:
                item.job.fail(GuardEngineError(f"{self.name}: engine closed"))

    def __repr__(self) -> str:
        return (
            f"TransformersEngine({self.source!r}, device={self.device}, dtype={self.dtype}, "
            f"static_cache={self.static_cache}, max_batch_size={self.max_batch_size})"
        )


__all__ = ["TransformersEngine"]
