"""`guardrails-plugin bench`: what a verdict costs, beside what the hardware could do.

Measures, with the real TransformersEngine (micro-batching worker, fast scoring, KV sessions):

* latency per verdict at batch 1: full generation (ReasoningShield layout, a fixed number of output
  tokens, EOS ignored), fast score (one prefill), cascade (measured on this model, plus a projection
  at an assumed escalation fraction, since random weights make every fast score unreadable);
* throughput (verdicts/s) at batch 1 / 8 / 32 / 64, fast and full;
* monitor cost per 1,000 streamed reasoning tokens, a check every ``--check-every`` tokens, with and
  without KV reuse, against one end-of-trace check.

Each figure sits beside its physical floor: a decode step cannot beat weight bytes / memory
bandwidth, a prefill cannot beat its FLOPs / peak. On CPU both are *measured* here (a large tensor
copy, a 1024^3 fp32 matmul); on GPU the datasheet numbers are used (H100 SXM: 3.35 TB/s, 989 dense
bf16 TFLOP/s; H200: 4.8 TB/s, same peak) and the measured ones are printed too.

Models are random-weight: ``tiny`` (CPU default, the test model shape) or the real shapes
``llama-1b``, ``llama-3b``, ``qwen3-8b`` (GPU), built in memory with a small trained tokenizer
(token ids only; a guard's verdict quality is irrelevant to its speed). Not part of the test suite.

    guardrails-plugin bench                                   # CPU, tiny, a few minutes at most
    guardrails-plugin bench --shape llama-1b --shape qwen3-8b # on a GPU

The command line is ``cli/bench.py``; this module measures and reports.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SHAPES: dict[str, dict[str, Any]] = {
    # build_tiny_model's defaults (what the tests use)
    "tiny": dict(family="llama", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, intermediate_size=128, vocab_size=None, tie=True),
    "llama-1b": dict(family="llama", hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, intermediate_size=8192, vocab_size=128256, tie=True),
    "llama-3b": dict(family="llama", hidden_size=3072, num_hidden_layers=28, num_attention_heads=24,
                     num_key_value_heads=8, intermediate_size=8192, vocab_size=128256, tie=True),
    "qwen3-8b": dict(family="qwen3", hidden_size=4096, num_hidden_layers=36, num_attention_heads=32,
                     num_key_value_heads=8, intermediate_size=12288, vocab_size=151936, tie=False),
}

#: datasheet figures (bytes/s, FLOP/s) for floors on known GPUs
GPU_SPECS = {"H100": (3.35e12, 989e12), "H200": (4.8e12, 989e12)}

FILLER = (
    "Let me think about what the user is asking and whether any step could cause harm. "
    "The request concerns baking bread at home, so I will list flour, water, salt and yeast, "
    "then explain kneading, proofing and baking temperatures in plain words. "
)


# ----------------------------------------------------------------------------------- hardware


def measure_hardware(device: str) -> dict[str, Any]:
    """Measured copy bandwidth and matmul peak on ``device`` (plus datasheet values on known GPUs)."""
    import torch

    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    n = (1 << 30 if dev.type == "cuda" else 1 << 27) // 4
    x = torch.empty(n, device=dev).normal_()
    y = torch.empty_like(x)
    for _ in range(2):
        y.copy_(x)
    sync()
    reps = 10
    t0 = time.perf_counter()
    for _ in range(reps):
        y.copy_(x)
    sync()
    bw = 2 * x.numel() * 4 * reps / (time.perf_counter() - t0)
    dt = torch.bfloat16 if dev.type == "cuda" else torch.float32
    m = 8192 if dev.type == "cuda" else 1024
    a = torch.randn(m, m, device=dev, dtype=dt)
    b = torch.randn(m, m, device=dev, dtype=dt)
    for _ in range(2):
        a @ b
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    peak = 2 * m**3 * reps / (time.perf_counter() - t0)
    del x, y, a, b
    out: dict[str, Any] = {"device": str(dev), "measured_bandwidth_Bps": bw, "measured_peak_flops": peak,
                           "bandwidth_Bps": bw, "peak_flops": peak, "basis": "measured"}
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
        out["name"] = name
        for key, (sbw, speak) in GPU_SPECS.items():
            if key in name:
                out.update(bandwidth_Bps=sbw, peak_flops=speak, basis=f"{key} datasheet (bf16 dense)")
    else:
        out["name"] = f"CPU ({torch.get_num_threads()} threads)"
    return out


# ----------------------------------------------------------------------------------- models


def build_engine(shape: str, device: str, *, max_batch_size: int = 64):
    """A TransformersEngine over a random-weight model of ``shape`` and a small trained tokenizer."""
    import torch
    from transformers import AutoTokenizer

    from ..engines.transformers import TransformersEngine
    from ..testing import build_tiny_model

    spec = dict(SHAPES[shape])
    family = spec.pop("family")
    tie = spec.pop("tie")
    tok_dir = build_tiny_model(Path(tempfile.mkdtemp(prefix="gp-bench-")), family=family)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tok_dir, local_files_only=True)
    vocab = spec.pop("vocab_size") or config.vocab_size
    for k, v in spec.items():
        setattr(config, k, v)
    config.vocab_size = max(vocab, len(tokenizer))
    config.head_dim = config.hidden_size // config.num_attention_heads
    config.tie_word_embeddings = tie
    dev = torch.device(device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    torch.manual_seed(0)
    with dev:
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval()
    gen_cfg = __import__("transformers").GenerationConfig.from_pretrained(tok_dir, local_files_only=True)
    model.generation_config = gen_cfg

    class _BenchEngine(TransformersEngine):
        def _load(self, trust_remote_code: bool) -> tuple[Any, Any]:
            tokenizer.padding_side = "left"
            return tokenizer, model

    eng = _BenchEngine(str(tok_dir), device=device, max_batch_size=max_batch_size, name=f"bench-{shape}")
    # Full verdicts decode exactly --output-tokens tokens: random weights would stop at random EOSes.
    eng.eos_token_ids = (eng.pad_token_id,)
    return eng


def model_numbers(engine) -> dict[str, float]:
    m = engine.model
    cfg = m.config
    total = sum(p.numel() for p in m.parameters())
    emb = m.get_input_embeddings().weight.numel()
    head = m.get_output_embeddings().weight
    elem = next(m.parameters()).element_size()
    return {
        "params": total,
        "weight_bytes": total * elem,
        # matmul parameters per token: everything but the embedding lookup (the LM head is a matmul)
        "matmul_params_no_head": total - emb - (0 if head is m.get_input_embeddings().weight else head.numel()),
        "head_params": head.numel(),
        "layers": cfg.num_hidden_layers,
        "attn_dim": cfg.num_attention_heads * (getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads),
    }


def prefill_flops(mn: dict[str, float], n: int, *, past: int = 0, head_positions: int = 1) -> float:
    """FLOPs of computing ``n`` new tokens after ``past`` cached ones (causal attention)."""
    linear = 2 * mn["matmul_params_no_head"] * n + 2 * mn["head_params"] * head_positions
    # QK^T and AV: 2 * 2 * d_attn per (query, key) pair; keys = past + causal part of the new ones
    pairs = n * past + n * (n + 1) / 2
    return linear + 4 * mn["layers"] * mn["attn_dim"] * pairs


# ----------------------------------------------------------------------------------- inputs


def rs_messages(engine, total_tokens: int, trace_tokens: int | None = None) -> tuple[tuple[dict, ...], int]:
    """ReasoningShield-layout messages of about ``total_tokens`` tokens: its system prompt (cut to
    fit) and a reasoning trace filling the rest (or ``trace_tokens``)."""
    from ..models.reasoningshield import builtin_prompt

    tok = engine.tokenizer
    sys_ids = tok(builtin_prompt(), add_special_tokens=False)["input_ids"]
    trace_n = trace_tokens if trace_tokens is not None else max(16, total_tokens // 2)
    sys_n = max(8, total_tokens - trace_n - 24)
    system = tok.decode(sys_ids[:sys_n])
    trace = trace_text(engine, trace_n)
    msgs = ({"role": "system", "content": system}, {"role": "user", "content": f"Query: How do I bake bread?\nThought: {trace}"})
    from ..engines.base import GenerationRequest

    return msgs, len(engine.request_ids(GenerationRequest(messages=msgs)))


def trace_text(engine, n_tokens: int) -> str:
    ids = engine.tokenizer(FILLER * (n_tokens // 10 + 4), add_special_tokens=False)["input_ids"]
    return engine.tokenizer.decode(ids[:n_tokens])


# ----------------------------------------------------------------------------------- timing


def _timeit(fn, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _sync(engine) -> None:
    if engine.device.type == "cuda":
        import torch

        torch.cuda.synchronize()


def bench_shape(shape: str, device: str, args: BenchOptions, hw: dict[str, Any]) -> dict[str, Any]:
    from ..engines.base import GenerationRequest
    from ..models import ReasoningShield
    from ..models.reasoningshield import FAST_PREFIX as REASONINGSHIELD_PREFIX
    from ..models.scoring import spec_for
    from ..types import GuardRequest, Stage

    t_start = time.perf_counter()
    engine = build_engine(shape, device, max_batch_size=max(args.batches))
    mn = model_numbers(engine)
    bw, peak = hw["bandwidth_Bps"], hw["peak_flops"]
    n_in, n_out = args.input_tokens, args.output_tokens
    msgs, n_real = rs_messages(engine, n_in)
    full_req = GenerationRequest(messages=msgs, max_new_tokens=n_out)
    score_req = spec_for(ReasoningShield(), GuardRequest(stage=Stage.REASONING, prompt="q", reasoning="t")).score
    score_req = dataclasses.replace(
        score_req, request=GenerationRequest(messages=msgs, assistant_prefix=REASONINGSHIELD_PREFIX, max_new_tokens=1)
    )
    run = asyncio.run

    def full(b: int) -> None:
        run(engine.generate([full_req] * b))
        _sync(engine)

    def fast(b: int) -> None:
        run(engine.score([score_req] * b))
        _sync(engine)

    full(1)
    fast(1)  # warm-up (allocations, kernels)
    out_ids = engine.tokenizer(run(engine.generate([full_req]))[0], add_special_tokens=False)["input_ids"]
    reps = args.reps
    lat_full = _timeit(lambda: full(1), max(2, reps // 3))
    lat_fast = _timeit(lambda: fast(1), reps)

    decode_floor = mn["weight_bytes"] / bw
    fast_flops = prefill_flops(mn, n_real + 1, head_positions=2)
    fast_floor = max(fast_flops / peak, decode_floor)
    full_floor = max(prefill_flops(mn, n_real) / peak, decode_floor) + (n_out - 1) * decode_floor

    # Cascade through the Guard pipeline on this model (random weights: every fast score is
    # unreadable, so everything escalates), plus the projection at an assumed fraction.
    med_fast, med_full = statistics.median(lat_fast), statistics.median(lat_full)
    f = args.assume_escalation
    cascade = {
        "measured_escalated_fraction": 1.0,
        "measured_ms": (med_fast + med_full) * 1e3,
        "projected_fraction": f,
        "projected_ms": (med_fast + f * med_full) * 1e3,
        "projected_floor_ms": (fast_floor + f * full_floor) * 1e3,
        "note": "random weights: fast scores are unreadable, so the measured cascade escalates all; "
                "the projection assumes the given escalation fraction (unmeasured on real guards)",
    }

    thr: dict[str, dict[str, Any]] = {"fast": {}, "full": {}}
    for b in args.batches:
        t = statistics.median(_timeit(lambda b=b: fast(b), max(1, reps // 3)))
        fl = max(b * fast_flops / peak, decode_floor)
        thr["fast"][str(b)] = {"verdicts_per_s": b / t, "floor_verdicts_per_s": b / fl}
        if b <= args.max_full_batch:
            t = statistics.median(_timeit(lambda b=b: full(b), 1))
            step = max(decode_floor, b * 2 * (mn["matmul_params_no_head"] + mn["head_params"]) / peak)
            fl = max(b * prefill_flops(mn, n_real) / peak, decode_floor) + (n_out - 1) * step
            thr["full"][str(b)] = {"verdicts_per_s": b / t, "floor_verdicts_per_s": b / fl}

    monitor = bench_monitor(engine, mn, args, hw)
    res = {
        "shape": shape,
        "device": device,
        "model": {k: v for k, v in mn.items()},
        "input_tokens": n_real,
        "output_tokens_requested": n_out,
        "output_tokens_measured": len(out_ids),
        "latency_batch1_ms": {
            "full": {"median": med_full * 1e3, "floor": full_floor * 1e3, "samples": len(lat_full)},
            "fast": {"median": med_fast * 1e3, "p90": sorted(lat_fast)[int(0.9 * (len(lat_fast) - 1))] * 1e3,
                     "floor": fast_floor * 1e3, "samples": len(lat_fast)},
            "cascade": cascade,
        },
        "decode_step_floor_ms": decode_floor * 1e3,
        "throughput": thr,
        "monitor": monitor,
        "seconds": time.perf_counter() - t_start,
    }
    run(engine.aclose())
    return res


def bench_monitor(engine, mn: dict[str, float], args: BenchOptions, hw: dict[str, Any]) -> dict[str, Any]:
    """Checks of a streamed 1,000-token trace every ``check_every`` tokens, fast-scored and fully
    generated, with and without session KV reuse; against one end-of-trace check."""
    from ..engines.base import GenerationRequest, ScoreRequest
    from ..models.reasoningshield import FAST_PREFIX as REASONINGSHIELD_PREFIX

    total = args.monitor_tokens
    msgs, _ = rs_messages(engine, args.monitor_system_tokens + total, trace_tokens=total)
    system = msgs[0]["content"]
    ids = engine.tokenizer(msgs[1]["content"].split("Thought: ", 1)[1], add_special_tokens=False)["input_ids"]
    cuts = list(range(args.check_every, len(ids), args.check_every)) + [len(ids)]

    def msgs_at(k: int) -> tuple[dict, ...]:
        trace = engine.tokenizer.decode(ids[:k])
        return ({"role": "system", "content": system}, {"role": "user", "content": f"Query: How do I bake bread?\nThought: {trace}"})

    def score_req(k: int, sid: str | None) -> ScoreRequest:
        req = GenerationRequest(messages=msgs_at(k), assistant_prefix=REASONINGSHIELD_PREFIX, max_new_tokens=1)
        return ScoreRequest(req, candidates=("0", "1"), probe="0", probe_candidates=(".",), session_id=sid)

    def gen_req(k: int, sid: str | None) -> GenerationRequest:
        return GenerationRequest(messages=msgs_at(k), max_new_tokens=args.monitor_output_tokens, session_id=sid)

    out: dict[str, Any] = {"trace_tokens": len(ids), "check_every": args.check_every, "checks": len(cuts)}
    bw, peak = hw["bandwidth_Bps"], hw["peak_flops"]
    wfloor = mn["weight_bytes"] / bw
    for kind, make, call in (("fast", score_req, engine.score), ("full", gen_req, engine.generate)):
        row: dict[str, Any] = {}
        asyncio.run(call([make(cuts[0], None)]))  # warm-up
        for label, sid in (("without_reuse", None), ("with_reuse", f"bench-{kind}")):
            reused0 = engine.stats["reused_tokens"]
            t0 = time.perf_counter()
            for k in cuts:
                asyncio.run(call([make(k, sid)]))
            _sync(engine)
            row[f"{label}_ms"] = (time.perf_counter() - t0) * 1e3
            row[f"{label}_reused_tokens"] = engine.stats["reused_tokens"] - reused0
            if sid:
                engine.release_session(sid)
        t = statistics.median(_timeit(lambda c=call, m=make: asyncio.run(c([m(cuts[-1], None)])), 3))
        row["single_end_check_ms"] = t * 1e3
        row["with_reuse_vs_single"] = row["with_reuse_ms"] / row["single_end_check_ms"]
        row["without_reuse_vs_single"] = row["without_reuse_ms"] / row["single_end_check_ms"]
        per_1k = 1000 / len(ids)
        row["with_reuse_ms_per_1k_tokens"] = row["with_reuse_ms"] * per_1k
        row["without_reuse_ms_per_1k_tokens"] = row["without_reuse_ms"] * per_1k
        # Floors: every check reads the weights at least once; prefill FLOPs with / without reuse.
        full_lens = [len(engine.request_ids(GenerationRequest(messages=msgs_at(k)))) for k in cuts]
        no_reuse = sum(max(prefill_flops(mn, n) / peak, wfloor) for n in full_lens)
        reuse = max(prefill_flops(mn, full_lens[0]) / peak, wfloor) + sum(
            max(prefill_flops(mn, b - a + 8, past=a - 8) / peak, wfloor) for a, b in zip(full_lens, full_lens[1:], strict=False)
        )
        if kind == "full":
            dec = (args.monitor_output_tokens - 1) * wfloor * len(cuts)
            no_reuse += dec
            reuse += dec
        row["floor_with_reuse_ms_per_1k_tokens"] = reuse * 1e3 * per_1k
        row["floor_without_reuse_ms_per_1k_tokens"] = no_reuse * 1e3 * per_1k
        out[kind] = row
    return out


# ----------------------------------------------------------------------------------- report


def markdown(report: dict[str, Any]) -> str:
    hw = report["hardware"]
    lines = [
        f"## guardrails-plugin bench ({hw['name']}, {report['torch']} / transformers {report['transformers']})",
        "",
        f"Floors from {hw['basis']}: bandwidth {hw['bandwidth_Bps'] / 1e9:.1f} GB/s, peak "
        f"{hw['peak_flops'] / 1e12:.3f} TFLOP/s (measured here: {hw['measured_bandwidth_Bps'] / 1e9:.1f} GB/s, "
        f"{hw['measured_peak_flops'] / 1e12:.3f} TFLOP/s). Random-weight models; timings on a shared machine are noisy.",
    ]
    for r in report["results"]:
        lat = r["latency_batch1_ms"]
        c = lat["cascade"]
        lines += [
            "",
            f"### {r['shape']} ({r['model']['params'] / 1e6:.2f}M params, {r['input_tokens']} input tokens, "
            f"{r['output_tokens_requested']} output tokens for full; decode-step floor {r['decode_step_floor_ms']:.3f} ms)",
            "",
            "| verdict at batch 1 | measured ms | floor ms | measured / floor |",
            "|---|---:|---:|---:|",
            f"| full generation | {lat['full']['median']:.1f} | {lat['full']['floor']:.2f} | {lat['full']['median'] / lat['full']['floor']:.0f}x |",
            f"| fast score | {lat['fast']['median']:.1f} | {lat['fast']['floor']:.3f} | {lat['fast']['median'] / lat['fast']['floor']:.0f}x |",
            f"| cascade, measured (escalated {c['measured_escalated_fraction']:.0%}: random weights) | {c['measured_ms']:.1f} | | |",
            f"| cascade, projected at {c['projected_fraction']:.0%} escalated | {c['projected_ms']:.1f} | {c['projected_floor_ms']:.2f} | |",
            "",
            "| verdicts/s | " + " | ".join(f"batch {b}" for b in r["throughput"]["fast"]) + " |",
            "|---|" + "---:|" * len(r["throughput"]["fast"]),
        ]
        for kind in ("fast", "full"):
            cells = []
            for b in r["throughput"]["fast"]:
                x = r["throughput"][kind].get(b)
                cells.append(f"{x['verdicts_per_s']:.1f} (floor {x['floor_verdicts_per_s']:.0f})" if x else "not run")
            lines.append(f"| {kind} | " + " | ".join(cells) + " |")
        m = r["monitor"]
        lines += [
            "",
            f"Monitor: {m['trace_tokens']}-token trace, a check every {m['check_every']} tokens ({m['checks']} checks).",
            "",
            "| checks | ms per 1k tokens, no reuse | with reuse | floor no reuse / reuse | total vs one end-of-trace check (no reuse / reuse) |",
            "|---|---:|---:|---:|---:|",
        ]
        for kind in ("fast", "full"):
            x = m[kind]
            lines.append(
                f"| {kind} | {x['without_reuse_ms_per_1k_tokens']:.1f} | {x['with_reuse_ms_per_1k_tokens']:.1f} | "
                f"{x['floor_without_reuse_ms_per_1k_tokens']:.2f} / {x['floor_with_reuse_ms_per_1k_tokens']:.2f} | "
                f"{x['without_reuse_vs_single']:.1f}x / {x['with_reuse_vs_single']:.1f}x |"
            )
    return "\n".join(lines) + "\n"


@dataclasses.dataclass
class BenchOptions:
    """What to measure. ``None`` fields take the device's default (``resolved()``)."""

    shape: list[str] | None = None
    device: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    batches: list[int] = dataclasses.field(default_factory=lambda: [1, 8, 32, 64])
    max_full_batch: int | None = None
    reps: int | None = None
    assume_escalation: float = 0.2
    monitor_tokens: int = 1000
    monitor_system_tokens: int | None = None
    monitor_output_tokens: int | None = None
    check_every: int = 64
    out: str = "bench-results"

    def resolved(self) -> BenchOptions:
        """The options with every default filled in for the device (GPU: real shapes, longer runs)."""
        import torch

        gpu = (self.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
        unknown = sorted(set(self.shape or ()) - set(SHAPES))
        if unknown:
            raise ValueError(f"unknown shape(s) {unknown}; choose from {sorted(SHAPES)}")
        return dataclasses.replace(
            self,
            device=self.device or ("cuda" if gpu else "cpu"),
            shape=self.shape or (["llama-1b", "llama-3b", "qwen3-8b"] if gpu else ["tiny"]),
            input_tokens=self.input_tokens or (1024 if gpu else 256),
            output_tokens=self.output_tokens or (150 if gpu else 32),
            max_full_batch=self.max_full_batch or (64 if gpu else 32),
            reps=self.reps or (20 if gpu else 9),
            monitor_system_tokens=self.monitor_system_tokens or (700 if gpu else 128),
            monitor_output_tokens=self.monitor_output_tokens or (150 if gpu else 16),
        )


def run_bench(args: BenchOptions) -> dict[str, Any]:
    import torch
    import transformers

    hw = measure_hardware(args.device)
    results = []
    for shape in args.shape:
        print(f"[bench] {shape} on {args.device} ...", file=sys.stderr, flush=True)
        results.append(bench_shape(shape, args.device, args, hw))
    return {"hardware": hw, "torch": torch.__version__, "transformers": transformers.__version__,
            "args": dataclasses.asdict(args), "results": results}


def run_and_write(options: BenchOptions) -> Path:
    """Measure, write bench.json and bench.md into ``options.out``, print the markdown; the folder."""
    import logging

    logging.getLogger("transformers").setLevel(logging.ERROR)
    args = options.resolved()
    report = run_bench(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    md = markdown(report)
    (out / "bench.md").write_text(md)
    print(md)
    print(f"wrote {out / 'bench.json'} and {out / 'bench.md'}", file=sys.stderr)
    return out
