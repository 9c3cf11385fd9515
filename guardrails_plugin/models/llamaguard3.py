"""Llama Guard 3 (1B, 8B): ``safe`` or ``unsafe`` + a line of violated category codes (S1..S14).

Protocol (reference: shared/reference/more-guards.md section 1). The prompt is built entirely by the
model's own chat template (the HF ``tokenizer_config.json``): the adapter sends the conversation to
judge, ``[user]`` for a prompt check and ``[user, assistant]`` for an answer (or a reasoning trace,
judged as the assistant's message), and the template writes the task, the category list and the
"ONLY THE LAST User/Agent message" instruction around it. No system turn: the template would not
place one. The two sizes ship different templates:

* 3-1B: message content is a list of typed parts (``[{"type": "text", "text": ...}]``); a plain
  string renders an *empty* conversation without any error. Optional ``excluded_category_keys``.
* 3-8B: content is a plain string (the template calls ``content.strip()``, which fails on a list);
  categories are hard-coded (S1..S14), so exclusions are applied to the parsed codes only.

Which one a model is, is read from the local folder's chat template when there is one (exact), else
from the configured hub id or the guard's name (``...-8B``); the family default is 1B.

Output (Meta's notebook, 1B): ``\\n\\nsafe<|eot_id|>``. The HF templates end at the assistant header
*without* the blank line, so the first generated token is ``\\n\\n`` and the label is the second.
Parsing strips first (llama-stack does; the cookbook's checker does not and would read ``""``).

Score (8B card): "the probability for the first token" as P(unsafe). Only meaningful once the
blank-line token is out of the way (reference 1.6-1.7): fast scoring forces ``\\n\\n`` after the
rendered prompt and reads P(unsafe) / (P(safe) + P(unsafe)) at the next position. The token ids of
``safe`` / ``unsafe`` / ``\\n\\n`` are NOT confirmed from a primary source; the engine looks up each
candidate's first token in the real tokenizer at run time.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, ClassVar

from pydantic import field_validator

from ..engines.base import GenerationRequest, ScoreRequest, ScoreResult
from ..types import GuardRequest, Stage, Verdict
from .base import FamilyOptions, GuardModel, judged_text, neutralize_fields, read_chat_template
from .categories import map_categories
from .fast import FastReading, FastSpec, weighted

#: code -> name as the prompt writes it (HF templates, cookbook, llama-stack) [code]
CATEGORY_NAMES: dict[str, str] = {
    "S1": "Violent Crimes",
    "S2": "Non-Violent Crimes",
    "S3": "Sex Crimes",
    "S4": "Child Exploitation",
    "S5": "Defamation",
    "S6": "Specialized Advice",
    "S7": "Privacy",
    "S8": "Intellectual Property",
    "S9": "Indiscriminate Weapons",
    "S10": "Hate",
    "S11": "Self-Harm",
    "S12": "Sexual Content",
    "S13": "Elections",
    "S14": "Code Interpreter Abuse",
}

#: Llama Guard code -> our vocabulary (models/categories.py; table in docs/guard-models.md)
CATEGORY_MAP: dict[str, str | None] = {
    "S1": "VIO",
    "S2": "ILG",
    "S3": "SEX",
    "S4": "SEX",
    "S5": "MIS",  # "verifiably false ... likely to injure the person's reputation"
    "S6": "MIS",  # specialized financial / medical / legal advice: high-risk-domain information
    "S7": "INF",
    "S8": "ILG",
    "S9": "VIO",
    "S10": "DIS",
    "S11": "VIO",  # FlexGuard's VIO covers self-harm
    "S12": "SEX",
    "S13": "MIS",
    "S14": "JAIL",  # abuse of the model's code interpreter: model security
}

#: what fast scoring forces after the rendered prompt: the blank line the model writes first
SCORE_PREFIX = "\n\n"
LABELS = ("safe", "unsafe")
_END_TOKENS = re.compile(r"(?:<\|(?:eot_id|eot|eom_id|eom|end_of_text)\|>\s*)+$")

# "S1", "s 10", "S10." in the category line (a third-party issue shows "S1, S2" with spaces).
_CODE = re.compile(r"\bS\s?(\d{1,2})\b", re.IGNORECASE)


class LlamaGuard3(GuardModel):
    family = "llamaguard3"
    default_model_id = "meta-llama/Llama-Guard-3-1B"
    variants = {"1B": "meta-llama/Llama-Guard-3-1B", "8B": "meta-llama/Llama-Guard-3-8B"}
    # Meta's 1B notebook generates 20 tokens; "\n\n" + "unsafe" + 14 codes can need ~32.
    default_max_new_tokens = 32
    class Options(FamilyOptions):
        #: category codes the guard is told to ignore (the template's excluded_category_keys)
        excluded_categories: tuple[str, ...] = ()

        @field_validator("excluded_categories", mode="before")
        @classmethod
        def _codes(cls, excl: Any) -> tuple[str, ...]:
            if not isinstance(excl, (list, tuple)) or not all(isinstance(c, str) for c in excl):
                raise ValueError("excluded_categories must be a list of codes like 'S9'")
            norm = tuple(c.strip().upper() for c in excl)
            bad = [c for c in norm if c not in CATEGORY_NAMES]
            if bad:
                raise ValueError(f"unknown category code(s) {bad} (S1..S14)")
            return norm

    #: codes the model may emit, per variant (3-1B: S1..S13, card and llama-stack) [card][code]
    codes_by_variant: ClassVar[dict[str | None, tuple[str, ...]]] = {
        "1B": tuple(f"S{i}" for i in range(1, 14)),
        "8B": tuple(f"S{i}" for i in range(1, 15)),
        None: tuple(f"S{i}" for i in range(1, 14)),
    }
    #: field markers the template writes before each message (see models.base.neutralize_fields)
    fields: ClassVar[tuple[str, ...]] = ("User", "Agent")
    score_prefix: ClassVar[str] = SCORE_PREFIX

    # -- input --------------------------------------------------------------------------------
    def typed_parts(self) -> bool:
        """Whether message content must be a list of typed parts (3-1B, Llama Guard 4) or a string
        (3-8B). The local folder's template decides when there is one: a wrong guess renders an
        empty conversation (1B) or fails (8B)."""
        tpl = read_chat_template(self.model_dir)
        if tpl is not None:
            return "'type'" in tpl or '"type"' in tpl
        return self.variant() != "8B"

    def _content(self, text: str, parts: bool) -> Any:
        return [{"type": "text", "text": text}] if parts else text

    def build_messages(self, request: GuardRequest) -> list[dict[str, Any]]:
        """The conversation to judge, in the shape the model's chat template expects."""
        parts = self.typed_parts()
        if request.stage is Stage.PROMPT:
            return [{"role": "user", "content": self._content(request.prompt, parts)}]
        # The user turn is followed by "Agent: ...": it may not open a fake one.
        query = neutralize_fields(request.prompt, self.fields)
        return [
            {"role": "user", "content": self._content(query, parts)},
            {"role": "assistant", "content": self._content(judged_text(request), parts)},
        ]

    def template_kwargs(self) -> dict[str, Any]:
        # Always passed, as Meta's 1B notebook does (``excluded_category_keys=[]``); a template that
        # does not read it (3-8B's) ignores it.
        return {"excluded_category_keys": list(self.options.excluded_categories)}

    def build_input(self, request: GuardRequest) -> GenerationRequest:
        return GenerationRequest(
            messages=tuple(self.build_messages(request)),
            chat_template_kwargs=self.template_kwargs(),
            max_new_tokens=self.max_new_tokens,
        )

    # -- output -------------------------------------------------------------------------------
    def known_codes(self) -> tuple[str, ...]:
        return self.codes_by_variant.get(self.variant(), self.codes_by_variant[None])

    def _parse(self, text: str, stage: Stage | None) -> Verdict:
        # A completion decoded with special tokens kept ends in the end-of-turn token.
        body = _END_TOKENS.sub("", text)
        lines = [ln.strip() for ln in body.strip().splitlines() if ln.strip()]
        if not lines:
            return self.unparseable(text, stage, "empty completion (expected 'safe' or 'unsafe')")
        first = lines[0].lower()
        if first not in LABELS:
            return self.unparseable(text, stage, f"first line {lines[0][:40]!r} is not 'safe' or 'unsafe'")
        stage = stage or Stage.RESPONSE
        if first == "safe":
            return Verdict(guard=self.name, stage=stage, risk=0.0, harmful=False, label="safe", raw_output=text)
        # "unsafe" alone (seen from Llama Guard 4) still means unsafe; codes are optional.
        codes = list(dict.fromkeys(f"S{int(n)}" for n in _CODE.findall(lines[1]))) if len(lines) > 1 else []
        excluded = set(self.options.excluded_categories)
        if codes and set(codes) <= excluded:
            # llama-stack: a violation of excluded categories only is no violation.
            return Verdict(guard=self.name, stage=stage, risk=0.0, harmful=False, label="safe",
                           rationale=f"unsafe only in excluded categories {', '.join(codes)}", raw_output=text)
        codes = [c for c in codes if c not in excluded]
        known = set(self.known_codes())
        named = [f"{c} {CATEGORY_NAMES[c]}" if c in CATEGORY_NAMES else f"{c} (unknown code)" for c in codes]
        if any(c not in known for c in codes):
            named.append(f"(codes outside {self.family} {self.variant() or ''} list: kept, unmapped ones dropped)")
        return Verdict(
            guard=self.name,
            stage=stage,
            risk=1.0,
            harmful=True,
            categories=map_categories(codes, CATEGORY_MAP),
            label="unsafe",
            rationale="; ".join(named) or None,
            raw_output=text,
        )

    def canned_output(
        self, stage: Stage, *, harmful: bool, risk: float, categories: list[str] | tuple[str, ...] = ()
    ) -> str:
        # The format has no grades: unsafe or safe, with the first Llama Guard code of each category.
        if not harmful:
            return "\n\nsafe"
        codes = [next(k for k, v in CATEGORY_MAP.items() if v == c) for c in categories if c in CATEGORY_MAP.values()]
        return "\n\nunsafe\n" + ",".join(dict.fromkeys(codes or ["S1"]))

    # -- fast scoring -------------------------------------------------------------------------
    def fast_spec(self, request: GuardRequest) -> FastSpec:
        gen = self.build_input(request)
        req = dataclasses.replace(gen, assistant_prefix=self.score_prefix, max_new_tokens=1)
        return FastSpec(ScoreRequest(req, candidates=LABELS), read=read_fast, raw_prefix=True)

    def fast_scoring_problem(self, engine: str = "transformers") -> str | None:
        if engine != "transformers":
            return (f"{self.family} fast scoring forces the blank line after the rendered prompt, which an "
                    "OpenAI-compatible chat endpoint cannot send (a continued assistant message would become "
                    "an 'Agent' turn of the judged conversation); use engine 'transformers'")
        return None


def read_fast(res: ScoreResult) -> FastReading:
    """P(unsafe) / (P(safe) + P(unsafe)) at the first position after the blank line."""
    probs = {lab: res.at_prefix.prob(lab, LABELS) for lab in LABELS}
    return weighted(probs, {"safe": 0.0, "unsafe": 1.0})


__all__ = ["CATEGORY_MAP", "CATEGORY_NAMES", "LABELS", "LlamaGuard3", "SCORE_PREFIX", "read_fast"]
