"""Diagnostic (not part of the product): orthrus-small fp32 at K=32."""
import time
import torch
from models.checkpoint import load_orthrus
from models.engine import OrthrusEngine
from kernels.matmul import Matmul
from torch.profiler import profile, ProfilerActivity

m = load_orthrus("artifacts/orthrus-small/base", "artifacts/orthrus-small/diffusion", dtype=torch.float32, device="cuda").eval()
e = OrthrusEngine(m, 2048)
ids = torch.randint(5, 8000, (1, 200), device="cuda")
for K in (16, 32):
    t = time.perf_counter(); e.generate(ids, 16, block_size=K); torch.cuda.synchronize()
    print(f"K={K} first call (compile, tune, capture): {time.perf_counter() - t:.1f} s", flush=True)
    t = time.perf_counter(); r = e.generate(ids, 128, block_size=K); torch.cuda.synchronize(); dt = time.perf_counter() - t
    print(f"K={K}: {dt*1e3/len(r.accepted):.2f} ms/iteration over {len(r.accepted)}", flush=True)
for k, v in Matmul.report().items():
    print(k, v[:2], flush=True)
with profile(activities=[ProfilerActivity.CUDA]) as prof:
    e.generate(ids, 64, block_size=32); torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=60), flush=True)
