"""What the engine's parts share: the work items on the queue (jobs and their rows), a kept session
cache, and ``EngineHost``, the state and methods the mixins expect on the engine object (for type
checkers only; ``TransformersEngine`` sets the state up in ``__init__``)."""

from __future__ import annotations

import concurrent.futures
import queue
import threading
from abc import abstractmethod
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..base import GenerationRequest


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



@dataclass(eq=False)
class _Session:
    """The KV cache of a session's last checked input (ids: the tokens it holds)."""

    ids: list[int]
    cache: Any
    nbytes: int


class EngineHost:
    """The mixins' base for type checkers only (at run time they derive from ``object``)."""

    name: str
    device: torch.device
    dtype: torch.dtype
    model: Any
    tokenizer: Any
    stats: dict[str, int]
    max_batch_size: int
    batch_window_s: float
    static_cache: bool
    compile: bool
    reuse_in_generate: bool
    max_sessions: int
    session_cache_bytes: int
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    _added_strings: tuple[str, ...]
    _added_ids: frozenset[int]
    _raw_bos: str
    _tok_lock: threading.RLock
    _sessions: OrderedDict[str, _Session]
    _sessions_lock: threading.Lock
    _candidate_ids: dict[str, int | None]
    _queue: queue.Queue[Any]
    _thread: threading.Thread | None
    _thread_lock: threading.Lock
    _closed: bool

    # encoding
    @abstractmethod
    def request_ids(self, request: GenerationRequest) -> list[int]: ...
    @abstractmethod
    def _encode_plain(self, text: str) -> list[int]: ...
    @abstractmethod
    def _decode(self, ids: Sequence[int]) -> str: ...
    @abstractmethod
    def _pad_batch(self, ids_list: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]: ...

    # batching
    @abstractmethod
    def _generate_rows(
        self, rows: Sequence[_Row], ids_list: Sequence[list[int]], cache: Any = None
    ) -> list[str]: ...

    # sessions
    @abstractmethod
    def _session_take(self, session_id: str, ids: Sequence[int], keep_last: int) -> tuple[Any, int]: ...
    @abstractmethod
    def _session_put(self, session_id: str, ids: list[int], cache: Any) -> None: ...
    @abstractmethod
    def release_session(self, session_id: str) -> bool: ...
    @abstractmethod
    def _run_session_generate(self, row: _Row) -> None: ...
    @abstractmethod
    def _fail_session_row(self, row: _Row, sid: str | None, what: str, exc: Exception) -> None: ...

    # scoring
    @abstractmethod
    def _run_score_batch(self, rows: Sequence[_Row]) -> None: ...
