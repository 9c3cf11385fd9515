"""Reports on disk: ``results.json``, ``results.md``, ``predictions.jsonl`` and a ``summary.md``
table that lines up runs of several models / modes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .run import Scored

_SUMMARY_HEADER = (
    "| dataset | stage | source | guards | mode | n | precision | recall | F1 | accuracy "
    "| parse failures | F1 (unparseable dropped) | latency p50 ms |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def markdown_summary_row(report: dict[str, Any]) -> str:
    m = report["metrics"]
    lat = report.get("latency_ms") or {}
    guards = ", ".join(g["name"] or "?" for g in report["guards"])
    p50 = f"{lat['p50']:.1f}" if lat else "-"
    return (
        f"| {report['dataset_name']} | {report['stage']} | {report['source']} | {guards} "
        f"| {report['mode']} | {report['n']} | {_pct(m['precision'])} | {_pct(m['recall'])} "
        f"| {_pct(m['f1'])} | {_pct(m['accuracy'])} | {report['parse_failures']['count']} "
        f"| {_pct(report['metrics_unparseable_dropped']['f1'])} | {p50} |\n"
    )


def markdown_report(report: dict[str, Any]) -> str:
    """The full report as markdown: the summary row, the three scorings, the confusion matrix."""
    m = report["metrics"]
    pos = report["positive_class"]
    lines = [
        f"# Evaluation: {report['dataset_name']} ({report['stage']} stage, positive = {pos})\n\n",
        f"threshold {report['threshold']:g}, fail mode {report['fail_mode']}, mode {report['mode']}, "
        f"source {report['source']}\n\n",
        _SUMMARY_HEADER,
        markdown_summary_row(report),
        "\n| scoring | n | precision | recall | F1 | accuracy | TP | FP | FN | TN |\n",
        "|---|---|---|---|---|---|---|---|---|---|\n",
    ]
    for name, key in (
        ("as configured", "metrics"),
        ("unparseable counted as flagged (fail-closed)", "metrics_fail_closed"),
        ("unparseable dropped", "metrics_unparseable_dropped"),
    ):
        x = report[key]
        lines.append(
            f"| {name} | {x['n']} | {_pct(x['precision'])} | {_pct(x['recall'])} | {_pct(x['f1'])} "
            f"| {_pct(x['accuracy'])} | {x['tp']} | {x['fp']} | {x['fn']} | {x['tn']} |\n"
        )
    lines += [
        f"\nConfusion matrix (as configured; rows gold, columns predicted):\n\n"
        f"| | predicted {pos} | predicted not {pos} |\n|---|---|---|\n"
        f"| gold {pos} | {m['tp']} | {m['fn']} |\n| gold not {pos} | {m['fp']} | {m['tn']} |\n",
    ]
    pf = report["parse_failures"]
    lines.append(f"\nParse failures / failed calls: {pf['count']} {pf['by_kind'] or ''}\n")
    lat = report.get("latency_ms")
    if lat:
        lines.append(
            f"\nLatency per example (ms): mean {lat['mean']:.1f}, p50 {lat['p50']:.1f}, "
            f"p90 {lat['p90']:.1f}, p99 {lat['p99']:.1f}, max {lat['max']:.1f}"
            + (f"; {report['examples_per_s']:.2f} examples/s" if report.get("examples_per_s") else "")
            + "\n"
        )
    cats = report.get("per_category") or {}
    if cats.get("predicted"):
        lines.append("\n| guard category | tagged | flagged | true positives | precision |\n|---|---|---|---|---|\n")
        for c, d in cats["predicted"].items():
            lines.append(f"| {c} | {d['tagged']} | {d['flagged']} | {d['true_positives']} | {_pct(d['precision'])} |\n")
    if cats.get("gold"):
        lines.append("\n| gold category | n | positives | caught | recall | accuracy |\n|---|---|---|---|---|---|\n")
        for c, d in cats["gold"].items():
            lines.append(
                f"| {c} | {d['n']} | {d['positives']} | {d['caught']} | {_pct(d['recall'])} "
                f"| {_pct(d['accuracy'])} |\n"
            )
    return "".join(lines)


def write_report(
    report: dict[str, Any], out_dir: str | Path, *, scored: Sequence[Scored] | None = None
) -> dict[str, Path]:
    """Write ``results.json``, ``results.md`` and (with ``scored``) ``predictions.jsonl`` into
    ``out_dir``, and append a row to ``summary.md`` there so runs of several models / modes line up
    in one table. ``predictions.jsonl`` holds ``prompt``/``label``/``predict`` so it can be scored
    again with ``--predictions``."""
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    paths = {"json": d / "results.json", "markdown": d / "results.md", "summary": d / "summary.md"}
    paths["json"].write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    paths["markdown"].write_text(markdown_report(report), encoding="utf-8")
    summary = paths["summary"]
    if not summary.exists():
        summary.write_text(_SUMMARY_HEADER, encoding="utf-8")
    with summary.open("a", encoding="utf-8") as f:
        f.write(markdown_summary_row(report))
    if scored is not None:
        paths["predictions"] = d / "predictions.jsonl"
        with paths["predictions"].open("w", encoding="utf-8") as f:
            for s in scored:
                e = s.example
                row = {
                    "index": e.index, "prompt": e.prompt, "reasoning": e.reasoning,
                    "response": e.response, "label": e.raw_label, "predict": s.completion,
                    "action": s.action, "flagged": s.flagged, "risk": s.risk, "failed": s.failed,
                    "failure": s.failure, "categories": s.categories, "reason": s.reason,
                    "latency_ms": s.latency_ms,
                }
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return paths
