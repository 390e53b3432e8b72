"""Batched decoding benchmark: the library behind scripts/bench_batch.py.

1. `iteration_points`: real Qwen3 shapes (random weights, bf16), one engine with a cache slot per
   sequence: per (context, K, batch size) the graph-replay time of one draft + verify + accept iteration
   over all B slots, and of the AR step (K = 1) at each batch size, by eval/timing.py (warm-up calls,
   then the median of CUDA-event timings). Each point carries its roofline: the weights read once per
   pass plus every slot's KV cache read (bytes / HBM bandwidth), and the compute bound (model FLOPs /
   dense bf16 peak), with the device numbers of `DEVICE_PEAKS`.
2. `serving_points`: a trained model over a prompt set through the request queue (models/serving.py)
   at each batch size, Orthrus at K and the engine's AR (K = 1) at the same batch: total tokens/s,
   per-request latency, `speedup_vs_ar`, the measured acceptance profile, and the queue's `ServeStats`
   (host seconds in admissions and read-back waits, iterations per bucket, slot occupancy).
3. `project`: projected total tokens/s per (batch size, K) from the measured iteration times and an
   acceptance profile (the small model's measured one, and the paper's acceptance length; labelled),
   and the best K per batch size.
4. `memory_per_request`: bytes of state one request holds, computed from shapes: Orthrus (the base's KV
   cache; the K draft rows are transient), plain AR, and a design with a separate drafter model (a smaller
   Qwen3 per target shape, `DRAFTERS`) that keeps its own KV cache per request.
"""

import torch

from eval.decode_bench import (
    PAPER_TOKENS_PER_ITERATION,
    kv_row_bytes,
    pass_weight_bytes,
    profile_replay,
    profile_verify,
)
from eval.gpu_clock import ClockSampler
from eval.report import markdown_table
from eval.runner import serve_prompts
from eval.timing import warm_prompts
from models.shapes import shape_config
from train.flops import layer_params

# Vendor datasheet peaks (one place): the rooflines and compute bounds of every point use these.
DEVICE_PEAKS = {
    "nvidia-h200": {"hbm_bytes_per_s": 4.8e12, "dense_bf16_flops_per_s": 989e12, "source": "NVIDIA H200 datasheet"},
}
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
# The separate drafter `memory_per_request` pairs with each target shape: a smaller Qwen3 (same tokenizer), as
# speculative decoding with a draft model pairs them.
DRAFTERS = {"qwen3_1.7b": "qwen3_0.6b", "qwen3_4b": "qwen3_0.6b", "qwen3_8b": "qwen3_1.7b"}


def pass_flops(config, tokens: int, attention_pairs: int, logit_rows: int) -> float:
    """Model FLOPs of one pass: the layer matrices over `tokens` rows, the LM head over `logit_rows`, and
    attention (QK^T and PV) over `attention_pairs` visible (query, key) pairs per head and layer."""
    n = config.num_hidden_layers
    return (
        2 * layer_params(config) * n * tokens
        + 2 * config.hidden_size * config.vocab_size * logit_rows
        + 4 * config.num_attention_heads * config.head_dim * n * attention_pairs
    )


def roofline(engine, B: int, K: int, ctx: int, peaks: dict) -> dict:
    """Lower bounds of one iteration of B slots at context ctx (K = 1: the AR step, no draft pass)."""
    row = kv_row_bytes(engine)
    c = engine.config
    verify_pairs = B * sum(ctx + i + 1 for i in range(K))
    bytes_ = pass_weight_bytes(engine, "ar") + B * (ctx + K) * row
    flops = pass_flops(c, B * K, verify_pairs, B * K)
    if K > 1:  # the draft pass: its own weights, the slot's context, K - 1 logit rows per slot
        bytes_ += pass_weight_bytes(engine, "diff") + B * ctx * row
        flops += pass_flops(c, B * K, B * K * (ctx + K), B * (K - 1))
    return {
        "bytes": bytes_,
        "flops": flops,
        "memory_bound_ms": 1e3 * bytes_ / peaks["hbm_bytes_per_s"],
        "compute_bound_ms": 1e3 * flops / peaks["dense_bf16_flops_per_s"],
    }


# Iterations timed back to back per timed run (`iteration_points`), as decoding runs them: `models.serving.Server`
# keeps IN_FLIGHT iterations launched ahead of its read-back, so each iteration's graph launches overlap the one
# before on the GPU.
BACK_TO_BACK = 8


