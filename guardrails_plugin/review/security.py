"""Who may review, and proof that a form post came from our own page.

* Reviewer tokens: either one shared token (the reviewer types a name at login, recorded as the
  resolver) or one token per reviewer (``name:token``; the token names the reviewer). Every
  configured token is compared in constant time (``hmac.compare_digest``), all of them on every
  attempt, so timing tells nothing about which one was close.
* Sessions: starlette's signed cookie (itsdangerous), HttpOnly and SameSite=Strict. A login issues
  a fresh session id, so a session planted before login is worthless.
* CSRF: every form carries ``HMAC(secret, "csrf|" + session id)``; a post without the token of its
  own session is refused, and so is one whose Origin / Sec-Fetch-Site says another site sent it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import unicodedata
from dataclasses import dataclass, field

from ..errors import GuardConfigError

MAX_NAME = 64


@dataclass
class ReviewAuth:
    """``token``: one shared reviewer token; ``reviewers``: ``{name: token}``. At least one."""

    token: str | None = None
    reviewers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.token and not self.reviewers:
            raise GuardConfigError("the review app needs a reviewer token (--token or --reviewer NAME:TOKEN)")
        for name, tok in [("shared", self.token or "x" * 16), *self.reviewers.items()]:
            if len(tok) < 16:
                raise GuardConfigError(f"reviewer token for {name!r} is too short: use 16+ characters")
            if not clean_name(name):
                raise GuardConfigError(f"bad reviewer name {name!r}")

    @property
    def shared(self) -> bool:
        """True when the login form asks for a name (one token for everyone)."""
        return bool(self.token)

    def login(self, token: str, name: str | None = None) -> str | None:
        """The reviewer this token logs in, or None. Constant time per configured token."""
        given = token.encode("utf-8", "surrogatepass")
        found: str | None = None
        for rname, tok in self.reviewers.items():
            if hmac.compare_digest(given, tok.encode("utf-8")):
                found = rname
        if self.token is not None and hmac.compare_digest(given, self.token.encode("utf-8")) and found is None:
            found = clean_name(name or "")
        return found or None

    @staticmethod
    def parse_reviewers(specs: list[str]) -> dict[str, str]:
        """``["alice:token1", ...]`` -> ``{"alice": "token1"}``."""
        out: dict[str, str] = {}
        for spec in specs:
            name, sep, tok = spec.partition(":")
            if not sep or not name.strip() or not tok:
                raise GuardConfigError(f"--reviewer wants NAME:TOKEN, got {spec.split(':')[0]!r}:...")
            out[name.strip()] = tok
        return out


def clean_name(name: str) -> str:
    """A reviewer name as recorded: printable, single line, at most 64 characters."""
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")
    return " ".join(name.split())[:MAX_NAME]


def new_session_id() -> str:
    return secrets.token_urlsafe(24)


def csrf_token(secret: str, session_id: str) -> str:
    return hmac.new(secret.encode(), b"csrf|" + session_id.encode(), hashlib.sha256).hexdigest()


def csrf_ok(secret: str, session_id: str | None, given: str | None) -> bool:
    if not session_id or not given:
        return False
    return hmac.compare_digest(csrf_token(secret, session_id).encode(), given.encode("utf-8", "surrogatepass"))


def same_origin(origin: str | None, fetch_site: str | None, host_url: str) -> bool:
    """False when the browser says another site sent the request (Origin / Sec-Fetch-Site)."""
    if fetch_site and fetch_site not in ("same-origin", "none"):
        return False
    if origin and origin != "null":
        return origin.rstrip("/") == host_url.rstrip("/")
    return origin != "null"


SECURITY_HEADERS = {
    # No script runs on these pages at all: even a template bug cannot execute injected markup.
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

__all__ = ["ReviewAuth", "SECURITY_HEADERS", "clean_name", "csrf_ok", "csrf_token", "new_session_id",
           "same_origin"]
