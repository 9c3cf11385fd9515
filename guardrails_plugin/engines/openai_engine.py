"""OpenAIEngine: guard completions from any OpenAI-compatible server (``vllm serve``, SGLang,
``transformers serve``) over async HTTP.

Wire format
-----------
* Raw prompts (``GenerationRequest.prompt``, GuardReasoner's protocol) go to ``POST
  {base}/v1/completions`` with ``prompt = request.prompt + request.assistant_prefix``: the server
  applies no template, exactly like the official ``vllm.LLM.generate`` run.
* Chat requests go to ``POST {base}/v1/chat/completions``; the server applies the guard's chat
  template. ``chat_template_kwargs`` (e.g. ``{"enable_thinking": True}`` for FlexGuard) is sent as a
  top-level field, which is where vLLM's ``ChatCompletionRequest`` (and ``transformers serve``) read it.
* ``assistant_prefix`` on a chat request (fast scoring forces the answer up to the verdict) is sent
  as a final ``{"role": "assistant", "content": prefix}`` message with vLLM's extra parameters
  ``continue_final_message=True, add_generation_prompt=False``: the template leaves that turn open
  and the model continues it. The returned completion is the continuation only (no prefix), as with
  the in-process engine. Servers that ignore these fields would start a new turn instead.
* Decoding is greedy (``temperature=0``): a guard must be deterministic.
* Reasoning parsers (``vllm serve --reasoning-parser qwen3``, ``transformers serve`` with Qwen3)
  split a ``<think>`` block off into ``message.reasoning_content`` (older vLLM, transformers) or
  ``message.reasoning`` (vLLM >= 0.11). The engine re-assembles ``"<think>" + reasoning + "</think>"
  + content`` so guard parsers (FlexGuard's) see the completion the model actually produced.

Robustness
----------
* One ``httpx.AsyncClient`` (pooled connections) per event loop, created lazily: an AsyncClient's
  connections belong to the loop that opened them, and the sync facade may run several loops.
* Every ``generate`` call has one deadline (``timeout`` or ``timeout_s``) covering all retries;
  when it passes, ``GuardTimeoutError``.
* Retries with exponential backoff only where a retry can help: connection errors (refused, reset,
  dropped mid-response) and HTTP 429/503 (``Retry-After`` honoured when small). Any other HTTP
  error, or a reply without a usable completion, raises ``GuardEngineError`` at once.
* Several base URLs: requests go round-robin; a URL that refuses a connection is skipped for a short
  cool-down and the request fails over to the next one immediately.
* A batch is sent as concurrent requests; if any fails, the others are cancelled and the whole call
  raises (never a partial batch).
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import itertools
import json
import os
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import httpx

from ..errors import GuardConfigError, GuardEngineError, GuardTimeoutError
from .base import GenerationRequest, defuse_special_tokens, render_plain
from .logprobs import Distribution, ScoreRequest, ScoreResult

T = TypeVar("T")

#: Retry-After values above this are ignored (normal backoff applies): a guard's deadline is
#: seconds, so waiting a minute for an overloaded server is never useful.
_RETRY_AFTER_CAP_S = 5.0
#: How long a base URL that refused a connection is skipped by round-robin.
_DOWN_COOLDOWN_S = 2.0
#: HTTP statuses worth retrying: rate limited / temporarily unavailable.
_RETRY_STATUSES = frozenset({429, 503})
_BODY_EXCERPT = 200


def _normalise_base_url(url: str) -> str:
    """``http://h:8000``, ``http://h:8000/`` and ``http://h:8000/v1/`` all mean the same server."""
    url = url.strip().rstrip("/")
    if not url:
        raise GuardConfigError("OpenAIEngine: empty base_url")
    if not url.startswith(("http://", "https://")):
        raise GuardConfigError(f"OpenAIEngine: base_url must start with http:// or https://: {url!r}")
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    return url


def _retry_after_s(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date); None if absent/invalid."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def _excerpt(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _BODY_EXCERPT else text[:_BODY_EXCERPT] + "..."


