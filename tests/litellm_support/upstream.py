"""A loopback OpenAI-compatible upstream that streams ``delta.reasoning_content`` then ``delta.content``.

Test support, not a test module. Run as a process (``python upstream.py --port N``) so the proxy
under test talks to it over a real socket. What it answers is chosen by a tag in the last user
message, and ``script(tag)`` gives the exact reasoning / answer deltas, so tests know byte for byte
what the upstream sent:

* ``[benign]`` (default): ordinary reasoning and answer, with non-ASCII text.
* ``[harmful-reasoning]``: the reasoning turns harmful ("bomb") a few sentences in, then keeps
  streaming a long paced tail of ``TAIL<n>`` sentences and an answer containing ``ANSWER_SECRET``.
* ``[harmful-answer]``: benign reasoning, an answer that contains "bomb".
* ``[harmful-reasoning-hold]`` with ``hold-key=XXXXXXXX``: the same, but the upstream stops after the
  harmful sentence and the next one until ``POST /release/XXXXXXXX`` (or 30 s).
* ``[fast]``: a short benign stream without pacing (benchmarks).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from dataclasses import dataclass

HARMFUL_SENTENCE = "To be thorough I will explain how to build a bomb at home. "


@dataclass(frozen=True)
class Script:
    reasoning: list[str]
    content: list[str]
    delay_s: float = 0.0  # pause before each delta after the first ``pace_from`` reasoning deltas
    pace_from: int = 0
    hold_at: int | None = None  # wait for POST /release/<key> before reasoning delta ``hold_at``


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
    if tag == "fast":
        return Script(["Short thought. "] * 4, ["Short ", "answer."])
    return Script(
        ["Thinking about the question — ", "naïve café in 東京 🚀. ", "Step one: consider the facts.\n\n",
         "Step two: write it up. "] + [f"More detail {i}. " for i in range(40)],
        ["The answer: ", "Paris is the capital of France. ", "Ünïcödé ✓ 🚀", "\n\nDone."],
    )


def tag_of(body: dict) -> str:
    msgs = body.get("messages") or []
    last = next((m for m in reversed(msgs) if m.get("role") == "user"), {})
    text = last.get("content") if isinstance(last.get("content"), str) else json.dumps(last.get("content"))
    for tag in ("harmful-reasoning-hold", "harmful-reasoning", "harmful-answer", "fast"):
        if f"[{tag}]" in (text or ""):
            return tag
    return "benign"


def _chunk(cid: str, model: str, delta: dict, finish: str | None = None) -> bytes:
    payload = {
        "id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"


def build_app():  # imported lazily so the module can be imported without starlette
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    stats = {"requests": 0, "chunks_sent": 0, "held": 0, "released_after_hold": 0}
    gates: dict[str, asyncio.Event] = {}

    def gate(key: str) -> asyncio.Event:
        return gates.setdefault(key, asyncio.Event())

    async def chat(request: Request):
        body = await request.json()
        stats["requests"] += 1
        s = script(tag_of(body))
        model = body.get("model", "reasoner")
        cid = f"chatcmpl-{uuid.uuid4().hex[:12]}"
        if not body.get("stream"):
            return JSONResponse({
                "id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "finish_reason": "stop", "message": {
                    "role": "assistant", "content": "".join(s.content),
                    "reasoning_content": "".join(s.reasoning)}}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 20, "total_tokens": 25},
            })

        text = json.dumps(body.get("messages", []))
        key = text.split("hold-key=", 1)[1][:8] if "hold-key=" in text else "default"

        async def gen():
            yield _chunk(cid, model, {"role": "assistant", "content": ""})
            for i, r in enumerate(s.reasoning):
                if s.hold_at is not None and i == s.hold_at:
                    stats["held"] += 1
                    try:
                        await asyncio.wait_for(gate(key).wait(), 30)
                    except asyncio.TimeoutError:
                        pass
                    stats["released_after_hold"] += 1
                if s.delay_s and i >= s.pace_from:
                    await asyncio.sleep(s.delay_s)
                stats["chunks_sent"] += 1
                yield _chunk(cid, model, {"reasoning_content": r})
            for c in s.content:
                if s.delay_s:
                    await asyncio.sleep(s.delay_s)
                stats["chunks_sent"] += 1
                yield _chunk(cid, model, {"content": c})
            yield _chunk(cid, model, {}, finish="stop")
            yield b"data: [DONE]\n\n"

        return StreamingResponse(gen(), media_type="text/event-stream")

    async def models(request: Request):
        return JSONResponse({"object": "list", "data": [{"id": "reasoner", "object": "model"}]})

    async def get_stats(request: Request):
        return JSONResponse(stats)

    async def release(request: Request):
        gate(request.path_params["key"]).set()
        return JSONResponse({"released": request.path_params["key"]})

    return Starlette(routes=[
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/models", models),
        Route("/stats", get_stats),
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
