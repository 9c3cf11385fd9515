"""What the loopback upstream puts BESIDE the answer's content, chosen by tags in the request body:
the places a guard that reads only ``content`` would miss (issue 24, findings 1-3).

Test support, not a test module. With an extra, the script's answer text (``Script.content``,
benign or harmful per the upstream's tag) goes into that place and the visible content becomes a
fixed benign line, so a row is harmful exactly when the extra carries the marker:

* ``[logprobs]`` (or a request ``logprobs`` field): chat ``choices[].logprobs.content[]`` (token,
  bytes, top_logprobs), completions ``logprobs`` (tokens, token_logprobs, top_logprobs,
  text_offset); the content stays the answer (logprobs spell it).
* ``[audio]``: chat ``message.audio.transcript`` / ``delta.audio.transcript``, content None.
* ``[refusal-field]``: chat ``message.refusal`` / ``delta.refusal``, content None.
* ``[annotations]``: chat ``message.annotations[].url_citation.title``.
* ``[extra-field]``: a chat message field LiteLLM does not know (``secret_note``).
* Responses: ``[annotation]`` (output_text annotation title; streamed as
  ``response.output_text.annotation.added``), ``[web-search]`` (``web_search_call.action.query``),
  ``[image-gen]`` (``image_generation_call.revised_prompt``), ``[extra-top]`` (an unknown top-level
  response field), ``[odd-event]`` (a stream event nobody knows whose type ends in ``.completed``).

``record["extras"]`` keeps what was sent beside the content, for byte-for-byte comparisons.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

CHAT = ("logprobs", "audio", "refusal-field", "annotations", "extra-field")
RESPONSES = ("annotation", "web-search", "image-gen", "extra-top", "odd-event")
BENIGN_LINE = "See the source."
AUDIO_DATA = "UklGRiQAAABXQVZFZm10IBAAAAABAAEAQB8AAEAfAAABAAgAZGF0YQAAAAA="  # a tiny WAV header
IMAGE_DATA = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGBgAAAABQABpfZFQAAAAABJRU5ErkJggg=="


def extras_of(text: str, body: dict) -> set[str]:
    out = {x for x in CHAT + RESPONSES if f"[{x}]" in text}
    if body.get("logprobs"):
        out.add("logprobs")
    return out


def visible(s: Any, extras: set[str]) -> Any:
    """The script as the visible content shows it: the answer moves out for every extra but logprobs."""
    if extras - {"logprobs"}:
        return replace(s, content=[BENIGN_LINE])
    return s


def answer(s: Any) -> str:
    return "".join(s.content)


def _lp(token: str) -> dict:
    b = list(token.encode())
    return {"token": token, "logprob": -0.25, "bytes": b, "top_logprobs": [{"token": token, "logprob": -0.25, "bytes": b}]}


def chat_logprobs(tokens: list[str]) -> dict:
    return {"content": [_lp(t) for t in tokens], "refusal": None}


def completion_logprobs(tokens: list[str], start: int = 0) -> dict:
    offsets, at = [], start
    for t in tokens:
        offsets.append(at)
        at += len(t)
    return {"tokens": list(tokens), "token_logprobs": [-0.25] * len(tokens),
            "top_logprobs": [{t: -0.25} for t in tokens], "text_offset": offsets}


def _annotation(text: str) -> dict:
    return {"type": "url_citation", "url_citation": {"start_index": 0, "end_index": 3, "url": "https://example.com/a",
                                                     "title": text}}


def chat_message(msg: dict, s: Any, extras: set[str], record: dict) -> dict:
    """A whole chat message (and what went beside its content) for ``extras``."""
    text = answer(s)
    if "audio" in extras:
        msg["content"] = None
        msg["audio"] = {"id": "audio_1", "data": AUDIO_DATA, "expires_at": 1900000000, "transcript": text}
    if "refusal-field" in extras:
        msg["content"], msg["refusal"] = None, text
    if "annotations" in extras:
        msg["content"], msg["annotations"] = BENIGN_LINE, [_annotation(text)]
    if "extra-field" in extras:
        msg["content"], msg["secret_note"] = BENIGN_LINE, text
    record.setdefault("extras", {}).update({k: copy.deepcopy(msg[k]) for k in ("audio", "annotations") if k in msg})
    return msg


def chat_deltas(deltas: list[dict], s: Any, extras: set[str]) -> list[tuple[dict, dict | None]]:
    """Streamed chat deltas with ``extras``: (delta, logprobs or None) per chunk."""
    out: list[tuple[dict, dict | None]] = []
    text = answer(s)
    for d in deltas:
        c = d.get("content")
        if c is None:
            out.append((d, None))
        elif "audio" in extras:
            out.append(({"audio": {"id": "audio_1", "transcript": c}}, None))
        elif "refusal-field" in extras:
            out.append(({"refusal": c}, None))
        elif extras & {"annotations", "extra-field"}:
            if c == s.content[0]:
                out.append(({"content": BENIGN_LINE}, None))
        else:
            out.append((d, chat_logprobs([c]) if "logprobs" in extras else None))
    if "audio" in extras:
        out.append(({"audio": {"id": "audio_1", "data": AUDIO_DATA, "expires_at": 1900000000}}, None))
    if "annotations" in extras:
        out.append(({"annotations": [_annotation(text)]}, None))
    if "extra-field" in extras:
        out.append(({"secret_note": text}, None))
    return out


# -- Responses --------------------------------------------------------------------------------------
def _extra_item(rid: str, extra: str, text: str, status: str = "completed") -> dict | None:
    if extra == "web-search":
        return {"id": f"ws_{rid}", "type": "web_search_call", "status": status,
                "action": {"type": "search", "query": text}}
    if extra == "image-gen":
        return {"id": f"ig_{rid}", "type": "image_generation_call", "status": status, "result": IMAGE_DATA,
                "revised_prompt": text}
    return None


def responses_body(body: dict, s: Any, extras: set[str], rid: str) -> dict:
    text = answer(s)
    for extra in extras:
        item = _extra_item(rid, extra, text)
        if item is not None:
            body["output"].append(item)
    if "annotation" in extras:
        for item in body["output"]:
            for part in item.get("content") or () if item.get("type") == "message" else ():
                part["annotations"] = [{"type": "url_citation", "url": "https://example.com/a", "title": text,
                                        "start_index": 0, "end_index": 3}]
    if "extra-top" in extras:
        body["secret_note"] = text
    return body


def responses_events(events: list[tuple[str, dict]], s: Any, extras: set[str], rid: str) -> list[tuple[str, dict]]:
    """The events of a Responses stream with ``extras`` spliced in (sequence numbers renumbered)."""
    text = answer(s)
    out: list[tuple[str, dict]] = []
    note = {"type": "url_citation", "url": "https://example.com/a", "title": text, "start_index": 0, "end_index": 3}
    for event, payload in events:
        if event == "response.output_text.done" and "annotation" in extras:
            out.append(("response.output_text.annotation.added", {
                "type": "response.output_text.annotation.added", "item_id": payload["item_id"],
                "output_index": payload["output_index"], "content_index": 0, "annotation_index": 0,
                "annotation": dict(note)}))
        if "annotation" in extras:  # the whole forms after it repeat the annotation
            parts = [payload.get("part")] if event == "response.content_part.done" else [
                p for item in ([payload.get("item")] if event == "response.output_item.done" else
                               (payload.get("response") or {}).get("output") or [] if event == "response.completed" else [])
                if (item or {}).get("type") == "message" for p in item.get("content") or ()]
            for p in parts:
                if p and p.get("type") == "output_text":
                    p["annotations"] = [dict(note)]
        if event == "response.completed":
            index = sum(e == "response.output_item.added" for e, _ in out)
            tools = _tool_events(rid, extras, text, index)
            out += tools
            payload["response"]["output"] += [p["item"] for e, p in tools if e == "response.output_item.done"]
            if "odd-event" in extras:
                out.append(("response.telepathy_call.completed", {
                    "type": "response.telepathy_call.completed", "item_id": f"tp_{rid}", "output_index": index,
                    "transcript": text}))
        out.append((event, payload))
    for n, (_, payload) in enumerate(out):
        payload["sequence_number"] = n
    return out


def _tool_events(rid: str, extras: set[str], text: str, index: int) -> list[tuple[str, dict]]:
    out: list[tuple[str, dict]] = []
    for extra, name, steps in (("web-search", "web_search_call", ("in_progress", "searching", "completed")),
                               ("image-gen", "image_generation_call", ("in_progress", "generating", "completed"))):
        if extra not in extras:
            continue
        started = _extra_item(rid, extra, "", "in_progress") or {}
        started.pop("action", None)
        started.pop("revised_prompt", None)
        started.pop("result", None)
        out.append(("response.output_item.added", {"type": "response.output_item.added", "output_index": index,
                                                   "item": started}))
        for step in steps:
            out.append((f"response.{name}.{step}", {"type": f"response.{name}.{step}", "item_id": started["id"],
                                                    "output_index": index}))
        out.append(("response.output_item.done", {"type": "response.output_item.done", "output_index": index,
                                                  "item": _extra_item(rid, extra, text)}))
        index += 1
    return out