@torch.inference_mode()
def iteration_points(
    engine, shape: str, ctxs: list[int], ks: list[int], batch_sizes, clock, reps: int, peaks: dict, budget, log
) -> list[dict]:
    """Iteration (and AR step) time per (context, K, batch size), with its roofline. `ms`: per iteration of
    BACK_TO_BACK launched back to back (each at the same context: its start reset on the device first), the
    time that sets decoding throughput, with the GPU's clock and power meanwhile (`gpu_clock`:
    `eval.gpu_clock.ClockSampler`); `ms_one_from_idle`: one iteration launched on an idle GPU, which also
    waits for its first graph launch. Every K is built (on CUDA: kernels compiled, products tuned, graphs
    captured) at every batch-size bucket before any timing. Stops starting points when `budget()` is False."""
    e = engine
    for K in [1, *ks]:
        e.warm_up(K)
    e.cache.kv.normal_()  # timing does not depend on the values
    points = []
    for ctx in ctxs:
        for K in [1, *ks]:
            for B in batch_sizes:
                if not budget():
                    log(f"[{shape}] budget spent: stopping before ctx {ctx} K {K} B {B}")
                    return points
                s = e.steps(K, B)
                reset = lambda: e.start[:B].fill_(ctx)  # noqa: E731  accept advances start; put it back
                reset()
                e.last[:B].fill_(11)
                step = (lambda: (s.draft(), s.verify(), s.accept())) if K > 1 else (lambda: (s.verify(), s.accept()))
                ms_one = clock(step, reps, after=reset)
                with ClockSampler(e.device) as gpu:
                    ms = clock(lambda: [(reset(), step()) for _ in range(BACK_TO_BACK)], reps, after=reset)
                ms /= BACK_TO_BACK
                bound = roofline(e, B, K, ctx, peaks)
                points.append(
                    {
                        "shape": shape,
                        "context": ctx,
                        "block_size": K,
                        "batch_size": B,
                        "step": "iteration" if K > 1 else "ar_step",
                        "fuse_gate_up": e.fuse_gate_up,
                        "ms": ms,
                        "ms_one_from_idle": ms_one,
                        **bound,
                        "fraction_of_roofline": max(bound["memory_bound_ms"], bound["compute_bound_ms"]) / ms,
                        "gpu_clock": gpu.summary(),
                    }
                )
                log(
                    f"[{shape}] ctx {ctx} K {K:2d} B {B:2d}: {ms:.3f} ms back to back, {ms_one:.3f} ms alone "
                    f"(roofline {bound['memory_bound_ms']:.3f})"
                )
    return points


def parse_points(points: str) -> list[tuple[int, int]]:
    """ "BxK,BxK,..." (e.g. "1x16,16x16"; "" for none) as (batch size, block size) pairs; ValueError naming a
    malformed point."""
    pairs = []
    for point in filter(None, points.split(",")):
        B, x, K = point.partition("x")
        if not (x and B.isdigit() and K.isdigit()):
            raise ValueError(f"profile point {point!r}: write it as BxK (batch size x block size), e.g. 16x16")
        pairs.append((int(B), int(K)))
    return pairs


def profile_points(engine, shape: str, points, batch_sizes, ks, ctx: int, device, log) -> list[dict]:
    """Kernel time by kernel name of one iteration (draft + verify + accept; K = 1: verify + accept) at each (B, K)
    of `points` (`parse_points`) at context ctx, as it runs: with CUDA graphs one replay, with its timeline
    (`eval.decode_bench.profile_replay`: span, kernel, idle and overlap time); without, one eager iteration
    (`eval.decode_bench.profile_verify`; no timeline; nothing off CUDA). A point that `iteration_points` did not
    measure (B not in batch_sizes, K not 1 or in ks) is logged and skipped."""
    rows = []
    for B, K in points:
        if B not in batch_sizes or K not in [1, *ks]:
            log(f"[{shape}] profile {B}x{K}: not a measured point (--batch-sizes, --ks); skipped")
            continue
        if engine.cuda_graphs:
            timeline = profile_replay(engine, K, ctx, B, log)
            kernels = timeline.pop("by_kernel")
        else:
            names = ("draft", "verify", "accept") if K > 1 else ("verify", "accept")
            timeline, kernels = {}, profile_verify(engine, K, ctx, device, log, batch=B, names=names)
        rows.append(
            {"shape": shape, "context": ctx, "batch_size": B, "block_size": K, "kernels": kernels, "timeline": timeline}
        )
    return rows


