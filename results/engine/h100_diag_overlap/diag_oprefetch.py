"""Diagnosis: per-product L2 prefetch budgets at Qwen3-8B ctx 256 (o follows attention, latency-bound),
with o forced onto the skinny Triton kernel. Writes $OUT/diag_oprefetch.json."""
import gc, json, os, sys, time
from pathlib import Path
import torch
sys.path.insert(0, os.getcwd()); sys.path.insert(0, os.path.join(os.getcwd(), "scripts"))
import bench_decode as bd
import kernels.matmul as mm
from models.engine import OrthrusEngine

out = Path(os.environ["OUT"]); dev = torch.device("cuda")
orig_skinny, orig_config = mm.skinny_matmul, mm.Matmul._config
BUDGET = {}  # (N, K) -> bytes
FORCE_TRITON = set()
def skinny(x, w, config, w2=None, pdl=False):
    mm.PREFETCH_BYTES = BUDGET.get(tuple(w.shape), 4 << 20)
    return orig_skinny(x, w, config, w2, pdl)
def config(self, x, w, w2):
    c = orig_config(self, x, w, w2)
    if c is None and tuple(w.shape) in FORCE_TRITON and x.shape[0] <= 32:
        block_m = max(16, 1 << (x.shape[0] - 1).bit_length())
        key = (block_m, *w.shape, w2 is not None, x.dtype, x.device.type, self.pdl)
        c = next(c for _, c in self._timed[key] if c is not None)
        self.chosen[key[:4]] = c
    return c
mm.skinny_matmul, mm.Matmul._config = skinny, config
O, QKV, GU, DOWN = (4096, 4096), (6144, 4096), (12288, 4096), (4096, 12288)
VARIANTS = [  # name, budgets MB, force triton
    ("default", {}, set()),
    ("o_tri_4", {}, {O}),
    ("o_tri_12", {O: 12}, {O}),
    ("o_tri_24", {O: 24}, {O}),
    ("o_tri_32", {O: 32}, {O}),
    ("o_tri_24_qkv_8", {O: 24, QKV: 8}, {O}),
    ("o_tri_24_qkv_12", {O: 24, QKV: 12}, {O}),
    ("o_tri_24_gu_2_down_2", {O: 24, GU: 2, DOWN: 2}, {O}),
    ("default_again", {}, set()),
]
t0 = time.time()
model = bd.build_model("qwen3_8b", dev)
clock = bd.Clock(dev)
res = {"device": torch.cuda.get_device_name(), "commit": os.environ.get("ORTHRUS_COMMIT"), "variants": {}}
def save():
    tmp = out / "diag_oprefetch.json.tmp"; tmp.write_text(json.dumps(res, indent=1)); tmp.replace(out / "diag_oprefetch.json")
for name, budgets, force in VARIANTS:
    if time.time() - t0 > float(os.environ.get("BUDGET_S", "400")):
        break
    BUDGET.clear(); BUDGET.update({k: v << 20 for k, v in budgets.items()})
    FORCE_TRITON.clear(); FORCE_TRITON.update(force)
    t1 = time.time()
    e = OrthrusEngine(model, 1024, backend="triton", fuse_qkv=True)
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
    row["iteration_ms_K32"] = clock(lambda: (s32.draft(), s32.verify(), s32.accept()), reps, after=reset)
    row["iteration_ms_K32_repeat"] = clock(lambda: (s32.draft(), s32.verify(), s32.accept()), reps, after=reset)
    row["choices"] = {str(k): str(c) for k, c in e.mm.chosen.items()}
    res["variants"][name] = row
    print(f"{name:24s}", " ".join(f"{k}={v:.3f}" for k, v in row.items() if isinstance(v, float)), flush=True)
    save()
    del e, s1, s8, s32
    gc.collect(); torch.cuda.empty_cache()
res["tuning"] = mm.Matmul.report()
save()
