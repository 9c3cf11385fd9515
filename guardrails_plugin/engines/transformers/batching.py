"""The worker thread and micro-batching: jobs and rows on a thread-safe queue, one worker that
collects rows for ``batch_window_ms`` and runs them as padded ``model.generate`` batches."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ...errors import GuardEngineError
from .state import _Row

if TYPE_CHECKING:
    from .state import EngineHost as _Host
else:
    _Host = object

_STOP = object()  # queue sentinel that ends the worker thread


class _RowStopper:
    """Per-row stopping: a row is done at its own max_new_tokens, at one of its stop strings, or when
    its caller gave up (timeout). EOS is handled by generate() itself."""

    def __init__(self, engine: _Host, rows: Sequence[_Row], prompt_len: int):
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



class _BatchingMixin(_Host):
    """TransformersEngine's worker thread: queueing, batching and generation."""

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
            err = GuardEngineError(f"{self.name}: generation failed: {exc!r}")
            err.__cause__ = exc
            for r, _ in ready_ids:
                r.job.fail(err)
            return
        for (r, _), text in zip(ready_ids, texts, strict=False):
            if not r.job.abandoned:
                r.job.finish_row(r.index, text)

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

    def _worker_drain(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP:
                item.job.fail(GuardEngineError(f"{self.name}: engine closed"))

