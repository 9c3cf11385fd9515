"""What the reviewer reads is what was written: the page's text filters.

* ``finalize`` (the Jinja environment's, so it applies to every ``{{ }}``, attributes and the
  edit box included): hidden characters (bidi controls, zero-width and other format characters,
  C0/C1 controls, lone surrogates, private-use and unassigned code points) become ``[U+XXXX]``,
  so nothing reorders or hides text and every text can be encoded as UTF-8.
* ``shown``: the same for a field's body text, with each escape marked (``<span class="ctl">``,
  its character name as the title) and a warning badge counting them.
* ``hidden_count``: how many hidden characters a text has (the edit box's warning).
The rules themselves live in observe/reviews.py (``visible``), shared with the CLI and JSON output.
"""

from __future__ import annotations

from typing import Any

import jinja2
from markupsafe import Markup, escape

from ..observe.reviews import char_name, escape_code, hidden_chars, visible


def finalize(value: Any) -> Any:
    if isinstance(value, Markup):
        return value
    if isinstance(value, str):
        return visible(value)
    return value


def shown(value: Any) -> Markup:
    """A field's text, HTML-escaped, hidden characters as marked escapes plus a badge."""
    text = value if isinstance(value, str) else "" if value is None else str(value)
    hidden = set(hidden_chars(text))
    if not hidden:
        return escape(text)
    parts: list[str] = []
    for ch in text:
        if ch in "\n\t\r" or ch not in hidden:
            parts.append(str(escape(ch)))
        else:
            parts.append(f'<span class="ctl" title="{escape(char_name(ch))}">{escape_code(ch)}</span>')
    n = len(hidden_chars(text))
    badge = (f'<span class="hidden-badge" role="note">&#9888; {n} hidden character{"s" if n != 1 else ""} '
             "shown as [U+&hellip;]</span>")
    return Markup("".join(parts) + badge)


def hidden_count(value: Any) -> int:
    return len(hidden_chars(value)) if isinstance(value, str) else 0


def install_filters(env: jinja2.Environment) -> None:
    env.filters["shown"] = shown
    env.filters["hidden_count"] = hidden_count


__all__ = ["finalize", "hidden_count", "install_filters", "shown"]
