"""Decode benchmark of the Orthrus engine at real Qwen3 shapes (random weights, bf16, batch 1): the library
behind scripts/bench_decode.py.

For each shape and context length: time per AR step (transformers with DynamicCache, and the engine at
K = 1), per draft pass, per verify pass and per iteration (each K), by eval/timing.py (warm-up calls, then
the median of CUDA-event timings of graph replays); the roofline of each (weight bytes + KV bytes read,
over the bandwidth of a large device copy); projected tokens/s (labelled projections, see `project`);
GPU memory of the diffusion view and its activations. Engine variants (`VARIANTS`): "auto" (the default
engine: per shape the faster of cuBLAS and the skinny Triton products; Programmatic Dependent Launch on
sm_90+), "invariant" (batch_invariant=True), "torch" (cuBLAS only), "triton" (skinny products only) and
"nopdl" (the default engine with pdl=False). Also the matrix products at decode shapes (cuBLAS vs the
tuned skinny kernel, L2-proof graph timing), a kernel-time profile of one verify pass per variant, and
the bf16 divergence study of eval/fidelity.py. The kernels' correctness checks are GPU tests
(tests/test_kernels_gpu.py).

The cache is filled with random keys/values instead of prefilling long prompts (timing does not depend on
the values).
"""

import functools
import json
import tempfile
import time
import traceback
from pathlib import Path

import torch
from transformers import GenerationMixin

from data._io import atomic_write_text
from eval.bench_run import run_phase, save_results
from eval.fidelity import greedy_divergence, small_model_divergence
from eval.metrics import free_memory
from eval.provenance import provenance, source_hash
from eval.timing import host_loop_ms, median_ms
from kernels.matmul import Matmul, chain_ms, weight_copies
from kernels.pdl import pdl_unsupported
from models.compat import cache_kwargs
from models.engine import OrthrusEngine
from models.engine_ops import TritonOps
from models.orthrus import OrthrusForCausalLM, is_diffusion_param
from models.shapes import shape_config
from train.model import preset_config

# Published figures the projections use, with unit, model and source. The paper's
# TPF counts draft and verify passes (tokens per forward, ~half the tokens per iteration) and its "up to 7.8x"
# is ambiguous (speedup or TPF), so neither is a tokens-per-iteration figure; the acceptance length is.
PAPER_TOKENS_PER_ITERATION = {
    "paper_fig4_qwen3_8b_math500": {
        "value": 11.7,
        "unit": "tokens per verify pass (acceptance length) = tokens per draft+verify iteration",
        "model": "Qwen3-8B (likely; the figure does not state it)",
        "benchmark": "MATH-500",
        "shape": "qwen3_8b",
        "source": "arXiv 2605.12825, Fig. 4 (acceptance length)",
    },
}
TARGETS_8B = {"ar_step_ms": 7.1, "iteration_ms": 12.5, "context": 256, "block_size": 32}
# Engine variants (OrthrusEngine keyword arguments; all on the Triton backend with fused q/k/v on CUDA).
VARIANTS = {
    "auto": dict(matmul="auto"),
    "invariant": dict(batch_invariant=True),
    "torch": dict(matmul="torch"),
    "triton": dict(matmul="triton"),
    "nopdl": dict(matmul="auto", pdl=False),
}


def clock_for(device: torch.device):
    """clock(fn, reps, warmup=3, after=None) -> median ms: eval.timing.median_ms on `device`."""
    return functools.partial(median_ms, device=device)


class Budget:
    def __init__(self, seconds):
        self.t0, self.seconds = time.time(), seconds

    def left(self) -> bool:
        return time.time() - self.t0 < self.seconds

    def elapsed(self) -> float:
        return time.time() - self.t0


def build_model(name, device):
    """Random-weight Orthrus at a real shape, built directly in bf16 on the device (no fp32 copy)."""
    config = preset_config("tiny") if name == "tiny" else shape_config(name)  # tiny: model=tiny of train.py
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = OrthrusForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(prev)
    model.init_diffusion_from_ar()  # drafts that at least resemble the AR view's
    model.requires_grad_(False)
    return model


