"""Fast scoring on the worker thread: one prefill per row, next-token log-probs at the forced
verdict position (guardrails_plugin/scoring.py says what they mean)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from ...errors import GuardEngineError
from ..base import Distribution, ScoreRequest, ScoreResult
from .state import _Row

if TYPE_CHECKING:
    from .state import EngineHost as _Host
else:
    _Host = object


class _ScoringMixin(_Host):
    """TransformersEngine's ``score`` path (batched prefill, or one session row with KV reuse)."""

    def _candidate_id(self, text: str) -> int | None:
        """First token of ``text`` as plain text (the forced prefix ends at a token boundary)."""
        if text not in self._candidate_ids:
            ids = self._encode_plain(text)
            self._candidate_ids[text] = ids[0] if ids else None
        return self._candidate_ids[text]

    def _distribution(self, logprobs: torch.Tensor, top_k: int, candidates: Sequence[str]) -> Distribution:
        dist = Distribution()
        if top_k > 0:
            vals, idx = torch.topk(logprobs, min(top_k, logprobs.shape[-1]))
            for v, i in zip(vals.tolist(), idx.tolist(), strict=True):
                tok = self._decode([i]) if i not in self._added_ids else self.tokenizer.convert_ids_to_tokens(i)
                dist.top[tok] = max(v, dist.top.get(tok, -math.inf))
        for c in candidates:
            cid = self._candidate_id(c)
            if cid is not None:
                dist.candidates[c] = float(logprobs[cid])
        return dist

    def _score_inputs(self, req: ScoreRequest) -> tuple[list[int], int]:
        ids = self.request_ids(req.request)
        probe = self._encode_plain(req.probe) if req.probe else []
        if not ids:
            raise ValueError("empty prompt")
        return ids + probe, len(probe)

    def _result(self, req: ScoreRequest, lp: torch.Tensor, n_probe: int, n_ids: int, reused: int) -> ScoreResult:
        """``lp``: log-probs of the last ``n_probe + 1`` positions of one row, [n_probe + 1, vocab]."""
        at = self._distribution(lp[0], req.top_k, req.candidates)
        after = self._distribution(lp[-1], req.top_k, req.probe_candidates) if n_probe else None
        return ScoreResult(at_prefix=at, after_probe=after, prompt_tokens=n_ids, reused_tokens=reused)

    def _run_score_batch(self, rows: Sequence[_Row]) -> None:
        plain: list[tuple[_Row, list[int], int]] = []
        for row in rows:
            if row.job.abandoned:
                continue
            try:
                ids, n_probe = self._score_inputs(row.request)
            except Exception as exc:
                row.job.fail(exc if isinstance(exc, GuardEngineError)
                             else GuardEngineError(f"{self.name}: cannot build model input: {exc!r}"))
                continue
            if row.request.session_id and self.max_sessions:
                self._score_session(row, ids, n_probe)
            else:
                plain.append((row, ids, n_probe))
        for i in range(0, len(plain), self.max_batch_size):
            chunk = plain[i : i + self.max_batch_size]
            try:
                results = self._score_forward(chunk)
            except Exception as exc:
                err = GuardEngineError(f"{self.name}: scoring failed: {exc!r}")
                err.__cause__ = exc
                for r, _, _ in chunk:
                    r.job.fail(err)
                continue
            for (r, _, _), res in zip(chunk, results, strict=True):
                if not r.job.abandoned:
                    r.job.finish_row(r.index, res)

    def _score_forward(self, chunk: Sequence[tuple[_Row, list[int], int]]) -> list[ScoreResult]:
        """One padded prefill; only the last positions go through the LM head."""
        input_ids, mask = self._pad_batch([ids for _, ids, _ in chunk])
        keep = max(n for _, _, n in chunk) + 1
        # Left padding: positions count real tokens only (generate() does the same).
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        self.stats["batches"] += 1
        self.stats["score_rows"] += len(chunk)
        self.stats["max_batch_rows"] = max(self.stats["max_batch_rows"], len(chunk))
        self.stats["prefill_tokens"] += sum(len(ids) for _, ids, _ in chunk)
        with torch.inference_mode():
            out = self.model(
                input_ids=input_ids, attention_mask=mask, position_ids=position_ids,
                use_cache=False, logits_to_keep=keep,
            )
            lp = torch.log_softmax(out.logits.float(), dim=-1)  # [B, keep, V]
        results = []
        for b, (row, ids, n_probe) in enumerate(chunk):
            rows_lp = lp[b, keep - 1 - n_probe :]
            results.append(self._result(row.request, rows_lp, n_probe, len(ids), 0))
        return results

    def _score_session(self, row: _Row, ids: list[int], n_probe: int) -> None:
        sid = row.request.session_id
        try:
            cache, reused = self._session_take(sid, ids, keep_last=n_probe + 1)
            self.stats["batches"] += 1
            self.stats["score_rows"] += 1
            self.stats["reused_tokens"] += reused
            self.stats["prefill_tokens"] += len(ids) - reused
            new = torch.tensor([ids[reused:]], dtype=torch.long, device=self.device)
            with torch.inference_mode():
                out = self.model(input_ids=new, past_key_values=cache, use_cache=True, logits_to_keep=n_probe + 1)
                lp = torch.log_softmax(out.logits.float(), dim=-1)[0]
            result = self._result(row.request, lp, n_probe, len(ids), reused)
            self._session_put(sid, ids, cache)
        except Exception as exc:
            self._fail_session_row(row, sid, "scoring", exc)
            return
        if not row.job.abandoned:
            row.job.finish_row(row.index, result)