def serving_points(
    engine, prompts: list[list[int]], block_size: int, batch_sizes, max_new_tokens: int, budget, log
) -> list[dict]:
    """Orthrus at `block_size` and the engine's AR (K = 1) over all prompts at each batch size, greedy,
    every setting warmed (its graphs at every bucket, one prompt per prefill bucket) before timing."""
    warm = warm_prompts(prompts, "buckets")
    for K in (1, block_size):
        engine.warm_up(K)
        serve_prompts(engine, warm, K, min(max_new_tokens, 2 * K + 1), progress=False)
    points = []
    for B in batch_sizes:
        row = {
            "batch_size": B,
            "block_size": block_size,
            "num_prompts": len(prompts),
            "graph_prefill": engine.graph_prefill,
        }
        for K, name in ((1, "ar"), (block_size, "orthrus")):
            if not budget():
                log(f"budget spent: stopping before B {B} {name}")
                return points
            run = serve_prompts(
                engine, prompts, block_size=K, max_new_tokens=max_new_tokens, batch_size=B, progress=False
            )
            new = sum(r.num_new_tokens for r in run.results)
            decode_s = [t.seconds - t.first_token_seconds for t in run.timings]
            row |= {
                f"{name}_tokens_per_second": new / run.wall_seconds,
                f"{name}_wall_s": run.wall_seconds,
                f"{name}_new_tokens": new,
                f"{name}_mean_latency_s": sum(decode_s) / len(decode_s),  # first token to last, per request
                f"{name}_p90_latency_s": float(torch.tensor(decode_s).quantile(0.9)),
                f"{name}_serve": run.serve_stats,  # host seconds in admissions and read-back waits, buckets
            }
            if K > 1:
                accepted = [a for r in run.results for a in r.accepted]
                row["acceptance_length"] = sum(a + 1 for a in accepted) / max(len(accepted), 1)
                row["accepted_histogram"] = [accepted.count(n) for n in range(K)]
        row["speedup_vs_ar"] = row["orthrus_tokens_per_second"] / row["ar_tokens_per_second"]
        log(
            f"B {B:2d}: orthrus {row['orthrus_tokens_per_second']:.0f} tok/s, AR {row['ar_tokens_per_second']:.0f} "
            f"tok/s, speedup {row['speedup_vs_ar']:.2f}x; admissions (prefill) "
            f"{row['orthrus_serve']['admit_seconds']:.3f} s of {row['orthrus_wall_s']:.3f} s (orthrus), "
            f"{row['ar_serve']['admit_seconds']:.3f} s of {row['ar_wall_s']:.3f} s (AR)"
        )
        points.append(row)
    return points


def tokens_per_iteration(histogram: list[int], K: int) -> float:
    """Expected tokens of one iteration at block size K from a histogram of drafts accepted at a larger
    block size: 1 + sum_{j=1}^{K-1} P(accepted >= j) (the first K - 1 drafts are the same drafts)."""
    total = sum(histogram)
    return 1 + sum(sum(histogram[j:]) / total for j in range(1, K))


def project(points: list[dict], histogram: list[int] | None) -> list[dict]:
    """Projected total tokens/s of each measured (shape, context, K, B) iteration, B * tokens per
    iteration / iteration time, against the AR step at the same B; the profiles are labelled: the small
    model's measured acceptance (truncated to K) and the paper's acceptance length (at its K only)."""
    ar = {(p["shape"], p["context"], p["batch_size"]): p["ms"] for p in points if p["block_size"] == 1}
    profiles = {}
    if histogram:
        profiles["orthrus_small_measured"] = lambda K: (
            tokens_per_iteration(histogram, K) if K <= len(histogram) else None
        )
    for name, paper in PAPER_TOKENS_PER_ITERATION.items():
        profiles[name] = lambda K, v=paper["value"]: v if K == 32 else None
    rows = []
    for p in points:
        key = (p["shape"], p["context"], p["batch_size"])
        if p["block_size"] == 1 or key not in ar:
            continue
        for profile, tau in profiles.items():
            t = tau(p["block_size"])
            if t is None:
                continue
            tps = p["batch_size"] * t / (p["ms"] / 1e3)
            rows.append(
                {
                    **{k: p[k] for k in ("shape", "context", "block_size", "batch_size")},
                    "profile": profile,
                    "label": "projection",
                    "tokens_per_iteration": t,
                    "projected_tokens_per_second": tps,
                    "projected_speedup_vs_ar": tps / (p["batch_size"] / (ar[key] / 1e3)),
                }
            )
    return rows


