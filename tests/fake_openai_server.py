"""A small, scriptable, misbehaving OpenAI-compatible server on loopback, for engine and fault tests.

Not a test module (pytest does not collect it); import it::

    from tests.fake_openai_server import FakeOpenAIServer, Reply   # or: from fake_openai_server import ...

    with FakeOpenAIServer() as srv:                     # random free port on 127.0.0.1
        srv.script(Reply.error(429, retry_after=0), Reply.ok())   # consumed one per request, in order
        engine = OpenAIEngine(srv.base_url, model="fake")
        ...
        srv.requests[-1].body                           # every request received, JSON-decoded

When the script is empty, ``srv.default`` answers (a ``Reply`` or a callable ``RecordedRequest ->
Reply``); the stock default is a 200 whose completion echoes the prompt (``"echo:" + prompt`` or
the last chat message), so tests can check ordering. Behaviours: any status/body/headers, raw
(garbage) bodies, a delay before answering, closing the connection without a reply, and a reset
(RST) in the middle of a response body. ``dead_url()`` gives a base URL where nothing listens.

Runs a ``ThreadingHTTPServer`` in a daemon thread (HTTP/1.1 keep-alive, so clients' connection
pools are exercised); no third-party dependencies.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

__all__ = ["FakeOpenAIServer", "RecordedRequest", "Reply", "dead_url", "free_port"]

Action = Literal["respond", "close", "reset"]


@dataclass
class RecordedRequest:
    """One request as received."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any  #: decoded JSON, or the raw text when it was not JSON
    at: float = field(default_factory=time.monotonic)

    @property
    def prompt_text(self) -> str:
        """The prompt (completions) or the last message's content (chat)."""
        if isinstance(self.body, dict):
            if isinstance(self.body.get("prompt"), str):
                return self.body["prompt"]
            msgs = self.body.get("messages")
            if isinstance(msgs, list) and msgs and isinstance(msgs[-1], dict):
                return str(msgs[-1].get("content", ""))
        return ""


@dataclass
class Reply:
    """What the server does with one request.

    ``body`` may be a dict/list (sent as JSON), str/bytes (sent verbatim, e.g. garbage), or None
    (a well-formed completion for the request's endpoint with ``text``, default the echo).
    ``action``: ``respond`` (normal), ``close`` (drop the connection without replying), ``reset``
    (send headers and half the body, then RST).
    """

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    action: Action = "respond"
    text: str | None = None  #: completion text for body=None
    reasoning: str | None = None  #: chat only: put in message[reasoning_field]
    reasoning_field: str = "reasoning_content"
    finish_reason: str = "stop"

    @classmethod
    def ok(cls, text: str | None = None, **kw: Any) -> Reply:
        return cls(text=text, **kw)

    @classmethod
    def error(cls, status: int, message: str = "error", *, retry_after: float | None = None) -> Reply:
        headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
        return cls(status=status, body={"error": {"message": message, "code": status}}, headers=headers)

    @classmethod
    def garbage(cls, raw: str = "<html>not json{{{") -> Reply:
        return cls(body=raw, headers={"Content-Type": "application/json"})

    @classmethod
    def slow(cls, delay_s: float, text: str | None = None) -> Reply:
        return cls(delay_s=delay_s, text=text)

    @classmethod
    def close(cls) -> Reply:
        return cls(action="close")

    @classmethod
    def reset(cls) -> Reply:
        return cls(action="reset")


def _completion_body(path: str, text: str, reply: Reply, model: str) -> dict[str, Any]:
    if path.endswith("/chat/completions"):
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if reply.reasoning is not None:
            message[reply.reasoning_field] = reply.reasoning
        choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": reply.finish_reason}
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "finish_reason": reply.finish_reason}
        obj = "text_completion"
    return {
        "id": "fake-1",
        "object": obj,
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


class FakeOpenAIServer:
    """Scriptable OpenAI-compatible HTTP server on 127.0.0.1 (see the module docstring)."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        default: Reply | Callable[[RecordedRequest], Reply] | None = None,
        model: str = "fake-model",
    ):
        self.host = host
        self._port = port
        self.model = model
        self.default: Reply | Callable[[RecordedRequest], Reply] = default or Reply()
        self.requests: list[RecordedRequest] = []
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ control
    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def bodies(self) -> list[Any]:
        """JSON bodies of the POSTs received, in order."""
        with self._lock:
            return [r.body for r in self.requests if r.method == "POST"]

    def completion_requests(self) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.method == "POST"]

    def script(self, *replies: Reply | Iterable[Reply]) -> FakeOpenAIServer:
        """Queue replies for the next POSTs (one each, in order); then ``default`` answers."""
        with self._lock:
            for r in replies:
                if isinstance(r, Reply):
                    self._script.append(r)
                else:
                    self._script.extend(r)
        return self

    def reset(self) -> None:
        """Forget received requests and any unconsumed script; restore the echo default."""
        with self._lock:
            self.requests.clear()
            self._script.clear()
            self.default = Reply()

    def start(self) -> FakeOpenAIServer:
        server = self

        class Handler(_Handler):
            owner = server

        self._stopping.clear()
        self._httpd = ThreadingHTTPServer((self.host, self._port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes handlers sleeping in a slow reply
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ internals
    def _next_reply(self, rec: RecordedRequest) -> Reply:
        with self._lock:
            self.requests.append(rec)
            if self._script:
                return self._script.popleft()
            default = self.default
        return default(rec) if callable(default) else default


class _Handler(BaseHTTPRequestHandler):
    owner: FakeOpenAIServer
    protocol_version = "HTTP/1.1"  # keep-alive, like real servers

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        return

    def do_GET(self) -> None:
        if self.path.rstrip("/") in ("/v1/models", "/health"):
            body = {"object": "list", "data": [{"id": self.owner.model, "object": "model"}]}
            self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"})
        else:
            self._send(404, b'{"error":"not found"}', {"Content-Type": "application/json"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw.decode("utf-8", "replace")
        rec = RecordedRequest("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        reply = self.owner._next_reply(rec)
        if reply.delay_s and self.owner._stopping.wait(reply.delay_s):
            self.close_connection = True
            return
        if reply.action == "close":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if reply.body is None:
            text = reply.text if reply.text is not None else "echo:" + rec.prompt_text
            payload = json.dumps(_completion_body(self.path, text, reply, self.owner.model)).encode()
        elif isinstance(reply.body, bytes):
            payload = reply.body
        elif isinstance(reply.body, str):
            payload = reply.body.encode()
        else:
            payload = json.dumps(reply.body).encode()
        headers = {"Content-Type": "application/json", **reply.headers}
        if reply.action == "reset":
            self.send_response(reply.status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(payload) + 100))
            self.end_headers()
            self.wfile.write(payload[: max(1, len(payload) // 2)])
            self.wfile.flush()
            # SO_LINGER 0 turns close() into a TCP RST: a crash mid-response.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return
        self._send(reply.status, payload, headers)

    def _send(self, status: int, payload: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (bind to 0, read it, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def dead_url(host: str = "127.0.0.1") -> str:
    """A base URL where nothing listens (connections are refused)."""
    return f"http://{host}:{free_port(host)}"
