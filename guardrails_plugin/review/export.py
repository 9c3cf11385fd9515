"""Reviewed escalations as a labelled dataset that ``eval`` and ``calibrate`` read.

One row per resolved escalation whose content was stored, in the generic columns of
``evaluation.load_dataset``: ``prompt`` (the user's text; for reasoning / response rows the
request's prompt when the store has it), ``reasoning`` or ``response`` (the judged text), and
``label``:

* reject -> ``harmful`` (the reviewer kept it blocked);
* approve -> ``unharmful`` (released as is);
* edit -> ``harmful`` for the original (it could not be released as written); with
  ``include_edits`` the released replacement is a second row labelled ``unharmful``.

Eval datasets are one stage each, so a file holds one stage and a folder gets ``{stage}.jsonl``
per stage. Extra columns (``escalation_id``, ``review``, ``resolver``, ``guard_risk``, ...) keep
the provenance; the loader ignores them.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..observe import AuditStore, Escalation
from ..observe.reviews import safe_json
from ..types import Stage
from .queue import ReviewError, ReviewQueue, review_kind

LABELS = {"reject": "harmful", "edit": "harmful", "approve": "unharmful"}
FORMATS = (".jsonl", ".json", ".csv")


def reviewed_rows(
    store: AuditStore, *, stage: Stage | str | None = None, include_edits: bool = False
) -> tuple[list[dict[str, Any]], list[Escalation]]:
    """``(rows, skipped)``: labelled rows of the resolved escalations, oldest first, and the
    resolved escalations left out because their content was not stored."""
    want = Stage(stage).value if stage is not None else None
    queue = ReviewQueue(store)
    rows: list[dict[str, Any]] = []
    skipped: list[Escalation] = []
    for esc in sorted(store.list_escalations(None), key=lambda e: e.id):
        kind = review_kind(esc)
        if kind is None or (want and esc.stage != want):
            continue
        if esc.content is None:
            skipped.append(esc)
            continue
        view = queue.view(esc.id)
        base: dict[str, Any] = {
            "escalation_id": esc.id, "request_id": esc.request_id, "stage": esc.stage,
            "review": kind, "resolver": esc.resolver, "resolved_at": esc.resolved_at, "note": esc.note,
            "guard_risk": esc.risk, "guard_reason": esc.reason, "guard_categories": list(esc.categories),
        }
        rows.append(_row(esc.stage, view.query, esc.content, LABELS[kind], base))
        released = view.released_edit
        if include_edits and kind == "edit" and released is not None and released.content is not None:
            rows.append(_row(esc.stage, view.query, released.content, "unharmful",
                             {**base, "review": "edit-release", "guard_risk": released.risk,
                              "guard_reason": released.reason, "guard_categories": list(released.categories)}))
    return rows, skipped


def _row(stage: str, query: str | None, text: str, label: str, extra: dict[str, Any]) -> dict[str, Any]:
    if stage == Stage.PROMPT.value:
        judged = {"prompt": text}
    else:
        judged = {"prompt": query or "", stage: text}
    return {**judged, "label": label, **extra}


def write_rows(rows: Iterable[dict[str, Any]], path: Path) -> int:
    """Write rows as JSONL, a JSON array or CSV (by suffix); returns the row count."""
    rows = list(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        cols = list(dict.fromkeys(k for r in rows for k in r))
        # backslashreplace: a lone surrogate in stored text is written as \udXXX, never a crash
        with path.open("w", encoding="utf-8", errors="backslashreplace", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            for r in rows:
                w.writerow({k: ", ".join(v) if isinstance(v, list) else v for k, v in r.items()})
    elif suffix == ".json":
        path.write_text(safe_json(rows, indent=1) + "\n", encoding="utf-8")
    else:
        with path.open("w", encoding="utf-8") as f:
            for r in rows:
                f.write(safe_json(r) + "\n")
    return len(rows)


def export_reviewed(
    store: AuditStore, out: str | Path, *, stage: Stage | str | None = None, include_edits: bool = False
) -> tuple[dict[str, tuple[Path, int]], list[Escalation]]:
    """Write the labelled rows; returns ``({stage: (path, rows)}, skipped)``.

    ``out`` with a .jsonl / .json / .csv suffix is one file (one stage: give ``stage`` when the
    reviewed escalations span several); otherwise a folder with one ``{stage}.jsonl`` per stage.
    Nothing is written when there is nothing to export."""
    out = Path(out)
    rows, skipped = reviewed_rows(store, stage=stage, include_edits=include_edits)
    by_stage: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_stage.setdefault(r["stage"], []).append(r)
    if not by_stage:
        return {}, skipped
    written: dict[str, tuple[Path, int]] = {}
    if out.suffix.lower() in FORMATS:
        if len(by_stage) > 1:
            raise ReviewError(f"reviewed escalations span the stages {sorted(by_stage)}: an eval file holds "
                              "one stage, so give --stage, or an output folder for one file per stage")
        ((s, stage_rows),) = by_stage.items()
        written[s] = (out, write_rows(stage_rows, out))
    else:
        for s, stage_rows in sorted(by_stage.items()):
            path = out / f"{s}.jsonl"
            written[s] = (path, write_rows(stage_rows, path))
    return written, skipped


__all__ = ["LABELS", "export_reviewed", "reviewed_rows", "write_rows"]
