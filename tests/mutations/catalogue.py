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
        tests=["tests/test_policy.py", "tests/engines/test_faults.py"],
    )
    # Engine close racing a generate: rows queued after the stop sentinel strand their caller.
    mutation(
        id="engine-close-race",
        prop="no stranded guard call",
        path="guardrails_plugin/engines/transformers/batching.py",
        old="            for row in rows:\n                self._queue.put(row)",
        new="            pass\n        for row in rows:\n            self._queue.put(row)",
        tests=["tests/engines/test_transformers_engine.py::test_generate_racing_aclose_is_answered_or_refused_never_stranded"],
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

    # ---- streaming (the TurnGuard owns every rule once) -----------------------------------------------
    # Hold-back: an item may leave only once every track it fed has covered it.
    mutation(
        id="turn-holdback-releases-unchecked",
        prop="hold-back (in-process)",
        path="guardrails_plugin/stream/turn.py",
        old="            if any((t.safe() < n) if t is not None else not passed for t, n in h.needs):\n                break",
        new="            if False:\n                break",
        tests=["tests/stream/test_turn_guard.py", "tests/stream/test_monitor.py"],
    )
    # Hold-back through a real proxy against a guard with latency: a finished check covers only the
    # prefix it judged, never text that arrived while it ran (a zero-latency guard hides this).
    mutation(
        id="track-check-covers-text-fed-after-it",
        prop="hold-back (real proxy, slow guard)",
        path="guardrails_plugin/stream/track.py",
        old="            else:\n                self.covered = max(self.covered, check.chars)",
        new="            else:\n                self.covered = max(self.covered, self.chars)",
        tests=["tests/litellm/test_litellm_proxy.py::test_slow_guard_holds_back_answer_text_that_arrived_during_a_check"],
    )
    # Mid-stream REDACT stops the stream like BLOCK (a redaction cannot be applied to text already sent).
    mutation(
        id="stream-redact-counts-as-allow",
        prop="mid-stream REDACT",
        path="guardrails_plugin/stream/track.py",
        old="return decision.blocked or decision.action is Action.REDACT",
        new="return decision.blocked",
        tests=["tests/stream/test_turn_guard.py", "tests/stream/test_monitor.py"],
    )
    # ---- forgery defences ------------------------------------------------------------------------------
    # Text sent to a server: special-token look-alikes broken so they cannot open a forged turn.
    mutation(
        id="forgery-no-defuse-over-http",
        prop="forgery: special tokens (HTTP)",
        path="guardrails_plugin/engines/base.py",
        old=r'return _SPECIAL_TOKEN_TEXT.sub("<\u200b", text)',
        new="return text",
        tests=["tests/engines/test_openai_defuse.py"],
    )
    # In-process: untrusted text never becomes special-token ids.
    mutation(
        id="forgery-special-ids-in-process",
        prop="forgery: special tokens (in-process)",
        path="guardrails_plugin/engines/transformers/encoding.py",
        old="out.extend(self._encode_trusted(text) if trusted else self._encode_plain(text))",
        new="out.extend(self._encode_trusted(text))",
        tests=["tests/test_injection_redteam.py"],
    )
    # Field markers in user text (``\nThought: ...``) are quoted so they cannot open a guard field.
    mutation(
        id="forgery-field-markers-unquoted",
        prop="forgery: guard field markers",
        path="guardrails_plugin/models/base.py",
        old="    return _field_line(tuple(markers)).sub(QUOTE, text)",
        new="    return text",
        tests=["tests/test_injection_redteam.py"],
    )

    # The parser reads only the guard's completion, never its input (where a forged verdict may sit).
    mutation(
        id="forgery-parser-reads-the-prompt",
        prop="forgery: parse the completion only",
        path="guardrails_plugin/runner.py",
        old="                v = job.model.parse(completion, job.stage)",
        new="                v = job.model.parse(job.engine.render(inputs[windows.index(w)]) + completion, job.stage)",
        tests=["tests/test_injection_redteam.py"],
    )

    # ---- audit -----------------------------------------------------------------------------------------
    # Strict durability: the SQLite WAL is fsync'd before COMMIT returns (synchronous=FULL).
    mutation(
        id="audit-strict-not-fsynced",
        prop="strict audit fsync",
        path="guardrails_plugin/observe/sql_engine.py",
        old='want = "FULL" if opts.get(DURABLE, True) else "NORMAL"',
        new='want = "OFF"',
        tests=["tests/observe/test_audit.py::test_strict_commits_are_synchronous_background_ones_batch"],
    )

    # A BLOCK must come from a verdict: with the guard prompt broken, the marker guard cannot read it
    # and the check fails closed. Tests asserting only "BLOCK" would stay green; tests/conftest.py's
    # unreadable-prompt check turns them red.
    mutation(
        id="guard-prompt-broken-block-for-wrong-reason",
        prop="fail-closed (real verdicts)",
        path="guardrails_plugin/models/guardreasoner.py",
        old='return INSTUCT + "\\n" + "Human user:\\n" + prompt + "\\n\\nAI assistant:\\n" + response + "\\n\\n"',
        new='return INSTUCT + "\\n" + "User:\\n" + prompt + "\\n\\nAI assistant:\\n" + response + "\\n\\n"',
        tests=["tests/langchain/test_langchain_runnable.py"],
    )

    # A record racing close() is written or counted, never silently lost: the closed check and the
    # append are one step under close()'s lock (the mutant appends outside it).
    mutation(
        id="audit-record-racing-close-lost",
        prop="audit: nothing silently lost",
        path="guardrails_plugin/observe/auditor.py",
        old='        with self._cond:\n            # The closed check and the append are one step under the lock close() takes: a record\n            # is either queued ahead of the writer\'s stop (so written) or dropped and counted.\n            if self._closed:\n                why = "closed"\n            elif len(self._queue) >= self.queue_size:\n                why = "full"\n            else:\n                self._queue.append(record)\n                self._enqueued += 1\n                if len(self._queue) == 1 or len(self._queue) >= self.batch_size:\n                    self._cond.notify()\n                return True\n            self.dropped += 1\n            n = self.dropped\n',
        new='        with self._cond:\n            closed, full = self._closed, len(self._queue) >= self.queue_size\n        if closed or full:\n            why = "closed" if closed else "full"\n        else:\n            self._queue.append(record)\n            with self._cond:\n                self._enqueued += 1\n                if len(self._queue) == 1 or len(self._queue) >= self.batch_size:\n                    self._cond.notify()\n            return True\n        with self._cond:\n            self.dropped += 1\n            n = self.dropped\n',
        tests=["tests/observe/test_audit_writer.py::test_a_record_racing_close_is_written_or_counted_never_lost"],
    )

    # ---- human in the loop and agent streams (LangChain) -----------------------------------------------
    # A reviewer's edit is checked again before release: a harmful edit must not pass.
    mutation(
        id="hitl-edit-released-unchecked",
        prop="escalation: edits re-checked",
        path="guardrails_plugin/langchain/hitl.py",
        old="        why = release_refusal(d2)  # observe/reviews.py: only a real, judged ALLOW releases an edit",
        new="        why = None",
        tests=["tests/langchain/test_langchain_hitl.py", "-k", "harmful_edit"],
    )
    # ---- escalation review (issue 25) ----------------------------------------------------------------
    # An edit released on a degraded or disabled verdict: a fail-open pass or a disabled stage
    # judged nothing, so its ALLOW must not release a reviewer's edit (page, Python API, LangChain).
    mutation(
        id="review-edit-released-on-degraded-verdict",
        prop="escalation: a release is judged",
        path="guardrails_plugin/observe/reviews.py",
        old="    if d.degraded or d.failure is not None or not all(v.ok for v in d.verdicts):",
        new="    if False:",
        tests=["tests/review/test_review_trail.py"],
    )
    mutation(
        id="review-edit-released-on-disabled-stage",
        prop="escalation: a release is judged",
        path="guardrails_plugin/observe/reviews.py",
        old="    if d.reason == STAGE_DISABLED or not d.verdicts:",
        new="    if False:",
        tests=["tests/review/test_review_trail.py"],
    )
    # Caller metadata overrides the plugin's own fields: a caller's dict at the plugin's key, or
    # a caller key inside its namespace, must never pass for the plugin's query or review trail.
    mutation(
        id="review-caller-metadata-overrides-plugin-fields",
        prop="escalation: the review trail is the plugin's",
        path="guardrails_plugin/observe/records.py",
        old="        if key == TRAIL_KEY and isinstance(v, Trail):",
        new="        if key == TRAIL_KEY and isinstance(v, dict):",
        tests=["tests/review/test_review_trail.py"],
    )
    mutation(
        id="review-caller-namespace-key-trusted",
        prop="escalation: the review trail is the plugin's",
        path="guardrails_plugin/observe/records.py",
        old="        elif key == TRAIL_KEY or key.startswith(TRAIL_PREFIX):",
        new="        elif key == TRAIL_KEY:",
        tests=["tests/review/test_review_trail.py"],
    )
    # v3 agent stream: answer text waits for its check (the mutant releases it at once).
    mutation(
        id="v3-stream-releases-unchecked-answer",
        prop="hold-back (agent v3 stream)",
        path="guardrails_plugin/langchain/stream_transformer.py",
        old='            delta[fname] = live.pending.pop(index, "")',
        new='            delta[fname] = text if isinstance(text, str) else ""',
        tests=["tests/langchain/test_langchain_v3.py"],
    )

    # ---- long streams and event streams (issues 18, 19) --------------------------------------------------
    # A remembered window verdict is reused only for the same text and context: the mutant reuses it
    # for whatever text now sits at that span of a stream (a caller reusing a session id).
    mutation(
        id="judged-memory-ignores-text",
        prop="judged once, never judged wrong",
        path="guardrails_plugin/stream/judged.py",
        old="        if entry[0] != span or entry[1] != context or entry[2] != text_digest(text):",
        new="        if entry[0] != span:",
        tests=["tests/stream/test_judged.py"],
    )
    # The gate: the answer waits until the reasoning before it is covered by a passed check.
    mutation(
        id="turn-answer-skips-the-gate",
        prop="gate (answer after checked reasoning)",
        path="guardrails_plugin/stream/turn.py",
        old="                        needs.append((seg, seg.chars))",
        new="                        pass",
        tests=["tests/stream/test_turn_guard.py"],
    )
    # Event streams: the inner model runs without the consumer-facing streaming handlers (the
    # mutant keeps them, so astream_events / stream_mode="messages" see unchecked tokens).
    mutation(
        id="events-inner-run-keeps-streaming-handlers",
        prop="hold-back (LangChain event streams)",
        path="guardrails_plugin/langchain/events.py",
        old="            if not is_streaming(h):\n                child.add_handler(",
        new="            if True:\n                child.add_handler(",
        tests=["tests/langchain/test_langchain_event_streams.py"],
    )

    # ---- LiteLLM answers (issue 24) -------------------------------------------------------------------
    # A refused chat choice keeps no copy of its text: the mutant keeps the logprobs (they spell it).
    mutation(
        id="litellm-refusal-keeps-logprobs",
        prop="a refused answer leaves no copy (logprobs)",
        path="guardrails_plugin/litellm/answers.py",
        old='                choice.finish_reason = "content_filter"\n                choice.logprobs = None\n',
        new='                choice.finish_reason = "content_filter"\n',
        tests=["tests/litellm/test_litellm_answers.py::test_a_refused_chat_choice_keeps_only_the_refusal"],
    )
    # Unknown is unsafe, no suffix rule: the mutant passes any event ending like a progress event.
    mutation(
        id="events-suffix-rule",
        prop="unknown answer events to the fail mode",
        path="guardrails_plugin/stream/events.py",
        old='        return [Part(_U, f"stream event {kind!r}")]\n\n    # -- whole items',
        new='        if kind.endswith((".completed", ".in_progress", ".generating", ".searching", ".failed", ".incomplete")):\n'
            '            return []\n        return [Part(_U, f"stream event {kind!r}")]\n\n    # -- whole items',
        tests=["tests/litellm/test_litellm_answers.py::test_no_suffix_rule_unknown_events_are_unknown_whatever_their_ending"],
    )
    # The answer beside the content: the mutant stops reading audio transcripts.
    mutation(
        id="extract-skips-audio-transcript",
        prop="answer text beside the content is judged",
        path="guardrails_plugin/stream/extract.py",
        old="        if isinstance(transcript, str) and transcript:",
        new="        if False:",
        tests=["tests/litellm/test_litellm_answers.py"],
    )
    # Unknown answer fields meet the response stage's fail mode: the mutant sends them to the reasoning's.
    mutation(
        id="turn-unknown-answer-to-reasoning",
        prop="unknown answer content: the response stage's fail mode",
        path="guardrails_plugin/stream/drive.py",
        old="    judged = Stage.RESPONSE if response else Stage.REASONING if reasoning else None",
        new="    judged = Stage.REASONING if reasoning else Stage.RESPONSE if response else None",
        tests=["tests/litellm/test_litellm_answers.py::test_an_unknown_answer_field_meets_the_response_stages_fail_mode"],
    )
    # An upstream error body never reaches the client: the mutant leaves the original exception's text.
    mutation(
        id="failure-hook-keeps-upstream-text",
        prop="no answer inside an error body",
        path="guardrails_plugin/litellm/failures.py",
        old="    scrub(exc)\n",
        new="",
        tests=["tests/litellm/test_litellm_answers.py::test_upstream_failures_become_a_clean_error_and_the_proxys_own_stay"],
    )

    # ---- redaction (issue 26) ------------------------------------------------------------------------
    # A value split over deltas is judged whole before any of it is released: the mutant releases
    # all the covered text at once, so the start of a card number leaves before its span was judged.
    mutation(
        id="redaction-value-released-before-its-span-was-judged",
        prop="no partial value in a redacted stream",
        path="guardrails_plugin/stream/track.py",
        old="        n -= self.hold_chars\n",
        new="        return n\n",
        tests=["tests/redaction/test_stream_redaction.py"],
    )
    # A localising check without a verdict redacts the whole window: the mutant counts a piece that
    # got no verdict as safe, so only the pieces judged harmful are redacted and the unjudged one shows.
    mutation(
        id="redaction-localisation-fails-open",
        prop="fail-closed (localisation)",
        path="guardrails_plugin/redaction/localise.py",
        old="    bad = next((v for v in verdicts if not v.ok), None)",
        new="    verdicts, bad = [v if v.ok else v.model_copy(update={'risk': 0.0}) for v in verdicts], None",
        tests=["tests/redaction/test_redaction_table.py"],
    )