def best_k(projections: list[dict]) -> list[dict]:
    """The K of the highest projected tokens/s per (shape, context, profile, batch size)."""
    best: dict[tuple, dict] = {}
    for r in projections:
        key = (r["shape"], r["context"], r["profile"], r["batch_size"])
        if key not in best or r["projected_tokens_per_second"] > best[key]["projected_tokens_per_second"]:
            best[key] = r
    return list(best.values())


def memory_per_request(shape: str, context: int, K: int, drafter: str | None = None, dtype_bytes: int = 2) -> dict:
    """Bytes of state one request holds at `context` tokens, from the shapes: AR and Orthrus keep the base's
    KV cache (Orthrus's draft block adds K transient rows per running request, never stored); a
    separate-drafter design also keeps its drafter's KV cache (default: `DRAFTERS[shape]`) for the whole
    context."""
    drafter = drafter or DRAFTERS[shape]

    def kv_row(name):
        c = shape_config(name)
        return c.num_hidden_layers * 2 * c.num_key_value_heads * c.head_dim * dtype_bytes

    base = context * kv_row(shape)
    sizes = {
        "ar": base,
        "orthrus": base,
        "orthrus_transient_draft": K * kv_row(shape),
        "separate_drafter": base + context * kv_row(drafter),
    }
    return {
        "shape": shape,
        "context": context,
        "block_size": K,
        "drafter": drafter,
        **{f"{k}_bytes": v for k, v in sizes.items()},
    }


def targets(results: dict) -> dict:
    """The issue's two targets, read off the measured points (None where a point is missing): the Qwen3-8B
    shape's K = 16 iteration at context 256, batch 16 over batch 1 (target <= 1.6), and the served small
    model's Orthrus over AR throughput at batch 16 (target >= 1.5)."""
    ms = {(p["batch_size"]) : p["ms"] for p in results.get("iterations", [])
          if p["shape"] == "qwen3_8b" and p["context"] == 256 and p["block_size"] == 16}  # fmt: skip
    serving = {r["batch_size"]: r["speedup_vs_ar"] for r in results.get("serving", [])}
    ratio = ms[16] / ms[1] if 1 in ms and 16 in ms else None
    return {
        "qwen3_8b_ctx256_K16_B16_over_B1": ratio,
        "qwen3_8b_ctx256_K16_B16_over_B1_target": 1.6,
        "orthrus_small_B16_speedup_vs_ar": serving.get(16),
        "orthrus_small_B16_speedup_vs_ar_target": 1.5,
    }


def serve_stats_rows(serving: list[dict]) -> list[dict]:
    """One row per (batch size, mode) of the serving points' `ServeStats` summaries, with the run's wall time."""
    return [
        {"batch_size": r["batch_size"], "mode": name, "wall_s": r[f"{name}_wall_s"], **r[f"{name}_serve"]}
        for r in serving
        for name in ("orthrus", "ar")
        if r.get(f"{name}_serve")
    ]


def _table(spec: str, rows: list[dict]) -> list[str]:
    """Markdown table lines (eval.report.markdown_table: a missing value is "–"); spec: "header=key[:format]"
    columns separated by "|"."""
    columns = [(h, *(k.split(":", 1) + [""])[:2]) for h, k in (c.split("=") for c in spec.split("|"))]
    cells = [[None if r.get(k) is None else format(r[k], f) for _, k, f in columns] for r in rows]
    return markdown_table([h for h, _, _ in columns], cells).splitlines()


