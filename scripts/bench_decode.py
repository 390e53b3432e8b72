"""Decode benchmark of the Orthrus engine at real Qwen3 shapes (random weights, bf16, batch 1): argument
parsing over eval/decode_bench.py, which says what is measured and how (timing: eval/timing.py; the bf16
divergence study: eval/fidelity.py; tables and plot: eval/report.py, eval/figures.py; kernel checks:
tests/test_kernels_gpu.py). Writes bench.json / bench.md / bench.png / bench.log under --out as it goes.
Provenance (command, commit, dirty flag, source hash) is computed; on a GPU machine whose copy of the tree
has no .git, pass ORTHRUS_COMMIT / ORTHRUS_DIRTY from the launching checkout (eval/provenance.py).

    PYTHONUNBUFFERED=1 python -m scripts.bench_decode --out results/engine_<gpu>_<date>
    TRITON_INTERPRET=1 python -m scripts.bench_decode --shapes tiny --ctx 64,128 --ks 4 --reps 2 --hf-reps 1 \
        --prompts 1 --new-tokens 8 --out /tmp/bench   # CPU smoke run (a minute or two in Triton's interpreter)
    python -m scripts.bench_decode --from-json results/engine_h100_2026-11-23/bench_all_shapes/bench.json --out /tmp/rr
"""

import argparse
from pathlib import Path

from eval.decode_bench import VARIANTS, load_results, render, run_benchmark
from models.shapes import QWEN3_SHAPES


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--shapes",
        default="qwen3_8b,orthrus-small,qwen3_1.7b,qwen3_4b",
        help=f"from {sorted(QWEN3_SHAPES)}, 'tiny', or 'orthrus-small' (the divergence run on --small)",
    )
    p.add_argument("--ks", default="8,16,32")
    p.add_argument("--ctx", default="256,1024,4096,16384,32768")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--hf-reps", type=int, default=10)
    p.add_argument("--prompts", type=int, default=4, help="random prompts for the bf16 divergence run at each shape")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--small", default="artifacts/orthrus-small", help="trained small model for the divergence run")
    p.add_argument("--small-ks", default="8,32")
    p.add_argument("--small-prompts", type=int, default=24)
    p.add_argument(
        "--small-hf-prompts", type=int, default=8, help="bf16 prompts also decoded by transformers (half in fp32)"
    )
    p.add_argument("--small-new-tokens", type=int, default=256)
    p.add_argument(
        "--variants",
        default="auto,nopdl,invariant,torch,triton",
        help=f"engine variants to time, from {sorted(VARIANTS)}; the first is the main table",
    )
    p.add_argument("--divergence-variants", default="auto,invariant", help="variants whose bf16 divergence is measured")
    p.add_argument(
        "--skip", default="", help="phases to leave out: hf_step_ms, hf_generate, gemm_probe, profile, unfused_qkv"
    )
    p.add_argument("--budget-s", type=float, default=420, help="stop starting new work after this many seconds")
    p.add_argument("--out", required=True)
    p.add_argument("--from-json", help="bench.md and bench.png again from an earlier bench.json into --out (no timing)")
    return p.parse_args()


def main():
    args = parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.from_json:
        render(*load_results(args.from_json), out)
        return
    with open(out / "bench.log", "a") as log_file:

        def log(msg):
            print(msg, flush=True)
            log_file.write(msg + "\n")
            log_file.flush()

        run_benchmark(args, out, log)
    print((out / "bench.md").read_text())


if __name__ == "__main__":
    main()
