"""The vault: reversible prompt redaction (LLM Guard's Anonymize / Deanonymize).

With ``redaction.vault`` on the prompt stage, each redacted value is replaced by a numbered token
(``<EMAIL_ADDRESS_1>``; the same value gets the same token), the model reads the tokens, and the
original values are put back into the model's answer on the way to the user. The values live only
in the Vault object on the prompt Decision (a private attribute: never serialised, never in the
audit trail) and are restored only in what the client receives, never in text sent to a guard.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ..types import RedactedSpan
from .apply import merge


class Vault:
    def __init__(self) -> None:
        self._by_token: dict[str, str] = {}
        self._by_value: dict[tuple[str, str], str] = {}
        self._counts: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._by_token)

    def token(self, value: str, kind: str) -> str:
        key = (kind, value)
        if key not in self._by_value:
            n = self._counts[kind] = self._counts.get(kind, 0) + 1
            tok = f"<{kind}_{n}>"
            self._by_value[key] = tok
            self._by_token[tok] = value
        return self._by_value[key]

    def redact(self, text: str, spans: Sequence[RedactedSpan]) -> str:
        """``text`` with each span replaced by its value's token."""
        out, pos = [], 0
        for sp in merge(spans):
            out.append(text[pos : sp.start])
            kind = re.sub(r"\W+", "_", (sp.category or "REDACTED").upper())
            out.append(self.token(text[sp.start : sp.end], kind))
            pos = sp.end
        out.append(text[pos:])
        return "".join(out)

    def restore(self, text: str) -> str:
        """``text`` with every token of this vault replaced by its original value."""
        if not self._by_token or "<" not in text:
            return text
        return self._pattern().sub(lambda m: self._by_token[m.group(0)], text)

    def _pattern(self) -> re.Pattern[str]:
        return re.compile("|".join(re.escape(t) for t in sorted(self._by_token, key=len, reverse=True)))

    def restorer(self) -> Restorer:
        return Restorer(self)


class Restorer:
    """Restores tokens in a streamed answer: a tail that may be the start of a token is held until
    the next delta (or ``flush``) shows whether it is one."""

    def __init__(self, vault: Vault):
        self.vault = vault
        self._tail = ""
        self._longest = max((len(t) for t in vault._by_token), default=0)

    def feed(self, delta: str) -> str:
        text = self._tail + delta
        cut = text.rfind("<")
        if cut >= 0 and len(text) - cut < self._longest and any(t.startswith(text[cut:]) for t in self.vault._by_token):
            text, self._tail = text[:cut], text[cut:]
        else:
            self._tail = ""
        return self.vault.restore(text)

    def flush(self) -> str:
        tail, self._tail = self._tail, ""
        return self.vault.restore(tail)


__all__ = ["Restorer", "Vault"]
