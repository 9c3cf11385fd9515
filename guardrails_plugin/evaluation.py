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
"""

from __future__ import annotations

import asyncio
import csv
import datetime as _dt
import io
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from .config import GuardConfig
from .errors import GuardError
from .policy import Policy
from .types import Action, Decision, GuardRequest, Stage, Verdict

Task = Literal["harm", "refusal"]

__all__ = [
    "Dataset",
    "EvaluationError",
    "Example",
    "Scored",
    "attach_predictions",
    "ThresholdPoint",
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
    "write_config_threshold",
    "write_report",
]


class EvaluationError(GuardError):
    """Bad evaluation data or options (unreadable file, unknown label, no threshold meets a target)."""


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------

_HUMAN = "Human user:\n"
_AI = "\n\nAI assistant:\n"

# Column names, in order of preference.
_PROMPT_KEYS = ("prompt", "query", "question", "text", "user", "user_prompt", "request", "input")
_REASONING_KEYS = ("reasoning", "thought", "model_thinking", "thinking", "cot", "reasoning_content")
_RESPONSE_KEYS = ("response", "answer", "model_response", "assistant", "assistant_response")
_LABEL_KEYS = (
    "label", "labels", "gold", "gold_label", "human_majority", "unsafe_label", "is_harmful",
    "harmful", "unsafe", "target", "y", "output",
)
# "guard_predict": Qwen3Guard's eval_gen.py output files
_PREDICT_KEYS = ("predict", "prediction", "guard_output", "raw_output", "completion", "guard_predict")
# A chat conversation column (Qwen3Guard's test files: "message": [{"role", "content"}, ...])
_MESSAGES_KEYS = ("message", "messages", "conversation")
_CATEGORY_KEYS = ("category", "categories", "harm_category")

_POSITIVE = {"harmful", "unsafe", "1", "1.0", "0.5", "true", "yes", "toxic", "jailbreak", "refusal"}
# "controversial" is negative as in Qwen3Guard's eval_gen.py (label = 1 only for "Unsafe")
_NEGATIVE = {"unharmful", "safe", "0", "0.0", "false", "no", "benign", "harmless", "compliance", "controversial"}


@dataclass
class Example:
    """One labelled row."""

    index: int
    prompt: str
    reasoning: str | None
    response: str | None
    label: bool  #: True for the positive class (harmful, or refusal for refusal files)
    raw_label: Any
    category: str | None = None  #: gold category, when the file has one
    completion: str | None = None  #: saved guard completion (predictions files)


@dataclass
class Dataset:
    path: str
    examples: list[Example]
    task: Task
    format: str  #: "guardreasoner" (alpaca benchmark), "predictions", or "generic"
    stage: Stage  #: the stage the rows are for (given, or inferred from the columns)

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def has_completions(self) -> bool:
        return bool(self.examples) and all(e.completion is not None for e in self.examples)


def split_guardreasoner_input(text: str) -> tuple[str, str | None]:
    """``(prompt, response)`` from GuardReasoner's ``Human user:\\n...\\n\\nAI assistant:\\n...\\n\\n``
    (instruction before it allowed). ``response`` is None for prompt-only rows (literal ``None``)."""
    start = text.find(_HUMAN)
    if start < 0:
        raise EvaluationError("not a GuardReasoner input: no 'Human user:' line")
    body = text[start + len(_HUMAN):]
    # Prompt-only rows end with the literal None; otherwise split at the first assistant header.
    if body.endswith(_AI + "None\n\n"):
        return body[: -len(_AI + "None\n\n")], None
    cut = body.find(_AI)
    if cut < 0:
        raise EvaluationError("not a GuardReasoner input: no 'AI assistant:' line")
    response = body[cut + len(_AI):]
    response = response[:-2] if response.endswith("\n\n") else response
    return body[:cut], response


def parse_label(value: Any, *, stage: Stage | None = None) -> tuple[bool, Task]:
    """``(positive, task)`` for a gold label. Harm labels: 0/1/0.5/true/false/harmful/unharmful/
    safe/unsafe (0.5 counts as harmful); refusal labels: refusal/compliance. A GuardReasoner
    ``Answers:`` block (SafeRLHF / BeaverTails gold format) is read at the stage's field."""
    if isinstance(value, bool):
        return value, "harm"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if math.isnan(float(value)):
            raise EvaluationError("label is NaN")
        if float(value) in (0.0, 0.5, 1.0):
            return float(value) > 0, "harm"
        raise EvaluationError(f"numeric label must be 0, 0.5 or 1, got {value!r}")
    if isinstance(value, str):
        key = value.strip().strip("'\"").lower()
        if "answers" in key and ":" in key:
            from .models.guardreasoner import final_answers

            block = final_answers(value)
            fld = "request" if stage is Stage.PROMPT else "response"
            got = block.fields.get(fld) if block else None
            if got in ("harmful", "unharmful"):
                return got == "harmful", "harm"
            raise EvaluationError(f"label Answers block has no usable {fld} field: {value!r}")
        task: Task = "refusal" if key in ("refusal", "compliance") else "harm"
        if key in _POSITIVE:
            return True, task
        if key in _NEGATIVE:
            return False, task
    raise EvaluationError(
        f"unknown label {value!r} (expected 0/1/0.5, true/false, harmful/unharmful, safe/unsafe, "
        "refusal/compliance)"
    )


