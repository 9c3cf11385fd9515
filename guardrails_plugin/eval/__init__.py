"""Evaluation and threshold calibration on labelled data.

Three steps, each usable on its own (the CLI's ``eval`` and ``calibrate`` commands chain them):

1. ``load_dataset(path)`` reads JSONL / JSON / CSV into ``Example`` rows. It understands the
   GuardReasoner benchmark files as shipped (alpaca style ``instruction`` / ``input`` / ``output``,
   ``input = "Human user:\\n{prompt}\\n\\nAI assistant:\\n{response}\\n\\n"``), GuardReasoner
   ``generated_predictions.jsonl`` files (``prompt`` / ``label`` / ``predict``) and generic columns
   (``prompt``/``query``/``text``, ``reasoning``/``thought``/``model_thinking``,
   ``response``/``answer``, ``label`` as 0/1/0.5/true/false/harmful/unharmful/safe/unsafe).
2. ``run_guard(guard, dataset)`` (concurrent ``acheck`` calls) or ``score_predictions(dataset)``
   (saved guard completions parsed by the family's adapter, no model) turn examples into
   ``Scored`` rows: the policy's decision plus the raw risk, so thresholds can be swept later.
3. ``evaluate(...)`` computes the report (precision, recall, F1, accuracy, the confusion matrix,
   parse failures, latency, per-category figures); ``sweep`` / ``choose_threshold`` calibrate the
   block threshold; ``write_report`` / ``plot_sweep`` save JSON, markdown and a PNG.

Positive class: "harmful" (0.5, ReasoningShield's "potentially harmful", counts as harmful, as in
its authors' scripts); for refusal-detection files (labels ``refusal`` / ``compliance``) the
positive class is "refusal", predicted from GuardReasoner's Completion field.

An example counts as *flagged* when the content would not be shown as is: BLOCK, REDACT, or an
ESCALATE that holds. Unparseable or failed guard calls are reported three ways: as the configured
policy decided (fail-closed by default: flagged), ``fail_closed`` (always flagged) and
``unparseable_dropped`` (left out, which is what GuardReasoner's evaluate.py ends up doing for
unparseable *harmful* examples).

Modules, one job each: ``data`` (loading), ``run`` (examples to ``Scored`` rows), ``metrics`` (the
report dict), ``calibration`` (threshold sweep and choice), ``report`` (files on disk).
"""

from __future__ import annotations

from .calibration import (
    ThresholdPoint,
    calibrate,
    choose_threshold,
    parse_target,
    plot_sweep,
    sweep,
    sweep_to_dicts,
    write_config_threshold,
)
from .data import (
    Dataset,
    EvaluationError,
    Example,
    Task,
    attach_predictions,
    load_dataset,
    parse_label,
    split_guardreasoner_input,
)
from .metrics import (
    binary_metrics,
    evaluate,
)
from .report import (
    markdown_report,
    markdown_summary_row,
    write_report,
)
from .run import (
    Scored,
    run_guard,
    score_predictions,
)

__all__ = [
    "Dataset",
    "EvaluationError",
    "Example",
    "Scored",
    "Task",
    "ThresholdPoint",
    "attach_predictions",
    "binary_metrics",
    "calibrate",
    "choose_threshold",
    "evaluate",
    "load_dataset",
    "markdown_report",
    "markdown_summary_row",
    "parse_label",
    "parse_target",
    "plot_sweep",
    "run_guard",
    "score_predictions",
    "split_guardreasoner_input",
    "sweep",
    "sweep_to_dicts",
    "write_config_threshold",
    "write_report",
]
