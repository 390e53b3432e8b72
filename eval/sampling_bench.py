"""What sampling costs on the engine, against greedy decoding on the same engine (scripts/bench_sampling.py).

`time_iterations`: a model at a real shape (random weights), context `ctx`, each K: the graph-replay
time of one greedy iteration (draft + verify + accept) and of one sampled iteration (draft + draft
sampling + verify + sampling acceptance; drafts sampled or greedy), CUDA events around each
iteration after warm-up; and the end-to-end iteration of `engine.generate` (host loop included):
(wall time of a long generate - wall time of a one-token generate) / its iterations, synchronised
after each call (so it includes the one iteration the loop launches past the end, <= 1/iterations).

`speedups`: a trained model over a prompt set, per setting (greedy, and each sampling setting with
sampled and with greedy drafts) and K: eval.runner.measure_block_sizes on the engine (eval/timing.py's
protocol: every prompt-length bucket and K warmed before timing, time to first token apart from decode
tokens/s), speedup over K = 1 in the same setting on the same engine, tokens per iteration, TPF, and the
target of "sampling loses only what its lower acceptance costs": (tokens/iteration / greedy
tokens/iteration) x greedy speedup.
"""

import time

import torch

from eval.metrics import sampling_target
from eval.runner import measure_block_sizes
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
def time_iterations(
    engine: OrthrusEngine,
    ks,
    ctx: int,
    clock,
    *,
    reps: int = 20,
    new_tokens: int = 200,
    sampling: SamplingParams = QWEN3_THINKING,
    log=print,
) -> dict:
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
            sampler = s.sampler((sampling,), drafts)

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


def engine_decode(engine: OrthrusEngine, drafts: str):
    """`decode_fn` (eval/runner.py) on a built engine with the given draft mode."""

    def decode(model, input_ids, max_new_tokens, **kwargs):
        return engine.generate(input_ids, max_new_tokens, drafts=drafts, **kwargs)

    decode.__name__ = f"OrthrusEngine.generate(drafts={drafts})"
    return decode


def speedups(
    engine: OrthrusEngine,
    prompts: list[list[int]],
    ks,
    new_tokens: int,
    *,
    settings=None,
    budget_s: float = float("inf"),
    log=print,
) -> list[dict]:
    """Rows of (setting, drafts, K, decode tokens/s, speedup over K = 1 on the same engine and mode,
    tokens/iteration, TPF, TTFT, target speedup), timed by eval/timing.py's protocol (every prompt-length
    bucket and K warmed first; TTFT apart from decode throughput)."""
    settings = settings or SETTINGS
    t_start, rows = time.time(), []
    for name, params in settings.items():
        for drafts in ["sampled"] if params.greedy else list(DRAFT_MODES):
            if time.time() - t_start > budget_s:
                log(f"budget: skipping {name} drafts={drafts}")
                continue
            measured, _ = measure_block_sizes(
                engine.model,
                prompts,
                [1, *ks],
                max_new_tokens=new_tokens,
                sampling=params,
                decode_fn=engine_decode(engine, drafts),
                progress=False,
            )
            for r in measured:
                row = {
                    "setting": name,
                    "drafts": "-" if params.greedy else drafts,
                    "K": r["block_size"],
                    "prompts": len(prompts),
                    "tokens": r["new_tokens"],
                    "decode_tokens_per_second": r["decode_tokens_per_second"],
                    "speedup": r["speedup"],
                    "tokens_per_iteration": r["tokens_per_iteration"],
                    "tpf": r["tpf"],
                    "ttft_ms": r["ttft_ms"],
                }
                rows.append(row)
                log(
                    f"{name} drafts={row['drafts']} K={row['K']}: {row['decode_tokens_per_second']:.1f} tok/s, "
                    f"speedup {row['speedup']:.2f}, {row['tokens_per_iteration']:.2f} tokens/iteration"
                )
    greedy = {r["K"]: r for r in rows if r["setting"] == "greedy"}
    for r in rows:
        g = greedy.get(r["K"])
        if r["setting"] != "greedy" and r["K"] > 1 and g and g["speedup"]:
            r["target_speedup"] = sampling_target(r["tokens_per_iteration"], g["tokens_per_iteration"], g["speedup"])
            r["of_target"] = r["speedup"] / r["target_speedup"] if r["speedup"] else None
    return rows


def micro_sampler(
    vocab: int, rows: int, device, clock, *, params: SamplingParams = QWEN3_THINKING, reps: int = 50
) -> dict:
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
        "accept_us": lambda: ks.accept(
            p, ks.transform_stats(p, T, k, top_p), q, q_stats, draft, T, rng, use_triton=triton
        ),
    }
    out = {"rows": rows, "vocab": vocab, "sampling": str(params)}
    for name, fn in steps.items():
        out[name] = clock(fn, reps) * 1e3
    return out
