"""IBM Granite Guardian 3.3 (8B), with the 3.1 / 3.2 protocol where it differs: one criterion per
call, ``yes`` when the text meets it (risk present).

Protocol (reference: shared/reference/more-guards.md section 4). The prompt is the model's own chat
template: the adapter sends the conversation to judge and the template kwargs
``guardian_config={"criteria_id": ...}`` (or ``{"custom_criteria": ..., "custom_scoring_schema":
...}``) and ``think=True|False``, with ``add_generation_prompt=True``, as the authors' cookbooks do.
**The 3.3 Jinja template itself was not found**; its structure is known from one render the authors
printed (groundedness, assistant-only, with a document), which our tests reproduce byte for byte.
How a user-only or user+assistant conversation renders, and where ``available_tools`` go, were not
seen in any authors' output [unverified]: the real template renders them, this adapter only passes
the messages.

Output (3.3): ``<think>...</think>`` then ``<score> yes </score>`` (no-think: an empty think block).
Parsed like the authors' ``parse_response`` (last ``<score>`` / last ``<think>`` match) with the
strip / lower-case of their 4.1 parser. 3.1 / 3.2: a bare ``Yes`` / ``No`` (3.2 may add
``<confidence> High|Low </confidence>``), read with the 3.2 cookbook's ``^\\w+``.

Risk: ``yes`` 1.0, ``no`` 0.0. **3.3 documents no probability method** (its notebooks request
logprobs and never use them), so 3.3 has no fast-scoring spec: ``mode: fast`` / ``cascade`` with it
is a configuration error. 3.1 / 3.2 (``version`` option, or read from the hub id) use the authors'
method: P(risk) = softmax(log P(No), log P(Yes)) over the first generated token, ``Yes`` / ``No``
matched case-insensitively after strip as their ``get_probabilities`` does; a mid-scale P(Yes)
(0.2-0.4) lands in the escalate band of a moderate config with ``escalate_threshold: 0.2``.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from pydantic import StrictBool, field_validator, model_validator

from ..engines.base import GenerationRequest, ScoreRequest, ScoreResult
from ..errors import GuardConfigError, GuardInputError
from ..types import GuardRequest, Stage, Verdict
from .base import FamilyOptions, GuardModel, judged_text
from .categories import map_categories
from .fast import FastReading, FastSpec, grouped, weighted

#: criteria ids of 3.3 (quickstart table; evasiveness / harm_engagement from 3.2, which a third-party
#: run also lists for the 3.3 checkpoint's template) -> our vocabulary
CATEGORY_MAP: dict[str, str | None] = {
    "harm": None,  # the general category: no specific code
    "social_bias": "DIS",
    "jailbreak": "JAIL",
    "profanity": "DIS",
    "sexual_content": "SEX",
    "unethical_behavior": "ILG",  # fraud, theft, abuse of power
    "violence": "VIO",
    "harm_engagement": None,
    "evasiveness": None,
    "groundedness": "MIS",  # ungrounded claims: unreliable content
    "answer_relevance": None,
    "context_relevance": None,
    "function_call": None,
}
#: which conversation each criterion judges (quickstart table's Prompt / Response columns)
PROMPT_ONLY = frozenset({"jailbreak", "context_relevance"})
RESPONSE_ONLY = frozenset({"groundedness", "answer_relevance", "function_call"})
NEEDS_DOCUMENTS = frozenset({"groundedness", "context_relevance"})
#: 3.1 / 3.2 pass RAG and tool checks through extra roles ("context", "tools") this adapter does not
#: build; their safety criteria (``risk_name``) work
LEGACY_UNSUPPORTED = NEEDS_DOCUMENTS | {"function_call"}
VERSIONS = ("3.3", "3.2", "3.1")
YES_NO = {"yes": ("Yes", " Yes", "yes", " yes"), "no": ("No", " No", "no", " no")}

_SCORE = re.compile(r"<score>(.*?)</score>", re.DOTALL)
_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)
_FIRST_WORD = re.compile(r"^\w+", re.MULTILINE)  # the 3.2 cookbook's label regex
_CONFIDENCE = re.compile(r"<confidence>\s*(.*?)\s*</confidence>", re.DOTALL)


class GraniteGuardian(GuardModel):
    family = "graniteguardian"
    default_model_id = "ibm-granite/granite-guardian-3.3-8b"
    variants = {
        "3.3-8B": "ibm-granite/granite-guardian-3.3-8b",
        "3.2-5B": "ibm-granite/granite-guardian-3.2-5b",
        "3.2-3B-A800M": "ibm-granite/granite-guardian-3.2-3b-a800m",
        "3.1-8B": "ibm-granite/granite-guardian-3.1-8b",
        "3.1-2B": "ibm-granite/granite-guardian-3.1-2b",
    }
    default_max_new_tokens = 64  # no-think: an empty think block and the score tag
    class Options(FamilyOptions):
        criteria: str = "harm"  #: the authors' default criterion
        custom_criteria: str | None = None
        custom_scoring_schema: str | None = None
        think: StrictBool = False
        version: str | None = None  #: None: from the hub id / name, else 3.3

        @field_validator("version", mode="before")
        @classmethod
        def _version(cls, v: Any) -> str | None:
            if v is not None and str(v) not in VERSIONS:  # YAML reads 3.3 as a number
                raise ValueError(f"version must be one of {', '.join(VERSIONS)}")
            return None if v is None else str(v)

        @model_validator(mode="after")
        def _consistent(self) -> Any:
            if self.custom_criteria is None and self.criteria not in CATEGORY_MAP:
                raise ValueError(f"unknown criteria {self.criteria!r} (known: "
                                 f"{', '.join(CATEGORY_MAP)}; or set custom_criteria)")
            for key in ("custom_criteria", "custom_scoring_schema"):
                value = getattr(self, key)
                if value is not None and not value.strip():
                    raise ValueError(f"{key} must be a non-empty string")
            if self.version is not None and self.version != "3.3" and self.think:
                raise ValueError("think mode is new in 3.3")
            return self


    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.options.think and kwargs.get("max_new_tokens") is None:
            self.max_new_tokens = 2048  # the authors' SamplingParams(max_tokens=2048)
        elif self.version() != "3.3" and kwargs.get("max_new_tokens") is None:
            self.max_new_tokens = 20  # "Yes" / "No" (+ a 3.2 confidence tag)
        crit = self.options.criteria
        if self.version() != "3.3" and not self.options.custom_criteria and crit in LEGACY_UNSUPPORTED:
            raise GuardConfigError(f"{self.family} {self.version()}: criterion {crit!r} needs the 3.1/3.2 "
                                   "'context' / 'tools' roles, which this adapter does not build; use 3.3")
        if self.version() != "3.3" and self.options.think:
            raise GuardConfigError(f"{self.family}: think mode is new in 3.3 (this model is {self.version()})")
        if self.options.custom_criteria:
            self.stages = frozenset(Stage)  # type: ignore[misc]
        elif crit in PROMPT_ONLY:
            self.stages = frozenset({Stage.PROMPT})  # type: ignore[misc]
        elif crit in RESPONSE_ONLY:
            self.stages = frozenset({Stage.REASONING, Stage.RESPONSE})  # type: ignore[misc]

    def version(self) -> str:
        if self.options.version is not None:
            return str(self.options.version)
        v = self.variant()
        return v.split("-", 1)[0] if v else "3.3"

    # -- input --------------------------------------------------------------------------------
    def build_messages(self, request: GuardRequest) -> list[dict[str, str]]:
        crit = None if self.options.custom_criteria else self.options.criteria
        if request.stage is Stage.PROMPT:
            return [{"role": "user", "content": request.prompt}]
        if crit == "groundedness":  # the authors judge the answer alone against the documents
            return [{"role": "assistant", "content": judged_text(request)}]
        return [{"role": "user", "content": request.prompt}, {"role": "assistant", "content": judged_text(request)}]

    def guardian_config(self) -> dict[str, str]:
        o = self.options
        if self.version() != "3.3":  # 3.1 / 3.2: "risk" vocabulary
            if o.custom_criteria:
                return {"risk_name": "custom", "risk_definition": o.custom_criteria}
            return {"risk_name": o.criteria}
        if o.custom_criteria:
            cfg = {"custom_criteria": o.custom_criteria}
            if o.custom_scoring_schema:
                cfg["custom_scoring_schema"] = o.custom_scoring_schema
            return cfg
        return {"criteria_id": o.criteria}

    def build_input(self, request: GuardRequest) -> GenerationRequest:
        kwargs: dict[str, Any] = {"guardian_config": self.guardian_config()}
        if self.version() == "3.3":
            kwargs["think"] = bool(self.options.think)
        crit = self.options.criteria if not self.options.custom_criteria else None
        docs = request.metadata.get("documents")
        if crit in NEEDS_DOCUMENTS and not docs:
            raise GuardInputError(f"{self.name}: criterion {crit!r} needs request.metadata['documents']")
        if docs:
            kwargs["documents"] = [d if isinstance(d, dict) else {"doc_id": str(i), "text": str(d)}
                                   for i, d in enumerate(docs)]
        tools = request.metadata.get("available_tools")
        if tools:
            kwargs["available_tools"] = tools
        return GenerationRequest(
            messages=tuple(self.build_messages(request)), chat_template_kwargs=kwargs, max_new_tokens=self.max_new_tokens
        )

    # -- output -------------------------------------------------------------------------------
    def _parse(self, text: str, stage: Stage | None) -> Verdict:
        if self.version() == "3.3":
            scores = _SCORE.findall(text)
            if not scores:
                if text.rfind("<think>") > text.rfind("</think>"):
                    return self.unparseable(text, stage, "<think> block never closed (no <score>)")
                return self.unparseable(text, stage, "no <score>...</score> tag")
            value = scores[-1].strip().lower()
            traces = _THINK.findall(text)
            rationale = traces[-1].strip() if traces else None
        else:
            m = _FIRST_WORD.search(text.strip())
            value = m.group(0).lower() if m else ""
            conf = _CONFIDENCE.search(text)
            rationale = f"confidence: {conf.group(1)}" if conf else None
        if value not in ("yes", "no"):
            return self.unparseable(text, stage, f"score {value[:30]!r} is not yes/no")
        crit = "custom" if self.options.custom_criteria else self.options.criteria
        yes = value == "yes"
        return Verdict(
            guard=self.name,
            stage=stage or Stage.RESPONSE,
            risk=1.0 if yes else 0.0,
            harmful=yes,
            categories=map_categories([crit], CATEGORY_MAP) if yes else [],
            label=f"{value} ({crit})",
            rationale=rationale or None,
            raw_output=text,
        )

    def canned_output(
        self, stage: Stage, *, harmful: bool, risk: float, categories: list[str] | tuple[str, ...] = ()
    ) -> str:
        word = "yes" if harmful else "no"
        if self.version() != "3.3":
            return word.capitalize()
        return f"<think>\n{self.canned_note}\n</think>\n<score> {word} </score>"

    # -- fast scoring (3.1 / 3.2 only) --------------------------------------------------------
    def fast_spec(self, request: GuardRequest) -> FastSpec:
        problem = self.fast_scoring_problem()
        if problem:
            raise NotImplementedError(problem)
        gen = self.build_input(request)
        req = dataclasses.replace(gen, max_new_tokens=1)
        cands = tuple(c for group in YES_NO.values() for c in group)
        crit = "custom" if self.options.custom_criteria else self.options.criteria
        cats = map_categories([crit], CATEGORY_MAP)

        def read(res: ScoreResult) -> FastReading:
            reading = weighted(grouped(res.at_prefix.prob, YES_NO), {"yes": 1.0, "no": 0.0})
            if reading.risk is not None and reading.risk >= CATEGORY_MIN_RISK:
                reading.categories = list(cats)
            return reading

        return FastSpec(ScoreRequest(req, candidates=cands), read=read)

    def fast_scoring_problem(self, engine: str = "transformers") -> str | None:
        if self.version() == "3.3":
            return ("Granite Guardian 3.3 documents no probability method (its notebooks request logprobs "
                    "but never use them; in think mode the score follows the reasoning); versions 3.1 / 3.2 "
                    "have one (option version, or a 3.1 / 3.2 hub id)")
        return None


#: a fast (continuous) verdict names its criterion's category from this risk up: the lowest preset
#: block threshold, so whichever preset flags the verdict, category_actions can act on it
CATEGORY_MIN_RISK = 0.2


__all__ = ["CATEGORY_MAP", "CATEGORY_MIN_RISK", "GraniteGuardian", "VERSIONS"]
