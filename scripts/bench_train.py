"""Training throughput benchmark of the real Trainer: tokens/s/GPU, MFU by FLOP part and peak
memory per GPU over shape x sequence length x gradient checkpointing x attention x variant
(train/throughput.py), with an optional torch.profiler breakdown (train/profile.py).

    python -m scripts.bench_train OUT_DIR [--shapes qwen3_1.7b,qwen3_4b,qwen3_8b] [--seq-lens 2048,4096,8192]
        [--checkpointing on,off] [--attention flex,flex_eager] [--deepspeed zero2] [--warmup 3] [--steps 5]
        [--budget-s 540] [--override KEY=VALUE ...] [--variant "NAME:KEY=VALUE KEY=VALUE" ...]
        [--profile NAME,...] [--profile-steps 2] [--project-row-tokens 1.92e9] [--project-gpus 8]
    torchrun --standalone --nproc_per_node=N -m scripts.bench_train OUT_DIR ...      (one process per GPU)
    python -m scripts.bench_train OUT_DIR --shapes tiny --seq-lens 64,128            (CPU, seconds)
"""

import argparse
import sys
from pathlib import Path

from train.config import SHAPES
from train.throughput import ATTENTION, DEEPSPEED, run_benchmark


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--shapes", default="qwen3_1.7b,qwen3_4b,qwen3_8b", help=f"comma list of {', '.join(SHAPES)}")
    ap.add_argument("--seq-lens", default="2048,4096,8192")
    ap.add_argument("--checkpointing", default="on,off", help="comma list of on | off")
    ap.add_argument("--attention", default="flex,flex_eager", help=f"comma list of {', '.join(ATTENTION)}")
    ap.add_argument("--deepspeed", default="zero2", choices=DEEPSPEED, help="none: plain PyTorch / DDP")
    ap.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"), help="auto: bf16 on GPU")
    ap.add_argument("--micro-batch-size", type=int, default=1, help="rows per micro-batch and GPU")
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--diffusion-fraction", type=float, default=0.5, help="diffusion tokens per row / seq_len")
    ap.add_argument("--blocks-per-row", type=int, default=None, help="fixed (overrides --diffusion-fraction)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (at least 1)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps")
    ap.add_argument("--budget-s", type=float, default=540.0, help="wall-clock budget of the whole sweep")
    ap.add_argument("--peak-flops", type=float, default=None, help="per GPU; default logging.peak_flops_per_gpu")
    ap.add_argument("--pg-timeout-s", type=float, default=300.0, help="collective timeout (one rank out of memory)")
    ap.add_argument("--override", action="append", default=[], help="Hydra override, e.g. objective.chunk_size=2048")
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        help='"NAME:KEY=VALUE KEY=VALUE": a named set of Hydra overrides run at every setting (repeatable; '
        "default: one variant, baseline, with none)",
    )
    ap.add_argument("--profile", default="", help="comma list of variants whose settings are also profiled")
    ap.add_argument("--profile-steps", type=int, default=2, help="profiled steps (after one profiler warm-up step)")
    ap.add_argument("--project-row-tokens", type=float, default=1.92e9, help="row tokens of the projected run")
    ap.add_argument("--project-gpus", type=int, default=8, help="GPUs of the projected run")
    args = ap.parse_args(argv)
    split = lambda text: [x.strip() for x in text.split(",") if x.strip()]  # noqa: E731
    args.shapes, args.attention = split(args.shapes), split(args.attention)
    args.seq_lens = [int(x) for x in split(args.seq_lens)]
    flags = {"on": True, "off": False, "true": True, "false": False}
    bad_flags = [x for x in split(args.checkpointing) if x.lower() not in flags]
    if bad_flags:
        ap.error(f"--checkpointing: unknown {bad_flags}; choose from on, off")
    args.checkpointing = [flags[x.lower()] for x in split(args.checkpointing)]
    for name, values, allowed in (("--shapes", args.shapes, SHAPES), ("--attention", args.attention, ATTENTION)):
        bad = [v for v in values if v not in allowed]
        if bad:
            ap.error(f"{name}: unknown {bad}; choose from {list(allowed)}")
    args.variants = {}
    for spec in args.variant or ["baseline:"]:
        name, sep, overrides = spec.partition(":")
        if not sep or not name.strip() or name.strip() in args.variants:
            ap.error(f"--variant {spec!r}: write NAME:KEY=VALUE KEY=VALUE ..., each NAME once")
        args.variants[name.strip()] = overrides.split()
    args.profile = split(args.profile)
    unknown = [v for v in args.profile if v not in args.variants]
    if unknown:
        ap.error(f"--profile: unknown variants {unknown}; the variants are {list(args.variants)}")
    if args.profile_steps < 1 or args.project_gpus < 1 or args.project_row_tokens <= 0:
        ap.error("need --profile-steps >= 1, --project-gpus >= 1 and --project-row-tokens > 0")
    if args.steps < 1 or args.warmup < 1:
        ap.error("need --steps >= 1 and --warmup >= 1 (a timed step starts where the previous one ended)")
    return args


def main(argv: list[str] | None = None) -> dict | None:
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_benchmark(parse_args(argv), ["-m", "scripts.bench_train", *argv])


if __name__ == "__main__":
    main()
