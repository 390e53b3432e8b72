"""Diagnosis: how much do L2 prefetch budget and earlier dependent launches buy at Qwen3-8B, ctx 256?
Variants set kernels.matmul / kernels.attention module knobs, build an engine, time AR step and
iterations at K = 8 / 32 (CUDA-event medians of graph replays). Writes $OUT/diag_overlap.json."""
import gc, json, os, sys, time
from pathlib import Path
import torch
sys.path.insert(0, os.getcwd()); sys.path.insert(0, os.path.join(os.getcwd(), "scripts"))
import bench_decode as bd
import kernels.matmul as mm
import kernels.attention as at
from models.engine import OrthrusEngine

out = Path(os.environ["OUT"]); dev = torch.device("cuda")
orig_prefetch_tiles = mm.prefetch_tiles
orig_candidates = mm.candidate_configs
def fixed4(grid, config, per_split, bpe, device):
    return 4
VARIANTS = [  # name, prefetch MB (None = fixed 4 tiles), attention early, matmul early, matmul mode, swap candidates
    ("base", None, False, False, "auto", False),
    ("swap_pf4_auto_attn", 4, True, False, "auto", True),
    ("swap_pf0_auto_attn", 0, True, False, "auto", True),
    ("swap_pf2_auto_attn", 2, True, False, "auto", True),
    ("swap_pf2_tri_attn", 2, True, False, "triton", True),
    ("swap_pf0_tri_attn", 0, True, False, "triton", True),
    ("swap_fixed4_auto_attn", None, True, False, "auto", True),
    ("base_again", None, False, False, "auto", False),
]
only = os.environ.get("VARIANTS")
if only:
    VARIANTS = [v for v in VARIANTS if v[0] in only.split(",")]
t0 = time.time()
model = bd.build_model("qwen3_8b", dev)
clock = bd.Clock(dev)
print(f"model built {time.time()-t0:.0f}s", flush=True)
res = {"device": torch.cuda.get_device_name(), "commit": os.environ.get("ORTHRUS_COMMIT"), "torch": torch.__version__,
       "variants": {}}
def save():
    tmp = out / "diag_overlap.json.tmp"; tmp.write_text(json.dumps(res, indent=1)); tmp.replace(out / "diag_overlap.json")
budget = float(os.environ.get("BUDGET_S", "480"))
swap_now = None
for name, pf, attn_early, mm_early, mode, swap in VARIANTS:
    if swap != swap_now:
        mm.Matmul._timed.clear()
        swap_now = swap
        mm.candidate_configs = orig_candidates if swap else (
            lambda *a, **k: [c for c in orig_candidates(*a, **k) if not c.swap_ab])
    if time.time() - t0 > budget:
        print("budget: stop before", name); break
    mm.prefetch_tiles = fixed4 if pf is None else orig_prefetch_tiles
    mm.PREFETCH_BYTES = (pf or 0) << 20
    at.EARLY_DEPENDENTS, mm.EARLY_DEPENDENTS = attn_early, mm_early
    t1 = time.time()
    e = OrthrusEngine(model, 1024, backend="triton", fuse_qkv=True, matmul=mode)
    for K in (1, 8, 32):
        e.steps(K)
    e.cache.kv.normal_()
    row = {"build_s": time.time() - t1}
    reset = lambda: e.start.fill_(256)
    reset(); e.last.fill_(11)
    s1, s8, s32 = e.steps(1), e.steps(8), e.steps(32)
    reps = 40
    row["ar_step_ms"] = clock(lambda: (s1.verify(), s1.accept()), reps, after=reset)
    row["iteration_ms_K8"] = clock(lambda: (s8.draft(), s8.verify(), s8.accept()), reps, after=reset)
    row["draft_ms_K32"] = clock(s32.draft, reps)
    row["verify_ms_K32"] = clock(s32.verify, reps)
    row["iteration_ms_K32"] = clock(lambda: (s32.draft(), s32.verify(), s32.accept()), reps, after=reset)
    row["iteration_ms_K32_repeat"] = clock(lambda: (s32.draft(), s32.verify(), s32.accept()), reps, after=reset)
    row["choices"] = {str(k): str(c) for k, c in e.mm.chosen.items()}
    row["tuning"] = mm.Matmul.report()
    res["variants"][name] = row
    print(name, {k: round(v, 3) for k, v in row.items() if isinstance(v, float)}, flush=True)
    save()
    del e, s1, s8, s32
    gc.collect(); torch.cuda.empty_cache()
res["elapsed_s"] = time.time() - t0
save()
