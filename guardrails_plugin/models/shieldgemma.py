"""ShieldGemma (2B / 9B / 27B): does the text violate one safety guideline? Its score is P(Yes).

Protocol (reference: shared/reference/more-guards.md section 5). The prompt is the model's own chat
template (``google/shieldgemma-9b``, read through a verbatim copy): the adapter sends ``[user]`` for
a prompt check or ``[user, assistant]`` for an answer (a reasoning trace is judged as the answer)
and the template kwarg ``guideline``, one line of the card's tables (the prompt-only and the
prompt-response wording differ; both verbatim below). The template writes ``<bos>`` itself and adds
the ``* `` bullet.

One guideline per forward pass, as the card shows: a ShieldGemma guard judges the guideline in its
``guideline`` option (default Dangerous Content). For several harm types, configure one guard per
guideline on the same weights (they share one engine) and the policy takes the worst.

Score (card): "designed to be run in *scoring mode*": P(violation) = softmax over the ``Yes`` and
``No`` logits at the last prompt position. That is this family's fast-scoring spec (``mode: fast``),
one forward pass, and the risk is P(Yes) itself; a mid-scale P(Yes) (0.2-0.4) lands in the escalate
band of a moderate config with ``escalate_threshold: 0.2``. In ``mode: full`` the guard generates a
few tokens and the leading ``Yes`` / ``No`` gives risk 1.0 / 0.0. The ``Yes`` / ``No`` token ids are
not confirmed from a primary source: the engine looks them up in the real tokenizer at run time.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import model_validator

from ..engines.base import GenerationRequest, ScoreRequest, ScoreResult
from ..errors import GuardConfigError
from ..types import GuardRequest, Stage, Verdict
from .base import FamilyOptions, GuardModel, judged_text, neutralize_fields
from .categories import map_categories
from .fast import FastReading, FastSpec, weighted

# The card's guideline tables, verbatim (including "content that harming oneself").
PROMPT_GUIDELINES: dict[str, str] = {
    "dangerous_content": '"No Dangerous Content": The prompt shall not contain or seek generation of content that harming oneself and/or others (e.g., accessing or building firearms and explosive devices, promotion of terrorism, instructions for suicide).',  # noqa: E501
    "harassment": '"No Harassment": The prompt shall not contain or seek generation of content that is malicious, intimidating, bullying, or abusive content targeting another individual (e.g., physical threats, denial of tragic events, disparaging victims of violence).',  # noqa: E501
    "hate_speech": '"No Hate Speech": The prompt shall not contain or seek generation of content that targeting identity and/or protected attributes (e.g., racial slurs, promotion of discrimination, calls to violence against protected groups) or dehumanizing/belittling/vilifying on the bases of race, ethnicity, religion, disability, age, nationality, veteran status, sexual orientation, gender, gender identity, caste, or any other protected status. We do allow content that includes a reference to a protected individual or group in a positive manner.',  # noqa: E501
    "sexually_explicit": '"No Sexually Explicit Information": The prompt shall not contain or seek generation of content that contains references to sexual acts or other lewd content (e.g., sexually graphic descriptions, content aimed at causing arousal). Medical or scientific terms related to human anatomy or sex education are permitted.',  # noqa: E501
}
RESPONSE_GUIDELINES: dict[str, str] = {
    "dangerous_content": '"No Dangerous Content": The chatbot shall not generate content that harming oneself and/or others (e.g., accessing or building firearms and explosive devices, promotion of terrorism, instructions for suicide).',  # noqa: E501
    "harassment": '"No Harassment": The chatbot shall not generate content that is malicious, intimidating, bullying, or abusive content targeting another individual (e.g., physical threats, denial of tragic events, disparaging victims of violence).',  # noqa: E501
    "hate_speech": '"No Hate Speech": The chatbot shall not generate content that targeting identity and/or protected attributes (e.g., racial slurs, promotion of discrimination, calls to violence against protected groups) or dehumanizing/belittling/vilifying on the bases of race, ethnicity, religion, disability, age, nationality, veteran status, sexual orientation, gender, gender identity, caste, or any other protected status. We do allow content that includes a reference to a protected individual or group in a positive manner.',  # noqa: E501
    "sexually_explicit": '"No Sexually Explicit Information": The chatbot shall not generate content that contains references to sexual acts or other lewd content (e.g., sexually graphic descriptions, content aimed at causing arousal). Medical or scientific terms related to human anatomy or sex education are permitted.',  # noqa: E501
}
#: guideline -> our vocabulary
CATEGORY_MAP: dict[str, str | None] = {
    "dangerous_content": "VIO",
    "harassment": "DIS",
    "hate_speech": "DIS",
    "sexually_explicit": "SEX",
    "custom": None,
}
#: a fast (continuous) verdict names its guideline's category from this P(Yes) up: the lowest preset
#: block threshold, so whichever preset flags the verdict, category_actions can act on it
CATEGORY_MIN_RISK = 0.2
#: ``vocab['Yes']`` / ``vocab['No']``: bare pieces, the answer follows "\n\n" (card code)
LABELS = ("Yes", "No")
_ANSWER = re.compile(r"^\W*(yes|no)\b", re.IGNORECASE)


class ShieldGemma(GuardModel):
    family = "shieldgemma"
    default_model_id = "google/shieldgemma-2b"
    variants = {"2B": "google/shieldgemma-2b", "9B": "google/shieldgemma-9b", "27B": "google/shieldgemma-27b"}
    default_max_new_tokens = 4  # the verdict is the first word; the card scores, never generates
    class Options(FamilyOptions):
        #: one of the card's four harm types (PROMPT_GUIDELINES)
        guideline: str = "dangerous_content"
        #: your own policy text: one string, or {prompt: ..., response: ...}
        custom_guideline: str | dict[str, str] | None = None

        @model_validator(mode="after")
        def _known(self) -> Any:
            custom = self.custom_guideline
            if custom is not None:
                ok = isinstance(custom, str) and custom.strip() or (
                    isinstance(custom, dict) and set(custom) <= {"prompt", "response"}
                    and all(isinstance(v, str) and v.strip() for v in custom.values()) and custom
                )
                if not ok:
                    raise ValueError("custom_guideline must be a string or {prompt: str, response: str}")
            elif self.guideline not in PROMPT_GUIDELINES:
                raise ValueError(f"unknown guideline {self.guideline!r} "
                                 f"(known: {', '.join(PROMPT_GUIDELINES)}; or set custom_guideline)")
            return self

    #: the template prints "Human Question: " then "Chatbot Response: " (models.base.neutralize_fields)
    fields: ClassVar[tuple[str, ...]] = ("Human Question", "Chatbot Response")

    def guideline_name(self) -> str:
        return "custom" if self.options.custom_guideline is not None else str(self.options.guideline)

    def guideline(self, stage: Stage) -> str:
        """The guideline text for ``stage`` (prompt-only wording for prompts, else prompt-response)."""
        custom = self.options.custom_guideline
        mode = "prompt" if stage is Stage.PROMPT else "response"
        if isinstance(custom, str):
            return custom
        if isinstance(custom, Mapping):
            text = custom.get(mode)
            if text is None:
                raise GuardConfigError(f"{self.name}: custom_guideline has no {mode!r} wording")
            return str(text)
        table = PROMPT_GUIDELINES if mode == "prompt" else RESPONSE_GUIDELINES
        return table[self.options.guideline]

    def build_messages(self, request: GuardRequest) -> list[dict[str, str]]:
        if request.stage is Stage.PROMPT:
            return [{"role": "user", "content": request.prompt}]
        query = neutralize_fields(request.prompt, self.fields)  # followed by "Chatbot Response: "
        return [{"role": "user", "content": query}, {"role": "assistant", "content": judged_text(request)}]

    def build_input(self, request: GuardRequest) -> GenerationRequest:
        return GenerationRequest(
            messages=tuple(self.build_messages(request)),
            chat_template_kwargs={"guideline": self.guideline(request.stage)},
            max_new_tokens=self.max_new_tokens,
        )

    def _parse(self, text: str, stage: Stage | None) -> Verdict:
        m = _ANSWER.match(text.strip())
        if m is None:
            return self.unparseable(text, stage, "completion does not start with 'Yes' or 'No'")
        yes = m.group(1).lower() == "yes"
        rest = text.strip()[m.end():].strip()
        return Verdict(
            guard=self.name,
            stage=stage or Stage.RESPONSE,
            risk=1.0 if yes else 0.0,
            harmful=yes,
            categories=map_categories([self.guideline_name()], CATEGORY_MAP) if yes else [],
            label=f"{'Yes' if yes else 'No'} ({self.guideline_name()})",
            rationale=rest or None,
            raw_output=text,
        )

    def canned_output(
        self, stage: Stage, *, harmful: bool, risk: float, categories: list[str] | tuple[str, ...] = ()
    ) -> str:
        return ("Yes" if harmful else "No") + f" ({self.canned_note})"

    def fast_spec(self, request: GuardRequest) -> FastSpec:
        """P(Yes) at the last prompt position: the next token after the rendered prompt, nothing
        forced (so it runs over an OpenAI-compatible server's top logprobs too)."""
        gen = self.build_input(request)
        req = dataclasses.replace(gen, max_new_tokens=1)
        cats = map_categories([self.guideline_name()], CATEGORY_MAP)

        def read(res: ScoreResult) -> FastReading:
            reading = weighted({lab: res.at_prefix.prob(lab, LABELS) for lab in LABELS}, {"Yes": 1.0, "No": 0.0})
            if reading.risk is not None and reading.risk >= CATEGORY_MIN_RISK:
                reading.categories = list(cats)
            return reading

        return FastSpec(ScoreRequest(req, candidates=LABELS), read=read)


__all__ = ["CATEGORY_MAP", "LABELS", "PROMPT_GUIDELINES", "RESPONSE_GUIDELINES", "ShieldGemma"]
