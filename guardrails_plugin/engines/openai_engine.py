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
  error, or a reply without a usable completion, raises ``GuardEngineError`` at once; a 404 (the
  server does not serve ``model``, or no such endpoint) raises ``GuardServerConfigError``, a
  configuration error. ``check_ready()`` finds that before the first check (``Guard.warmup()``).
* A batch is sent as concurrent requests; if any fails, the others are cancelled and the whole call
  raises (never a partial batch).

Scale-out: vllm-router, and a small failover list
-------------------------------------------------
* The supported way to run many replicas is ``vllm-router --policy consistent_hash`` in front of
  them, with ``base_url`` pointing at the router (docs/scaling.md, integrations/vllm/).
* Sticky streams: every check of one monitor carries the monitor's session key in the
  ``session_header`` (default ``x-session-id``, which vllm-router's consistent_hash reads; or
  ``session_params.session_id`` in the body with ``session_field=True``), so a stream's checks land
  on the replica that holds its prefix in vLLM's prefix cache while different streams spread. A
  check outside a stream carries a random key of its own, so single checks spread too.
* Retries do not multiply the router's: the router retries failed replicas itself and answers 500
  when it gives up, which is not retried here; its 503 (no replica available) and 429 (queue full)
  are answered without touching a replica. (A replica's own 429, passed on after the router's
  retries, would be retried again; vLLM does not send 429.) All within the one per-call deadline.
* Several base URLs are a plain failover list for small setups without a router: a request with a
  session key prefers the same server every time (rendezvous hashing, sticky like the router),
  others go round-robin; a server that refuses a connection is skipped for a short cool-down and
  the request fails over to the next one at once. No health checks, no load awareness: past two
  or three servers, use the router.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import httpx

from ..errors import GuardConfigError, GuardEngineError, GuardTimeoutError, ScoringUnsupported
from .base import Distribution, EngineBase, GenerationRequest, ScoreRequest, ScoreResult, render_plain
from .openai_wire import (
    RETRY_AFTER_CAP_S,
    RETRY_STATUSES,
    RetryableFailure,
    build_body,
    excerpt,
    http_error,
    normalise_base_url,
    parse_completion,
    parse_logprobs,
    rendezvous_order,
    retry_after_s,
    routing_key,
    served_names,
)

T = TypeVar("T")
log = logging.getLogger(__name__)

#: How long a base URL that refused a connection is skipped.
_DOWN_COOLDOWN_S = 2.0


