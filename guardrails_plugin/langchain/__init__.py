"""LangChain integration: a callback handler, a Runnable wrapper and create_agent middleware.

* ``GuardCallbackHandler`` / ``AsyncGuardCallbackHandler``: stop a streaming chat model as soon
  as a check blocks (a callback cannot delay tokens, only abort).
* ``GuardedRunnable`` / ``guard_runnable``: any Runnable with checks on input and output; its
  streams hold the answer back until checked.
* ``GuardMiddleware``: prompt / reasoning / response / tool-result checks for
  ``langchain.agents.create_agent``.

Needs the ``langchain`` extra: ``pip install 'guardrails-plugin[langchain]'``.
"""

from .callbacks import AsyncGuardCallbackHandler, GuardCallbackHandler
from .middleware import GuardMiddleware
from .runnable import GuardedRunnable, guard_runnable

__all__ = [
    "AsyncGuardCallbackHandler",
    "GuardCallbackHandler",
    "GuardMiddleware",
    "GuardedRunnable",
    "guard_runnable",
]
