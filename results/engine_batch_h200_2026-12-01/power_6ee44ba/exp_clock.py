"""SM clock and power while 8B-shape iterations (ctx 256, K 16) replay back to back, B 1 and 16: per-iteration
CUDA-event times of the first and last iterations of a 150-iteration run, NVML clock/power sampled meanwhile."""
import json, sys, threading, time, statistics
import torch
from eval.decode_bench import build_model
from models.engine import OrthrusEngine

out = sys.argv[1]
dev = torch.device("cuda")
model = build_model("qwen3_8b", dev)
e = OrthrusEngine(model, 300, backend="triton", fuse_qkv=True, matmul="torch", max_batch_size=16, graph_prefill=False)
e.warm_up(16)
e.cache.kv.normal_()
res = {}
for B in (1, 16, 1, 16):
    s = e.steps(16, B)
    e.last[:B].fill_(11)
    time.sleep(3)  # let the GPU cool a little between runs
    t0 = time.strftime("%H:%M:%S")
    evs = []
    for i in range(150):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); e.start[:B].fill_(256); s.draft(); s.verify(); s.accept(); b.record(); evs.append((a, b))
    torch.cuda.synchronize(); t1 = time.strftime("%H:%M:%S")
    ms = [a.elapsed_time(b) for a, b in evs]
    r = {"B": B, "from": t0, "to": t1, "ms": ms, "first5_ms": ms[:5], "last20_median_ms": statistics.median(ms[-20:])}
    print(f"B{B} {t0}-{t1}: first {['%.2f' % x for x in ms[:5]]} last20 median {r['last20_median_ms']:.3f} ms", flush=True)
    res.setdefault(str(B), []).append(r)
json.dump(res, open(f"{out}/clock.json", "w"))

