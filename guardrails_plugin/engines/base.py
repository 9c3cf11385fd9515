"""The seam between guard models (which know prompts) and engines (which produce tokens).

An engine takes a batch of ``GenerationRequest`` and returns one completion string per request,
in order. A request is either a raw completion prompt (GuardReasoner's protocol) or a list of chat
messages that the engine renders with the guard's own chat template (ReasoningShield, FlexGuard).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


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
    #: streaming checks of one growing text (a monitor) share this id; an engine that keeps KV
    #: caches reuses the previous check's prefix (TransformersEngine), others ignore it
    session_id: str | None = None

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("GenerationRequest needs exactly one of prompt= or messages=")
        if self.messages is not None and not isinstance(self.messages, tuple):
            object.__setattr__(self, "messages", tuple(self.messages))

    @property
    def is_chat(self) -> bool:
        return self.messages is not None


@runtime_checkable
class Engine(Protocol):
    """What every engine implements."""

    name: str

    async def generate(
        self, requests: Sequence[GenerationRequest], *, timeout: float | None = None
    ) -> list[str]:
        """Return one completion per request, in order. Raise GuardEngineError (or its subclass
        GuardTimeoutError) when no completion can be had; never return a partial batch."""
        ...

    def render(self, request: GenerationRequest) -> str:
        """The exact text the model sees for ``request`` (chat template applied)."""
        ...

    async def aclose(self) -> None:
        """Release connections, threads and memory."""
        ...


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
