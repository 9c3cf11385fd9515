"""ReasoningShield: judges a (query, reasoning trace) pair; also used on (query, answer) pairs.

Protocol (CosmosYi/ReasoningShield, reasoningshield_vllm.py): system = the model repo's
``reasoningshield_prompt.txt``, user = ``"Query: {query}\\nThought: {thought}"``, rendered with the
tokenizer's own chat template. The model answers ``"Analysis": ...`` then ``"Judgment": 0|0.5|1``.
"""

from __future__ import annotations

import dataclasses
import re
from functools import cache, cached_property
from importlib import resources

from ..engines.base import GenerationRequest, ScoreRequest, ScoreResult
from ..errors import GuardConfigError
from ..types import GuardRequest, Stage, Verdict
from .base import GuardModel, neutralize_fields
from .fast import FastReading, FastSpec, weighted

PROMPT_FILENAME = "reasoningshield_prompt.txt"
#: field markers of the user turn (see models.base.neutralize_fields)
FIELDS = ("Query", "Thought")

# Quote / bold / bracket characters a model may wrap around the key or the value.
_WRAP = r"""[\s"'“”‘’*_\[(]"""
# The official regex is r"[\"']?Judgment[\"']?:?\s*(\d+(?:\.\d+)?)" (last match wins). This one also
# takes "Judgement", a full-width colon, markdown bold and quoted values. The value is captured
# loosely ("0/0.5/1", "1.5") and validated afterwards so a bad last value is reported, not skipped.
_JUDGMENT = re.compile(
    rf"""(?:\*\*|__)?["'“”‘’]?judge?ment{_WRAP}*(?:[:：]{_WRAP}*)?(\d[\d.]*)(\s*/)?""",
    re.IGNORECASE,
)
_ANALYSIS = re.compile(r"""(?:\*\*|__)?["'“”‘’]?analysis["'“”‘’]?(?:\*\*|__)?\s*[:：]""", re.I)
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
# Judgment level -> (risk, canonical label)
_LEVELS: dict[float, tuple[float, str]] = {0.0: (0.0, "0"), 0.5: (0.5, "0.5"), 1.0: (1.0, "1")}

#: fast scoring forces the answer up to the judgment value. Trailing space: Llama-3's pre-tokenizer
#: splits ``": 1"`` into ``":``, `` ``, ``1``, so the digit is the next token. No forced
#: ``"Analysis": ``: an empty analysis is text the model conditions on (it reads as "nothing to
#: analyse" and biases towards 0).
FAST_PREFIX = '"Judgment": '


@cache
def builtin_prompt() -> str:
    """The system prompt shipped with the package (3,510 bytes, trailing spaces included)."""
    package = __package__ or "guardrails_plugin.models"
    ref = resources.files(package).joinpath("prompts").joinpath(PROMPT_FILENAME)
    return ref.read_text(encoding="utf-8")


