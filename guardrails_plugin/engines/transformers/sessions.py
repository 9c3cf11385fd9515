"""KV reuse for streaming checks: per-session caches in an LRU bounded by bytes and count."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ...errors import GuardEngineError
from .state import _Row, _Session

if TYPE_CHECKING:
    from .state import EngineHost as _Host
else:
    _Host = object


def _crop_to(cache: Any, length: int) -> None:
    """Keep the first ``length`` positions. A negative count to remove means the same to every
    transformers release (5.x only accepts that form)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


class _SessionsMixin(_Host):
    """TransformersEngine's session caches (state set up in ``TransformersEngine.__init__``)."""

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
        err = GuardEngineError(f"{self.name}: {what} failed: {exc!r}")
        err.__cause__ = exc
        row.job.fail(err)

