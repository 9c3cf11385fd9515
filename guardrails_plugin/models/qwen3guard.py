"""Qwen3Guard-Gen (0.6B / 4B / 8B): Safe / Controversial / Unsafe, categories, and a refusal flag.

Protocol (reference: shared/reference/more-guards.md section 3). The whole prompt is the model's own
chat template: the adapter sends only the conversation (``[user]`` for prompt moderation, ``[user,
assistant]`` for response moderation; a reasoning trace goes in as the assistant message, as the
authors evaluate thinking content). The template picks the mode from the last message's role,
always appends ``<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n`` itself and ignores
``add_generation_prompt`` / ``enable_thinking``. The template was read through a validated
third-party copy (the HF file itself was not reachable).

Output (README): ``Safety: Unsafe\\nCategories: Violent`` for prompts; responses add
``\\nRefusal: Yes|No``. Parsed like the authors' ``extract_label_categories_refusal`` (first
``Safety:`` match anywhere), but categories come from the ``Categories:`` line (the authors' regex
scans the whole text and returns ``None`` for safe verdicts), case-insensitively.

Risk: none documented (three discrete levels). Safe 0.0, Unsafe 1.0, Controversial
``CONTROVERSIAL_RISK`` (0.3, option ``controversial_risk``): under the ``strict`` preset (block at
0.2) it blocks, which is the authors' "strict mode"; under ``moderate`` / ``loose`` it does not block
("loose mode") and it lands in the escalate band whenever one is configured below the block
threshold (``escalate_threshold`` <= 0.3).

Fast scoring [third-party idea, unverified]: ``Safety:`` is forced after the rendered prompt and the
next token read over `` Safe`` / `` Unsafe`` / `` Controversial`` (their first sub-tokens must differ
in the real Qwen3 vocabulary; not confirmed). Not documented by the authors.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, ClassVar

from pydantic import field_validator

from ..engines.base import GenerationRequest, ScoreRequest, ScoreResult
from ..types import GuardRequest, Stage, Verdict
from .base import FamilyOptions, GuardModel, judged_text, neutralize_fields
from .categories import map_categories
from .fast import FastReading, FastSpec, weighted

#: default risk of a Controversial verdict (see the module docstring)
CONTROVERSIAL_RISK = 0.3

#: names as the model writes them (chat template / README extractor) -> our vocabulary
CATEGORY_MAP: dict[str, str | None] = {
    "Violent": "VIO",
    "Non-violent Illegal Acts": "ILG",
    "Sexual Content or Sexual Acts": "SEX",
    "PII": "INF",
    "Suicide & Self-Harm": "VIO",
    "Unethical Acts": "DIS",  # bias, discrimination, hate speech, harassment, insults, threats ...
    "Politically Sensitive Topics": "MIS",  # false information about governments, history, figures
    "Copyright Violation": "ILG",
    "Jailbreak": "JAIL",  # prompt moderation only
}

LEVELS = ("Safe", "Unsafe", "Controversial")
SCORE_PREFIX = "Safety:"
SCORE_CANDIDATES = (" Safe", " Unsafe", " Controversial")

_SAFETY = re.compile(r"Safety\s*[:：]\s*\**\s*(Safe|Unsafe|Controversial)\b", re.IGNORECASE)
_CATEGORIES_LINE = re.compile(r"^[ \t*]*Categories\s*[:：](.*)$", re.IGNORECASE | re.MULTILINE)
# The authors' category alternation, used when there is no Categories: line.
_CATEGORY_ANY = re.compile("|".join(re.escape(c) for c in CATEGORY_MAP), re.IGNORECASE)
_REFUSAL = re.compile(r"Refusal\s*[:：]\s*\**\s*(Yes|No)\b", re.IGNORECASE)


class Qwen3Guard(GuardModel):
    family = "qwen3guard"
    default_model_id = "Qwen/Qwen3Guard-Gen-0.6B"
    variants = {
        "Gen-0.6B": "Qwen/Qwen3Guard-Gen-0.6B",
        "Gen-4B": "Qwen/Qwen3Guard-Gen-4B",
        "Gen-8B": "Qwen/Qwen3Guard-Gen-8B",
    }
    default_max_new_tokens = 128  # the authors' README and eval_gen.py
    class Options(FamilyOptions):
        #: the risk a "Controversial" verdict carries (0.3: in the escalate band by default)
        controversial_risk: float = CONTROVERSIAL_RISK

        @field_validator("controversial_risk", mode="before")
        @classmethod
        def _risk(cls, r: Any) -> float:
            if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= float(r) <= 1.0:
                raise ValueError(f"controversial_risk must be a number in [0, 1], got {r!r}")
            return float(r)

    #: the template prints "USER: ..." then "\n\nASSISTANT: ..." (see models.base.neutralize_fields)
    fields: ClassVar[tuple[str, ...]] = ("USER", "ASSISTANT")

    def risks(self) -> dict[str, float]:
        return {"Safe": 0.0, "Unsafe": 1.0, "Controversial": self.options.controversial_risk}

    def build_messages(self, request: GuardRequest) -> list[dict[str, str]]:
        """The conversation to judge; content inserted as-is (the template does not strip)."""
        if request.stage is Stage.PROMPT:
            return [{"role": "user", "content": request.prompt}]
        query = neutralize_fields(request.prompt, self.fields)  # followed by "ASSISTANT: "
        return [{"role": "user", "content": query}, {"role": "assistant", "content": judged_text(request)}]

    def build_input(self, request: GuardRequest) -> GenerationRequest:
        return GenerationRequest(messages=tuple(self.build_messages(request)), max_new_tokens=self.max_new_tokens)

    def _parse(self, text: str, stage: Stage | None) -> Verdict:
        m = _SAFETY.search(text)
        if m is None:
            return self.unparseable(text, stage, "no 'Safety: Safe|Unsafe|Controversial' line")
        label = next(lv for lv in LEVELS if lv.lower() == m.group(1).lower())
        line = _CATEGORIES_LINE.search(text, m.end())
        if line is not None:
            native = [c.strip().strip(".*") for c in line.group(1).split(",")]
        else:
            native = [hit.group(0) for hit in _CATEGORY_ANY.finditer(text, m.end())]
        native = [c for c in dict.fromkeys(native) if c and c.lower() != "none"]
        refusal_m = _REFUSAL.search(text, m.end())
        refusal = None if refusal_m is None else refusal_m.group(1).lower() == "yes"
        harmful = {"Safe": False, "Unsafe": True, "Controversial": None}[label]
        return Verdict(
            guard=self.name,
            stage=stage or Stage.RESPONSE,
            risk=self.risks()[label],
            harmful=harmful,  # Controversial: the model says neither
            categories=map_categories(native, CATEGORY_MAP) if label != "Safe" else [],
            label=label,
            refusal=refusal,
            rationale=("Categories: " + ", ".join(native)) if native else None,
            raw_output=text,
        )

    def canned_output(
        self, stage: Stage, *, harmful: bool, risk: float, categories: list[str] | tuple[str, ...] = ()
    ) -> str:
        # Unsafe when harmful, Controversial for a grey risk, else Safe (the format's three levels).
        label = "Unsafe" if harmful else ("Controversial" if risk > 0 else "Safe")
        names = [next(k for k, v in CATEGORY_MAP.items() if v == c) for c in categories if c in CATEGORY_MAP.values()]
        cats = ", ".join(dict.fromkeys(names)) if label != "Safe" else "None"
        out = f"Safety: {label}\nCategories: {cats or 'Violent'}"
        return out + ("\nRefusal: No" if stage is not Stage.PROMPT else "")

    def fast_spec(self, request: GuardRequest) -> FastSpec:
        gen = self.build_input(request)
        req = dataclasses.replace(gen, assistant_prefix=SCORE_PREFIX, max_new_tokens=1)
        risks = dict(zip(SCORE_CANDIDATES, (0.0, 1.0, self.options.controversial_risk), strict=True))

        def read(res: ScoreResult) -> FastReading:
            probs = {c: res.at_prefix.prob(c, SCORE_CANDIDATES) for c in SCORE_CANDIDATES}
            reading = weighted(probs, risks)
            reading.probs = {c.strip(): p for c, p in probs.items()}
            reading.label = reading.label.strip() if reading.label else None
            return reading

        return FastSpec(ScoreRequest(req, candidates=SCORE_CANDIDATES), read=read, raw_prefix=True)

    def fast_scoring_problem(self, engine: str = "transformers") -> str | None:
        if engine != "transformers":
            return (f"{self.family} fast scoring forces 'Safety:' after the rendered prompt, which an "
                    "OpenAI-compatible chat endpoint cannot send (a continued assistant message would become "
                    "the ASSISTANT turn being judged); use engine 'transformers'")
        return None


__all__ = ["CATEGORY_MAP", "CONTROVERSIAL_RISK", "LEVELS", "Qwen3Guard", "SCORE_CANDIDATES", "SCORE_PREFIX"]