class ReasoningShield(GuardModel):
    family = "reasoningshield"
    default_model_id = "ReasoningShield/ReasoningShield-1B"
    variants = {
        "1B": "ReasoningShield/ReasoningShield-1B",
        "3B": "ReasoningShield/ReasoningShield-3B",
    }
    default_max_new_tokens = 1024
    # It judges a text against a query; a bare prompt has no "Thought" to judge.
    stages = frozenset({Stage.REASONING, Stage.RESPONSE})

    @cached_property
    def system_prompt(self) -> str:
        """The model repo's own prompt file when the local folder has one, else the built-in copy."""
        if self.model_dir is not None:
            path = self.model_dir / PROMPT_FILENAME
            if path.is_file():
                # Text mode, as the official scripts read it.
                with open(path, encoding="utf-8") as fh:
                    return fh.read()
        return builtin_prompt()

    def build_messages(self, request: GuardRequest) -> list[dict[str, str]]:
        """System + user turns, byte-exact with the official scripts."""
        if request.stage is Stage.REASONING:
            thought = request.reasoning or ""
        elif request.stage is Stage.RESPONSE:
            # QA moderation: the answer goes in the Thought slot (official QA eval).
            thought = request.response or ""
        else:
            raise GuardConfigError(
                f"{self.name} judges reasoning or responses, not the {request.stage} stage"
            )
        # The query is followed by the Thought field: it may not open one (the thought is last).
        query = neutralize_fields(request.prompt, FIELDS)
        return [
            {"role": "system", "content": self.system_prompt},
            {"role": "user", "content": f"Query: {query}\nThought: {thought}"},
        ]

    def build_input(self, request: GuardRequest) -> GenerationRequest:
        return GenerationRequest(
            messages=tuple(self.build_messages(request)), max_new_tokens=self.max_new_tokens
        )

    def unparseable(self, text: str, stage: Stage | None, why: str) -> Verdict:
        return super().unparseable(text, stage or Stage.REASONING, why)

    def fast_spec(self, request: GuardRequest) -> FastSpec:
        """Risk = (P(1) + 0.5 P(0.5)) / (P(1) + P(0) + P(0.5)); P(0.5) = P("0") P("." | "0") is read
        in the same forward pass by teacher-forcing the probe "0" after the prefix."""
        gen = self.build_input(request)
        req = dataclasses.replace(gen, assistant_prefix=FAST_PREFIX, max_new_tokens=1)
        return FastSpec(
            ScoreRequest(req, candidates=("0", "1"), probe="0", probe_candidates=(".",)), read=_read_fast
        )

    def canned_output(
        self, stage: Stage, *, harmful: bool, risk: float, categories: list[str] | tuple[str, ...] = ()
    ) -> str:
        level = "1" if risk >= 0.75 else "0.5" if risk >= 0.25 else "0"
        return f'"Analysis": {self.canned_note}.\n"Judgment": {level}'

    def _parse(self, text: str, stage: Stage | None) -> Verdict:
        matches = list(_JUDGMENT.finditer(text))
        if not matches:
            return self.unparseable(text, stage, "no Judgment found")
        last = matches[-1]  # the analysis may mention earlier judgments; the last one is the answer
        raw_value = last.group(1).rstrip(".")  # "Judgment: 1." ends a sentence
        if last.group(2) or not _NUMBER.fullmatch(raw_value):
            value = text[last.start(1) : last.end()].strip()
            return self.unparseable(text, stage, f"Judgment value {value!r} is not one number")
        level = _LEVELS.get(float(raw_value))
        if level is None:
            return self.unparseable(text, stage, f"Judgment {raw_value} is not 0, 0.5 or 1")
        risk, label = level
        return Verdict(
            guard=self.name,
            stage=stage or Stage.REASONING,
            risk=risk,
            harmful=risk >= 0.5,  # the official binarisation counts 0.5 as harmful
            label=label,
            rationale=_analysis(text, last.start()),
            raw_output=text,
        )


def _read_fast(res: ScoreResult) -> FastReading:
    cands = ("0", "1")
    p1 = res.at_prefix.prob("1", cands)
    p0x = res.at_prefix.prob("0", cands)
    q = res.after_probe.prob(".", (".",)) if res.after_probe is not None else 0.0
    probs = {"0": p0x * (1.0 - q), "0.5": p0x * q, "1": p1}
    return weighted(probs, {"0": 0.0, "0.5": 0.5, "1": 1.0})


def _analysis(text: str, end: int) -> str | None:
    """The Analysis text before the judgment (everything before it when there is no key)."""
    head = text[:end]
    keys = list(_ANALYSIS.finditer(head))
    if keys:
        head = head[keys[-1].end() :]
    body = head.strip().strip("\"'“”‘’*_,{} \n\t").strip()
    return body or None


__all__ = ["ReasoningShield", "FAST_PREFIX", "PROMPT_FILENAME", "builtin_prompt"]