def random_ids(model, n, device, seed):
    """Uniform random token ids below the special tokens (Qwen3's start at 151643)."""
    hi = min(151643, model.config.mask_token_id)
    return torch.randint(0, hi, (1, n), device=device, generator=torch.Generator(device=device).manual_seed(seed))


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def pass_weight_bytes(engine, view: str) -> int:
    """Bytes of weights one pass reads (the embedding contributes only its T rows: left out)."""
    tensors = [engine.final_norm, engine.lm_head]
    for lw in engine.layers:
        w = lw.ar if view == "ar" else lw.diff
        tensors += [lw.in_norm, lw.post_norm, *w.qkv, w.q_norm, w.k_norm, w.o, lw.gate, lw.up, lw.down]
    return nbytes(tensors)


def kv_row_bytes(engine) -> int:
    """Bytes of one cache row (one position) over all layers, keys and values."""
    c = engine.config
    return c.num_hidden_layers * 2 * c.num_key_value_heads * engine.head_dim * engine.cache.kv.element_size()


def measure_bandwidth(clock, device) -> float:
    """Device-memory bandwidth in bytes/s: a 1 GiB copy, counting bytes read plus bytes written."""
    n = 2**30 if device.type == "cuda" else 2**24
    a = torch.randint(0, 255, (n,), dtype=torch.uint8, device=device)
    b = torch.empty_like(a)
    ms = clock(lambda: b.copy_(a), reps=10)
    return 2 * n / (ms / 1e3)


@torch.inference_mode()
def gemm_probe(model) -> list[dict]:
    """Achieved weight-read bandwidth of the decode-shaped matrix products at 1 and 32 rows, timed inside
    CUDA graphs (kernel time, no launch overhead): cuBLAS (F.linear; gate/up as two products plus
    SiLU * up), the skinny Triton kernel with its tuned config ("triton"; "triton_pdl": the same launched
    with Programmatic Dependent Launch, on sm_90+, so each product overlaps the end of the one before)
    and with the batch-invariant config (BLOCK_M = 32 for every row count). Each graph cycles through
    enough copies of the weight to exceed the L2 cache, so every product reads its weight from device
    memory as in a real pass."""
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    qkv = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
    weights = {
        "qkv_fused": (qkv,),
        "o": (attn.o_proj.weight,),
        "gate_up": (mlp.gate_proj.weight, mlp.up_proj.weight),
        "down": (mlp.down_proj.weight,),
        "lm_head": (model.lm_head.weight,),
    }
    impls = {
        "cublas": Matmul("torch", TritonOps.silu_mul),
        "triton": Matmul("triton", TritonOps.silu_mul),
        "invariant": Matmul("invariant", TritonOps.silu_mul),
    }
    if pdl_unsupported(qkv.device) is None:
        impls["triton_pdl"] = Matmul("triton", TritonOps.silu_mul, pdl=True)
    rows = []
    for name, ws in weights.items():
        size = nbytes(ws)
        copies = weight_copies(ws)
        for m in (1, 32):
            x = torch.randn(m, ws[0].shape[1], device=qkv.device, dtype=qkv.dtype)
            for impl, mm in impls.items():
                fn = (lambda c, mm=mm: mm.linear(x, c[0])) if len(ws) == 1 else (lambda c, mm=mm: mm.gate_up(x, *c))
                us = 1e3 * chain_ms([lambda c=c: fn(c) for c in copies], n_calls=4 * len(copies))
                rows.append(
                    {
                        "matrix": name,
                        "out_features": ws[0].shape[0],
                        "in_features": ws[0].shape[1],
                        "rows": m,
                        "impl": impl,
                        "config": str(next(iter(mm.chosen.values()), "cublas")),
                        "us": us,
                        "weight_TBps": size / (us / 1e6) / 1e12,
                    }
                )
                mm.chosen.clear()
        del copies
    return rows


@torch.inference_mode()
def profile_verify(engine, K, ctx, device, log, batch: int = 1, names: tuple[str, ...] = ("verify",)) -> list[dict]:
    """Kernel time by kernel name for the eager steps `names` of one iteration (default: the verify pass) at
    `ctx`, over `batch` slots (the graphs run the same kernels)."""
    if device.type != "cuda":
        return []
    from torch.profiler import ProfilerActivity, profile

    steps = engine.steps(K, batch)
    graph_outputs = dict(steps._outputs)  # the captured graphs' static outputs, put back below

    def run():
        for name in names:
            engine.start[:batch].fill_(ctx)  # accept advances start
            steps._outputs[name] = steps._fns[name]()  # accept reads verify's output from here

    try:
        run()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            run()
            torch.cuda.synchronize()
    finally:  # the graphs' later steps read these outputs: a failure here must not leave them eager ones
        steps._outputs.update(graph_outputs)
    rows = []
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if t > 0:
            rows.append({"kernel": e.key[:90], "calls": e.count, "total_us": t})
    rows.sort(key=lambda r: -r["total_us"])
    total = sum(r["total_us"] for r in rows)
    log(f"{'+'.join(names)} kernel profile at B={batch} (eager, total {total / 1e3:.2f} ms of kernel time):")
    for r in rows[:12]:
        log(f"  {r['total_us'] / 1e3:7.3f} ms  {r['calls']:4d}x  {r['kernel']}")
    return rows[:25]


