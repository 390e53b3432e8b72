"""What sampling costs on the engine, against greedy decoding on the same engine (scripts/bench_sampling.py).

`time_iterations`: a model at a real shape (random weights), context `ctx`, each K: the graph-replay
time of one greedy iteration (draft + verify + accept) and of one sampled iteration (draft + draft
sampling + verify + sampling acceptance; drafts sampled or greedy), CUDA events around each
iteration after warm-up; and the end-to-end iteration of `engine.generate` (host loop included):
(wall time of a long generate - wall time of a one-token generate) / its iterations, synchronised
after each call (so it includes the one iteration the loop launches past the end, <= 1/iterations).

`speedups`: a trained model over a prompt set, per setting (greedy, and each sampling setting with
sampled and with greedy drafts) and K: decode tokens/s of `engine.generate` over all prompts (the
wall time of one-token generates, prefill + first token, subtracted: time to first token apart),
speedup over K = 1 in the same setting on the same engine, tokens per iteration, and the target of
"sampling loses only what its lower acceptance costs": (tokens/iteration / greedy tokens/iteration)
x greedy speedup. Every prompt length class is prefilled once before timing (the attention kernels
compile per padded prefill length).
"""

import time

import torch

from models.engine import DRAFT_MODES, OrthrusEngine
from models.sampling import SamplingParams

QWEN3_THINKING = SamplingParams(0.6, 20, 0.95)  # Qwen3's recommended thinking-mode sampler
SETTINGS = {"greedy": SamplingParams(), "t0.6_k20_p0.95": QWEN3_THINKING, "t1": SamplingParams(1.0)}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _wall_s(fn, device) -> tuple[float, object]:
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t0, out


@torch.inference_mode()
def time_iterations(engine: OrthrusEngine, ks, ctx: int, clock, *, reps: int = 20, new_tokens: int = 200,
                    sampling: SamplingParams = QWEN3_THINKING, log=print) -> dict:
    """Greedy vs sampled iteration at context ctx for each K (keys: iteration_ms_K{K},
    sampling_iteration_ms_K{K} (sampled drafts), sampling_greedy_drafts_iteration_ms_K{K},
    e2e_iteration_ms_K{K}, e2e_sampling_iteration_ms_K{K}). The engine needs ctx + new_tokens + 2 K rows.
    clock(fn, reps, after=reset) -> median ms (eval.timing.median_ms: CUDA events on the GPU)."""
    e, device = engine, engine.device
    vocab_hi = min(151643, e.config.mask_token_id)
    prompt = torch.randint(0, vocab_hi, (1, ctx), generator=torch.Generator().manual_seed(0)).to(device)
    e.prefill(prompt[0])
    rng0 = torch.tensor([1234, 0], device=device)

    def reset():
        e.start.fill_(ctx)
        e.last.fill_(11)
        e.rng.copy_(rng0)

    out = {"context": ctx, "sampling": str(sampling)}
    for K in ks:
        s = e.steps(K)
        reset()

        def greedy():
            if K > 1:
                s.draft()
            s.verify()
            s.accept()

        out[f"iteration_ms_K{K}"] = clock(greedy, reps, after=reset)
        for drafts in DRAFT_MODES:
            sampler = s.sampler(sampling, drafts)

            def sampled():
                if K > 1:
                    s.draft()
                    if sampler.sampled_drafts:
                        sampler.draft()
                s.verify()
                sampler.accept()

            key = "sampling_iteration_ms" if drafts == "sampled" else "sampling_greedy_drafts_iteration_ms"
            out[f"{key}_K{K}"] = clock(sampled, reps, after=reset)
        for name, params in (("e2e_iteration_ms", SamplingParams()), ("e2e_sampling_iteration_ms", sampling)):
            def run(n):
                return e.generate(prompt, n, block_size=K, sampling=params, generator=torch.Generator().manual_seed(0))

            run(new_tokens)  # warm: the sampler's graphs are captured on first use
            t1, _ = _wall_s(lambda: run(1), device)
            tn, res = _wall_s(lambda: run(new_tokens), device)
            out[f"{name}_K{K}"] = (tn - t1) * 1e3 / len(res.emitted)
        out[f"sampling_over_greedy_K{K}"] = out[f"sampling_iteration_ms_K{K}"] / out[f"iteration_ms_K{K}"]
        out[f"e2e_over_replay_K{K}"] = out[f"e2e_iteration_ms_K{K}"] / out[f"iteration_ms_K{K}"]
        log(f"K={K}: " + "  ".join(f"{k}={v:.3f}" for k, v in out.items() if k.endswith(f"_K{K}")))
    return out