class OpenAIEngine(EngineBase):
    """Guard completions from OpenAI-compatible HTTP servers (vLLM, SGLang, transformers serve),
    directly or through ``vllm-router``.

    ``model`` is the name the server knows the model by (vLLM's ``--served-model-name``; for
    ``transformers serve`` the path or hub id it was started with). ``session_header``: the header
    that carries a stream's session key (None or "" sends none); ``session_field``: also send it as
    ``session_params.session_id`` in the body, for routers that read only the body.
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
        session_header: str | None = "x-session-id",
        session_field: bool = False,
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
        self.base_urls: list[str] = [normalise_base_url(u) for u in urls]
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
        self.session_header = (session_header or "").strip() or None
        self.session_field = bool(session_field)
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

    async def check_ready(self, *, timeout: float | None = None) -> dict[str, list[str]]:
        """Probe every base URL before the first check (``Guard.warmup()`` calls this).

        ``GET /v1/models``; when ``model`` is not listed (servers that load models on demand, such
        as ``transformers serve``, list only some), a one-token completion confirms. Raises
        ``GuardServerConfigError`` when a server does not serve ``model`` (HTTP 404), and
        ``GuardEngineError`` when no server answers. Returns ``{base_url: names it lists}``."""
        budget = self.timeout_s if timeout is None else float(timeout)
        headers = {"Authorization": f"Bearer {self.api_key}"}
        async with httpx.AsyncClient(timeout=httpx.Timeout(budget), headers=headers) as client:
            results = await asyncio.gather(
                *(self._probe(client, base) for base in self.base_urls), return_exceptions=True
            )
        listed: dict[str, list[str]] = {}
        down: list[str] = []
        for base, res in zip(self.base_urls, results, strict=True):
            if isinstance(res, GuardConfigError):
                raise res
            if isinstance(res, BaseException):
                down.append(f"{base}: {res}")
            else:
                listed[base] = res
        if not listed:
            raise GuardEngineError(f"{self.name}: no server answers: " + "; ".join(down))
        for reason in down:
            log.warning("%s: a failover server does not answer (%s)", self.name, reason)
        return listed

    async def _probe(self, client: httpx.AsyncClient, base: str) -> list[str]:
        try:
            resp = await client.get(base + "/v1/models")
            names = served_names(resp) if resp.status_code == 200 else None
            if names is not None and self.model in names:
                return names
            body = {"model": self.model, "prompt": "ok", "max_tokens": 1, "temperature": 0}
            reply = await client.post(base + "/v1/completions", json=body)
        except httpx.HTTPError as exc:
            raise GuardEngineError(f"{type(exc).__name__}: {exc}") from None
        if reply.status_code == 404:
            err = http_error(self.name, reply, base + "/v1/completions", body)
            if names:
                err.args = (f"{err.args[0]}. It serves: {', '.join(names)}",)
            raise err
        if reply.status_code in (401, 403):
            raise GuardEngineError(f"{self.name}: {base} rejects the API key (HTTP {reply.status_code}): "
                                   f"set api_key or OPENAI_API_KEY")
        # Any other answer names no unknown model: the server knows it (or loads it on demand).
        return names or []

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
        return build_body(request, self.model, defuse=self.defuse_special_tokens)

    def _pick_base(self, tried: set[str], key: str | None) -> str:
        """The server for the next attempt: for a stream (``key``) the one it sticks to, else the
        next in round-robin order; servers that recently refused a connection and those already
        tried for this request come last."""
        urls = self.base_urls
        if len(urls) == 1:
            return urls[0]
        if key is not None:
            order = rendezvous_order(key, urls)
        else:
            start = next(self._rr) % len(urls)
            order = urls[start:] + urls[:start]
        now = time.monotonic()
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
        key = routing_key(request)
        # A check outside a stream gets a key of its own, so a router spreads such checks
        # (vllm-router 0.1.17's consistent_hash sends every key-less chat request to one replica).
        sent_key = key or uuid.uuid4().hex
        headers: dict[str, str] = {self.session_header: sent_key} if self.session_header else {}
        if self.session_field:
            body = {**body, "session_params": {"session_id": sent_key}}
        attempt = 0
        tried: set[str] = set()  # base URLs tried since the last backoff
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise GuardTimeoutError(f"{self.name}: deadline passed before a completion")
            base = self._pick_base(tried, key)
            tried.add(base)
            try:
                return await self._attempt(client, base + path, body, headers, remaining, request.is_chat,
                                           parse=parse)
            except RetryableFailure as failure:
                if failure.connection:
                    self._down_until[base] = time.monotonic() + _DOWN_COOLDOWN_S
                    if len(tried) < len(self.base_urls):
                        # Another server may be up: fail over now, no backoff, no retry spent.
                        self.stats["failovers"] += 1
                        continue
                if attempt >= self.max_retries:
                    raise GuardEngineError(
                        f"{self.name}: {failure} (gave up after {attempt + 1} attempts)"
                    ) from None
                delay = self.backoff_s * (2**attempt)
                hint = failure.delay_hint
                if hint is not None and hint <= RETRY_AFTER_CAP_S:
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
        headers: dict[str, str],
        remaining: float,
        chat: bool,
        parse: Any = None,
    ) -> Any:
        try:
            resp = await client.post(url, json=body, headers=headers, timeout=httpx.Timeout(remaining))
        except httpx.TimeoutException:
            # The attempt's timeout is the time left until the deadline.
            raise GuardTimeoutError(f"{self.name}: no reply from {url} before the deadline") from None
        except httpx.TransportError as exc:
            # Refused, reset, dropped mid-response: the request is idempotent, a retry is safe.
            raise RetryableFailure(
                f"connection error on {url}: {type(exc).__name__}: {exc}", connection=True
            ) from None
        status = resp.status_code
        if status in RETRY_STATUSES:
            raise RetryableFailure(
                f"HTTP {status} from {url}: {excerpt(resp.text)}",
                delay_hint=retry_after_s(resp.headers.get("retry-after")),
            )
        if status >= 400:
            raise http_error(self.name, resp, url, body)
        if parse is not None:
            return parse(resp, url)
        return parse_completion(self.name, resp, url, chat)

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
        least 1% of the probability.

        A request whose prefix must follow the rendered prompt text itself (``raw_prefix``: Llama
        Guard, Qwen3Guard) raises ScoringUnsupported: the server renders the template, and a
        continued assistant message would become one more turn of the judged conversation."""
        if any(r.raw_prefix for r in requests):
            raise ScoringUnsupported(
                f"{self.name}: this guard's fast scoring forces text right after the rendered prompt, which an "
                "OpenAI-compatible server cannot be sent (use the transformers engine for fast scoring)"
            )
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
        return parse_logprobs(self.name, resp, url)

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
