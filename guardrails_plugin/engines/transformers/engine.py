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

This module holds loading and the public async API; the jobs above live beside it in ``encoding``,
``batching``, ``sessions`` and ``scoring`` (mixins of ``TransformersEngine``, so every attribute
stays on the one engine object); ``state`` holds the queue's work items and the state they share.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ...errors import GuardConfigError, GuardEngineError, GuardTimeoutError
from ..base import GenerationRequest
from ..base import ScoreRequest, ScoreResult
from .batching import _STOP, _BatchingMixin
from .encoding import _EncodingMixin
from .scoring import _ScoringMixin
from .sessions import _SessionsMixin
from .state import _Job, _Row, _Session

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



class TransformersEngine(_EncodingMixin, _BatchingMixin, _SessionsMixin, _ScoringMixin):
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

        from ..workers import warn_if_multi_worker  # N server workers = N copies of the weights

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

    def __repr__(self) -> str:
        return (
            f"TransformersEngine({self.source!r}, device={self.device}, dtype={self.dtype}, "
            f"static_cache={self.static_cache}, max_batch_size={self.max_batch_size})"
        )


__all__ = ["TransformersEngine"]
