"""The seam between guard models (which know prompts) and engines (which produce tokens).

An engine takes a batch of ``GenerationRequest`` and returns one completion string per request,
in order. A request is either a raw completion prompt (GuardReasoner's protocol) or a list of chat
messages that the engine renders with the guard's own chat template (ReasoningShield, FlexGuard).
Fast scoring asks for next-token log-probabilities instead (``ScoreRequest`` -> ``ScoreResult``).

``Engine`` declares everything callers use: generate, score, render, sessions, aclose. Engines
written against an older, smaller protocol (only ``generate``) are completed by ``as_engine``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ..errors import ScoringUnsupported


@dataclass(frozen=True)
class SessionKey:
    """Which kept KV cache a request may reuse: one guard model's checks of one window of one
    growing text (a stream monitor's checks). ``stream`` alone is what routers stick to one
    replica (OpenAIEngine's session header), so every window of a stream lands on one server."""

    stream: str
    guard: str = ""
    window: int = 0

    def __str__(self) -> str:  # logs only; nothing parses it back
        return f"{self.stream}/{self.guard}/{self.window}"


@dataclass(frozen=True)
class GenerationRequest:
    """One guard input.

    Exactly one of ``prompt`` (raw text, no chat template) and ``messages`` (chat turns rendered with
    the tokenizer's template and ``add_generation_prompt=True``) is set. ``assistant_prefix`` is text
    forced at the start of the assistant's answer (fast scoring forces the answer up to the verdict).
    """

    prompt: str | None = None
    messages: tuple[Mapping[str, str], ...] | None = None
    chat_template_kwargs: Mapping[str, Any] = field(default_factory=dict)
    max_new_tokens: int = 1024
    assistant_prefix: str = ""
    stop: tuple[str, ...] = ()
    #: streaming checks of one growing text (a monitor) share this key; an engine that keeps KV
    #: caches reuses the previous check's prefix (TransformersEngine), others ignore it
    session_id: SessionKey | None = None

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("GenerationRequest needs exactly one of prompt= or messages=")
        if self.messages is not None and not isinstance(self.messages, tuple):
            object.__setattr__(self, "messages", tuple(self.messages))

    @property
    def is_chat(self) -> bool:
        return self.messages is not None


@dataclass(frozen=True)
class ScoreRequest:
    """Score the next token after ``request`` (its ``assistant_prefix`` is the forced answer).

    ``candidates``: continuations whose first-token log-probability is wanted at the verdict position
    (an engine with a tokenizer computes them exactly; a remote one looks them up in the top-k).
    ``probe``: optional text teacher-forced after the prefix; a second distribution is read after it
    with ``probe_candidates`` (ReasoningShield reads P("." | "0") to tell 0.5 from 0 in the same
    forward pass). ``session_id``: streaming checks of one growing text share a KV cache (engines
    that keep one; others ignore it). ``raw_prefix``: the forced prefix must follow the rendered
    prompt text itself (models/fast.py ``FastSpec.raw_prefix``); an engine that cannot send that
    raises ScoringUnsupported.
    """

    request: GenerationRequest
    candidates: tuple[str, ...] = ()
    probe: str = ""
    probe_candidates: tuple[str, ...] = ()
    top_k: int = 20
    session_id: SessionKey | None = None
    raw_prefix: bool = False


@dataclass
class Distribution:
    """Next-token log-probabilities at one position: the top ``k`` tokens (decoded text -> logprob)
    and, where the engine could compute them, the exact first-token logprob of each candidate."""

    top: dict[str, float] = field(default_factory=dict)
    candidates: dict[str, float] = field(default_factory=dict)

    def prob(self, candidate: str, others: tuple[str, ...] = ()) -> float:
        """P(the next token starts ``candidate``). Exact when the engine gave it; otherwise the sum
        over top-k tokens that begin ``candidate`` and no other candidate (a token such as " "
        that begins several is ambiguous and counts for none)."""
        if candidate in self.candidates:
            return math.exp(self.candidates[candidate])
        total = 0.0
        for tok, lp in self.top.items():
            if tok and candidate.startswith(tok) and not any(o.startswith(tok) for o in others if o != candidate):
                total += math.exp(lp)
        return min(1.0, total)


@dataclass
class ScoreResult:
    """What one ScoreRequest measured."""

    at_prefix: Distribution
    after_probe: Distribution | None = None
    prompt_tokens: int = 0  #: tokens in the scored input
    reused_tokens: int = 0  #: of those, served from a kept KV cache (not recomputed)


@runtime_checkable
class Engine(Protocol):
    """What callers (the runner, the Guard, the circuit breaker) use of an engine."""

    name: str

    async def generate(
        self, requests: Sequence[GenerationRequest], *, timeout: float | None = None
    ) -> list[str]:
        """Return one completion per request, in order. Raise GuardEngineError (or its subclass
        GuardTimeoutError) when no completion can be had; never return a partial batch."""
        ...

    async def score(self, requests: Sequence[ScoreRequest], *, timeout: float | None = None) -> list[ScoreResult]:
        """One ScoreResult per request, in order (fast scoring). Raise ScoringUnsupported when this
        engine cannot score them (the runner then generates), GuardEngineError when it fails."""
        ...

    def render(self, request: GenerationRequest) -> str:
        """The exact text the model sees for ``request`` (chat template applied)."""
        ...

    def session_ids(self) -> list[SessionKey]:
        """The sessions whose KV caches the engine keeps (none for engines that keep none)."""
        ...

    def release_session(self, key: SessionKey) -> bool:
        """Drop the KV cache kept for ``key``; True when there was one."""
        ...

    async def aclose(self) -> None:
        """Release connections, threads and memory."""
        ...


class EngineBase:
    """Defaults for the parts of ``Engine`` an engine may lack: no scoring, no kept sessions,
    template-free rendering. Engines subclass it and override what they have."""

    name: str = "engine"

    async def score(self, requests: Sequence[ScoreRequest], *, timeout: float | None = None) -> list[ScoreResult]:
        raise ScoringUnsupported(f"{self.name} cannot fast-score")

    def render(self, request: GenerationRequest) -> str:
        return render_plain(request)

    def session_ids(self) -> list[SessionKey]:
        return []

    def release_session(self, key: SessionKey) -> bool:
        return False

    async def aclose(self) -> None:
        return None


class _Completed(EngineBase):
    """An engine object with only part of ``Engine`` (a caller's own ``generate``-only class),
    completed with EngineBase's defaults. The one place that looks up optional methods by name."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.name = str(getattr(inner, "name", type(inner).__name__))
        for method in ("score", "render", "session_ids", "release_session", "aclose"):
            found = getattr(inner, method, None)
            if callable(found):
                setattr(self, method, found)

    async def generate(self, requests: Sequence[GenerationRequest], *, timeout: float | None = None) -> list[str]:
        return await self.inner.generate(requests, timeout=timeout)

    def __getattr__(self, item: str) -> Any:  # engine extras (tokenize, stats, calls, ...)
        if item == "inner":  # not set yet (copy, pickle): no recursion
            raise AttributeError(item)
        return getattr(self.inner, item)

    def __repr__(self) -> str:
        return f"{type(self.inner).__name__}({self.name!r})"


def as_engine(engine: Any) -> Engine:
    """``engine`` itself when it implements all of ``Engine``, else wrapped with the defaults of
    the parts it lacks. Raises TypeError for an object without ``generate``."""
    if isinstance(engine, Engine):
        return engine
    if not callable(getattr(engine, "generate", None)):
        raise TypeError(f"an engine needs an async generate(requests, *, timeout=None); got {type(engine).__name__}")
    return _Completed(engine)


def render_plain(request: GenerationRequest) -> str:
    """A template-free rendering for engines without a tokenizer (the scripted engine, logs).

    Chat turns become ``<|role|>\\ncontent`` blocks (typed text parts joined), preceded by the chat
    template kwargs when there are any: guards whose templates build the whole prompt (Qwen3Guard,
    ShieldGemma, Granite Guardian) differ only there. This is only ever shown to test responders
    and humans, never to a real model.
    """
    if request.prompt is not None:
        return request.prompt + request.assistant_prefix
    parts = [f"<|{m['role']}|>\n{_plain_content(m.get('content'))}" for m in request.messages or ()]
    if request.chat_template_kwargs:
        kwargs = json.dumps(dict(request.chat_template_kwargs), sort_keys=True, default=str, ensure_ascii=False)
        parts.insert(0, "<|template_kwargs|>\n" + kwargs)
    parts.append("<|assistant|>\n" + request.assistant_prefix)
    return "\n".join(parts)


def _plain_content(content: Any) -> str:
    if isinstance(content, list):  # typed parts: their texts, in order
        return "".join(p.get("text", "") for p in content if isinstance(p, Mapping) and p.get("type") == "text")
    return str(content)


# Chat-template control strings of the guard families (Llama-3 "<|eot_id|>", Qwen "<|im_end|>",
# "<think>", tool tags). A server that renders and tokenises text itself (vLLM, SGLang) turns these
# strings into real special tokens wherever they appear, user content included.
_SPECIAL_TOKEN_TEXT = re.compile(r"<(?=\|[^<>|\s]{1,64}\|>|/?(?:think|tool_call|tool_response)>)")


def defuse_special_tokens(text: str) -> str:
    """``text`` with every special-token look-alike broken by a zero-width space after its "<".

    For engines that send text to a server which tokenises it (OpenAIEngine): user content can then
    never open a forged turn. The guard still reads the same characters, less one invisible one.
    In-process engines do not need this: they encode user content without special-token parsing."""
    return _SPECIAL_TOKEN_TEXT.sub("<\u200b", text)
