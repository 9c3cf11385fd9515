"""Redactor: turns the policy's REDACT of whole windows into spans.

For each flagged window (a verdict at or above the threshold):

1. categories about data (``redaction.data_categories``, INF by default: Llama Guard's S7,
   Qwen3Guard's PII, ... all map onto it) -> the span detectors' exact spans in the window;
2. any other category, no category at all, or a data category no detector matched -> the window is
   localised by the guard that flagged it (localise.py): its pieces judged as one batch, with the
   query as context; the pieces it flags on their own are the spans;
3. nothing found, a detector that raised, or a localising check without a verdict -> the whole
   window, as before spans existed. A redaction is never narrower than what could be localised.

The policy decides the action; this only decides what of the text the REDACT replaces. It needs
one thing from above, passed in: ``judge(guard, request, texts)``, the verdicts of guard model
``guard`` on each text judged alone with ``request``'s query (the Guard runs them on its runner).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..types import Action, Decision, GuardRequest, RedactedSpan, Redaction, Stage, Verdict
from .apply import apply, merge
from .detectors import Detectors
from .localise import localise
from .vault import Vault

if TYPE_CHECKING:
    from ..config import GuardConfig

log = logging.getLogger("guardrails_plugin")

JudgeTexts = Callable[[str, GuardRequest, list[str]], Awaitable[list[Verdict]]]


class Redactor:
    """One per Guard. Building it builds each stage's detectors (a GuardConfigError now, naming
    the ``redaction`` extra, when detectors are listed but Presidio is missing)."""

    def __init__(self, config: GuardConfig, judge: JudgeTexts):
        self.config = config
        self._judge = judge
        self.detectors: dict[Stage, Detectors] = {
            s: Detectors.build(sc.redaction) for s, sc in config.stages.items() if sc.enabled and config.may_redact(s)
        }

    def warmup(self) -> None:
        """Build every stage's detectors now (Presidio's import takes seconds), not on a check's path."""
        for det in self.detectors.values():
            if not det.empty:
                det.ready()

    def hold_chars(self, stage: Stage) -> int:
        """How much a stream of ``stage`` holds back behind its judged end so that no value is
        partly released: the longest match of its detectors (0 when it cannot redact)."""
        det = self.detectors.get(stage)
        if det is None:
            return 0
        rc = self.config.stage(stage).redaction
        return rc.hold_chars if rc.hold_chars is not None else det.max_chars

    async def refine(self, request: GuardRequest, decision: Decision) -> Decision:
        """``decision`` with its REDACT narrowed to spans (any other decision as it is)."""
        if decision.action is not Action.REDACT:
            return decision
        stage = request.stage
        rc = self.config.stage(stage).redaction
        text = request.target
        threshold = self.config.threshold(stage)
        report = Redaction(strategy=rc.strategy)
        spans: list[RedactedSpan] = []
        found: list[RedactedSpan] | None = None
        why: list[str] = []
        for v in (v for v in decision.verdicts if v.ok and v.risk >= threshold):
            window = v.window or (0, len(text))
            cats = list(v.categories)
            data = [c for c in cats if c in rc.data_categories]
            other = [c for c in cats if c not in rc.data_categories]
            got: list[RedactedSpan] = []
            failed = False
            det = self.detectors.get(stage)
            if data and det is not None and not det.empty:
                try:
                    if found is None:
                        det.ready()
                        t0 = time.perf_counter()
                        found = det.find(text)
                        report.detect_ms += (time.perf_counter() - t0) * 1e3
                    got += [s for s in found if s.start < window[1] and s.end > window[0]]
                except Exception as exc:  # fail closed: the whole window
                    log.warning("redaction detector failed (%r): the whole window is redacted", exc)
                    why.append(f"detector failed: {exc!r}")
                    failed = True
            if not failed and rc.localise and (other or not cats or not got):
                t0 = time.perf_counter()
                try:
                    pieces, n = await localise(text, window, self._pieces_judge(v.guard, request), threshold, rc.max_pieces)
                except Exception as exc:  # a localising check without a verdict: the whole window
                    log.warning("localising a redaction failed (%s): the whole window is redacted", exc)
                    why.append(f"localisation failed: {exc}")
                    failed = True
                else:
                    report.pieces_judged += n
                    localised = []
                    for (s, e), pv in pieces:
                        pcats = [c for c in pv.categories if c not in rc.data_categories]
                        if pv.categories and not pcats and any(s <= d.start < e for d in got):
                            continue  # a piece flagged for its data alone: the detectors' spans redact it
                        localised.append(RedactedSpan(start=s, end=e, by="guard", source=v.guard,
                                                      category=(pcats or pv.categories or cats or [None])[0]))
                    got += localised
                    ideas = any(sp.category not in rc.data_categories for sp in localised)
                    if other and not ideas:
                        got = []  # the ideas were not localised: nothing narrower than the window
                finally:
                    report.localise_ms += (time.perf_counter() - t0) * 1e3
            if other and not rc.localise:
                got = []
            if failed or not got:
                if not failed:
                    why.append("no piece flagged on its own")
                got = [RedactedSpan(start=window[0], end=window[1], by="window", source=v.guard,
                                    category=(cats or [None])[0])]
            spans += got
        if not spans:  # a REDACT without a flagged real verdict (cannot happen today): the whole text
            spans = [RedactedSpan(start=0, end=len(text), by="window", source="policy")]
            why.append("no flagged verdict")
        report.spans = merge(spans)
        report.fallback = "; ".join(dict.fromkeys(why)) or None
        update: dict[str, Any] = {"redaction": report}
        if stage is Stage.PROMPT and rc.vault:
            vault = Vault()
            update["text"] = vault.redact(text, report.spans)
        else:
            vault = None
            update["text"] = apply(text, report.spans, rc.strategy, self.config.redact_placeholder, rc.hash_salt)
        if report.fallback:
            update["detail"] = "; ".join(x for x in (decision.detail, f"redaction: {report.fallback}") if x)
        out = decision.model_copy(update=update)
        if vault is not None:
            out._vault = vault
        return out

    def _pieces_judge(self, guard: str, request: GuardRequest) -> Callable[[list[str]], Awaitable[list[Verdict]]]:
        # pieces are checks of their own: no stream session (their KV caches would be reused by nobody)
        meta = {k: v for k, v in request.metadata.items() if k != "session_id"}
        base = request.model_copy(update={"metadata": meta})

        async def judge(texts: list[str]) -> list[Verdict]:
            return await self._judge(guard, base, texts)

        return judge


__all__ = ["JudgeTexts", "Redactor"]
