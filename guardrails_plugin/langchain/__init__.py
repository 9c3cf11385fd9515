"""LangChain integration: a callback handler, a Runnable wrapper and create_agent middleware.

* ``GuardCallbackHandler`` / ``AsyncGuardCallbackHandler``: stop a streaming chat model as soon
  as a check blocks (a callback cannot delay tokens, only abort).
* ``GuardedRunnable`` / ``guard_runnable``: any Runnable with checks on input and output; its
  streams hold the answer back until checked, and so do the event streams that read it
  (``astream_events`` v1 / v2, ``astream_log``: events.py).
* ``GuardMiddleware``: prompt / reasoning / response / tool-result checks for
  ``langchain.agents.create_agent``; holds unchecked answer text back in every stream mode
  (``messages`` / ``updates`` / ``values``, ``astream_events`` v2 through the model call,
  model_call.py; the v3 event stream through its transformer); under ``escalation_hold`` pauses the
  run for a person (LangGraph ``interrupt()``, HumanInTheLoopMiddleware's shape).
  ``create_guarded_agent`` builds such an agent and checks its checkpointer at build time.
* ``resume_from_review`` / ``aresume_from_review`` / ``review_command`` / ``resume_reviewed``:
  resume paused runs with the decisions reviewers took in the review queue.

Needs the ``langchain`` extra: ``pip install 'guardrails-plugin[langchain]'``.
"""

from .callbacks import AsyncGuardCallbackHandler, GuardCallbackHandler
from .hitl import (
    ACTION_NAME,
    ReviewDecisionError,
    aresume_from_review,
    resume_from_review,
    resume_reviewed,
    review_command,
)
from .middleware import GuardMiddleware, create_guarded_agent
from .runnable import GuardedRunnable, guard_runnable

__all__ = [
    "ACTION_NAME",
    "AsyncGuardCallbackHandler",
    "GuardCallbackHandler",
    "GuardMiddleware",
    "GuardedRunnable",
    "ReviewDecisionError",
    "aresume_from_review",
    "create_guarded_agent",
    "guard_runnable",
    "resume_from_review",
    "resume_reviewed",
    "review_command",
]