def timeline(kernels: list[tuple[str, float, float]], top: int = 12) -> dict:
    """What a GPU timeline of kernels (name, start us, duration us) adds up to: its span (first start to last
    end), the sum of kernel durations, the idle time (no kernel running: the time between a kernel's start and
    the latest end of the kernels before it, where positive), and the overlap (kernel time beyond the busy time:
    kernels that ran at once, e.g. one launched early by PDL). span = kernel_us - overlap_us + idle_us. The
    idle stretches are attributed to (the kernel that ended last before them, the kernel that ended them),
    largest totals first (`idle_by_pair`, at most `top`), and the kernel time by name (`by_kernel`)."""
    kernels = sorted(kernels, key=lambda k: k[1])
    idle, pairs, names = 0.0, {}, {}
    first = kernels[0][1] if kernels else 0.0
    last_name, last_end = (kernels[0][0] if kernels else None), first
    for name, start, dur in kernels:
        if start > last_end:
            idle += start - last_end
            pair = pairs.setdefault((last_name, name), [0, 0.0])
            pair[0] += 1
            pair[1] += start - last_end
        if start + dur >= last_end:
            last_name, last_end = name, start + dur
        entry = names.setdefault(name, [0, 0.0])
        entry[0] += 1
        entry[1] += dur
    span = last_end - first
    busy = sum(k[2] for k in kernels)
    rank = lambda d: sorted(d.items(), key=lambda kv: -kv[1][1])[:top]  # noqa: E731
    return {
        "kernels": len(kernels),
        "span_us": span,
        "kernel_us": busy,
        "idle_us": idle,
        "overlap_us": busy - (span - idle),
        "by_kernel": [{"kernel": n[:90], "calls": c, "total_us": t} for n, (c, t) in rank(names)],
        "idle_by_pair": [
            {"before": a[:90], "after": b[:90], "count": c, "total_us": t} for (a, b), (c, t) in rank(pairs)
        ],
    }


