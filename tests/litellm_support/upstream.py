"""A loopback upstream speaking the OpenAI chat / completions / Responses and Anthropic Messages wire
formats: reasoning, then the answer, then tool calls, streamed or whole.

Test support, not a test module. Run as a process (``python upstream.py --port N``) so the proxy
under test talks to it over a real socket. What it answers is chosen by a tag anywhere in the
request body, and ``script(tag)`` gives the exact reasoning / answer / tool-argument deltas, so
tests know byte for byte what the upstream sent:

* ``[benign]`` (default): ordinary reasoning and answer, with non-ASCII text.
* ``[harmful-reasoning]``: the reasoning turns harmful ("bomb") a few sentences in, then keeps
  streaming a long paced tail of ``TAIL<n>`` sentences and an answer containing ``ANSWER_SECRET``.
* ``[harmful-answer]``: benign reasoning, an answer that contains "bomb".
* ``[harmful-tool]`` / ``[tool]``: benign reasoning and answer, then a ``send_email`` tool call whose
  arguments do / do not contain "bomb".
* ``[harmful-reasoning-hold]`` with ``hold-key=XXXXXXXX``: like harmful-reasoning, but the upstream
  stops after the harmful sentence and the next one until ``POST /release/XXXXXXXX`` (or 30 s).
* ``[fast]``: a short benign stream without pacing (benchmarks).
* ``[summary]`` (with any of the above): Responses reasoning as summary text, not reasoning text.
* ``[upstream-error]``: HTTP 500 whose error message quotes the answer.
* answer extras (answer_extras.py): ``[logprobs]``, ``[audio]``, ``[annotations]``, ... put the
  answer beside the content (logprobs, transcripts, annotation titles, hosted-tool items).

``n>1`` (chat, completions): choice 0 follows ``[benign]``, every other choice the tag. With
``req-key=XXXXXXXX`` in the body the upstream records what it sent for that request:
``GET /seen/XXXXXXXX`` -> ``{"path", "text", "received"}`` (what it sent, and the request body it
received; 404 when the request never reached it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
import uuid
from dataclasses import dataclass, field

try:  # run as a script (the proxy tests) or imported as litellm_support.upstream
    from litellm_support import answer_extras, wire_events
except ImportError:  # pragma: no cover - python upstream.py puts this folder first on sys.path
    import answer_extras  # type: ignore[no-redef]
    import wire_events  # type: ignore[no-redef]

HARMFUL_SENTENCE = "To be thorough I will explain how to build a bomb at home. "
TAGS = ("harmful-reasoning-hold", "harmful-reasoning", "harmful-answer", "harmful-tool", "tool", "fast")


@dataclass(frozen=True)
class Script:
    reasoning: list[str]
    content: list[str]
    delay_s: float = 0.0  # pause before each delta after the first ``pace_from`` reasoning deltas
    pace_from: int = 0
    hold_at: int | None = None  # wait for POST /release/<key> before reasoning delta ``hold_at``
    tool_args: list[str] = field(default_factory=list)  # send_email argument fragments


def key() -> str:
    """A fresh marker the upstream records requests under (``seen`` reads them back)."""
    return uuid.uuid4().hex[:8]


def seen(stack: dict, k: str) -> dict | None:
    """What the upstream received for marker ``k`` (None: nothing reached the model)."""
    import httpx

    r = httpx.get(f"{stack['upstream'].base_url}/seen/{k}")
    return r.json() if r.status_code == 200 else None


def script(tag: str) -> Script:
    if tag == "harmful-reasoning-hold":
        s = script("harmful-reasoning")
        return Script(s.reasoning[:40], s.content, hold_at=4)
    if tag == "harmful-reasoning":
        head = ["The user asks about chemistry. ", "Let me consider the safe parts first.\n\n", HARMFUL_SENTENCE]
        tail = [f"TAIL{i} keeps reasoning about the details. " for i in range(300)]
        return Script(head + tail, ["ANSWER_SECRET: here is the answer."], delay_s=0.01, pace_from=len(head))
    if tag == "harmful-answer":
        return Script(
            ["The user wants a story. ", "A short one will do.\n\n"],
            ["Once upon a time ", "someone built a bomb ", "and it went badly."],
        )
    if tag in ("harmful-tool", "tool"):
        body = "how to build a bomb" if tag == "harmful-tool" else "lunch at noon?"
        return Script(["The user wants an e-mail sent. "], ["Sending it now."],
                      tool_args=['{"to": "bob@example.com", ', f'"body": "{body}"', "}"])
    if tag == "fast":
        return Script(["Short thought. "] * 4, ["Short ", "answer."])
    return Script(
        ["Thinking about the question — ", "naïve café in 東京 🚀. ", "Step one: consider the facts.\n\n",
         "Step two: write it up. "] + [f"More detail {i}. " for i in range(40)],
        ["The answer: ", "Paris is the capital of France. ", "Ünïcödé ✓ 🚀", "\n\nDone."],
    )


def tag_of(body: dict) -> str:
    text = json.dumps(body, ensure_ascii=False)
    return next((t for t in TAGS if f"[{t}]" in text), "benign")


def _key(text: str, name: str) -> str | None:
    m = re.search(rf"(?<![\w-]){name}=([0-9a-zA-Z]{{8}})", text)
    return m.group(1) if m else None


def _sse(payload: dict, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"


def _chat_chunk(cid: str, model: str, index: int, delta: dict, finish: str | None = None,
                logprobs: dict | None = None) -> bytes:
    choice = {"index": index, "delta": delta, "finish_reason": finish, **({"logprobs": logprobs} if logprobs else {})}
    return _sse({"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
                 "choices": [choice]})


def _sent_text(key: str, value: object) -> str:
    if key == "tool_calls":
        return value[0]["function"]["arguments"]  # type: ignore[index]
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _tool_deltas(s: Script) -> list[dict]:
    out = []
    for i, a in enumerate(s.tool_args):
        fn = {"arguments": a, **({"name": wire_events.TOOL_NAME} if i == 0 else {})}
        call = {"index": 0, "function": fn, **({"id": "call_1", "type": "function"} if i == 0 else {})}
        out.append({"tool_calls": [call]})
    return out


def _chat_message(s: Script) -> dict:
    msg: dict = {"role": "assistant", "content": "".join(s.content), "reasoning_content": "".join(s.reasoning)}
    if s.tool_args:
        msg["tool_calls"] = [{"id": "call_1", "type": "function",
                              "function": {"name": wire_events.TOOL_NAME, "arguments": "".join(s.tool_args)}}]
    return msg


async def _aiter(items: list):
    for x in items:
        yield x


def build_app():  # imported lazily so the module can be imported without starlette
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    stats = {"requests": 0, "chunks_sent": 0, "held": 0, "released_after_hold": 0}
    gates: dict[str, asyncio.Event] = {}
    seen: dict[str, dict] = {}

    def gate(key: str) -> asyncio.Event:
        return gates.setdefault(key, asyncio.Event())

    class Turn:
        """One request: its scripts, pacing and the record of what was sent."""

        def __init__(self, request: Request, body: dict):
            stats["requests"] += 1
            text = json.dumps(body, ensure_ascii=False)
            self.s = script(tag_of(body))
            self.summary = "[summary]" in text
            self.model = body.get("model", "reasoner")
            self.hold_key = _key(text, "hold-key") or "default"
            n = body.get("n") or 1
            self.scripts = [self.s] if n == 1 else [script("benign")] + [self.s] * (n - 1)
            self.key = _key(text, "req-key")
            #: ids follow the request key, so two requests with one key get the same bytes back
            self.rid = self.key or uuid.uuid4().hex[:12]
            self.record = seen.setdefault(self.key or "-", {"path": request.url.path, "text": ""})
            self.record["text"] = ""
            self.record["path"] = request.url.path
            self.record["received"] = text  # the whole request body as the model got it
            self.record.pop("extras", None)
            self.extras = answer_extras.extras_of(text, body)
            self.fails = "[upstream-error]" in text

        def error(self) -> JSONResponse | None:
            """``[upstream-error]``: HTTP 500 whose body quotes the answer (what an error body can leak)."""
            if not self.fails:
                return None
            self.sent_whole()
            return JSONResponse({"error": {"message": "upstream failed after writing: " + "".join(self.s.content),
                                           "type": "server_error"}}, status_code=500)

        def sent(self, *texts: str) -> None:
            stats["chunks_sent"] += 1
            self.record["text"] += "".join(texts)

        def sent_whole(self) -> None:
            for s in self.scripts:
                self.sent(*s.reasoning, *s.content, *s.tool_args)

        async def pace(self, i: int, kind: str) -> None:
            s = self.s
            if kind == "reasoning" and s.hold_at is not None and i == s.hold_at:
                stats["held"] += 1
                try:
                    await asyncio.wait_for(gate(self.hold_key).wait(), 30)
                except asyncio.TimeoutError:
                    pass
                stats["released_after_hold"] += 1
            if s.delay_s and (kind != "reasoning" or i >= s.pace_from):
                await asyncio.sleep(s.delay_s)

    def stream(gen) -> StreamingResponse:
        return StreamingResponse(gen, media_type="text/event-stream")

    async def chat(request: Request):
        body = await request.json()
        t = Turn(request, body)
        if t.fails:
            return t.error()
        cid = f"chatcmpl-{t.rid}"
        if not body.get("stream"):
            t.sent_whole()
            return JSONResponse({
                "id": cid, "object": "chat.completion", "created": int(time.time()), "model": t.model,
                "choices": [{"index": i, "finish_reason": "tool_calls" if s.tool_args else "stop",
                             "message": answer_extras.chat_message(_chat_message(answer_extras.visible(s, t.extras)),
                                                                   s, t.extras, t.record),
                             **({"logprobs": answer_extras.chat_logprobs(s.content)} if "logprobs" in t.extras else {})}
                            for i, s in enumerate(t.scripts)],
                "usage": {"prompt_tokens": 5, "completion_tokens": 20, "total_tokens": 25},
            })

        async def gen():
            seqs = [answer_extras.chat_deltas([{"reasoning_content": r} for r in s.reasoning]
                                              + [{"content": c} for c in s.content] + _tool_deltas(s), s, t.extras)
                    for s in t.scripts]
            for i in range(len(t.scripts)):
                yield _chat_chunk(cid, t.model, i, {"role": "assistant", "content": ""})
            for step in range(max(len(q) for q in seqs)):
                for i, q in enumerate(seqs):
                    if step < len(q):
                        if i == len(seqs) - 1:  # pace the tagged choice's deltas
                            await t.pace(step, "reasoning" if step < len(t.s.reasoning) else "content")
                        d, lp = q[step]
                        t.sent(*(_sent_text(k, v) for k, v in d.items()))
                        yield _chat_chunk(cid, t.model, i, d, logprobs=lp)
            for i, s in enumerate(t.scripts):
                yield _chat_chunk(cid, t.model, i, {}, finish="tool_calls" if s.tool_args else "stop")
            yield b"data: [DONE]\n\n"

        return stream(gen())

    async def completions(request: Request):
        body = await request.json()
        t = Turn(request, body)
        if t.fails:
            return t.error()
        cid = f"cmpl-{t.rid}"

        def obj(choices: list) -> dict:
            return {"id": cid, "object": "text_completion", "created": int(time.time()), "model": t.model,
                    "choices": choices}

        if not body.get("stream"):
            for s in t.scripts:
                t.sent(*s.content)
            lp = "logprobs" in t.extras
            out = obj([{"index": i, "text": "".join(s.content), "finish_reason": "stop",
                        "logprobs": answer_extras.completion_logprobs(s.content) if lp else None}
                       for i, s in enumerate(t.scripts)])
            out["usage"] = {"prompt_tokens": 5, "completion_tokens": 20, "total_tokens": 25}
            return JSONResponse(out)

        async def gen():
            for step in range(max(len(s.content) for s in t.scripts)):
                for i, s in enumerate(t.scripts):
                    if step < len(s.content):
                        if i == len(t.scripts) - 1:
                            await t.pace(step, "content")
                        t.sent(s.content[step])
                        lp = (answer_extras.completion_logprobs([s.content[step]], len("".join(s.content[:step])))
                              if "logprobs" in t.extras else None)
                        yield _sse(obj([{"index": i, "text": s.content[step], "logprobs": lp, "finish_reason": None}]))
            yield _sse(obj([{"index": i, "text": "", "logprobs": None, "finish_reason": "stop"}
                            for i in range(len(t.scripts))]))
            yield b"data: [DONE]\n\n"

        return stream(gen())

    async def responses(request: Request):
        body = await request.json()
        t = Turn(request, body)
        if t.fails:
            return t.error()
        shown = answer_extras.visible(t.s, t.extras)
        if not body.get("stream"):
            t.sent_whole()
            return JSONResponse(answer_extras.responses_body(
                wire_events.responses_body(shown, t.model, t.summary, t.rid), t.s, t.extras, t.rid))

        async def gen():
            events = wire_events.responses_events(shown, t.model, t.pace, t.summary, t.rid)
            if t.extras:  # spliced into the whole list (the extras' rows are not paced)
                events = _aiter(answer_extras.responses_events([e async for e in events], t.s, t.extras, t.rid))
            async for event, payload in events:
                if event.endswith(".delta"):
                    t.sent(payload["delta"])
                elif t.extras and event.endswith((".annotation.added", "telepathy_call.completed", "output_item.done")):
                    t.sent(json.dumps(payload, ensure_ascii=False))
                yield _sse(payload, event)

        return stream(gen())

    async def messages(request: Request):
        body = await request.json()
        t = Turn(request, body)
        if t.fails:
            return t.error()
        if not body.get("stream"):
            t.sent_whole()
            return JSONResponse(wire_events.messages_body(t.s, t.model, t.rid))

        async def gen():
            async for event, payload in wire_events.messages_events(t.s, t.model, t.pace, t.rid):
                d = payload.get("delta") or {}
                t.sent(d.get("text") or d.get("thinking") or d.get("partial_json") or "")
                yield _sse(payload, event)

        return stream(gen())

    async def embeddings(request: Request):
        body = await request.json()
        inputs = body.get("input")
        n = len(inputs) if isinstance(inputs, list) else 1
        return JSONResponse({"object": "list", "model": body.get("model", "embedder"),
                             "data": [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]} for i in range(n)],
                             "usage": {"prompt_tokens": 3, "total_tokens": 3}})

    async def models(request: Request):
        return JSONResponse({"object": "list", "data": [{"id": "reasoner", "object": "model"}]})

    async def get_stats(request: Request):
        return JSONResponse(stats)

    async def get_seen(request: Request):
        rec = seen.get(request.path_params["key"])
        return JSONResponse(rec) if rec is not None else JSONResponse({"error": "not seen"}, status_code=404)

    async def release(request: Request):
        gate(request.path_params["key"]).set()
        return JSONResponse({"released": request.path_params["key"]})

    return Starlette(routes=[
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/responses", responses, methods=["POST"]),
        Route("/v1/messages", messages, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/v1/models", models),
        Route("/stats", get_stats),
        Route("/seen/{key}", get_seen),
        Route("/release/{key}", release, methods=["POST"]),
    ])


def main() -> None:
    import uvicorn

    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    uvicorn.run(build_app(), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
