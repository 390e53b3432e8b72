"""Sampling vs greedy on the engine, on one GPU (logic in eval/sampling_bench.py).

1. The sampler alone at the shape's vocabulary, K = 32 rows (micro-benchmark of kernels/sample.py).
2. A random-weight model at --shape, bf16, context --ctx: graph-replay time of a greedy and of a
   sampled iteration (Qwen3 thinking settings T=0.6, top-k 20, top-p 0.95; sampled and greedy drafts)
   at each K in --ks, and the end-to-end iteration of engine.generate for both
   (iteration_ms_K32, sampling_iteration_ms_K32, e2e_iteration_ms_K32, ... in bench.json).
3. The trained small model (--small) over all HumanEval prompts: speedup over K = 1 and tokens per
   iteration, greedy, T=0.6/top-k 20/top-p 0.95 and T=1, sampled and greedy drafts.

    PYTHONUNBUFFERED=1 python -m scripts.bench_sampling --out results/engine_sampling_<gpu>_<date>
    TRITON_INTERPRET=1 python -m scripts.bench_sampling --shape tiny --ks 4 --ctx 32 --small '' \
        --out /tmp/bs  # CPU smoke
"""

import argparse
import functools
import json
from pathlib import Path

import torch

from eval.bench_run import run_phase, save_results
from eval.decode_bench import build_model
from eval.metrics import free_memory
from eval.prompts import humaneval_ids
from eval.provenance import provenance
from eval.sampling_bench import micro_sampler, speedups, time_iterations
from eval.timing import median_ms
from models.engine import OrthrusEngine


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="qwen3_8b", help="models.shapes name, or 'tiny' ('' to skip)")
    p.add_argument("--ctx", type=int, default=256)
    p.add_argument("--ks", default="16,32")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--new-tokens", type=int, default=200, help="tokens of the end-to-end generate timing")
    p.add_argument("--small", default="artifacts/orthrus-small", help="trained small model folder ('' to skip)")
    p.add_argument("--small-ks", default="16")
    p.add_argument("--small-dtype", default="bfloat16")
    p.add_argument("--small-new-tokens", type=int, default=256)
    p.add_argument("--small-limit", type=int, default=None, help="first N HumanEval prompts (default: all)")
    p.add_argument("--budget-s", type=float, default=300, help="small-model part: stop starting settings after this")
    p.add_argument("--out", required=True)
    return p.parse_args()


def main():
    args = parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ks = [int(k) for k in args.ks.split(",")]
    clock = functools.partial(median_ms, device=device)  # clock(fn, reps, after=...) -> median ms
    results = {**provenance(device), "shape": args.shape}

    save = functools.partial(save_results, out, results)
    phase = functools.partial(run_phase, results=results, save=save, log=functools.partial(print, flush=True))

    def shape():
        model = build_model(args.shape, device)
        phase("micro_sampler", lambda: micro_sampler(model.config.vocab_size, max(ks), device, clock))
        engine = OrthrusEngine(model, args.ctx + args.new_tokens + 2 * max(ks) + 16)
        return time_iterations(engine, ks, args.ctx, clock, reps=args.reps, new_tokens=args.new_tokens)

    if args.shape:
        phase("iterations", shape)
    results.update({k: v for k, v in results.get("iterations", {}).items() if "_ms_K" in k})  # top-level keys
    free_memory()

    if args.small:
        from models.checkpoint import load_orthrus

        folder = Path(args.small)

        def small():
            prompts = humaneval_ids(folder / "tokenizer", args.small_limit)
            model = load_orthrus(
                str(folder / "base"), str(folder / "diffusion"), dtype=getattr(torch, args.small_dtype), device=device
            ).eval()
            engine = OrthrusEngine(model, max(map(len, prompts)) + args.small_new_tokens + 2 * 32 + 16)
            small_ks = [int(k) for k in args.small_ks.split(",")]
            return speedups(engine, prompts, small_ks, args.small_new_tokens, budget_s=args.budget_s)

        phase("small_speedups", small)
    save()
    print(json.dumps({k: v for k, v in results.items() if k != "small_speedups"}, indent=1, default=str))
    for row in results.get("small_speedups", []):
        print(row)


if __name__ == "__main__":
    main()