def _read_rows(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EvaluationError(f"data file not found: {path}") from None
    except UnicodeDecodeError as exc:
        raise EvaluationError(f"{path} is not UTF-8 text: {exc}") from None
    if suffix == ".csv":
        # StringIO, not splitlines(): quoted fields may hold newlines (and U+2028 is not a row end)
        return list(csv.DictReader(io.StringIO(text, newline="")))
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise EvaluationError(f"{path} is not valid JSON: {exc}") from None
        if isinstance(data, dict):  # {"data": [...]} / {"examples": [...]}
            for key in ("data", "examples", "rows", "items"):
                if isinstance(data.get(key), list):
                    data = data[key]
                    break
        if not isinstance(data, list):
            raise EvaluationError(f"{path}: expected a JSON array of objects")
        return data
    # JSONL (also the default for unknown suffixes)
    rows = []
    for n, line in enumerate(text.split("\n"), 1):  # not splitlines(): U+2028 may sit inside strings
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise EvaluationError(f"{path}:{n}: not valid JSON: {exc}") from None
    return rows


def _from_messages(row: dict[str, Any]) -> tuple[str, str | None] | None:
    """(prompt, response) from a conversation column: the last user turn, and the assistant turn
    after it when the conversation ends with one (the judged answer)."""
    _, msgs = _first(row, _MESSAGES_KEYS)
    if not isinstance(msgs, list) or not all(isinstance(m, dict) for m in msgs) or not msgs:
        return None
    response = _text(msgs[-1].get("content")) if msgs[-1].get("role") == "assistant" else None
    users = [m for m in msgs if m.get("role") == "user"]
    return (_text(users[-1].get("content")) or "" if users else ""), response


def _first(row: dict[str, Any], keys: Iterable[str]) -> tuple[str | None, Any]:
    lowered = {str(k).strip().lower(): k for k in row}
    for key in keys:
        if key in lowered:
            value = row[lowered[key]]
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                return key, value
    return None, None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def load_dataset(path: str | Path, stage: Stage | str | None = None) -> Dataset:
    """Read a labelled file (JSONL, JSON array, CSV). ``stage`` None infers it from the columns:
    reasoning column -> reasoning; a response -> response; else prompt."""
    p = Path(path)
    rows = _read_rows(p)
    if not rows:
        raise EvaluationError(f"{p}: no rows")
    want = Stage(stage) if stage is not None else None
    examples: list[Example] = []
    tasks: set[str] = set()
    formats: set[str] = set()
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise EvaluationError(f"{p}: row {i} is not an object")
        lowered = {str(k).strip().lower() for k in row}
        reasoning: str | None = None
        response: str | None = None
        completion: str | None = None
        if {"instruction", "input", "output"} <= lowered and _HUMAN in str(row.get("input", "")):
            fmt = "guardreasoner"
            prompt, response = split_guardreasoner_input(str(row["input"]))
            raw_label: Any = row["output"]
        else:
            pkey, pred = _first(row, _PREDICT_KEYS)
            if pkey is not None:
                fmt = "predictions"
                completion = _text(pred)
            else:
                fmt = "generic"
            _, prompt_v = _first(row, _PROMPT_KEYS)
            prompt = _text(prompt_v) or ""
            chat = _from_messages(row)
            if chat is not None and prompt_v is None:
                prompt, response = chat
            if fmt == "predictions" and _HUMAN in prompt and _AI in prompt:
                prompt, response = split_guardreasoner_input(prompt)  # the raw GuardReasoner input
            _, r = _first(row, _REASONING_KEYS)
            reasoning = _text(r)
            _, a = _first(row, _RESPONSE_KEYS)
            if a is not None:
                response = _text(a)
            lkey, raw_label = _first(row, tuple(k for k in _LABEL_KEYS if k != "output" or fmt == "generic"))
            if lkey is None:
                raise EvaluationError(f"{p}: row {i} has no label column (one of {', '.join(_LABEL_KEYS)})")
        _, cat = _first(row, _CATEGORY_KEYS)
        formats.add(fmt)
        examples.append(
            Example(
                index=i, prompt=prompt, reasoning=reasoning, response=response, label=False,
                raw_label=raw_label, category=_text(cat) if cat not in ("", None) else None,
                completion=completion,
            )
        )
    if want is None:
        if any(e.reasoning for e in examples):
            want = Stage.REASONING
        elif any(e.response is not None for e in examples):
            want = Stage.RESPONSE
        else:
            want = Stage.PROMPT
    for e in examples:
        try:
            e.label, t = parse_label(e.raw_label, stage=want)
        except EvaluationError as exc:
            raise EvaluationError(f"{p}: row {e.index}: {exc}") from None
        tasks.add(t)
    if len(tasks) > 1:
        raise EvaluationError(f"{p}: mixes harm labels and refusal/compliance labels")
    task: Task = "refusal" if tasks == {"refusal"} else "harm"
    if task == "refusal" and want is not Stage.RESPONSE:
        raise EvaluationError(f"{p}: refusal labels only make sense for the response stage, not {want}")
    for e in examples:
        if want is Stage.REASONING and not e.reasoning:
            e.reasoning = e.response or ""  # a trace column under another name
    fmt = formats.pop() if len(formats) == 1 else "mixed"
    return Dataset(path=str(p), examples=examples, task=task, format=fmt, stage=want)


def attach_predictions(dataset: Dataset, path: str | Path) -> Dataset:
    """Attach saved guard completions to ``dataset``, row by row: ``path`` is JSONL / JSON / CSV with
    a ``predict`` (or ``prediction`` / ``completion`` / ``guard_output``) column, or a JSON list of
    strings. Labels and texts stay those of ``dataset``."""
    p = Path(path)
    rows = _read_rows(p)
    if len(rows) != len(dataset.examples):
        raise EvaluationError(
            f"{p} has {len(rows)} completions but {dataset.path} has {len(dataset.examples)} rows"
        )
    for i, (e, row) in enumerate(zip(dataset.examples, rows, strict=True)):
        if isinstance(row, str):
            e.completion = row
            continue
        if not isinstance(row, dict):
            raise EvaluationError(f"{p}: row {i} is neither an object nor a string")
        key, value = _first(row, _PREDICT_KEYS)
        if key is None:
            raise EvaluationError(f"{p}: row {i} has no completion column ({', '.join(_PREDICT_KEYS)})")
        e.completion = _text(value)
    return dataset


# --------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------


@dataclass
class Scored:
    """One example after the guard (or a saved completion) judged it."""

    example: Example
    action: str
    flagged: bool  #: what the configured policy did: BLOCK, REDACT or a held ESCALATE
    risk: float | None  #: worst risk of the real verdicts; None when no guard gave one
    failed: bool  #: some guard call failed (unparseable, engine error, timeout)
    failure: str | None
    refusal: bool | None
    categories: list[str]
    reason: str
    latency_ms: float | None
    completion: str | None

    @property
    def predicted(self) -> bool:
        """The decision as configured (the primary metric)."""
        return self.flagged


def _scored(example: Example, decision: Decision, latency_ms: float | None) -> Scored:
    ok = [v for v in decision.verdicts if v.ok]
    refusals = [v.refusal for v in ok if v.refusal is not None]
    completion = decision.verdicts[0].raw_output if decision.verdicts else None
    return Scored(
        example=example,
        action=str(decision.action),
        flagged=decision.blocked or decision.action is Action.REDACT,
        risk=max((v.risk for v in ok), default=None),
        failed=any(not v.ok for v in decision.verdicts),
        failure=str(decision.failure) if decision.failure else next(
            (str(v.failure) for v in decision.verdicts if v.failure), None
        ),
        refusal=any(refusals) if refusals else None,
        categories=list(decision.categories),
        reason=decision.reason,
        latency_ms=latency_ms,
        completion=completion,
    )


def _request(example: Example, stage: Stage) -> GuardRequest:
    return GuardRequest(
        stage=stage,
        prompt=example.prompt,
        reasoning=example.reasoning if stage is Stage.REASONING else None,
        response=example.response if stage is Stage.RESPONSE else None,
    )


def score_predictions(
    dataset: Dataset,
    *,
    family: str = "guardreasoner",
    config: GuardConfig | None = None,
    stage: Stage | None = None,
) -> list[Scored]:
    """Score saved guard completions without running a model: each completion is parsed by the
    family's adapter (``GuardReasoner().parse(text, stage)``) and folded by the configured policy
    exactly as a live check would be."""
    if not dataset.has_completions:
        raise EvaluationError(
            f"{dataset.path}: no saved completions (a 'predict' / 'prediction' / 'completion' column)"
        )
    stage = stage or dataset.stage
    model = _adapter(family, config)
    policy = Policy(config or GuardConfig())
    out = []
    for e in dataset.examples:
        verdict: Verdict = model.parse(e.completion or "", stage)
        decision = policy.decide(_request(e, stage), [verdict.model_copy(update={"stage": stage})])
        out.append(_scored(e, decision, None))
    return out


def _adapter(family: str, config: GuardConfig | None) -> Any:
    """The adapter that parses saved completions: the config's guard model of that family when it
    has one (its options and model id: Granite's version and criteria, ShieldGemma's guideline,
    Qwen3Guard's controversial_risk), else the family's default (a preset name picks its variant)."""
    from .models import resolve

    cls, hub = resolve(family)
    for name, mc in (config.models.items() if config else ()):
        if mc.family == cls.family:
            return cls.from_config(name, mc)
    return cls(model_id=hub)


async def run_guard(
    guard: Any,
    dataset: Dataset,
    *,
    stage: Stage | None = None,
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
) -> list[Scored]:
    """Check every example with ``guard`` (``batch_size`` concurrent ``acheck`` calls; engines
    micro-batch them). ``progress(n)`` is called as examples finish."""
    stage = stage or dataset.stage
    sem = asyncio.Semaphore(max(1, batch_size))
    results: list[Scored | None] = [None] * len(dataset.examples)

    async def one(i: int, e: Example) -> None:
        async with sem:
            t0 = time.perf_counter()
            decision = await guard.acheck(_request(e, stage))
            results[i] = _scored(e, decision, (time.perf_counter() - t0) * 1e3)
        if progress is not None:
            progress(1)

    await asyncio.gather(*(one(i, e) for i, e in enumerate(dataset.examples)))
    return [r for r in results if r is not None]


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------


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
    from . import __version__

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


# --------------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------------

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


def sweep_to_dicts(points: Sequence[ThresholdPoint]) -> list[dict[str, Any]]:
    return [asdict(p) for p in points]