@torch.inference_mode()
def speedups(engine: OrthrusEngine, prompts: list[list[int]], ks, new_tokens: int, *, settings=None,
             budget_s: float = float("inf"), log=print) -> list[dict]:
    """Rows of (setting, drafts, K, tokens/s, speedup over K = 1, tokens/iteration, target speedup)."""
    settings = settings or SETTINGS
    device, t_start = engine.device, time.time()
    rows = []
    for n in sorted({max(16, 1 << (len(ids) - 1).bit_length()) for ids in prompts}):
        engine.prefill(torch.zeros(min(n, engine.cache.max_seq_len), dtype=torch.long, device=device))
    for name, params in settings.items():
        if time.time() - t_start > budget_s:
            log(f"budget: skipping {name}")
            continue
        modes = ["-"] if params.greedy else list(DRAFT_MODES)
        base = None
        first_s, _ = _wall_s(lambda: [engine.generate(torch.tensor([ids], device=device), 1, sampling=params)
                                      for ids in prompts], device)
        for K in [1, *ks]:
            for drafts in (["-"] if K == 1 else modes):
                if time.time() - t_start > budget_s:
                    log(f"budget: skipping {name} K={K} drafts={drafts}")
                    continue

                def decode(ids, n=new_tokens):
                    return engine.generate(torch.tensor([ids], device=device), n, block_size=K, sampling=params,
                                           generator=torch.Generator().manual_seed(len(ids)),
                                           drafts="sampled" if drafts == "-" else drafts)

                decode(prompts[0], 8)  # compile / capture this setting before timing
                seconds, results = _wall_s(lambda: [decode(ids) for ids in prompts], device)
                tokens = sum(r.num_new_tokens for r in results)
                iterations = sum(len(r.emitted) for r in results)
                row = {"setting": name, "drafts": drafts, "K": K, "prompts": len(prompts), "tokens": tokens,
                       "seconds": seconds, "first_token_s": first_s,
                       "tok_s": (tokens - len(results)) / (seconds - first_s),
                       "tokens_per_iteration": (tokens - len(results)) / max(iterations, 1)}
                if K == 1:
                    base = row["tok_s"]
                row["speedup"] = row["tok_s"] / base if base else None
                rows.append(row)
                log(f"{name} drafts={drafts} K={K}: {row['tok_s']:.1f} tok/s, speedup {row['speedup']}, "
                    f"{row['tokens_per_iteration']:.2f} tokens/iteration")
    greedy = {r["K"]: r for r in rows if r["setting"] == "greedy"}
    for r in rows:
        g = greedy.get(r["K"])
        if r["setting"] != "greedy" and r["K"] > 1 and g and g["speedup"]:
            r["target_speedup"] = r["tokens_per_iteration"] / g["tokens_per_iteration"] * g["speedup"]
            r["of_target"] = r["speedup"] / r["target_speedup"] if r["speedup"] else None
    return rows


def micro_sampler(vocab: int, rows: int, device, clock, *, params: SamplingParams = QWEN3_THINKING,
                  reps: int = 50) -> dict:
    """The sampler alone on random bf16 logits (rows x vocab): transform, draft sampling, acceptance (us)."""
    import kernels.sample as ks

    triton = device.type == "cuda"
    g = torch.Generator(device=device).manual_seed(0)
    p = torch.randn(rows, vocab, device=device, generator=g).to(torch.bfloat16) * 4
    q = torch.randn(rows - 1, vocab, device=device, generator=g).to(torch.bfloat16) * 4
    rng = torch.tensor([1, 0], device=device)
    T, k, top_p = params.temperature, params.top_k, params.top_p
    q_stats = ks.transform_stats(q, T, k, top_p)
    draft = ks.sample_rows(q, q_stats, T, rng, ks.DRAFT, use_triton=triton)
    steps = {
        "transform_us": lambda: ks.transform_stats(p, T, k, top_p),
        "sample_rows_us": lambda: ks.sample_rows(q, q_stats, T, rng, ks.DRAFT, use_triton=triton),
        "accept_us": lambda: ks.accept(p, ks.transform_stats(p, T, k, top_p), q, q_stats, draft, T, rng,
                                       use_triton=triton),
    }
    out = {"rows": rows, "vocab": vocab, "sampling": str(params)}
    for name, fn in steps.items():
        out[name] = clock(fn, reps) * 1e3
    return out
