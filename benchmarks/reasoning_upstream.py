"""A loopback OpenAI-compatible upstream for benchmarks/proxy_latency_bench.py: every streamed
/v1/chat/completions request gets ``--words`` reasoning words (``reasoning_content`` deltas, one
every ``--word-ms``), then the answer ``ANSWER`` (one delta per token, one every ``--answer-ms``,
default the same pace), then ``finish_reason: stop`` and ``[DONE]``.

Run as its own process (``python benchmarks/reasoning_upstream.py --port N``) so the proxy talks to
it over a real socket and its pacing does not share a GIL with the proxy or the timing client.
Deltas follow an absolute schedule (reasoning delta i at start + i * word_ms), so a late wake-up on a busy box
does not push every later word back.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

#: the answer, one delta per token (4 tokens in the monitors' approx_tokens units)
ANSWER = ["The ", "answer ", "is ", "42"]
_VOCAB = ["let", "me", "think", "about", "the", "question", "carefully", "and", "check", "each", "step"]


def reasoning_words(n: int) -> list[str]:
    """The ``n`` reasoning deltas, one word each (benign: the scripted guard allows them)."""
    return [f"{_VOCAB[i % len(_VOCAB)]} " for i in range(n)]


def build_app(words: int, word_s: float, answer_s: float | None = None):
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    reasoning = reasoning_words(words)

    def chunk(cid: str, model: str, delta: dict, finish: str | None = None) -> bytes:
        body = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return b"data: " + json.dumps(body).encode() + b"\n\n"

    async def chat(request: Request):
        body = await request.json()
        model = body.get("model", "reasoner")
        cid = f"chatcmpl-{time.monotonic_ns()}"
        if not body.get("stream"):
            return JSONResponse({
                "id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "finish_reason": "stop", "message": {
                    "role": "assistant", "content": "".join(ANSWER), "reasoning_content": "".join(reasoning)}}],
                "usage": {"prompt_tokens": 5, "completion_tokens": words + len(ANSWER),
                          "total_tokens": 5 + words + len(ANSWER)}})

        async def gen():
            yield chunk(cid, model, {"role": "assistant", "content": ""})
            deltas = [{"reasoning_content": w} for w in reasoning] + [{"content": a} for a in ANSWER]
            start = time.monotonic()
            step = [word_s] * words + [word_s if answer_s is None else answer_s] * len(ANSWER)
            due = start
            for d, pace in zip(deltas, step, strict=True):
                wait = due - time.monotonic()
                due += pace
                if wait > 0:
                    await asyncio.sleep(wait)
                yield chunk(cid, model, d)
            yield chunk(cid, model, {}, finish="stop")
            yield b"data: [DONE]\n\n"

        return StreamingResponse(gen(), media_type="text/event-stream")

    async def models(request: Request):
        return JSONResponse({"object": "list", "data": [{"id": "reasoner", "object": "model"}]})

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/v1/models", models)])


def main() -> None:
    import uvicorn

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--words", type=int, default=300)
    ap.add_argument("--word-ms", type=float, default=3.0)
    ap.add_argument("--answer-ms", type=float, default=None, help="pace of the answer deltas (default: --word-ms)")
    args = ap.parse_args()
    answer_s = None if args.answer_ms is None else args.answer_ms / 1000.0
    uvicorn.run(build_app(args.words, args.word_ms / 1000.0, answer_s), host="127.0.0.1", port=args.port,
                log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
