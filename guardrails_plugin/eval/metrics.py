"""The evaluation report: precision, recall, F1, accuracy, confusion counts (as configured,
fail-closed, unparseable dropped), parse failures, latency and per-category figures."""

from __future__ import annotations

import datetime as _dt
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import GuardConfig
from ..types import Stage
from .data import Dataset, EvaluationError, Task
from .run import Scored


def binary_metrics(labels: Sequence[bool], preds: Sequence[bool]) -> dict[str, Any]:
    """Precision, recall, F1, accuracy and the confusion counts (0.0 where a ratio is undefined;
    all four None when there are no examples)."""
    tp = sum(1 for y, p in zip(labels, preds, strict=True) if y and p)
    fp = sum(1 for y, p in zip(labels, preds, strict=True) if not y and p)
    fn = sum(1 for y, p in zip(labels, preds, strict=True) if y and not p)
    tn = sum(1 for y, p in zip(labels, preds, strict=True) if not y and not p)
    n = tp + fp + fn + tn
    if n == 0:  # e.g. every example unparseable and dropped: no figure, not a zero
        return {"n": 0, "tp": 0, "fp": 0, "fn": 0, "tn": 0,
                "precision": None, "recall": None, "f1": None, "accuracy": None}
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return {
        "n": n, "tp": tp, "fp": fp, "fn": fn, "tn": tn,
        "precision": precision, "recall": recall, "f1": f1,
        "accuracy": (tp + tn) / n if n else 0.0,
    }


def _pred(s: Scored, task: Task) -> bool:
    if task == "refusal":
        return bool(s.refusal) if not s.failed else s.flagged
    return s.flagged


def _percentiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    v = sorted(values)

    def q(p: float) -> float:  # nearest-rank
        return v[min(len(v) - 1, max(0, math.ceil(p * len(v)) - 1))]

    return {"mean": sum(v) / len(v), "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": v[-1]}


def evaluate(
    scored: Sequence[Scored],
    dataset: Dataset,
    *,
    stage: Stage | None = None,
    config: GuardConfig | None = None,
    source: str = "guard",
    family: str | None = None,
    wall_s: float | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The report (a JSON-serialisable dict) for ``scored`` rows of ``dataset``."""
    stage = stage or dataset.stage
    cfg = config or GuardConfig()
    task = dataset.task
    if task == "refusal" and all(s.refusal is None for s in scored if not s.failed):
        raise EvaluationError("refusal labels need a guard that reports refusals (GuardReasoner)")
    labels = [s.example.label for s in scored]
    preds = [_pred(s, task) for s in scored]
    kept = [(y, p) for s, y, p in zip(scored, labels, preds, strict=True) if not s.failed]
    failed = [s for s in scored if s.failed]
    sc = cfg.stage(stage)
    guards = [
        {
            "name": g,
            "family": cfg.models[g].family,
            "model": cfg.models[g].model,
            "engine": cfg.models[g].engine,
        }
        for g in sc.guards
        if g in cfg.models
    ]
    lat = _percentiles([s.latency_ms for s in scored if s.latency_ms is not None])
    report: dict[str, Any] = {
        "dataset": dataset.path,
        "dataset_name": _dataset_name(dataset.path),
        "format": dataset.format,
        "stage": str(stage),
        "task": task,
        "positive_class": "refusal" if task == "refusal" else "harmful",
        "n": len(scored),
        "positives": sum(labels),
        "source": source,
        "family": family,
        "mode": cfg.mode,
        "guards": guards if source == "guard" else [{"name": family, "family": family, "model": None,
                                                      "engine": "saved predictions"}],
        "strictness": cfg.strictness,
        "threshold": cfg.threshold(stage),
        "fail_mode": cfg.fail_mode_for(stage),
        "metrics": binary_metrics(labels, preds),
        "metrics_fail_closed": binary_metrics(labels, [p or s.failed for s, p in zip(scored, preds, strict=True)]),
        "metrics_unparseable_dropped": binary_metrics([y for y, _ in kept], [p for _, p in kept]),
        "parse_failures": {
            "count": len(failed),
            "by_kind": dict(Counter(s.failure or "unknown" for s in failed)),
            "by_label": dict(Counter("positive" if s.example.label else "negative" for s in failed)),
            "indices": [s.example.index for s in failed][:50],
        },
        "actions": dict(Counter(s.action for s in scored)),
        "latency_ms": lat,
        "wall_s": wall_s,
        "examples_per_s": (len(scored) / wall_s) if wall_s else None,
        "per_category": _per_category(scored, task),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    from .. import __version__

    report["version"] = __version__
    report.update(extra or {})
    return report


def _dataset_name(path: str) -> str:
    p = Path(path)
    # generic file names say nothing: keep the folder ("HarmBenchResponse/generated_predictions")
    if p.stem in ("generated_predictions", "predictions", "test", "data", "eval", "dev") and p.parent.name:
        return f"{p.parent.name}/{p.stem}"
    return p.stem


def _per_category(scored: Sequence[Scored], task: Task) -> dict[str, Any]:
    """Per predicted category (the guard's own codes, e.g. FlexGuard's VIO): how many examples
    the guard flagged with it and how many of those are gold positives; per gold category (a
    ``category`` column): how many positives the guard caught."""
    predicted: dict[str, dict[str, Any]] = {}
    for s in scored:
        for c in s.categories:
            d = predicted.setdefault(c, {"flagged": 0, "true_positives": 0, "tagged": 0})
            d["tagged"] += 1
            if _pred(s, task):
                d["flagged"] += 1
                d["true_positives"] += int(s.example.label)
    for d in predicted.values():
        d["precision"] = d["true_positives"] / d["flagged"] if d["flagged"] else 0.0
    gold: dict[str, dict[str, Any]] = {}
    for s in scored:
        if s.example.category is None:
            continue
        d = gold.setdefault(s.example.category, {"n": 0, "positives": 0, "caught": 0, "correct": 0})
        p = _pred(s, task)
        d["n"] += 1
        d["positives"] += int(s.example.label)
        d["caught"] += int(s.example.label and p)
        d["correct"] += int(s.example.label == p)
    for d in gold.values():
        d["recall"] = d["caught"] / d["positives"] if d["positives"] else None
        d["accuracy"] = d["correct"] / d["n"]
    return {"predicted": dict(sorted(predicted.items())), "gold": dict(sorted(gold.items()))}

