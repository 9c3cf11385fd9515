"""The human side of ESCALATE: a review page (``guardrails-plugin review serve``), the queue logic
under it, and the export of reviewed escalations as labelled data for ``eval`` / ``calibrate``.

The web app needs the ``review`` extra (FastAPI, uvicorn, Jinja2, itsdangerous, python-multipart);
the queue logic and the export need nothing beyond the core package.
"""

from __future__ import annotations

from .export import export_reviewed, reviewed_rows
from .queue import AGE_FILTERS, EditOutcome, EscalationView, ReviewError, ReviewQueue

__all__ = ["AGE_FILTERS", "EditOutcome", "EscalationView", "ReviewError", "ReviewQueue", "create_app",
           "export_reviewed", "reviewed_rows"]


def __getattr__(name: str) -> object:
    if name == "create_app":  # FastAPI only when the web app is asked for
        from .app import create_app

        return create_app
    raise AttributeError(name)
