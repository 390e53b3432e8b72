"""Batched Orthrus decoding on one GPU (logic in eval/batch_bench.py): iteration time vs batch size at
real shapes with rooflines and a kernel-time profile of chosen (B, K) points, a trained model serving a
prompt set at each batch size against the engine's AR (with where the serving loop's host time went),
projections and memory per request. Writes bench.json (with provenance), bench.md and bench.png.

    PYTHONUNBUFFERED=1 python -m scripts.bench_batch --out results/engine_batch_h200_<date> --budget-s 400
    TRITON_INTERPRET=1 python -m scripts.bench_batch --shapes tiny --ctx 32 --ks 4 --batch-sizes 1,2 \
        --small '' --out /tmp/bb  # CPU smoke
    python -m scripts.bench_batch --shapes '' --out /tmp/serve  # the serving part alone
    python -m scripts.bench_batch --shapes qwen3_8b --ctx 256 --ks 16 --batch-sizes 1,16 --small '' \
        --budget-s 200 --out /tmp/fused [--fuse-gate-up]  # fused gate|up or not (docs/engine.md)
    python -m scripts.bench_batch --shapes qwen3_8b --ctx 256 --ks 16 --batch-sizes 1,4,8,16 --small '' \
        --budget-s 150 --shapes-share 1 --out /tmp/cublas --matmul-triton-rows 32  # many-row products on cuBLAS

--budget-s bounds the whole run: no new point starts once it is spent (the shapes part gets
--shapes-share of it), and what was measured is written.
"""

import argparse
import functools
import time
from pathlib import Path

import torch

from eval.batch_bench import (
    BATCH_SIZES,
    DEVICE_PEAKS,
    best_k,
    iteration_points,
    markdown,
    memory_per_request,
    parse_points,
    profile_points,
    project,
    serving_points,
    targets,
)
from eval.bench_run import run_phase, save_results
from eval.decode_bench import Budget, build_model
from eval.figures import batch_figure
from eval.metrics import free_memory
from eval.prompts import humaneval_ids
from eval.provenance import provenance
from eval.timing import median_ms
from kernels.matmul import DEFAULT_TRITON_ROWS, Matmul
from models.engine import OrthrusEngine


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="qwen3_8b,qwen3_1.7b", help="models.shapes names, or 'tiny' ('' for none)")
    p.add_argument("--ctx", default="256,4096")
    p.add_argument("--ks", default="4,8,16,32")
    p.add_argument("--batch-sizes", default=",".join(map(str, BATCH_SIZES)))
    p.add_argument("--reps", type=int, default=10)
    p.add_argument(
        "--profile",
        default="1x16,16x16",
        help="BxK points whose draft + verify + accept kernel time is profiled by kernel, per shape at the first "
        "--ctx ('' for none)",
    )
    p.add_argument(
        "--fuse-gate-up",
        action="store_true",
        help="the shapes' engines fuse each layer's gate and up weights into one matrix (OrthrusEngine fuse_gate_up)",
    )
    p.add_argument(
        "--matmul-triton-rows",
        type=int,
        default=DEFAULT_TRITON_ROWS,
        help="the most rows at which the shapes' engines time the Triton kernel against cuBLAS (OrthrusEngine "
        "matmul_triton_rows; default kernels.matmul.DEFAULT_TRITON_ROWS; 32: products of more rows on cuBLAS "
        "alone; 256: the kernel's 128-row tiles timed too)",
    )
    p.add_argument("--peaks", default="nvidia-h200", choices=sorted(DEVICE_PEAKS))
    p.add_argument("--small", default="artifacts/orthrus-small", help="trained small model folder ('' to skip)")
    p.add_argument("--small-k", type=int, default=16)
    p.add_argument("--small-new-tokens", type=int, default=256)
    p.add_argument("--small-limit", type=int, default=None, help="first N HumanEval prompts (default: all 164)")
    p.add_argument(
        "--eager-prefill",
        action="store_true",
        help="the small model's engine prefills eagerly (OrthrusEngine graph_prefill=False; default: the engine's, "
        "through captured graphs on a GPU)",
    )
    p.add_argument("--budget-s", type=float, default=400)
    p.add_argument("--shapes-share", type=float, default=0.6, help="share of the budget for the shapes part")
    p.add_argument("--out", required=True)
    return p.parse_args()


