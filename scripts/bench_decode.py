"""Decode benchmark of the Orthrus engine at real Qwen3 shapes (random weights, bf16, batch 1).

For each shape and context length: time per AR step (transformers with DynamicCache, and the engine
at K = 1), per draft pass, per verify pass and per iteration (K in --ks); the roofline of each
(weight bytes + KV bytes read, over the bandwidth of a large device copy); projected tokens/s at the
paper's tokens per iteration and at the measured one; GPU memory of the diffusion view and its
activations. Each engine variant in --variants is timed the same way: "auto" (the default engine:
per shape the faster of cuBLAS and the skinny Triton products; Programmatic Dependent Launch on
sm_90+), "invariant" (batch_invariant=True), "torch" (cuBLAS only, the engine before
kernels/matmul.py), "triton" (skinny products only) and "nopdl" (the default engine with pdl=False:
compare with "auto" for what PDL buys; same kernels, launched without PDL).
Also: how often bf16 Orthrus greedy output diverges from the same engine's bf16 AR output, per
variant in --divergence-variants (batch-invariant: should be never); the matrix products at decode
shapes (cuBLAS vs the tuned skinny kernel, with PDL where supported, vs its invariant config, L2-proof
graph timing) and what
the tuning chose; a kernel-time profile of one verify pass per variant; a bf16 cross-check of the
Triton path against the PyTorch path.

The cache is filled with random keys/values instead of prefilling long prompts (timing does not
depend on the values). Writes bench.json / bench.md / bench.png under --out as it goes, so a run
cut short by --budget-s (or killed) still leaves its results.

    PYTHONUNBUFFERED=1 python scripts/bench_decode.py --out results/engine --commit $(git rev-parse HEAD)
    TRITON_INTERPRET=1 python scripts/bench_decode.py --shapes tiny --ctx 64,128 --out /tmp/bench   # CPU smoke run
"""

import argparse
import json
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch
from transformers import GenerationMixin

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data._io import atomic_write_text  # noqa: E402
from eval.metrics import free_memory  # noqa: E402
from kernels.attention import diffusion_attention, verify_attention  # noqa: E402
from kernels.matmul import Matmul, chain_ms, weight_copies  # noqa: E402
from kernels.pdl import pdl_unsupported  # noqa: E402
from kernels.reference import diffusion_attention_ref, verify_attention_ref  # noqa: E402
from models.compat import cache_kwargs  # noqa: E402
from models.config import OrthrusConfig  # noqa: E402
from models.engine import OrthrusEngine  # noqa: E402
from models.engine_ops import TritonOps  # noqa: E402
from models.orthrus import OrthrusForCausalLM, is_diffusion_param  # noqa: E402
from models.shapes import QWEN3_SHAPES, shape_config  # noqa: E402

# Tokens per iteration published for Orthrus (../shared/paper-facts.md): 6.35 = single-step
# denoising ablation; 7.8 = best TPF, Qwen3-8B on MATH-500. Both at K = 32.
PAPER_TPF = {"ablation_single_step": 6.35, "qwen3_8b_math500": 7.8}
TARGETS_8B = {"ar_step_ms": 7.1, "iteration_ms": 12.5, "context": 256, "block_size": 32}
# Engine variants (OrthrusEngine keyword arguments; all on the Triton backend with fused q/k/v on CUDA).
VARIANTS = {"auto": dict(matmul="auto"), "invariant": dict(batch_invariant=True), "torch": dict(matmul="torch"),
            "triton": dict(matmul="triton"), "nopdl": dict(matmul="auto", pdl=False)}
TINY = dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=32, mask_token_id=511, bos_token_id=None, eos_token_id=None)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="qwen3_8b,orthrus-small,qwen3_1.7b,qwen3_4b",
                   help=f"from {sorted(QWEN3_SHAPES)}, 'tiny', or 'orthrus-small' (the divergence run on --small)")
    p.add_argument("--ks", default="8,16,32")
    p.add_argument("--ctx", default="256,1024,4096,16384,32768")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--hf-reps", type=int, default=10)
    p.add_argument("--prompts", type=int, default=4, help="random prompts for the bf16 divergence run at each shape")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--small", default="artifacts/orthrus-small", help="trained small model for the divergence run")
    p.add_argument("--small-ks", default="8,32")
    p.add_argument("--small-prompts", type=int, default=24)
    p.add_argument("--small-hf-prompts", type=int, default=8, help="bf16 prompts also decoded by transformers (half in fp32)")
    p.add_argument("--small-new-tokens", type=int, default=256)
    p.add_argument("--variants", default="auto,nopdl,invariant,torch,triton", help=f"engine variants to time, from {sorted(VARIANTS)}; "
                   "the first is the main table; nopdl next to auto shows what PDL buys")
    p.add_argument("--divergence-variants", default="auto,invariant", help="variants whose bf16 divergence is measured")
    p.add_argument("--skip", default="", help="phases to leave out: hf_step_ms, hf_generate, gemm_probe, profile, "
                   "backend_cross_check, unfused_qkv")
    p.add_argument("--budget-s", type=float, default=420, help="stop starting new work after this many seconds")
    p.add_argument("--commit", default="unknown")
    p.add_argument("--out", required=True)
    p.add_argument("--from-json", help="re-render bench.md and bench.png of an earlier run's bench.json into --out (no timing)")
    return p.parse_args()


