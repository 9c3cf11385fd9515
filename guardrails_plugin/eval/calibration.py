"""Threshold calibration: sweep every candidate block threshold, choose one for a target (best
F1, or a precision / recall floor), write it into a config, plot the sweep."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..config import GuardConfig
from ..types import Stage
from .data import EvaluationError
from .metrics import binary_metrics
from .run import Scored


@dataclass
class ThresholdPoint:
    threshold: float
    precision: float
    recall: float
    f1: float
    accuracy: float
    tp: int
    fp: int
    fn: int
    tn: int


def sweep(scored: Sequence[Scored], *, fail_closed: bool = True) -> list[ThresholdPoint]:
    """Metrics at every candidate block threshold (each distinct risk a guard gave). Flagged at
    ``t`` means risk >= t, as the policy compares; failed calls count as flagged under
    ``fail_closed`` whatever the threshold."""
    candidates = sorted({s.risk for s in scored if s.risk is not None})
    if not candidates:
        raise EvaluationError("no example has a risk to sweep (every guard call failed)")
    labels = [s.example.label for s in scored]
    points = []
    for t in candidates:
        preds = [
            (s.risk is not None and s.risk >= t) or (s.failed and fail_closed) for s in scored
        ]
        m = binary_metrics(labels, preds)
        points.append(
            ThresholdPoint(
                threshold=t, precision=m["precision"], recall=m["recall"], f1=m["f1"],
                accuracy=m["accuracy"], tp=m["tp"], fp=m["fp"], fn=m["fn"], tn=m["tn"],
            )
        )
    return points


def parse_target(target: str) -> tuple[str, float | None]:
    """``"f1"`` -> ("f1", None); ``"precision=0.9"`` / ``"recall=0.9"`` -> (metric, minimum)."""
    t = target.strip().lower().replace(" ", "")
    if t == "f1":
        return "f1", None
    for metric in ("precision", "recall"):
        for sep in ("=", ">="):
            if t.startswith(metric + sep):
                try:
                    value = float(t[len(metric + sep):])
                except ValueError:
                    break
                if not 0.0 <= value <= 1.0:
                    raise EvaluationError(f"target {target!r}: value must be in [0, 1]")
                return metric, value
    raise EvaluationError(f"bad target {target!r}: use f1, precision=0.9 or recall=0.9")


def choose_threshold(points: Sequence[ThresholdPoint], target: str = "f1") -> ThresholdPoint:
    """The best-F1 point, among those meeting a precision / recall target if one is given.
    Ties go to the higher precision, then the higher threshold (fewer false blocks)."""
    metric, minimum = parse_target(target)
    pool = list(points)
    if minimum is not None:
        pool = [p for p in points if getattr(p, metric) >= minimum - 1e-12]
        if not pool:
            best = max((getattr(p, metric) for p in points), default=0.0)
            raise EvaluationError(
                f"no threshold reaches {metric} >= {minimum:g} (best {metric} is {best:.4f})"
            )
    return max(pool, key=lambda p: (round(p.f1, 12), round(p.precision, 12), p.threshold))


def calibrate(
    scored: Sequence[Scored], *, target: str = "f1", fail_closed: bool = True
) -> tuple[ThresholdPoint, list[ThresholdPoint]]:
    points = sweep(scored, fail_closed=fail_closed)
    return choose_threshold(points, target), points


def write_config_threshold(
    stage: Stage, threshold: float, out: str | Path, *, config: GuardConfig | None = None
) -> GuardConfig:
    """Write ``config`` (or the defaults) with ``stages.<stage>.block_threshold`` set, as YAML."""
    cfg = config or GuardConfig()
    stages = dict(cfg.stages)
    stages[stage] = stages[stage].model_copy(update={"block_threshold": float(threshold)})
    new = cfg.model_copy(update={"stages": stages})
    new.to_yaml(out)
    GuardConfig.from_yaml(out)  # what we wrote must load
    return new


def plot_sweep(
    points: Sequence[ThresholdPoint], out: str | Path, *, chosen: ThresholdPoint | None = None,
    title: str = "",
) -> Path:
    """A PNG of precision, recall and F1 against the block threshold (matplotlib, Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=110)
    FigureCanvasAgg(fig)  # no pyplot, no display: safe in servers and threads
    ax = fig.add_subplot(1, 1, 1)
    xs = [p.threshold for p in points]
    for name, style in (("precision", "o-"), ("recall", "s-"), ("f1", "^-")):
        ax.plot(xs, [getattr(p, name) for p in points], style, markersize=3, label=name.upper()
                if name == "f1" else name)
    if chosen is not None:
        ax.axvline(chosen.threshold, color="grey", linestyle="--",
                   label=f"chosen {chosen.threshold:.3g} (F1 {chosen.f1:.3f})")
    ax.set_xlabel("block threshold (risk >= t is flagged)")
    ax.set_ylabel("score")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlim(min(xs + [0.0]) - 0.02, max(xs + [1.0]) + 0.02)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title(title or "threshold sweep")
    fig.tight_layout()
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def sweep_to_dicts(points: Sequence[ThresholdPoint]) -> list[dict[str, Any]]:
    return [asdict(p) for p in points]