def main():
    args = parse_args()
    profile_at = parse_points(args.profile)  # a malformed point is an error before any work (and before --out exists)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    ks, ctxs = [int(k) for k in args.ks.split(",")], [int(c) for c in args.ctx.split(",")]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    shapes = [s for s in args.shapes.split(",") if s]  # --shapes '': the serving part alone
    clock = functools.partial(median_ms, device=device)
    peaks = DEVICE_PEAKS[args.peaks]
    budget, t0 = Budget(args.budget_s), time.time()
    results = {**provenance(device), "peaks": {args.peaks: peaks}, "iterations": [], "serving": []}
    results["fuse_gate_up"] = args.fuse_gate_up
    results["matmul_triton_rows"] = args.matmul_triton_rows

    def log(msg):
        print(f"[{time.time() - t0:6.0f}s] {msg}", flush=True)

    save = functools.partial(save_results, out, results, markdown, batch_figure)
    phase = functools.partial(run_phase, results=results, save=save, log=log, keep=False)  # parts fill results

    shapes_left = lambda: budget.elapsed() < args.shapes_share * args.budget_s  # noqa: E731
    for shape in shapes:

        def shapes_part(shape=shape):
            model = build_model(shape, device)
            engine = OrthrusEngine(
                model,
                max(ctxs) + max(ks) + 16,
                backend="triton",
                fuse_qkv=cuda,
                fuse_gate_up=args.fuse_gate_up,
                matmul_triton_rows=args.matmul_triton_rows,
                max_batch_size=max(batch_sizes),
                graph_prefill=False,  # the iterations are timed on filled slots: no prefill, no scratch slot
            )
            log(f"[{shape}] built; KV cache {engine.cache.nbytes / 1e9:.1f} GB for {max(batch_sizes)} slots")
            points = iteration_points(engine, shape, ctxs, ks, batch_sizes, clock, args.reps, peaks, shapes_left, log)
            results["iterations"] += points
            results.setdefault("matmul_choices", {})[shape] = engine.mm.choices()
            results["matmul_tuning"] = Matmul.report()
            profiles = profile_points(engine, shape, profile_at, batch_sizes, ks, ctxs[0], device, log)
            results.setdefault("profiles", []).extend(profiles)

        phase(f"iterations_{shape}", shapes_part)
        free_memory()

    if args.small:

        def small_part():
            from models.checkpoint import load_orthrus

            folder = Path(args.small)
            prompts = humaneval_ids(folder / "tokenizer", args.small_limit)
            model = load_orthrus(
                str(folder / "base"), str(folder / "diffusion"), dtype=torch.bfloat16, device=device
            ).eval()
            engine = OrthrusEngine(
                model,
                max(map(len, prompts)) + args.small_new_tokens + args.small_k,
                max_batch_size=max(batch_sizes),
                graph_prefill=False if args.eager_prefill else None,
            )
            results["serving"] = serving_points(
                engine, prompts, args.small_k, batch_sizes, args.small_new_tokens, budget.left, log
            )

        phase("serving_orthrus_small", small_part)

    histogram = next((r["accepted_histogram"] for r in results["serving"] if "accepted_histogram" in r), None)
    results["projections"] = project(results["iterations"], histogram)
    results["best_k"] = best_k(results["projections"])
    results["targets"] = targets(results)
    real = [s for s in shapes if s != "tiny"]
    results["memory_per_request"] = [memory_per_request(s, c, max(ks)) for s in real for c in ctxs]
    save()
    log(f"wrote {out}/bench.json, bench.md, bench.png")


if __name__ == "__main__":
    main()
