"""Where the 8B B16 K16 iteration's time goes between kernels: one graph-replayed iteration traced
(CUPTI via torch.profiler), gaps between consecutive kernels grouped by (previous, next) kernel family;
variants: default, pdl off, cuBLASLt preferred, fuse_gate_up."""
import json, sys, time, os, collections, functools
import torch
from torch.profiler import ProfilerActivity, profile
from eval.decode_bench import build_model
from eval.timing import median_ms
from kernels.matmul import Matmul
from models.engine import OrthrusEngine

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
dev = torch.device("cuda")
t0 = time.time()
def log(m): print(f"[{time.time()-t0:6.0f}s] {m}", flush=True)
model = build_model("qwen3_8b", dev)
ctx, K = 256, 16
clock = functools.partial(median_ms, device=dev)

def fam(name):
    if name.startswith(("nvjet", "sm90", "cutlass", "void cublas", "ampere", "cublas")) or "gemm" in name.lower():
        return "cublas:" + name[:40]
    return name[:40]

def trace(e, B):
    s = e.steps(K, B)
    reset = lambda: e.start[:B].fill_(ctx)
    reset(); e.last[:B].fill_(11)
    step = lambda: (s.draft(), s.verify(), s.accept())
    for _ in range(3): step(); reset()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step(); torch.cuda.synchronize()
    reset()
    p = f"/tmp/trace_{B}.json"; prof.export_chrome_trace(p)
    ev = [x for x in json.load(open(p))["traceEvents"] if x.get("cat") == "kernel"]
    ev.sort(key=lambda x: x["ts"])
    span = ev[-1]["ts"] + ev[-1]["dur"] - ev[0]["ts"]
    busy = sum(x["dur"] for x in ev)
    groups = collections.defaultdict(lambda: [0, 0.0])
    gaps = []
    for a, b in zip(ev, ev[1:]):
        g = b["ts"] - (a["ts"] + a["dur"])
        k = (fam(a["name"]), fam(b["name"]))
        groups[k][0] += 1; groups[k][1] += g
        gaps.append(g)
    top = sorted(groups.items(), key=lambda kv: -kv[1][1])[:14]
    return {"kernels": len(ev), "span_us": span, "kernel_us": busy, "gap_us": span - busy,
            "negative_gap_us": sum(g for g in gaps if g < 0),
            "top_gap_pairs": [{"prev": k[0], "next": k[1], "count": c, "total_us": round(t, 1), "mean_us": round(t / c, 2)} for k, (c, t) in top]}

def variant(name, **kw):
    Matmul._timed.clear()
    e = OrthrusEngine(model, ctx + K + 16, backend="triton", fuse_qkv=True, max_batch_size=16, graph_prefill=False, **kw)
    for k in (1, K): e.warm_up(k)
    e.cache.kv.normal_()
    res = {"variant": name, "pdl": e.pdl, "blas": str(torch.backends.cuda.preferred_blas_library()), "points": []}
    for B in (1, 8, 16):
        s = e.steps(K, B)
        reset = lambda: e.start[:B].fill_(ctx)
        reset(); e.last[:B].fill_(11)
        ms = clock(lambda: (s.draft(), s.verify(), s.accept()), 20, after=reset)
        pt = {"B": B, "ms": ms}
        if B in (1, 16):
            pt["trace"] = trace(e, B)
        res["points"].append(pt)
        log(f"{name} B{B}: {ms:.3f} ms " + (f"span {pt['trace']['span_us']/1e3:.3f} kernels {pt['trace']['kernel_us']/1e3:.3f} ms n={pt['trace']['kernels']}" if 'trace' in pt else ""))
    res["choices"] = e.mm.choices()
    r = res["points"]; log(f"{name}: B16/B1 = {r[2]['ms']/r[0]['ms']:.3f}")
    for g in r[2]["trace"]["top_gap_pairs"]: log(f"   {g['total_us']:8.1f} us {g['count']:4d}x {g['mean_us']:6.2f}  {g['prev']} -> {g['next']}")
    json.dump(res, open(f"{out}/{name}.json", "w"), indent=1)
    del e; torch.cuda.empty_cache()
    return res

for name, kw, blas in [("default", {}, "cublas"), ("nopdl", {"pdl": False}, "cublas"), ("cublaslt", {}, "cublaslt"),
                       ("fused_gate_up", {"fuse_gate_up": True}, "cublas")]:
    if name in sys.argv[2:] or len(sys.argv) == 2:
        torch.backends.cuda.preferred_blas_library(blas)
        try:
            variant(name, **kw)
        except Exception as ex:
            log(f"{name} failed: {type(ex).__name__}: {ex}")
log("done")
