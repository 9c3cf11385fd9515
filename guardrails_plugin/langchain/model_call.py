"""GuardMiddleware's model call through the event-safe wrapper (runnable.py, events.py).

Why: ``after_model`` runs once the model has finished, and by then every legacy stream has shown
the model's text: ``stream_mode="messages"`` and ``astream_events`` v2 token by token (the
model's callbacks feed them), ``"updates"`` / ``"values"`` the model node's raw message. So
``wrap_model_call`` hands create_agent a stand-in for the model: a GuardedRunnable that create_agent
binds tools and settings on as it would on the model. Its run is the one those streams see
(released chunks only, then the checked message); the model's own run is hidden from them. The
model node returns the checked message (refused: the refusal, same id; redacted: the redaction),
so no node update carries unchecked text, and ``after_model`` reuses the verdicts.

Not used where something else already guards the stream: the v3 event stream (its transformer,
stream_transformer.py, holds text back; detected by LangGraph's v2 protocol handler in the run's
callbacks) and runs that pause on escalations (``escalation_hold``: ``after_model`` asks a person,
which a refusal at the model call would pre-empt). A ``response_format`` other than a
``ToolStrategy`` makes create_agent inspect the model's class, so those calls go unwrapped too.
"""

from __future__ import annotations

from typing import Any

from langchain.agents.middleware import ModelRequest
from langchain.agents.structured_output import ToolStrategy
from langchain_core.callbacks.base import BaseCallbackManager
from langchain_core.messages import AIMessage
from langchain_core.runnables.config import ensure_config
from langchain_core.tracers._streaming import _V2StreamingCallbackHandler

from ..stream import parts_of
from ..stream.drive import split
from ._common import GuardHost, is_guard_message, query_of
from .runnable import GuardedRunnable
from .stream_transformer import StreamedTurn, _verdicts


class GuardedModel(GuardedRunnable):
    """A GuardedRunnable standing in for an agent's chat model in a ModelRequest: create_agent
    calls ``bind_tools`` / ``bind`` on it; other attributes (``profile``, ``model_name``) are the
    model's own."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or "runnable" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["runnable"], name)


def _v3_stream(config: Any) -> bool:
    """True when the run is read through the v3 event stream (its transformer guards it)."""
    cb = config.get("callbacks")
    handlers = cb.handlers if isinstance(cb, BaseCallbackManager) else (cb or [])
    return any(isinstance(h, _V2StreamingCallbackHandler) for h in handlers)


def guarded_request(mw: Any, request: ModelRequest) -> tuple[ModelRequest, GuardedModel] | None:
    """``request`` with its model behind the event-safe wrapper, or None where it stays as it is."""
    fmt = request.response_format
    if (not mw.guard_model_call or not (mw.check_reasoning or mw.check_response) or mw.pausing
            or (fmt is not None and not isinstance(fmt, ToolStrategy)) or _v3_stream(ensure_config())):
        return None
    model = GuardedModel(request.model, mw.guard, check_prompt=False, check_reasoning=mw.check_reasoning,
                         check_response=mw.check_response, trace_unchecked=mw.trace_unchecked)
    model.on_turn = lambda turn: setattr(mw, "last_stream", turn)
    return request.override(model=model), model  # type: ignore[arg-type]


def remember(mw: GuardHost, model: GuardedModel, request: ModelRequest, response: Any) -> None:
    """Hand the verdicts of a message that passed to ``after_model`` (it checks nothing twice)."""
    result = getattr(response, "result", None)
    messages = result if isinstance(result, list) else [response]
    msg = next((m for m in messages if isinstance(m, AIMessage)), None)
    if msg is None or msg.id is None or is_guard_message(msg):
        return  # refused or redacted: written by the guard, never judged again
    # the wrapper of this call is the one create_agent bound tools on: a copy of ``model``
    turn, judged = model.last_stream, model.last_verdicts
    for bound in model.bound_copies:
        turn, judged = bound.last_stream or turn, bound.last_verdicts or judged
    verdicts = judged if judged is not None else _verdicts(turn) if turn is not None else None
    if verdicts is None or verdicts.stop is not None:
        return
    r, a, tools, _ = split(parts_of(msg))
    mw._remember_stream(StreamedTurn(msg.id, query_of(request.messages), r, a, bool(tools), mw._stages(), verdicts))
