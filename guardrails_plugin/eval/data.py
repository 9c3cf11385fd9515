"""Labelled data: ``load_dataset`` reads JSONL / JSON / CSV (GuardReasoner benchmark files,
prediction files, generic columns) into ``Example`` rows; ``attach_predictions`` adds saved guard
completions."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import GuardError
from ..types import Stage

Task = Literal["harm", "refusal"]


class EvaluationError(GuardError):
    """Bad evaluation data or options (unreadable file, unknown label, no threshold meets a target)."""


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
            from ..models.guardreasoner import final_answers

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
