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
    # Cancellation: the caller's own cancellation propagates out of the per-model pipeline; it
    # never becomes a fail-mode verdict (gather alone would hide this: drive the runner directly).
    mutation(
        id="runner-swallows-caller-cancel",
        prop="a cancelled check is no verdict",
        path="guardrails_plugin/runner.py",
        old="            if we_are_cancelled():\n                raise\n",
        new="",
        tests=["tests/test_runner.py::test_cancelling_the_caller_propagates_out_of_the_runner"],
    )
