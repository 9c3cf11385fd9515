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

``--upstream URL`` turns it into a logging front for a real server (``transformers serve``): it
records each request's session key and forwards it. vllm-router re-serialises requests with
SGLang-style fields at their defaults (``separate_reasoning``, ``no_stop_trim``, ...); vLLM ignores
unknown fields, ``transformers serve`` rejects them (HTTP 422), so the front drops exactly those
default-valued additions and forwards everything else unchanged.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import urllib.error
import urllib.request
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


#: fields vllm-router adds to every request, with the defaults it fills in
ROUTER_DEFAULTS: dict[str, object] = {
    "no_stop_trim": False, "ignore_eos": False, "continue_final_message": False, "skip_special_tokens": True,
    "separate_reasoning": True, "stream_reasoning": True, "return_hidden_states": False,
    "include_reasoning": True, "echo": False, "logprobs": False,
}  # fmt: skip


def safe_reply_for(name: str) -> str:
    """The safe verdict of the family a served name belongs to (by its name)."""
    low = name.lower()
    for family, reply in SAFE_REPLIES.items():
        if family in low:
            return reply
    raise KeyError(f"no canned reply for served name {name!r}")


def script_tiny_model(model_dir: str | Path, completion: str) -> None:
    """Make a tiny random-weight model (``build_tiny_model``) answer every chat turn with
    ``completion`` and stop, so a real server (``transformers serve``) writes a verdict a guard
    parser reads. A generation-config ``sequence_bias`` of +100 on each tri-gram of the chain
    (end of the generation prompt, the completion, end of turn) overrides the random logits."""
    from transformers import AutoTokenizer  # only for this helper: the replica itself is stdlib

    model_dir = Path(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    prompt = tok.apply_chat_template([{"role": "user", "content": "x"}], add_generation_prompt=True, tokenize=True)
    if hasattr(prompt, "keys"):
        prompt = prompt["input_ids"]
    path = model_dir / "generation_config.json"
    cfg = json.loads(path.read_text())
    eos = cfg["eos_token_id"][0] if isinstance(cfg["eos_token_id"], list) else cfg["eos_token_id"]
    chain = [int(prompt[-2]), int(prompt[-1]), *tok.encode(completion, add_special_tokens=False), int(eos)]
    for key in ("temperature", "top_k", "top_p"):
        cfg.pop(key, None)
    cfg["do_sample"] = False
    cfg["sequence_bias"] = [[[a, b, c], 100.0] for a, b, c in zip(chain, chain[1:], chain[2:], strict=False)]
    path.write_text(json.dumps(cfg, indent=2))


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
        upstream: str | None = None,
    ):
        self.served = dict(served) if isinstance(served, Mapping) else {n: safe_reply_for(n) for n in served}
        self.host, self._port = host, port
        self.delay_s = delay_s
        self.session_header = session_header.lower()
        self._log = log
        self.upstream = upstream.rstrip("/") if upstream else None
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
    # One segment per reply, sent at once: unbuffered headers + body as two writes meet the
    # client's delayed ACK on a keep-alive connection (~40 ms per request on Linux).
    wbufsize = 1 << 16
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _json(self, status: int, body: Any) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _forward(self, method: str, body: bytes | None = None) -> None:
        assert self.replica.upstream is not None
        req = urllib.request.Request(self.replica.upstream + self.path, data=body, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                status, payload = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, payload = exc.code, exc.read()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:
        if self.replica.upstream:
            self._forward("GET")
            return
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
        # x-stream-id: a stream label the router does not read (benchmark control runs)
        session = self.headers.get(rep.session_header) or self.headers.get("x-stream-id")
        rec = {"model": model, "path": self.path, "session": session, "at": time.time()}
        rep.record(rec)
        if rep.upstream:
            clean = {k: v for k, v in body.items() if not (k in ROUTER_DEFAULTS and v == ROUTER_DEFAULTS[k])}
            self._forward("POST", json.dumps(clean).encode())
            return
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
    ap.add_argument("--served", action="append", default=[], help="a served model name (repeatable)")
    ap.add_argument("--upstream", help="forward to this server instead of answering (see the module doc)")
    ap.add_argument("--delay-ms", type=float, default=0.0)
    ap.add_argument("--session-header", default="x-session-id")
    ap.add_argument("--log", type=Path, help="append one JSON line per request")
    a = ap.parse_args(argv)
    log = a.log.open("a", encoding="utf-8") if a.log else None
    rep = GuardReplica(a.served, host=a.host, port=a.port, delay_s=a.delay_ms / 1000,
                       session_header=a.session_header, log=log, upstream=a.upstream).start()
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
