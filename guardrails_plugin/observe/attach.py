"""Opening audit stores (``open_store``) and wiring an Auditor onto a Guard: ``attach_audit(guard,
path)`` and ``GuardConfig.audit``. Opening lives here, not beside the path rules (location.py),
so the stores can read those rules without an import cycle."""

from __future__ import annotations

import os
from typing import Any, Protocol

from pydantic import ValidationError

from ..config import AuditConfig
from ..errors import GuardConfigError
from .auditor import Auditor
from .location import SinkKind, parse_location
from .records import Durability
from .store import AuditStore


def open_store(
    path: str | os.PathLike[str] | None = None,
    *,
    sink: SinkKind | None = None,
    create: bool = True,
    migrate: bool = True,
    **options: Any,
) -> AuditStore:
    """An audit store for a path or URL (the forms location.py lists).

    ``create=False``: the store must exist already (the review CLI never makes one).
    ``migrate=False``: refuse to upgrade an older SQL schema. ``options`` go to the SQL store
    (``pool_size``, ``connect_timeout_s``, ``busy_timeout_s``). Raises GuardConfigError for a path
    or URL the store cannot use, AuditError when there is no store or it cannot be reached."""
    loc = parse_location(path, sink)
    if loc.kind == "jsonl":
        from .jsonl_store import JsonlAuditStore

        return JsonlAuditStore(loc.target, create=create)
    from .sql_store import SqlAuditStore, SQLiteAuditStore

    if loc.kind == "sqlite":
        return SQLiteAuditStore(loc.target, create=create, migrate=migrate, **options)
    return SqlAuditStore(loc.target, create=create, migrate=migrate, **options)


class _Hooked(Protocol):  # a Guard, without importing the facade (dependencies point down)
    hooks: list[Any]


def _fail_mode_of(guard: Any) -> Any:
    config = getattr(guard, "config", None)
    return getattr(config, "fail_mode_for", None) or "closed"


def attach_audit(
    guard: _Hooked,
    path: str | os.PathLike[str] | None = None,
    durability: Durability = "background",
    store_content: bool = False,
    sink: SinkKind | None = None,
    *,
    store_options: dict[str, Any] | None = None,
    **auditor_kw: Any,
) -> Auditor:
    """Open a store and attach an Auditor to ``guard``'s decision hooks; returns the Auditor.

    ``path``: a file path or ``postgresql://`` URL (observe/location.py); defaults to
    ``$GUARDRAILS_PLUGIN_AUDIT_DB`` or ``./guardrails_audit.db``. A strict write that fails follows
    the guard's per-stage fail mode unless ``fail_mode=`` is given. Metrics already attached to the
    guard also count the auditor's written / dropped / failed records."""
    store = open_store(path, sink=sink, **(store_options or {}))
    auditor_kw.setdefault("fail_mode", _fail_mode_of(guard))
    try:
        auditor = Auditor(store, durability=durability, store_content=store_content, **auditor_kw)
    except BaseException:
        store.close()
        raise
    guard.hooks.append(auditor)
    from .metrics import metrics_for  # late: metrics is optional wiring, not a dependency

    m = metrics_for(guard)
    if m is not None:
        m.watch_auditor(auditor)
    return auditor


def auditor_from_config(guard: _Hooked, settings: AuditConfig | dict[str, Any]) -> Auditor:
    """The Auditor for ``GuardConfig.audit`` (an AuditConfig or a dict of its fields)."""
    try:
        cfg = settings if isinstance(settings, AuditConfig) else AuditConfig.model_validate(settings)
    except ValidationError as exc:
        raise GuardConfigError(f"invalid audit settings: {exc}") from None
    store_options = {}
    if parse_location(cfg.path, cfg.sink).kind != "jsonl":
        store_options = {"pool_size": cfg.pool_size, "connect_timeout_s": cfg.connect_timeout_s}
    return attach_audit(
        guard, cfg.path, cfg.durability, cfg.store_content, cfg.sink, store_options=store_options,
        queue_size=cfg.queue_size, batch_size=cfg.batch_size, batch_window_s=cfg.batch_window_s,
        retries=cfg.retries, max_backoff_s=cfg.max_backoff_s, retention_days=cfg.retention_days,
        content_retention_days=cfg.content_retention_days, purge_interval_s=cfg.purge_interval_s,
    )


__all__ = ["attach_audit", "auditor_from_config", "open_store"]