class _RetryableFailure(Exception):
    """Internal: one attempt failed in a way a retry may fix."""

    def __init__(self, message: str, *, delay_hint: float | None = None, connection: bool = False):
        super().__init__(message)
        self.delay_hint = delay_hint
        self.connection = connection


class OpenAIEngine:
    """Guard completions from OpenAI-compatible HTTP servers (vLLM, SGLang, transformers serve).

    ``model`` is the name the server knows the model by (vLLM's ``--served-model-name``; for
    ``transformers serve`` the path or hub id it was started with).
    """

    def __init__(
        self,
        base_url: str | Sequence[str],
        *,
        model: str,
        api_key: str | None = None,
        timeout_s: float = 30.0,
        max_retries: int = 2,
        backoff_s: float = 0.2,
        max_connections: int = 64,
        name: str | None = None,
        defuse_special_tokens: bool = True,
    ):
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        if not urls:
            raise GuardConfigError("OpenAIEngine needs at least one base_url")
        if not model:
            raise GuardConfigError("OpenAIEngine needs model= (the served model name)")
        if timeout_s <= 0:
            raise GuardConfigError("OpenAIEngine: timeout_s must be > 0")
        if max_retries < 0 or backoff_s < 0 or max_connections < 1:
            raise GuardConfigError("OpenAIEngine: max_retries/backoff_s >= 0, max_connections >= 1")
        self.base_urls: list[str] = [_normalise_base_url(u) for u in urls]
        self.model = model
        self.api_key = api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.backoff_s = float(backoff_s)
        self.max_connections = int(max_connections)
        self.name = name or f"openai:{model}"
        #: the server tokenises what we send, special-token strings included: break look-alikes
        #: in prompts and message contents (never in the trusted assistant prefix)
        self.defuse_special_tokens = bool(defuse_special_tokens)
        #: counters: requests (completions asked for), retries (re-sends after a retryable
        #: failure), failovers (moves to another base URL), failures (requests that raised)
        self.stats: dict[str, int] = {"requests": 0, "retries": 0, "failovers": 0, "failures": 0}
        self._rr = itertools.count()
        self._down_until: dict[str, float] = {}
        # One client per event loop; weak keys so a finished loop's entry disappears with it.
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()  # the sync facade may drive loops from several threads

    def __repr__(self) -> str:
        return f"OpenAIEngine({self.base_urls!r}, model={self.model!r})"

    # ----------------------------------------------------------------------------- Engine API
    def render(self, request: GenerationRequest) -> str:
        """The raw prompt, or a plain rendering of chat turns: the real template is applied by
        the server, which this engine cannot see."""
        return render_plain(request)

    async def generate(
        self, requests: Sequence[GenerationRequest], *, timeout: float | None = None
    ) -> list[str]:
        return await self._all_or_nothing(self._one, list(requests), timeout, "completion")

    async def _all_or_nothing(
        self,
        call: Callable[[httpx.AsyncClient, Any, float], Awaitable[T]],
        items: list[Any],
        timeout: float | None,
        what: str,
    ) -> list[T]:
        """``call`` on every item concurrently under one deadline; every result or an exception."""
        if not items:
            return []
        budget = self.timeout_s if timeout is None else float(timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        client = self._client()
        self.stats["requests"] += len(items)
        tasks = [asyncio.ensure_future(call(client, item, deadline)) for item in items]
        try:
            # wait_for is the backstop (DNS, pool waits): the per-attempt timeouts already stop
            # at the deadline; the small slack lets their clearer errors win the race.
            done, pending = await asyncio.wait_for(
                asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION), budget + 0.05
            )
        except asyncio.TimeoutError:
            await self._cancel(tasks)
            self.stats["failures"] += len(items)
            raise GuardTimeoutError(f"{self.name}: no {what} within the {budget:.2f}s deadline") from None
        except BaseException:  # caller cancelled us: take the in-flight requests down too
            await self._cancel(tasks)
            raise
        failed = [t for t in done if not t.cancelled() and t.exception() is not None]
        if failed:
            # Never a partial batch: cancel the rest and raise the first failure.
            await self._cancel(list(pending))
            self.stats["failures"] += len(items)
            exc = failed[0].exception()
            for t in failed[1:]:
                t.exception()  # mark retrieved, no "exception never retrieved" noise
            assert exc is not None
            raise exc
        return [t.result() for t in tasks]

    async def aclose(self) -> None:
        """Close the pooled connections: the current loop's client now, those of loops running in
        other threads on their own loop. A client of an idle loop (alive, not running) stays until
        ``aclose`` is awaited on that loop; those of closed loops are dropped."""
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        mine: httpx.AsyncClient | None = None
        with self._lock:
            for loop, client in list(self._clients.items()):
                if loop is current:
                    mine = self._clients.pop(loop)
                elif loop.is_closed():
                    self._clients.pop(loop, None)
                elif loop.is_running():
                    self._clients.pop(loop, None)
                    asyncio.run_coroutine_threadsafe(client.aclose(), loop)
        if mine is not None:
            await mine.aclose()

    # ---------------------------------------------------------------------------- internals
    def _client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        with self._lock:
            for old in [lp for lp in self._clients if lp.is_closed()]:
                self._clients.pop(old, None)
            client = self._clients.get(loop)
            if client is None or client.is_closed:
                client = httpx.AsyncClient(
                    limits=httpx.Limits(
                        max_connections=self.max_connections,
                        max_keepalive_connections=self.max_connections,
                    ),
                    timeout=httpx.Timeout(self.timeout_s),
                    headers={"Authorization": f"Bearer {self.api_key}"},
                )
                self._clients[loop] = client
            return client

    @staticmethod
    async def _cancel(tasks: Sequence[asyncio.Future[Any]]) -> None:
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _body(self, request: GenerationRequest) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": int(request.max_new_tokens),
            "temperature": 0,
            "stream": False,
        }
        if request.stop:
            body["stop"] = list(request.stop)
        defuse = defuse_special_tokens if self.defuse_special_tokens else (lambda t: t)
        if not request.is_chat:
            body["prompt"] = defuse(request.prompt or "") + request.assistant_prefix
            return "/v1/completions", body
        messages = [{**m, "content": defuse(m["content"])} if isinstance(m.get("content"), str) else dict(m)
                    for m in request.messages or ()]
        if request.assistant_prefix:
            # vLLM prefill: leave the final assistant turn open and continue it.
            messages.append({"role": "assistant", "content": request.assistant_prefix})
            body["add_generation_prompt"] = False
            body["continue_final_message"] = True
        body["messages"] = messages
        if request.chat_template_kwargs:
            body["chat_template_kwargs"] = dict(request.chat_template_kwargs)
        return "/v1/chat/completions", body

    def _pick_base(self, tried: set[str]) -> str:
        """Next base URL in round-robin order, preferring ones not recently refused and not yet
        tried for this request."""
        now = time.monotonic()
        n = len(self.base_urls)
        start = next(self._rr)
        order = [self.base_urls[(start + i) % n] for i in range(n)]
        for url in order:
            if url not in tried and self._down_until.get(url, 0.0) <= now:
                return url
        for url in order:
            if url not in tried:
                return url
        return order[0]

    async def _one(
        self,
        client: httpx.AsyncClient,
        request: GenerationRequest,
        deadline: float,
        *,
        call: tuple[str, dict[str, Any]] | None = None,
        parse: Any = None,
    ) -> Any:
        """One request with retries and failover. ``call`` / ``parse``: another (path, body) and
        reply parser than a completion's (fast scoring asks for logprobs)."""
        loop = asyncio.get_running_loop()
        path, body = call if call is not None else self._body(request)
        attempt = 0
        tried: set[str] = set()  # base URLs tried since the last backoff
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise GuardTimeoutError(f"{self.name}: deadline passed before a completion")
            base = self._pick_base(tried)
            tried.add(base)
            try:
                return await self._attempt(client, base + path, body, remaining, request.is_chat, parse=parse)
            except _RetryableFailure as failure:
                if failure.connection:
                    self._down_until[base] = time.monotonic() + _DOWN_COOLDOWN_S
                    if len(tried) < len(self.base_urls):
                        # Another server may be up: fail over now, no backoff, no retry spent.
                        self.stats["failovers"] += 1
                        continue
                if attempt >= self.max_retries:
                    raise GuardEngineError(
                        f"{self.name}: {failure} (gave up after {attempt + 1} attempts)",
                        retryable=True,
                    ) from None
                delay = self.backoff_s * (2**attempt)
                hint = failure.delay_hint
                if hint is not None and hint <= _RETRY_AFTER_CAP_S:
                    delay = max(delay, hint)
                remaining = deadline - loop.time()
                if delay >= remaining:
                    # Sleeping would only end in the deadline; say why now.
                    raise GuardTimeoutError(
                        f"{self.name}: {failure}; deadline passes before the next retry"
                    ) from None
                attempt += 1
                self.stats["retries"] += 1
                tried.clear()
                await asyncio.sleep(delay)

    async def _attempt(
        self,
        client: httpx.AsyncClient,
        url: str,
        body: dict[str, Any],
        remaining: float,
        chat: bool,
        parse: Any = None,
    ) -> Any:
        try:
            resp = await client.post(url, json=body, timeout=httpx.Timeout(remaining))
        except httpx.TimeoutException:
            # The attempt's timeout is the time left until the deadline.
            raise GuardTimeoutError(f"{self.name}: no reply from {url} before the deadline") from None
        except httpx.TransportError as exc:
            # Refused, reset, dropped mid-response: the request is idempotent, a retry is safe.
            raise _RetryableFailure(
                f"connection error on {url}: {type(exc).__name__}: {exc}", connection=True
            ) from None
        status = resp.status_code
        if status in _RETRY_STATUSES:
            raise _RetryableFailure(
                f"HTTP {status} from {url}: {_excerpt(resp.text)}",
                delay_hint=_retry_after_s(resp.headers.get("retry-after")),
            )
        if status >= 400:
            hint = ""
            if (
                status in (400, 422)
                and body.get("continue_final_message")
                and ("continue_final_message" in resp.text)
            ):
                # e.g. `transformers serve` rejects vLLM's prefill fields with 422.
                hint = " (this server does not support assistant prefill / continue_final_message; use vLLM)"
            err = GuardEngineError(
                f"{self.name}: HTTP {status} from {url}: {_excerpt(resp.text)}{hint}",
                retryable=status >= 500,
            )
            err.status_code = status  # type: ignore[attr-defined]
            raise err
        return self._parse(resp, url, chat) if parse is None else parse(resp, url)

    def _parse(self, resp: httpx.Response, url: str, chat: bool) -> str:
        try:
            data = resp.json()
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
            raise GuardEngineError(f"{self.name}: malformed JSON from {url}: {_excerpt(resp.text)}") from None
        choices = data.get("choices") if isinstance(data, Mapping) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
            raise GuardEngineError(f"{self.name}: reply from {url} has no choices: {_excerpt(resp.text)}")
        choice = choices[0]
        if not chat:
            text = choice.get("text")
            if not isinstance(text, str):
                raise GuardEngineError(f"{self.name}: completion from {url} has no text")
            return text
        message = choice.get("message")
        if not isinstance(message, Mapping):
            raise GuardEngineError(f"{self.name}: chat reply from {url} has no message")
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            raise GuardEngineError(f"{self.name}: chat reply from {url} has non-text content")
        reasoning = message.get("reasoning_content")
        if not isinstance(reasoning, str) or not reasoning:
            reasoning = message.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            # Put the think block back so guard parsers see the whole completion.
            closed = content is not None or choice.get("finish_reason") != "length"
            return "<think>" + reasoning + ("</think>" if closed else "") + (content or "")
        if content is None:
            raise GuardEngineError(f"{self.name}: chat reply from {url} has no content")
        return content

    # ------------------------------------------------------------------------- fast scoring
    #: OpenAI's (and vLLM's default --max-logprobs) limit on top_logprobs
    MAX_TOP_LOGPROBS = 20

    async def score(
        self, requests: Sequence[ScoreRequest], *, timeout: float | None = None
    ) -> list[ScoreResult]:
        """Fast scoring over HTTP: the forced prefix sent with ``max_tokens`` 1 (2 where a template
        may trim the prefix's trailing space, or to read a probe for free) and ``logprobs``.

        Raw prompts go to ``/v1/completions`` (prompt + forced prefix); chat guards to
        ``/v1/chat/completions`` with the prefix as a final assistant message continued in place
        (vLLM's ``continue_final_message``; ``transformers serve`` does not support it). Probabilities
        come from the top ``min(top_k, 20)`` tokens, so candidates outside them count as 0. A probe
        costs a second request only when the greedy token was not the probe and the probe holds at
        least 1% of the probability."""
        return await self._all_or_nothing(self._score_one, list(requests), timeout, "score")

    def _score_call(
        self, req: GenerationRequest, prefix: str, n_tokens: int, k: int
    ) -> tuple[str, dict[str, Any]]:
        path, body = self._body(
            dataclasses.replace(req, assistant_prefix=prefix, max_new_tokens=n_tokens, stop=())
        )
        if path.endswith("/chat/completions"):
            body["logprobs"] = True
            body["top_logprobs"] = k
        else:
            body["logprobs"] = k
        return path, body

    def _parse_logprobs(self, resp: httpx.Response, url: str) -> tuple[list[str], list[dict[str, float]]]:
        """(generated tokens, top-k {token: logprob} per generated position) of a logprobs reply."""
        try:
            data = resp.json()
            choice = data["choices"][0]
            lp = choice["logprobs"]
            if "content" in lp:  # chat format
                items = lp["content"] or []
                tokens = [str(it["token"]) for it in items]
                tops = [
                    {str(t["token"]): float(t["logprob"]) for t in it.get("top_logprobs") or []}
                    for it in items
                ]
                for it, top in zip(items, tops, strict=False):
                    top.setdefault(str(it["token"]), float(it["logprob"]))
            else:  # completions format
                tokens = [str(t) for t in lp.get("tokens") or []]
                tops = [
                    {str(k): float(v) for k, v in (d or {}).items()} for d in lp.get("top_logprobs") or []
                ]
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise GuardEngineError(
                f"{self.name}: reply from {url} has no usable logprobs ({exc!r}): {_excerpt(resp.text)}"
            ) from None
        if not tops:
            raise GuardEngineError(f"{self.name}: reply from {url} has no logprobs: {_excerpt(resp.text)}")
        return tokens, tops

    async def _score_one(self, client: httpx.AsyncClient, sreq: ScoreRequest, deadline: float) -> ScoreResult:
        req = sreq.request
        k = max(1, min(self.MAX_TOP_LOGPROBS, int(sreq.top_k)))
        prefix = req.assistant_prefix
        # Chat templates may trim a trailing space off the continued message (Llama's `| trim`):
        # then the first generated token is that space and the verdict is the second.
        trimmable = req.is_chat and prefix[-1:].isspace()
        n = 2 if (trimmable or sreq.probe) else 1
        tokens, tops = await self._one(
            client, req, deadline, call=self._score_call(req, prefix, n, k), parse=self._parse_logprobs
        )
        i = 1 if trimmable and len(tops) > 1 and tokens and not tokens[0].strip() else 0
        at = Distribution(top=tops[i])
        after: Distribution | None = None
        if sreq.probe:
            if len(tops) > i + 1 and len(tokens) > i and tokens[i] == sreq.probe:
                after = Distribution(top=tops[i + 1])  # the greedy path went through the probe
            elif at.prob(sreq.probe, sreq.candidates or (sreq.probe,)) < 0.01:
                after = Distribution()  # the probe's branch holds under 1%: nothing to split
            else:
                t2, tops2 = await self._one(
                    client,
                    req,
                    deadline,
                    call=self._score_call(req, prefix + sreq.probe, 1, k),
                    parse=self._parse_logprobs,
                )
                after = Distribution(top=tops2[0])
        return ScoreResult(at_prefix=at, after_probe=after)
