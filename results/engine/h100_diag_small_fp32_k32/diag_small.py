"""Diagnostic (not part of the product): why orthrus-small fp32 costs ~3x more per iteration at K=32 than K=16."""
import time
import torch
from models.checkpoint import load_orthrus
from models.engine import OrthrusEngine
from kernels.matmul import Matmul

m = load_orthrus("artifacts/orthrus-small/base", "artifacts/orthrus-small/diffusion", dtype=torch.float32, device="cuda").eval()
e = OrthrusEngine(m, 2048)
ids = torch.randint(5, 8000, (1, 200), device="cuda")
for K in (1, 8, 16, 32):
    e.generate(ids, 64, block_size=K)
    torch.cuda.synchronize(); t = time.perf_counter()
    r = e.generate(ids, 256, block_size=K)
    torch.cuda.synchronize(); dt = time.perf_counter() - t
    it = len(r.accepted) if hasattr(r, "accepted") else None
    print(f"K={K}: {dt*1e3:.1f} ms for {r.new_tokens.numel()} tokens, iterations {it}, "
          f"{dt*1e3/max(it or 1,1):.2f} ms/iteration", flush=True)
print("chosen:", Matmul.report(), flush=True)
from torch.profiler import profile, ProfilerActivity
for K in (16, 32):
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        e.generate(ids, 64, block_size=K)
        torch.cuda.synchronize()
    print(f"=== K={K}")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=70), flush=True)