def profile_replay(engine, K, ctx, batch: int, log) -> dict:
    """The GPU timeline (`timeline`) of one iteration (draft + verify + accept; K = 1: verify + accept) as it
    runs in decoding: its captured CUDA graphs replayed (CUPTI traces the kernels inside a graph) right after
    another iteration, as `models.serving.Server` launches them, at `ctx` cached rows (reset on the device
    before each) over `batch` slots. Unlike an eager profile, this shows the kernel time and the time between
    kernels that the timed replays have ({} without CUDA graphs)."""
    if not engine.cuda_graphs:
        return {}
    from torch.profiler import ProfilerActivity, profile

    steps = engine.steps(K, batch)
    calls = (steps.draft, steps.verify, steps.accept) if K > 1 else (steps.verify, steps.accept)

    def iteration():
        engine.start[:batch].fill_(ctx)  # accept advances start
        for call in calls:
            call()

    iteration()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        iteration()
        iteration()
        torch.cuda.synchronize()
    engine.start[:batch].fill_(ctx)
    with tempfile.TemporaryDirectory() as tmp:
        prof.export_chrome_trace(f"{tmp}/trace.json")
        events = json.loads(Path(f"{tmp}/trace.json").read_text())["traceEvents"]
    kernels = sorted(((e["name"], e["ts"], e["dur"]) for e in events if e.get("cat") == "kernel"), key=lambda k: k[1])
    out = timeline(kernels[len(kernels) // 2 :])  # the second iteration: the same kernels as the first
    log(
        f"B={batch} K={K} replayed iteration: span {out['span_us'] / 1e3:.2f} ms, kernels {out['kernel_us'] / 1e3:.2f} "
        f"ms in {out['kernels']}, idle {out['idle_us'] / 1e3:.3f} ms, overlap {out['overlap_us'] / 1e3:.3f} ms (PDL)"
    )
    for r in out["by_kernel"][:8]:
        log(f"  {r['total_us'] / 1e3:7.3f} ms  {r['calls']:4d}x  {r['kernel']}")
    return out


def time_hf(model, engine, ctx, clock, reps) -> float:
    """One transformers decode step (DynamicCache, the model's default attention) at `ctx` cached rows."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    for layer in range(model.config.num_hidden_layers):
        cache.update(engine.cache.keys(layer)[:, :, :ctx], engine.cache.values(layer)[:, :, :ctx], layer)
    tok = torch.tensor([[11]], device=engine.device)
    with torch.inference_mode():
        ms = clock(
            lambda: model(input_ids=tok, **cache_kwargs(cache)), reps=reps, warmup=3, after=lambda: cache.crop(-1)
        )  # drop the step's token (crop takes a count to remove)
    del cache
    return ms


@torch.inference_mode()
def time_hf_generate(model, device, clock) -> float:
    """Per-token time of transformers' greedy generate after a 256-token prompt (33 tokens minus 1 token,
    so the prefill cancels)."""
    ids = random_ids(model, 256, device, seed=3)
    kw = dict(attention_mask=torch.ones_like(ids), do_sample=False, pad_token_id=0, eos_token_id=None)
    hf_generate = GenerationMixin.generate  # the plain base's (OrthrusForCausalLM.generate decodes with Orthrus)
    t1 = clock(lambda: hf_generate(model, ids, max_new_tokens=1, min_new_tokens=1, **kw), reps=2, warmup=1)
    t33 = clock(lambda: hf_generate(model, ids, max_new_tokens=33, min_new_tokens=33, **kw), reps=2, warmup=1)
    return (t33 - t1) / 32


@torch.inference_mode()
def time_engine(engine, ks, ctxs, clock, reps, budget, log) -> dict:
    """Graph-replay times of each step at each context: GPU time (events) and the host loop's wall time."""
    e = engine
    out = {}
    for ctx in ctxs:
        if not budget.left():
            log(f"budget: skipping ctx {ctx}")
            break
        reset = lambda: e.start.fill_(ctx)  # noqa: E731  the accept step advances start; put it back
        reset()
        e.last.fill_(11)
        row = {}
        s1 = e.steps(1)
        row["ar_step_ms"] = clock(lambda: (s1.verify(), s1.accept()), reps, after=reset)
        row["ar_loop_ms"] = host_loop_ms(lambda: (s1.verify(), s1.accept(), s1.packed.tolist()), reps, reset)
        for K in ks:
            s = e.steps(K)
            row[f"draft_ms_K{K}"] = clock(s.draft, reps)
            row[f"verify_ms_K{K}"] = clock(s.verify, reps)
            row[f"iteration_ms_K{K}"] = clock(lambda: (s.draft(), s.verify(), s.accept()), reps, after=reset)
            row[f"loop_ms_K{K}"] = host_loop_ms(
                lambda: (s.draft(), s.verify(), s.accept(), s.packed.tolist()), reps, reset
            )
        out[ctx] = row
        log(f"ctx {ctx:6d}: " + "  ".join(f"{k}={v:.3f}" for k, v in row.items()))
    return out


def graph_pool_bytes() -> int:
    """Bytes the CUDA caching allocator holds in private (CUDA-graph) pools: the captured steps'
    activations. Counted by pool rather than as a change of `memory_reserved()`, which also moves with
    the tuner's temporaries and with cached blocks the allocator releases (it went negative when a
    smaller shape followed a larger one)."""
    return sum(s["total_size"] for s in torch.cuda.memory_snapshot() if tuple(s["segment_pool_id"]) != (0, 0))


def memory_report(model, engine, device, ks) -> dict:
    diff = [p for n, p in model.named_parameters() if is_diffusion_param(n)]
    rep = {
        "model_weights_GB": nbytes(model.parameters()) / 1e9,
        "diffusion_view_weights_GB": nbytes(diff) / 1e9,
        "diffusion_view_fraction_of_params": sum(p.numel() for p in diff) / sum(p.numel() for p in model.parameters()),
        "kv_cache_GB": engine.cache.nbytes / 1e9,
        "kv_cache_rows": engine.cache.max_seq_len,
        "draft_block_kv_MiB": {K: kv_row_bytes(engine) * K / 2**20 for K in ks},
        "rope_tables_MB": nbytes([engine.cos, engine.sin]) / 1e6,
        "fused_qkv_copy_GB": engine.fused_weight_bytes / 1e9,
    }
    return rep


def run_shape(name, args, device, clock, budget, bw, log, checkpoint) -> dict:
    """Everything for one shape. Each measurement is a phase: a phase that fails is logged with its
    traceback under res["errors"] and the rest still run (one GPU call must return what it can);
    `checkpoint(res)` saves the shape's results so far after each phase and variant."""
    ks = [int(k) for k in args.ks.split(",")]
    cuda = device.type == "cuda"
    t0 = time.time()
    model = build_model(name, device)
    log(f"[{name}] built in {time.time() - t0:.1f}s")
    res = {
        "shape": name,
        "config": {
            k: getattr(model.config, k)
            for k in (
                "hidden_size",
                "intermediate_size",
                "num_hidden_layers",
                "num_attention_heads",
                "num_key_value_heads",
                "head_dim",
                "vocab_size",
                "tie_word_embeddings",
            )
        },
        "attn_implementation": model.config._attn_implementation,
    }

    phase = functools.partial(
        run_phase, results=res, save=lambda: checkpoint(res), log=lambda msg: log(f"[{name}] {msg}"), budget=budget
    )

    skip = set(args.skip.split(","))
    engine_len = max(max(int(c) for c in args.ctx.split(",")), 256 + args.new_tokens) + max(ks) + 64
    res["engine_variants"], res["matmul_choices"] = {}, {}
    for variant in args.variants.split(","):
        if not budget.left():
            log(f"[{name}] budget spent: skipping variant {variant}")
            continue
        try:
            run_variant(variant, model, res, args, device, clock, budget, engine_len, log, phase, skip)
        except Exception:  # noqa: BLE001  keep the other variants
            res.setdefault("errors", {})[variant] = traceback.format_exc()
            log(f"[{name}] variant {variant} FAILED:\n{res['errors'][variant]}")
        checkpoint(res)
        if cuda:
            free_memory()
    if not res["engine_variants"]:
        res["engine"] = {}
        return res
    res["roofline_ms"] = {}
    for ctx in res["engine"]:
        b = res["bytes"]
        row = {"ar_step": (b["ar_pass_weights"] + (ctx + 1) * b["kv_row"]) / bw * 1e3}
        for K in ks:
            d = (b["draft_pass_weights"] + ctx * b["kv_row"]) / bw * 1e3
            v = (b["ar_pass_weights"] + (ctx + K) * b["kv_row"]) / bw * 1e3
            row.update({f"draft_K{K}": d, f"verify_K{K}": v, f"iteration_K{K}": d + v})
        res["roofline_ms"][ctx] = row
    if cuda:
        if "gemm_probe" not in skip:
            phase("gemm_probe", lambda: gemm_probe(model))
        res["matmul_tuning"] = Matmul.report()
        if "unfused_qkv" not in skip:
            phase("unfused_qkv", lambda: unfused_qkv_variant(model, ks, clock, args.reps, log))
    del model
    if cuda:
        free_memory()
    return res


def run_variant(variant, model, res, args, device, clock, budget, engine_len, log, phase, skip) -> None:
    """Build one engine variant (compiling and tuning its kernels, capturing its graphs), time it at every
    context, and measure its bf16 divergence and verify-pass profile. The first variant also gives the
    memory report, the byte counts and the transformers timings (which read its cache)."""
    ks = [int(k) for k in args.ks.split(",")]
    ctxs = [int(c) for c in args.ctx.split(",")]
    name, cuda, first = res["shape"], device.type == "cuda", not res["engine_variants"]
    mem0 = torch.cuda.memory_allocated() if cuda else 0
    engine = OrthrusEngine(model, engine_len, backend="triton", fuse_qkv=cuda, **VARIANTS[variant])
    t0 = time.time()
    pools0 = graph_pool_bytes() if cuda else 0
    for K in [1, *ks]:
        engine.steps(K)
    log(
        f"[{name}/{variant}] steps built (kernels compiled, products tuned, graphs captured) in {time.time() - t0:.1f}s"
    )
    if first:
        res["memory"] = memory_report(model, engine, device, ks)
        if cuda:
            res["memory"]["graph_pools_reserved_MB"] = (graph_pool_bytes() - pools0) / 1e6
            res["memory"]["engine_allocated_GB"] = (torch.cuda.memory_allocated() - mem0) / 1e9
        log(f"[{name}] memory {json.dumps(res['memory'])}")
        res["bytes"] = {
            "ar_pass_weights": pass_weight_bytes(engine, "ar"),
            "draft_pass_weights": pass_weight_bytes(engine, "diff"),
            "kv_row": kv_row_bytes(engine),
        }
    engine.cache.kv.normal_()
    log(f"[{name}/{variant}]")
    timing = time_engine(engine, ks, ctxs, clock, args.reps, budget, log)
    res["engine_variants"][variant] = timing
    res["matmul_choices"][variant] = engine.mm.choices()
    res.setdefault("variant_pdl", {})[variant] = engine.pdl
    if first:
        res["engine"] = timing
        if "hf_step_ms" not in skip:

            def hf_steps():
                out = {}
                for ctx in timing:
                    out[ctx] = time_hf(model, engine, ctx, clock, args.hf_reps)
                    log(f"[{name}] transformers step at ctx {ctx}: {out[ctx]:.2f} ms")
                return out

            phase("hf_step_ms", hf_steps)
        if "hf_generate" not in skip:
            phase("hf_generate_ms_per_token_ctx256", lambda: time_hf_generate(model, device, clock))
    if cuda and "profile" not in skip and variant in ("auto", "invariant", "torch", "nopdl"):
        phase(f"verify_profile_{variant}_K{max(ks)}_ctx256", lambda: profile_verify(engine, max(ks), 256, device, log))
    if args.prompts > 0 and variant in args.divergence_variants.split(","):
        engine.cache.kv.zero_()
        prompts = [random_ids(model, 256, device, seed=100 + i) for i in range(args.prompts)]
        n_hf = len(prompts) if name in ("qwen3_1.7b", "tiny") else 0
        phase(
            f"divergence_bf16_{variant}",
            lambda: greedy_divergence(model, engine, prompts, args.new_tokens, ks, n_hf, log=log),
        )


@torch.inference_mode()
def unfused_qkv_variant(model, ks, clock, reps, log) -> dict:
    """The same steps without the fused [q; k; v] weight copy (three products per view and layer), ctx 256."""
    K = max(ks)
    engine = OrthrusEngine(model, 256 + K + 64, fuse_qkv=False)
    engine.cache.kv.normal_()
    reset = lambda: engine.start.fill_(256)  # noqa: E731
    reset()
    s1, s = engine.steps(1), engine.steps(K)
    row = {
        "ar_step_ms": clock(lambda: (s1.verify(), s1.accept()), reps, after=reset),
        f"draft_ms_K{K}": clock(s.draft, reps),
        f"verify_ms_K{K}": clock(s.verify, reps),
        f"iteration_ms_K{K}": clock(lambda: (s.draft(), s.verify(), s.accept()), reps, after=reset),
    }
    log(f"unfused qkv at ctx 256: {json.dumps({k: round(v, 3) for k, v in row.items()})}")
    del engine, s1, s
    free_memory()
    return row


def project(results, ks) -> None:
    """Projected tokens/s = tokens per iteration / measured iteration time at the largest K, and the speedup that
    implies over the engine's AR step and transformers' step. Projections, not measurements: each uses a
    tokens-per-iteration figure with its unit, model and source, and is made only at that figure's shape
    (`PAPER_TOKENS_PER_ITERATION`), plus the tokens per iteration this run measured on its random weights."""
    for res in results["shapes"]:
        K = max(ks)
        res["projection"] = {}
        figures = {label: f["value"] for label, f in PAPER_TOKENS_PER_ITERATION.items() if f["shape"] == res["shape"]}
        div = [res[k] for k in res if k.startswith("divergence_bf16")]
        if div:
            figures["measured_random_weights"] = div[0]["measured_tpf_mean"]
        for ctx, row in res["engine"].items():
            it = row[f"iteration_ms_K{K}"]
            p = {"ar_tokens_per_s": 1e3 / row["ar_step_ms"]}
            for label, tpi in figures.items():
                p[f"tokens_per_s@{label}"] = tpi * 1e3 / it
                p[f"speedup_vs_engine_ar@{label}"] = tpi * row["ar_step_ms"] / it
                if ctx in res.get("hf_step_ms", {}):
                    p[f"speedup_vs_transformers@{label}"] = tpi * res["hf_step_ms"][ctx] / it
            res["projection"][ctx] = p


def load_results(path) -> tuple[dict, list[int]]:
    """A saved bench.json with its integer keys restored (JSON turned context and K keys into strings) and
    projections recomputed; returns (results, ks) for eval.report.bench_markdown / eval.figures.bench_figure."""
    results = json.loads(Path(path).read_text())
    for res in results["shapes"]:
        for key in ("engine", "roofline_ms", "hf_step_ms"):
            if key in res:
                res[key] = {int(c): v for c, v in res[key].items()}
        for variant, rows in res.get("engine_variants", {}).items():
            res["engine_variants"][variant] = {int(c): v for c, v in rows.items()}
        res["memory"]["draft_block_kv_MiB"] = {int(k): v for k, v in res["memory"]["draft_block_kv_MiB"].items()}
    ks = sorted(
        {
            int(k.rsplit("K", 1)[1])
            for res in results["shapes"]
            for row in res["engine"].values()
            for k in row
            if k.startswith("draft_ms_K")
        }
    )
    results["paper_figures"] = PAPER_TOKENS_PER_ITERATION
    project(results, ks)
    return results, ks


def render(results: dict, ks: list[int], out: Path) -> None:
    """bench.md and bench.png under `out`, projections recomputed."""
    from eval.figures import bench_figure
    from eval.report import bench_markdown

    project(results, ks)
    atomic_write_text(out / "bench.md", bench_markdown(results, ks))
    bench_figure(results, ks, out / "bench.png")


def write_outputs(results: dict, ks: list[int], out: Path) -> None:
    """bench.json (the measurements), bench.md and bench.png under `out`."""
    render(results, ks, out)
    save_results(out, results)


def run_benchmark(args, out: Path, log) -> dict:
    """Every shape of args.shapes in turn (the arguments of scripts/bench_decode.py), writing the results
    under `out` after each phase, so a run cut short by args.budget_s (or killed) still leaves its results.
    A shape or phase that fails is logged with its traceback under "errors" and the rest still run."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    clock, budget = clock_for(device), Budget(args.budget_s)
    ks = [int(k) for k in args.ks.split(",")]
    prov = provenance(device)
    results = {
        "command": prov["command"],
        "commit": prov["git"]["commit"],
        "provenance": prov,
        "device": prov["device"],
        "torch": prov["torch"],
        "transformers": prov["transformers"],
        "triton": prov["triton"],
        "paper_figures": PAPER_TOKENS_PER_ITERATION,
        "targets_qwen3_8b": TARGETS_8B,
        "shapes": [],
    }
    results["bandwidth_TBps"] = measure_bandwidth(clock, device) / 1e12
    log(f"{results['device']}: copy bandwidth {results['bandwidth_TBps']:.3f} TB/s")

    def checkpoint(res):
        """The results so far, with the unfinished shape, as JSON only (a run killed mid-shape keeps them)."""
        save_results(out, {**results, "unfinished_shape": res})

    for name in args.shapes.split(","):
        if not budget.left():
            log(f"budget of {args.budget_s}s spent: skipping {name}")
            results.setdefault("skipped", []).append(name)
            continue
        try:
            if name == "orthrus-small":
                results["small_model_divergence"] = small_model_divergence(
                    args.small,
                    [int(k) for k in args.small_ks.split(",")],
                    args.small_prompts,
                    args.small_hf_prompts,
                    args.small_new_tokens,
                    device,
                    log,
                )
            else:
                results["shapes"].append(
                    run_shape(name, args, device, clock, budget, results["bandwidth_TBps"] * 1e12, log, checkpoint)
                )
        except Exception:  # noqa: BLE001  keep the other shapes' results
            results.setdefault("errors", {})[name] = traceback.format_exc()
            log(f"[{name}] FAILED:\n{results['errors'][name]}")
            if device.type == "cuda":
                free_memory()
        results["elapsed_s"] = budget.elapsed()
        results["provenance"]["source_hash"] = source_hash()  # every module the run has imported so far
        write_outputs(results, ks, out)
        log(f"[{name}] done at {budget.elapsed():.0f}s")
    return results
