"""Policy: folds a stage's verdicts into one Decision.

Order of precedence, most severe first:
1. fail-closed and any guard or window could not answer (engine error, timeout, unparseable)
   -> BLOCK with the failure kind, whatever the other verdicts flagged: a REDACT or ESCALATE of the
   judged part must never release the part nobody judged;
2. a real verdict at or above the block threshold -> the flagged action (BLOCK by default, or a
   per-category override such as INF -> REDACT; the most severe override wins); under fail-open
   with a failed verdict beside it, the action applies to the judged text and the decision is
   ``degraded`` with the failure kind;
3. fail-open and nothing flagged but a failure -> allow with ``degraded=True``;
4. a real verdict in the escalate band [escalate_threshold, block_threshold) -> ESCALATE;
5. otherwise ALLOW.
"""

from __future__ import annotations

from .config import GuardConfig
from .types import Action, Decision, FailureKind, GuardRequest, Verdict
from .windowing import Span, redact_spans

_SEVERITY = {Action.ALLOW: 0, Action.REDACT: 1, Action.ESCALATE: 2, Action.BLOCK: 3}

FAILURE_REASONS = {
    FailureKind.ENGINE_ERROR: "guard_unavailable",
    FailureKind.TIMEOUT: "guard_timeout",
    FailureKind.UNPARSEABLE: "guard_unparseable",
    FailureKind.CIRCUIT_OPEN: "guard_unavailable",
    FailureKind.BAD_INPUT: "guard_bad_input",
}


class Policy:
    """Thresholds, per-category actions and fail modes from a GuardConfig."""

    def __init__(self, config: GuardConfig):
        self.config = config

    def decide(
        self,
        request: GuardRequest,
        verdicts: list[Verdict],
        *,
        latency_ms: float = 0.0,
        unguarded: list[str] | None = None,
    ) -> Decision:
        cfg = self.config
        stage = request.stage
        text = request.target
        threshold = cfg.threshold(stage)
        ok = [v for v in verdicts if v.ok]
        failed = [v for v in verdicts if not v.ok]
        worst = max(ok, key=lambda v: v.risk, default=None)
        risk = worst.risk if worst else 0.0
        flagged = [v for v in ok if v.risk >= threshold]
        categories = sorted({c for v in (flagged or ok) for c in v.categories})
        common = dict(
            stage=stage,
            verdicts=verdicts,
            risk=risk,
            categories=categories,
            request_id=request.request_id,
            latency_ms=latency_ms,
            unguarded=list(unguarded or []),
        )

        closed = cfg.fail_mode_for(stage) == "closed"
        kind: FailureKind | None = None
        why = detail = ""
        if failed or not verdicts:
            kind = (failed[0].failure if failed else FailureKind.ENGINE_ERROR) or FailureKind.UNPARSEABLE
            # ``reason`` is a stable token callers can match; the engine's words go to ``detail``.
            why = FAILURE_REASONS[kind]
            detail = (failed[0].parse_error if failed else None) or "no verdict"
            if kind is FailureKind.CIRCUIT_OPEN:
                detail = f"circuit open: {detail}"

        if kind is not None and closed:
            # Some text went unjudged: nothing of it may pass, whatever the judged part earned.
            # The client-facing risk is the failure verdict's 1.0, never the judged part's 0.0.
            if flagged:
                detail += f" (also flagged: {self._flag_reason(flagged, threshold)})"
            common["risk"] = 1.0
            return Decision(
                action=Action.BLOCK, text=cfg.refusal_message, reason=why, detail=detail, failure=kind, **common
            )

        # Fail-open: an action on the judged part applies, and the decision says part went unjudged.
        extra: dict = {}
        if kind is not None:
            extra = dict(degraded=True, failure=kind, detail=f"{detail} (fail-open: part of the text has no verdict)")

        if flagged:
            action = self._flagged_action(flagged)
            # An ESCALATE reached by a per-stage or per-category override holds exactly like one
            # from the escalate band: escalation_hold=True must never let the content through.
            hold = action is Action.ESCALATE and cfg.escalation_hold
            return Decision(
                action=action,
                text=self._text_for(action, text, flagged),
                reason=self._flag_reason(flagged, threshold),
                hold=hold,
                # degraded means "released unjudged text": a BLOCK releases nothing.
                **(extra if action is not Action.BLOCK else {}),
                **common,
            )

        # Fail-open with nothing flagged: the judged part may still sit in the escalate band.
        escalate_at = cfg.escalate_at(stage)
        if worst is not None and escalate_at is not None and risk >= escalate_at:
            hold = cfg.escalation_hold
            return Decision(
                action=Action.ESCALATE,
                text=cfg.refusal_message if hold else text,
                reason=f"risk {risk:.2f} in escalate band [{escalate_at:.2f}, {threshold:.2f}) "
                f"({worst.guard})",
                hold=hold,
                **extra,
                **common,
            )

        if kind is not None:
            # Fail-open: let the text through, say loudly that nothing judged it.
            return Decision(
                action=Action.ALLOW,
                text=text,
                reason=why,
                detail=f"{detail} (fail-open: allowed without a verdict)",
                degraded=True,
                failure=kind,
                **common,
            )

        reason = f"risk {risk:.2f} < {threshold:.2f}" + (f" ({worst.guard})" if worst else "")
        return Decision(action=Action.ALLOW, text=text, reason=reason, **common)

    @staticmethod
    def _flag_reason(flagged: list[Verdict], threshold: float) -> str:
        top = max(flagged, key=lambda v: v.risk)
        reason = f"risk {top.risk:.2f} >= {threshold:.2f} ({top.guard})"
        if top.categories:
            reason += f" [{', '.join(top.categories)}]"
        return reason

    def _flagged_action(self, flagged: list[Verdict]) -> Action:
        default = self.config.stage(flagged[0].stage).flagged_action
        overrides = self.config.category_actions
        actions: list[Action] = []
        for v in flagged:
            cats = [c for c in v.categories if c in overrides]
            if cats:
                actions.extend(overrides[c] for c in cats)
                if any(c not in overrides for c in v.categories):
                    actions.append(default)
            else:
                actions.append(default)
        return max(actions, key=_SEVERITY.__getitem__)

    def _text_for(self, action: Action, text: str, flagged: list[Verdict]) -> str:
        cfg = self.config
        if action is Action.REDACT:
            spans: list[Span] = [v.window or (0, len(text)) for v in flagged]
            return redact_spans(text, spans, cfg.redact_placeholder)
        if action is Action.ALLOW:
            return text
        if action is Action.ESCALATE and not cfg.escalation_hold:
            return text
        return cfg.refusal_message

    def empty(self, request: GuardRequest, *, unguarded: list[str] | None = None) -> Decision:
        """The decision for a text with nothing to judge (empty or whitespace only)."""
        return Decision(
            action=Action.ALLOW,
            stage=request.stage,
            text=request.target,
            reason="empty_text",
            detail="nothing to check",
            request_id=request.request_id,
            unguarded=list(unguarded or []),
        )
