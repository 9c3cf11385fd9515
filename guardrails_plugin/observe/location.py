"""Where an audit store lives: the rules that read ``open_store``'s path or URL (attach.py opens it).

* ``postgresql://user:pass@host:5432/db`` (also ``postgres://`` and ``postgresql+psycopg://``):
  PostgreSQL through psycopg 3 (``pip install 'guardrails-plugin[postgres]'``). Query options
  pass through to libpq, e.g. ``?sslmode=require`` or ``?options=-csearch_path%3Daudit``.
* ``sqlite:///relative.db``, ``sqlite:////abs/path.db`` or a plain file path: SQLite (WAL).
* a path ending in ``.jsonl``: JSON lines (``sink="jsonl"`` forces it for any path).

Anything else that looks like a URL (``mysql://...``, ``postgresql:/typo``, ``s3://...``) is a
configuration error, never a local file with a surprising name.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..errors import GuardConfigError

StoreKind = Literal["sqlite", "postgresql", "jsonl"]
SinkKind = Literal["sqlite", "jsonl"]

#: where the audit store lives when no path is given (also the CLI's default --db)
DEFAULT_PATH_ENV = "GUARDRAILS_PLUGIN_AUDIT_DB"
DEFAULT_SQLITE_PATH = "guardrails_audit.db"

# a scheme of two or more letters then ':' (one letter is a Windows drive, as in C:\...)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+):")
_FORMS = ("postgresql://user@host:5432/dbname, sqlite:///path/to/audit.db, a file path "
          "(audit.db, or ./name:with:colons.db), or a *.jsonl path")


def default_path() -> str:
    return os.environ.get(DEFAULT_PATH_ENV) or DEFAULT_SQLITE_PATH


@dataclass(frozen=True)
class Location:
    kind: StoreKind
    target: str  #: file path (sqlite, jsonl) or SQLAlchemy URL with its driver (postgresql)
    display: str  #: safe to print: the password is masked


def parse_location(path_or_url: str | os.PathLike[str] | None, sink: str | None = None) -> Location:
    """Read a store path or URL. Raises GuardConfigError for anything the store cannot use."""
    if sink is not None and sink not in ("sqlite", "jsonl"):
        raise GuardConfigError(f"unknown audit sink {sink!r} (expected 'sqlite' or 'jsonl'; "
                               "PostgreSQL is chosen by a postgresql:// path)")
    if isinstance(path_or_url, os.PathLike):
        return _file(Path(path_or_url), sink)
    raw = (path_or_url or "").strip() or default_path()
    m = _SCHEME.match(raw)
    if m is None:
        return _file(Path(raw), sink)
    if "://" not in raw:
        raise GuardConfigError(f"audit path {raw!r} looks like a URL but is not one; use {_FORMS}")
    return _url(raw, m.group(1).lower(), sink)


def _file(p: Path, sink: str | None) -> Location:
    if p.is_dir():
        raise GuardConfigError(f"audit path {p} is a directory; give a file inside it, e.g. {p / 'audit.db'}")
    kind: StoreKind = "jsonl" if (sink == "jsonl" or (sink is None and p.name.endswith(".jsonl"))) else "sqlite"
    return Location(kind, str(p), str(p))


def _url(raw: str, scheme: str, sink: str | None) -> Location:
    import sqlalchemy as sa

    backend, _, driver = scheme.partition("+")
    if backend == "postgres":  # libpq's alias; SQLAlchemy only knows postgresql
        raw = "postgresql" + raw[len("postgres"):]
        backend = "postgresql"
    if backend not in ("postgresql", "sqlite"):
        raise GuardConfigError(f"audit store URL scheme {scheme!r} is not supported; use {_FORMS}")
    if sink is not None:
        raise GuardConfigError(f"audit sink {sink!r} is for file paths; a URL chooses its own store")
    try:
        url = sa.make_url(raw)
    except sa.exc.ArgumentError as exc:
        raise GuardConfigError(f"audit store URL is malformed: {exc}") from None
    if backend == "sqlite":
        if driver not in ("", "pysqlite"):
            raise GuardConfigError(f"audit store: SQLite driver {driver!r} is not supported; use sqlite:///path")
        if not url.database or url.database == ":memory:":
            raise GuardConfigError("audit store: an in-memory SQLite database is no audit trail; "
                                   "give a file, e.g. sqlite:///audit.db")
        return _file(Path(url.database), "sqlite")
    if driver not in ("", "psycopg"):
        raise GuardConfigError(f"audit store: PostgreSQL driver {driver!r} is not supported; "
                               "use postgresql:// (psycopg 3)")
    if not url.database:
        raise GuardConfigError("audit store URL names no database: postgresql://user@host:5432/dbname")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise GuardConfigError("a PostgreSQL audit store needs psycopg 3: "
                               "pip install 'guardrails-plugin[postgres]'") from None
    url = url.set(drivername="postgresql+psycopg")
    return Location("postgresql", url.render_as_string(hide_password=False),
                    url.set(drivername="postgresql").render_as_string(hide_password=True))


__all__ = ["DEFAULT_PATH_ENV", "DEFAULT_SQLITE_PATH", "Location", "default_path", "parse_location"]
