"""A fake guard replica: an OpenAI-compatible loopback server that serves only the names it is
given, answers every check with a safe verdict in the guard family's own format, and logs each
request (served model, path, session key) for routing tests. Not a test module.

It behaves like ``vllm serve --served-model-name NAME`` where it matters to the plugin: ``GET
/v1/models`` lists the served names, ``GET /health`` answers 200, and a request for any other model
gets vLLM's 404 (``The model `X` does not exist.``, ``NotFoundError``).

In-process (threads)::

    with GuardReplica({"GuardReasoner-1B": GR_SAFE}) as rep:
        rep.base_url; rep.records()            # [{"model", "path", "session"}, ...]

As a process (so a test can SIGKILL it mid-load)::

    python tests/guard_replica.py --port 8001 --served GuardReasoner-1B --log requests.jsonl

``--log`` appends one JSON line per request and flushes it, so the record survives a kill.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TextIO

#: safe verdicts in each family's output format (what the real guards write)
SAFE_REPLIES: dict[str, str] = {
    "guardreasoner": "The request is harmless.\nAnswers: \nRequest: unharmful\nCompletion: compliance\n"
                     "Response: unharmful\n",
    "reasoningshield": '"Analysis": harmless reasoning.\n"Judgment": 0',
    "flexguard": "<think>harmless</think>\nSAFE\nRISK_SCORE: 5",
}


def safe_reply_for(name: str) -> str:
    """The safe verdict of the family a served name belongs to (by its name)."""
    low = name.lower()
    for family, reply in SAFE_REPLIES.items():
        if family in low:
            return reply
    raise KeyError(f"no canned reply for served name {name!r}")


class GuardReplica:
    """See the module docstring. ``served`` maps served name -> completion text."""

    def __init__(
        self,
        served: Mapping[str, str] | list[str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        delay_s: float = 0.0,
        session_header: str = "x-session-id",
        log: TextIO | None = None,
    ):
        self.served = dict(served) if isinstance(served, Mapping) else {n: safe_reply_for(n) for n in served}
        self.host, self._port = host, port
        self.delay_s = delay_s
        self.session_header = session_header.lower()
        self._log = log
        self._records: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    @property
    def port(self) -> int:
        assert self._httpd is not None, "not started"
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def records(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._records)

    def record(self, rec: dict[str, Any]) -> None:
        with self._lock:
            self._records.append(rec)
            if self._log is not None:
                self._log.write(json.dumps(rec) + "\n")
                self._log.flush()

    def start(self) -> GuardReplica:
        owner = self

        class Handler(_Handler):
            replica = owner

        self._httpd = ThreadingHTTPServer((self.host, self._port), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> GuardReplica:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    replica: GuardReplica
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _json(self, status: int, body: Any) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:
        path = self.path.rstrip("/")
        if path == "/health":
            self._json(200, {})
        elif path == "/v1/models":
            data = [{"id": n, "object": "model", "owned_by": "vllm"} for n in self.replica.served]
            self._json(200, {"object": "list", "data": data})
        else:
            self._json(404, {"error": "not found"})

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw)
        except ValueError:
            self._json(400, {"error": "not json"})
            return
        chat = self.path == "/v1/chat/completions"
        if not chat and self.path != "/v1/completions":
            self._json(404, {"error": "not found"})
            return
        model = body.get("model") if isinstance(body, dict) else None
        rep = self.replica
        rec = {"model": model, "path": self.path, "session": self.headers.get(rep.session_header),
               "at": time.time()}
        rep.record(rec)
        if model not in rep.served:
            # vLLM's answer to an unknown model (serving_engine.py: _check_model)
            self._json(404, {"object": "error", "message": f"The model `{model}` does not exist.",
                             "type": "NotFoundError", "param": None, "code": 404})
            return
        if rep.delay_s:
            time.sleep(rep.delay_s)
        text = rep.served[model]
        choice: dict[str, Any] = (
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            if chat else {"index": 0, "text": text, "finish_reason": "stop"}
        )
        self._json(200, {"id": "replica-1", "object": "chat.completion" if chat else "text_completion",
                         "created": int(time.time()), "model": model, "choices": [choice],
                         "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--served", action="append", required=True, help="a served model name (repeatable)")
    ap.add_argument("--delay-ms", type=float, default=0.0)
    ap.add_argument("--session-header", default="x-session-id")
    ap.add_argument("--log", type=Path, help="append one JSON line per request")
    a = ap.parse_args(argv)
    log = a.log.open("a", encoding="utf-8") if a.log else None
    rep = GuardReplica(a.served, host=a.host, port=a.port, delay_s=a.delay_ms / 1000,
                       session_header=a.session_header, log=log).start()
    print(f"replica ready on {rep.base_url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        rep.stop()
        sys.exit(0)


if __name__ == "__main__":
    main()