def rerender(path, out: Path) -> None:
    """Tables and plot again from a saved bench.json (JSON turned the integer context keys into strings)."""
    results = json.loads(Path(path).read_text())
    for res in results["shapes"]:
        for key in ("engine", "roofline_ms", "hf_step_ms"):
            if key in res:
                res[key] = {int(c): v for c, v in res[key].items()}
        for variant, rows in res.get("engine_variants", {}).items():
            res["engine_variants"][variant] = {int(c): v for c, v in rows.items()}
        res["memory"]["draft_block_kv_MiB"] = {int(k): v for k, v in res["memory"]["draft_block_kv_MiB"].items()}
    ks = sorted({int(k.rsplit("K", 1)[1]) for res in results["shapes"] for row in res["engine"].values()
                 for k in row if k.startswith("draft_ms_K")})
    project(results, ks)
    write_markdown(results, ks, out / "bench.md")
    plot(results, ks, out / "bench.png")


class Clock:
    """Times a callable: CUDA events around each call on the GPU (median of reps after warm-up), the host
    clock elsewhere. `after` runs outside the timed region (state reset)."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def __call__(self, fn, reps, warmup=3, after=None) -> float:
        times = []
        for i in range(warmup + reps):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                ms = start.elapsed_time(end)
            else:
                t0 = time.perf_counter()
                fn()
                ms = (time.perf_counter() - t0) * 1e3
            if after is not None:
                after()
            if i >= warmup:
                times.append(ms)
        return statistics.median(times)


class Budget:
    def __init__(self, seconds):
        self.t0, self.seconds = time.time(), seconds

    def left(self) -> bool:
        return time.time() - self.t0 < self.seconds

    def elapsed(self) -> float:
        return time.time() - self.t0


def build_model(name, device):
    """Random-weight Orthrus at a real shape, built directly in bf16 on the device (no fp32 copy)."""
    config = OrthrusConfig(**TINY) if name == "tiny" else shape_config(name)
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


def check_kernels_bf16(device, log) -> dict:
    """The decode attention kernels against the float64 references at a real shape, bf16."""
    g = torch.Generator(device=device).manual_seed(0)
    out = {}
    for K, ctx in ((1, 4096), (32, 4096), (32, 300)):
        q = torch.randn(1, 32, K, 128, generator=g, device=device, dtype=torch.bfloat16)
        kc = torch.randn(1, 8, 4200, 128, generator=g, device=device, dtype=torch.bfloat16)
        vc = torch.randn_like(kc)
        kb, vb = kc[:, :, 4100:4100 + K].contiguous(), vc[:, :, 4100:4100 + K].contiguous()
        start = torch.tensor([ctx], device=device)
        for name, got, ref in (
            ("diffusion", diffusion_attention(q, kc, vc, start, kb, vb, 0.088), diffusion_attention_ref(q, kc, vc, ctx, kb, vb, 0.088)),
            ("verify", verify_attention(q, kc, vc, start, 0.088), verify_attention_ref(q, kc, vc, ctx, 0.088)),
        ):
            rel = float((got.double() - ref).norm() / ref.norm())
            out[f"{name}_K{K}_ctx{ctx}"] = rel
    log(f"kernels vs float64 reference (bf16, rel. error): {json.dumps({k: f'{v:.1e}' for k, v in out.items()})}")
    return out


@torch.inference_mode()
def cross_check_backends(model, device, dtypes, log) -> dict:
    """Triton path vs PyTorch path on the same inputs: a 256-token prefill, the draft pass, then the
    same block (the first run's drafts) through the verify pass. In fp32 the two must agree to rounding;
    in bf16 each is also compared with the fp32 PyTorch path when that ran, which gives the bf16 noise
    level the Triton path should match. The model's parameters are cast in place and restored to bf16."""
    ids = random_ids(model, 256, device, seed=1)[0]
    logits, block = {}, None
    for dtype in dtypes:
        for p in model.parameters():
            p.data = p.data.to(dtype)
        for backend in ("torch", "triton"):
            engine = OrthrusEngine(model, 320, backend=backend, cuda_graphs=False)
            engine.prefill(ids)
            engine.last.fill_(int(ids[-1]))
            steps = engine.steps(32)
            draft = steps.draft().double()
            block = steps.block[1:].clone() if block is None else block
            steps.block[1:].copy_(block)
            logits[dtype, backend] = draft, steps.verify().double()
            del engine, steps
    for p in model.parameters():
        p.data = p.data.to(torch.bfloat16)

    def compare(a, b):
        return {f"{name}_rel_err": float((x - y).norm() / y.norm()) for name, x, y in zip(("draft", "verify"), a, b)} | {
            f"{name}_argmax_agree": float((x.argmax(-1) == y.argmax(-1)).double().mean())
            for name, x, y in zip(("draft", "verify"), a, b)}

    out = {}
    for dtype in dtypes:
        name = str(dtype).removeprefix("torch.")
        out[f"{name}_triton_vs_torch"] = compare(logits[dtype, "triton"], logits[dtype, "torch"])
        if dtype != torch.float32 and torch.float32 in dtypes:
            for backend in ("triton", "torch"):
                out[f"{name}_{backend}_vs_float32_torch"] = compare(logits[dtype, backend], logits[torch.float32, "torch"])
    log(f"backend cross-check: {json.dumps(out)}")
    return out


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
    weights = {"qkv_fused": (qkv,), "o": (attn.o_proj.weight,), "gate_up": (mlp.gate_proj.weight, mlp.up_proj.weight),
               "down": (mlp.down_proj.weight,), "lm_head": (model.lm_head.weight,)}
    impls = {"cublas": Matmul("torch", TritonOps.silu_mul), "triton": Matmul("triton", TritonOps.silu_mul),
             "invariant": Matmul("invariant", TritonOps.silu_mul)}
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
                rows.append({"matrix": name, "out_features": ws[0].shape[0], "in_features": ws[0].shape[1], "rows": m,
                             "impl": impl, "config": str(next(iter(mm.chosen.values()), "cublas")), "us": us,
                             "weight_TBps": size / (us / 1e6) / 1e12})
                mm.chosen.clear()
        del copies
    return rows


@torch.inference_mode()
def profile_verify(engine, K, ctx, device, log) -> list[dict]:
    """Kernel time by kernel name for one eager verify pass at `ctx` (the graph runs the same kernels)."""
    if device.type != "cuda":
        return []
    from torch.profiler import ProfilerActivity, profile

    steps = engine.steps(K)
    engine.start.fill_(ctx)
    steps._fns["verify"]()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        steps._fns["verify"]()
        torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if t > 0:
            rows.append({"kernel": e.key[:90], "calls": e.count, "total_us": t})
    rows.sort(key=lambda r: -r["total_us"])
    total = sum(r["total_us"] for r in rows)
    log(f"verify-pass kernel profile (eager, total {total / 1e3:.2f} ms of kernel time):")
    for r in rows[:12]:
        log(f"  {r['total_us'] / 1e3:7.3f} ms  {r['calls']:4d}x  {r['kernel']}")
    return rows[:25]


def time_hf(model, engine, ctx, clock, reps) -> float:
    """One transformers decode step (DynamicCache, the model's default attention) at `ctx` cached rows."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    for layer in range(model.config.num_hidden_layers):
        cache.update(engine.cache.keys(layer)[:, :, :ctx], engine.cache.values(layer)[:, :, :ctx], layer)
    tok = torch.tensor([[11]], device=engine.device)
    with torch.inference_mode():
        ms = clock(lambda: model(input_ids=tok, **cache_kwargs(cache)), reps=reps, warmup=3,
                   after=lambda: cache.crop(-1))  # drop the step's token (crop takes a count to remove)
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
            row[f"loop_ms_K{K}"] = host_loop_ms(lambda: (s.draft(), s.verify(), s.accept(), s.packed.tolist()),
                                                reps, reset)
        out[ctx] = row
        log(f"ctx {ctx:6d}: " + "  ".join(f"{k}={v:.3f}" for k, v in row.items()))
    return out


def host_loop_ms(fn, reps, reset) -> float:
    """Wall time of one decoding-loop iteration as generate runs it (replays + the one read-back)."""
    times = []
    for i in range(reps + 3):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
        reset()
    return statistics.median(times[3:])


@torch.inference_mode()
def divergence(model, engine, n_prompts, new_tokens, ks, with_hf, device, log) -> dict:
    """bf16 greedy: Orthrus (each K in ks) vs AR (K = 1) on the same engine, and AR vs transformers' generate.
    First divergence = index of the first differing new token. Also the top-1/top-2 logit gap along the
    AR output (small gaps are where rounding differences flip the argmax)."""
    from transformers import Qwen3ForCausalLM

    records, tpf, gaps = [], [], []
    for i in range(n_prompts):
        ids = random_ids(model, 256, device, seed=100 + i)
        ar = engine.generate(ids, new_tokens, block_size=1, eos_token_id=[])
        rec = {}
        for K in ks:
            orth = engine.generate(ids, new_tokens, block_size=K, eos_token_id=[])
            rec[f"orthrus_K{K}_vs_ar"] = first_diff(orth.new_tokens, ar.new_tokens)
        tpf.append(orth.tokens_per_iteration)
        if with_hf:
            hf = Qwen3ForCausalLM.generate(model, ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                           min_new_tokens=new_tokens, do_sample=False, pad_token_id=0, eos_token_id=None)
            rec["ar_vs_transformers"] = first_diff(ar.new_tokens, hf[0, 256:])
        logits = model(ar.sequences[:, :-1]).logits[0, 255:].float()
        top2 = logits.topk(2, dim=-1).values
        gaps.append(top2[:, 0] - top2[:, 1])
        records.append(rec)
        log(f"  prompt {i}: {rec}  TPF {orth.tokens_per_iteration:.2f}")
    gaps = torch.cat(gaps)
    summary = {"prompts": n_prompts, "new_tokens": new_tokens, "block_size": max(ks), "per_prompt": records,
               "measured_tpf_mean": statistics.mean(tpf),
               "top1_top2_logit_gap": {"median": float(gaps.median()), "p10": float(gaps.quantile(0.1)),
                                       "fraction_below_0.0625": float((gaps < 0.0625).float().mean())}}
    for key in records[0]:
        firsts = [r[key] for r in records if r[key] is not None]
        summary[key] = {"fraction_diverged": len(firsts) / n_prompts, "first_divergence": firsts}
    log(f"divergence: {json.dumps({k: v for k, v in summary.items() if k != 'per_prompt'})}")
    return summary


def first_diff(a, b):
    n = min(len(a), len(b))
    diff = (a[:n] != b[:n].to(a.device)).nonzero()
    return int(diff[0]) if len(diff) else None


SMALL_HELDOUT_MODULES = ("multiprocessing", "fileinput", "nntplib")  # packages orthrus-small never trained on


def heldout_prompts(tokenizer, n, length):
    """`length`-token windows from the start of held-out standard-library source files (real text for a
    trained model, unseen in its training)."""
    import importlib
    import warnings

    files = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for name in SMALL_HELDOUT_MODULES:
            mod = importlib.import_module(name)
            path = Path(mod.__file__)
            files += sorted(path.parent.glob("*.py")) if path.name == "__init__.py" else [path]
    prompts = []
    for f in files:
        ids = tokenizer.encode(f.read_text(errors="replace")).ids
        if len(ids) >= length:
            prompts.append(ids[:length])
        if len(prompts) == n:
            break
    return prompts


@torch.inference_mode()
def small_model_divergence(folder, args, device, log) -> dict:
    """Greedy divergence on the project's trained small Qwen3 (artifacts/orthrus-small), fp32 and bf16:
    Orthrus (each K) vs AR on the engine, and the engine's AR vs transformers' generate. Real weights
    give real top-1/top-2 logit gaps, which random weights do not. Uses the trained diffusion view
    when `folder`/diffusion exists (otherwise the view starts as a copy of the AR view)."""
    from tokenizers import Tokenizer
    from transformers import Qwen3ForCausalLM

    from models.checkpoint import load_orthrus

    folder = Path(folder)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer" / "tokenizer.json"))
    diffusion = folder / "diffusion"
    prompts = heldout_prompts(tokenizer, args.small_prompts, 256)
    ks = [int(k) for k in args.small_ks.split(",")]
    new = args.small_new_tokens
    out = {"model": str(folder), "trained_diffusion_view": diffusion.is_dir(), "prompts": len(prompts),
           "prompt_tokens": 256, "new_tokens": new, "prompt_source": SMALL_HELDOUT_MODULES}
    for dtype, n_hf in ((torch.float32, args.small_hf_prompts // 2), (torch.bfloat16, args.small_hf_prompts)):
        model = load_orthrus(str(folder / "base"), str(diffusion) if diffusion.is_dir() else None,
                             mask_token_id=tokenizer.token_to_id("<|mask|>"), dtype=dtype, device=device)
        engine = OrthrusEngine(model, 256 + new + max(ks) + 64)
        n_prompts = len(prompts) if dtype == torch.bfloat16 else n_hf
        recs, tpf, gaps = [], {k: [] for k in ks}, []
        for i, p in enumerate(prompts[:n_prompts]):
            ids = torch.tensor([p], device=device)
            ar = engine.generate(ids, new, block_size=1, eos_token_id=[])
            rec = {}
            for K in ks:
                o = engine.generate(ids, new, block_size=K, eos_token_id=[])
                rec[f"orthrus_K{K}_vs_ar"] = first_diff(o.new_tokens, ar.new_tokens)
                tpf[K].append(o.tokens_per_iteration)
            if i < n_hf:
                hf = Qwen3ForCausalLM.generate(model, ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                                               min_new_tokens=new, do_sample=False, pad_token_id=0, eos_token_id=None)
                rec["ar_vs_transformers"] = first_diff(ar.new_tokens, hf[0, 256:])
            logits = model(ar.sequences[:, :-1]).logits[0, 255:].float()
            top2 = logits.topk(2, dim=-1).values
            gaps.append(top2[:, 0] - top2[:, 1])
            recs.append(rec)
        gaps = torch.cat(gaps)
        summary = {"per_prompt": recs, "tpf_mean": {K: statistics.mean(v) for K, v in tpf.items()},
                   "top1_top2_logit_gap": {"median": float(gaps.median()), "p10": float(gaps.quantile(0.1)),
                                           "fraction_below_0.0625": float((gaps < 0.0625).float().mean())}}
        for key in {k for r in recs for k in r}:
            vals = [r[key] for r in recs if key in r]
            firsts = [v for v in vals if v is not None]
            summary[key] = {"prompts": len(vals), "fraction_diverged": len(firsts) / len(vals), "first_divergence": firsts}
        out[str(dtype).removeprefix("torch.")] = summary
        log(f"[orthrus-small {dtype}] " + json.dumps({k: v for k, v in summary.items() if k != "per_prompt"}))
        del engine, model
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
    res = {"shape": name, "config": {k: getattr(model.config, k) for k in (
        "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
        "head_dim", "vocab_size", "tie_word_embeddings")}, "attn_implementation": model.config._attn_implementation}

    def phase(key, fn):
        if not budget.left():
            log(f"[{name}] budget spent: skipping {key}")
            return
        try:
            res[key] = fn()
        except Exception:  # noqa: BLE001  report and go on
            res.setdefault("errors", {})[key] = traceback.format_exc()
            log(f"[{name}] {key} FAILED:\n{res['errors'][key]}")
        checkpoint(res)

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
        if "backend_cross_check" not in skip:
            dtypes = (torch.float32, torch.bfloat16) if name == "qwen3_1.7b" else (torch.bfloat16,)
            phase("backend_cross_check", lambda: cross_check_backends(model, device, dtypes, log))
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
    log(f"[{name}/{variant}] steps built (kernels compiled, products tuned, graphs captured) in {time.time() - t0:.1f}s")
    if first:
        res["memory"] = memory_report(model, engine, device, ks)
        if cuda:
            res["memory"]["graph_pools_reserved_MB"] = (graph_pool_bytes() - pools0) / 1e6
            res["memory"]["engine_allocated_GB"] = (torch.cuda.memory_allocated() - mem0) / 1e9
        log(f"[{name}] memory {json.dumps(res['memory'])}")
        res["bytes"] = {"ar_pass_weights": pass_weight_bytes(engine, "ar"),
                        "draft_pass_weights": pass_weight_bytes(engine, "diff"), "kv_row": kv_row_bytes(engine)}
    engine.cache.kv.normal_()
    log(f"[{name}/{variant}]")
    timing = time_engine(engine, ks, ctxs, clock, args.reps, budget, log)
    res["engine_variants"][variant] = timing
    res["matmul_choices"][variant] = {str(k): str(c) for k, c in engine.mm.chosen.items()}
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
        phase(f"divergence_bf16_{variant}", lambda: divergence(
            model, engine, args.prompts, args.new_tokens, ks, with_hf=name in ("qwen3_1.7b", "tiny"), device=device, log=log))


@torch.inference_mode()
def unfused_qkv_variant(model, ks, clock, reps, log) -> dict:
    """The same steps without the fused [q; k; v] weight copy (three products per view and layer), ctx 256."""
    K = max(ks)
    engine = OrthrusEngine(model, 256 + K + 64, fuse_qkv=False)
    engine.cache.kv.normal_()
    reset = lambda: engine.start.fill_(256)  # noqa: E731
    reset()
    s1, s = engine.steps(1), engine.steps(K)
    row = {"ar_step_ms": clock(lambda: (s1.verify(), s1.accept()), reps, after=reset),
           f"draft_ms_K{K}": clock(s.draft, reps), f"verify_ms_K{K}": clock(s.verify, reps),
           f"iteration_ms_K{K}": clock(lambda: (s.draft(), s.verify(), s.accept()), reps, after=reset)}
    log(f"unfused qkv at ctx 256: {json.dumps({k: round(v, 3) for k, v in row.items()})}")
    del engine, s1, s
    free_memory()
    return row


def project(results, ks) -> None:
    """Projected tokens/s = tokens per iteration / iteration time; speedups over the engine's AR and transformers."""
    for res in results["shapes"]:
        K = max(ks)
        res["projection"] = {}
        tpfs = dict(PAPER_TPF)
        div = [res[k] for k in res if k.startswith("divergence_bf16")]
        if div:
            tpfs["measured_random_weights"] = div[0]["measured_tpf_mean"]
        for ctx, row in res["engine"].items():
            it = row[f"iteration_ms_K{K}"]
            p = {"ar_tokens_per_s": 1e3 / row["ar_step_ms"]}
            for label, tpf in tpfs.items():
                p[f"tokens_per_s@{label}"] = tpf * 1e3 / it
                p[f"speedup_vs_engine_ar@{label}"] = tpf * row["ar_step_ms"] / it
                if ctx in res.get("hf_step_ms", {}):
                    p[f"speedup_vs_transformers@{label}"] = tpf * res["hf_step_ms"][ctx] / it
            res["projection"][ctx] = p


def write_markdown(results, ks, path) -> None:
    K = max(ks)
    lines = [f"# Orthrus engine decode benchmark ({results['device']})", "",
             f"`{results['command']}`  ", f"commit {results['commit']}, torch {results['torch']}, "
             f"transformers {results['transformers']}, triton {results['triton']}; measured copy bandwidth "
             f"{results['bandwidth_TBps']:.2f} TB/s (read + write). Random weights, bf16, batch 1; the engine "
             "uses fused q/k/v weights (a copy, size below" + ("; the unfused numbers follow each table" if any(
                 "unfused_qkv" in r for r in results["shapes"]) else "") + "). Times are medians "
             "of CUDA-event timings of graph replays (ms). Roofline = (weights + KV bytes read) / copy bandwidth.", ""]
    for res in results["shapes"]:
        lines += [f"## {res['shape']}", ""]
        if not res["engine"]:
            lines += ["Not timed (the run's --budget-s was spent).", ""]
        head = ["ctx", "transformers step", "engine AR step", "AR roofline"]
        for k in ks:
            head += [f"draft K={k}", f"verify K={k}", f"iteration K={k}"]
        head += [f"iteration roofline K={K}", f"tok/s @TPF {PAPER_TPF['qwen3_8b_math500']} (K={K})",
                 f"speedup vs engine AR @TPF {PAPER_TPF['qwen3_8b_math500']}"]
        if res["engine"]:
            lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for ctx, row in res["engine"].items():
            roof = res["roofline_ms"][ctx]
            proj = res["projection"][ctx]
            cells = [str(ctx), f"{res.get('hf_step_ms', {}).get(ctx, float('nan')):.2f}", f"{row['ar_step_ms']:.2f}",
                     f"{roof['ar_step']:.2f}"]
            for k in ks:
                cells += [f"{row[f'draft_ms_K{k}']:.2f}", f"{row[f'verify_ms_K{k}']:.2f}", f"{row[f'iteration_ms_K{k}']:.2f}"]
            cells += [f"{roof[f'iteration_K{K}']:.2f}", f"{proj['tokens_per_s@qwen3_8b_math500']:.0f}",
                      f"{proj['speedup_vs_engine_ar@qwen3_8b_math500']:.2f}x"]
            lines.append("| " + " | ".join(cells) + " |")
        m = res["memory"]
        lines += ["", f"Memory: diffusion view {m['diffusion_view_weights_GB']:.2f} GB "
                      f"({100 * m['diffusion_view_fraction_of_params']:.1f}% of parameters); KV cache "
                      f"{m['kv_cache_GB']:.2f} GB for {m['kv_cache_rows']} rows; draft block keys/values "
                      f"{m['draft_block_kv_MiB'][K]:.2f} MiB at K={K}; CUDA-graph pools (activations of all steps, reserved) "
                      f"{m.get('graph_pools_reserved_MB', float('nan')):.0f} MB; fused q/k/v weight copy "
                      f"{m['fused_qkv_copy_GB']:.2f} GB."]
        if "hf_generate_ms_per_token_ctx256" in res:
            lines.append(f"transformers `generate` (greedy, ctx 256): {res['hf_generate_ms_per_token_ctx256']:.2f} ms/token.")
        if "unfused_qkv" in res:
            lines.append("Without the fused q/k/v copy, ctx 256: " + ", ".join(
                f"{k} {v:.2f}" for k, v in res["unfused_qkv"].items()) + ".")
        if "backend_cross_check" in res:
            lines.append(f"Triton vs PyTorch path on the same inputs (logits: relative error, argmax agreement): "
                         f"{res['backend_cross_check']}.")
        for key in (k for k in res if k.startswith("divergence_bf16")):
            d = res[key]
            lines.append(f"bf16 divergence ({key.removeprefix('divergence_bf16').strip('_') or 'engine'}) over "
                         f"{d['prompts']} random prompts x {d['new_tokens']} tokens: "
                         + "; ".join(f"{k}: {100 * d[k]['fraction_diverged']:.0f}% of prompts, first at {d[k]['first_divergence']}"
                                     for k in d if isinstance(d[k], dict) and "fraction_diverged" in d[k])
                         + f"; top-1/top-2 logit gap {d['top1_top2_logit_gap']}; measured TPF {d['measured_tpf_mean']:.2f}.")
        lines += variants_table(res, ks) + gemm_table(res)
        lines.append("")
    small = results.get("small_model_divergence")
    if small:
        lines += [f"## Greedy divergence on the trained small model ({small['model']})", "",
                  f"{small['prompts']} prompts of {small['prompt_tokens']} tokens from held-out modules "
                  f"{', '.join(small['prompt_source'])}, {small['new_tokens']} new tokens each; trained diffusion view: "
                  f"{small['trained_diffusion_view']}. First divergence = index of the first differing new token.", "",
                  "| dtype | comparison | prompts | diverged | first divergence at |", "|---|---|---|---|---|"]
        for dtype in ("float32", "bfloat16"):
            d = small.get(dtype, {})
            for key in sorted(k for k in d if isinstance(d[k], dict) and "fraction_diverged" in d[k]):
                lines.append(f"| {dtype} | {key} | {d[key]['prompts']} | {100 * d[key]['fraction_diverged']:.0f}% "
                             f"| {sorted(d[key]['first_divergence'])} |")
        for dtype in ("float32", "bfloat16"):
            if dtype in small:
                lines.append(f"\n{dtype}: tokens per iteration {small[dtype]['tpf_mean']}; top-1/top-2 logit gap along the AR "
                             f"output {small[dtype]['top1_top2_logit_gap']}.")
        lines.append("")
    atomic_write_text(Path(path), "\n".join(lines))


def variants_table(res, ks) -> list[str]:
    """Engine variants side by side (ms): AR step, and draft / verify / iteration at each K."""
    variants = res.get("engine_variants", {})
    if len(variants) < 2:
        return []
    head = ["variant", "ctx", "AR step"] + [f"{s} K={k}" for k in ks for s in ("draft", "verify", "iteration")]
    pdl = res.get("variant_pdl", {})
    lines = ["", "Engine variants (auto: the default engine; invariant: batch_invariant=True; torch: cuBLAS only; "
             "triton: skinny Triton products only; nopdl: the default engine without Programmatic Dependent Launch; "
             f"PDL on in: {', '.join(v for v in variants if pdl.get(v)) or 'none'}):", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for variant, rows in variants.items():
        for ctx, row in rows.items():
            lines.append("| " + " | ".join([variant, str(ctx), f"{row['ar_step_ms']:.2f}"] + [
                f"{row[f'{s}_ms_K{k}']:.2f}" for k in ks for s in ("draft", "verify", "iteration")]) + " |")
    return lines


def gemm_table(res) -> list[str]:
    """The matrix-product probe: time and weight bandwidth per implementation."""
    if not res.get("gemm_probe"):
        return []
    lines = ["", "Matrix products at decode shapes (kernel time in CUDA graphs, weights read from device memory):", "",
             "| matrix | N x K | rows | impl | us | weight TB/s | config |", "|---|---|---|---|---|---|---|"]
    for r in res["gemm_probe"]:
        lines.append(f"| {r['matrix']} | {r['out_features']} x {r['in_features']} | {r['rows']} | {r['impl']} | "
                     f"{r['us']:.1f} | {r['weight_TBps']:.2f} | {r['config']} |")
    return lines


def plot(results, ks, path) -> None:
    import matplotlib.pyplot as plt

    from eval.figures import save_figure  # selects the Agg backend

    K = max(ks)
    shapes = [res for res in results["shapes"] if res["engine"]]
    if not shapes:
        return
    fig, axes = plt.subplots(1, len(shapes), figsize=(5.5 * len(shapes), 4.2), squeeze=False)
    for ax, res in zip(axes[0], shapes):
        ctxs = list(res["engine"])
        series = {"transformers step": [res.get("hf_step_ms", {}).get(c, float("nan")) for c in ctxs],
                  "engine AR step": [res["engine"][c]["ar_step_ms"] for c in ctxs],
                  f"draft K={K}": [res["engine"][c][f"draft_ms_K{K}"] for c in ctxs],
                  f"verify K={K}": [res["engine"][c][f"verify_ms_K{K}"] for c in ctxs],
                  f"iteration K={K}": [res["engine"][c][f"iteration_ms_K{K}"] for c in ctxs]}
        for variant, rows in list(res.get("engine_variants", {}).items())[1:]:
            series[f"iteration K={K} ({variant})"] = [rows.get(c, {}).get(f"iteration_ms_K{K}", float("nan")) for c in ctxs]
        for label, ys in series.items():
            ax.plot(ctxs, ys, marker="o", label=label)
        ax.plot(ctxs, [res["roofline_ms"][c]["ar_step"] for c in ctxs], "k--", label="AR roofline")
        ax.plot(ctxs, [res["roofline_ms"][c][f"iteration_K{K}"] for c in ctxs], "k:", label=f"iteration roofline K={K}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context (tokens)")
        ax.set_ylabel("ms")
        ax.set_title(res["shape"])
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"Orthrus engine, bf16, batch 1 ({results['device']})")
    fig.tight_layout()
    save_figure(fig, Path(path))


def main():
    args = parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.from_json:
        rerender(args.from_json, out)
        return
    log_file = open(out / "bench.log", "a")

    def log(msg):
        print(msg, flush=True)
        log_file.write(msg + "\n")
        log_file.flush()

    import transformers
    import triton

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    clock, budget = Clock(device), Budget(args.budget_s)
    ks = [int(k) for k in args.ks.split(",")]
    results = {
        "command": "python " + " ".join(sys.argv), "commit": args.commit,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "transformers": transformers.__version__, "triton": triton.__version__,
        "paper_tpf": PAPER_TPF, "targets_qwen3_8b": TARGETS_8B, "shapes": [],
    }
    results["bandwidth_TBps"] = measure_bandwidth(clock, device) / 1e12
    log(f"{results['device']}: copy bandwidth {results['bandwidth_TBps']:.3f} TB/s")
    if device.type == "cuda":
        try:
            results["kernel_check_bf16"] = check_kernels_bf16(device, log)
        except Exception:  # noqa: BLE001
            results.setdefault("errors", {})["kernel_check_bf16"] = traceback.format_exc()
            log(results["errors"]["kernel_check_bf16"])

    def checkpoint(res):
        """The results so far, with the unfinished shape, as JSON only (a run killed mid-shape keeps them)."""
        atomic_write_text(out / "bench.json", json.dumps({**results, "unfinished_shape": res}, indent=1, default=str))

    def save():
        project(results, ks)
        atomic_write_text(out / "bench.json", json.dumps(results, indent=1, default=str))
        write_markdown(results, ks, out / "bench.md")
        plot(results, ks, out / "bench.png")

    for name in args.shapes.split(","):
        if not budget.left():
            log(f"budget of {args.budget_s}s spent: skipping {name}")
            results.setdefault("skipped", []).append(name)
            continue
        try:
            if name == "orthrus-small":
                results["small_model_divergence"] = small_model_divergence(args.small, args, device, log)
                save()
                continue
            results["shapes"].append(run_shape(name, args, device, clock, budget, results["bandwidth_TBps"] * 1e12, log,
                                               checkpoint))
        except Exception:  # noqa: BLE001  keep the other shapes' results
            results.setdefault("errors", {})[name] = traceback.format_exc()
            log(f"[{name}] FAILED:\n{results['errors'][name]}")
            if device.type == "cuda":
                free_memory()
        results["elapsed_s"] = budget.elapsed()
        save()
        log(f"[{name}] done at {budget.elapsed():.0f}s")
    save()
    print((out / "bench.md").read_text())


if __name__ == "__main__":
    main()