def markdown(results: dict) -> str:
    """The tables of bench.md: iteration times with rooflines, serving throughput, best K, targets, memory."""
    out = [f"# Batched decoding ({results.get('device', '?')})", "", results.get("command", ""), ""]
    if "fuse_gate_up" in results:
        rows = f", matmul_triton_rows={results['matmul_triton_rows']}" if "matmul_triton_rows" in results else ""
        out += [f"Shapes engines: fuse_gate_up={results['fuse_gate_up']}{rows} (OrthrusEngine; docs/engine.md)", ""]
    gate_up = [r for r in results.get("matmul_tuning", []) if r["gate_up"]]  # kernels.matmul.Matmul.report()
    if gate_up:
        out += ["## gate/up products as tuned: row tile, N x K, fused weight -> fastest first, ms", ""]
        out += [
            f"- {r['row_tile']}, {r['N']} x {r['K']}, fused={r['fused']}{', pdl' if r['pdl'] else ''}: "
            + ", ".join(f"{c} {ms}" for ms, c in r["fastest"])
            for r in gate_up
        ] + [""]
    out += ["## Iteration time vs batch size (graph replays, median; K = 1: the AR step)", ""]
    out += [
        f"ms: per iteration of {BACK_TO_BACK} launched back to back, as decoding runs them; one from idle: one "
        "iteration launched on an idle GPU (its first graph launch included). SM clock and power: nvidia-smi every "
        "100 ms during the back-to-back runs; power-capped: the share of those samples with a power cap engaged.",
        "",
    ]
    spec = "shape=shape|ctx=context|K=block_size|B=batch_size|ms=ms:.3f|one from idle ms=ms_one_from_idle:.3f"
    spec += "|memory bound ms=memory_bound_ms:.3f"
    spec += "|compute bound ms=compute_bound_ms:.3f|fraction of roofline=fraction_of_roofline:.2f"
    spec += "|SM clock MHz (median)=sm_mhz_median:.0f|power W (median)=power_w_median:.0f|power-capped=power_capped:.2f"
    out += _table(spec, [p | p.get("gpu_clock", {}) for p in results.get("iterations", [])])
    out += ["", "## Serving a prompt set (all prompts queued at once; greedy)", ""]
    spec = "B=batch_size|K=block_size|Orthrus tok/s=orthrus_tokens_per_second:.0f|AR tok/s=ar_tokens_per_second:.0f"
    spec += "|speedup_vs_ar=speedup_vs_ar:.2f|Orthrus mean latency s=orthrus_mean_latency_s:.3f"
    spec += "|AR mean latency s=ar_mean_latency_s:.3f"
    out += _table(spec, results.get("serving", []))
    out += ["", "## Where the serving host loop's time went (Server.stats; host seconds)", ""]
    spec = "B=batch_size|mode=mode|wall s=wall_s:.3f|admissions (prefill) s=admit_seconds:.3f"
    spec += "|read-back waits s=wait_seconds:.3f|prefills=prefills|iterations=iterations"
    spec += "|slot occupancy=slot_occupancy:.2f"
    out += _table(spec, serve_stats_rows(results.get("serving", [])))
    for prof in results.get("profiles", []):
        head = f"## Kernel time by kernel: {prof['shape']}, ctx {prof['context']}, B {prof['batch_size']}, "
        t = prof.get("timeline")
        how = "one replay of the captured graphs" if t else "one eager iteration"
        out += ["", head + f"K {prof['block_size']} ({how}, torch.profiler)", ""]
        if t:
            out += [
                f"Span {t['span_us'] / 1e3:.3f} ms = kernels {t['kernel_us'] / 1e3:.3f} ms in {t['kernels']} - overlap "
                f"{t['overlap_us'] / 1e3:.3f} ms (kernels running at once: PDL) + idle {t['idle_us'] / 1e3:.3f} ms "
                "(no kernel running; by the kernels before and after it in the last table).",
                "",
            ]
        out += _table("kernel=kernel|calls=calls|total us=total_us:.0f", prof["kernels"][:15])
        if t:
            out += ["", "Idle time by the kernels before and after it:", ""]
            out += _table("before=before|after=after|times=count|total us=total_us:.1f", t["idle_by_pair"][:6])
    out += ["", "## Best K per batch size (projection from measured iteration times)", ""]
    spec = "shape=shape|ctx=context|profile=profile|B=batch_size|best K=block_size"
    spec += "|projected tok/s=projected_tokens_per_second:.0f|projected speedup vs AR=projected_speedup_vs_ar:.2f"
    out += _table(spec, results.get("best_k", []))
    out += ["", "## Targets", "", *(f"- {k}: {v}" for k, v in results.get("targets", {}).items())]
    out += ["", "## State per request (computed from shapes, bf16, MB)", ""]
    spec = "shape=shape|ctx=context|AR=ar_mb:.1f|Orthrus=orthrus_mb:.1f|Orthrus transient draft"
    spec += "=orthrus_transient_draft_mb:.2f|separate drafter (target + drafter)=separate_drafter_mb:.1f"
    spec += "|its drafter=drafter"
    memory = [
        r | {k.removesuffix("_bytes") + "_mb": v / 1e6 for k, v in r.items() if k.endswith("_bytes")}
        for r in results.get("memory_per_request", [])
    ]
    out += _table(spec, memory)
    return "\n".join(out) + "\n"
