"""The mutations: one per safety property (see run_mutations.py). Keep snippets exact and short."""

from __future__ import annotations

from collections.abc import Callable


def register(mutation: Callable[..., None]) -> None:
    # Fail-closed: a failed verdict beside a flagged REDACT/ESCALATE must still block.
    mutation(
        id="policy-mixed-verdict-hole",
        prop="fail-closed (mixed verdicts)",
        path="guardrails_plugin/policy.py",
        old="if kind is not None and closed:",
        new="if kind is not None and closed and not flagged:",
        tests=["tests/test_policy.py"],
    )
    # Fail-closed: a guard that cannot answer blocks under the default fail mode.
    mutation(
        id="policy-fail-open-by-default",
        prop="fail-closed (default)",
        path="guardrails_plugin/policy.py",
        old='closed = cfg.fail_mode_for(stage) == "closed"',
        new="closed = False",
        tests=["tests/test_policy.py", "tests/test_faults.py"],
    )
    # Engine close racing a generate: rows queued after the stop sentinel strand their caller.
    mutation(
        id="engine-close-race",
        prop="no stranded guard call",
        path="guardrails_plugin/engines/transformers/batching.py",
        old="            for row in rows:\n                self._queue.put(row)",
        new="            pass\n        for row in rows:\n            self._queue.put(row)",
        tests=["tests/test_transformers_engine.py::test_generate_racing_aclose_is_answered_or_refused_never_stranded"],
    )
