#!/usr/bin/env bash
# Training speed at the paper's density on one GPU: a step profile and the before/after table of
# the speed knobs (docs/training.md, "Training speed"), at the Qwen3-8B and Qwen3-1.7B shapes
# (random weights, synthetic documents; 2,048-token rows, 256 blocks of K=32 per row: 8,192
# diffusion tokens per row; ZeRO-2, bf16, compiled flex attention). One scripts.bench_train run:
#
#   eval "$(bash .whl/device-install)"     # hydra, datasets, deepspeed
#   TORCH_CUDA_ARCH_LIST=9.0 bash scripts/profile_train.sh OUT [BUDGET_S] [extra bench_train args...]
#
# Variants, in this order (each on both shapes before the next; what does not fit in BUDGET_S,
# default 340 s, is recorded "skipped"; an out-of-memory point is recorded "oom"):
#   baseline        the recipe's defaults (GC off, micro-batch 1); also profiled (OUT/profile/)
#   fast            every speed knob that keeps the bf16 numerics: train.compile_frozen,
#                   train.compile_diffusion, objective.compile_loss, objective.fused_loss,
#                   optim.fused; also profiled
#   fast_fp8        fast + train.fp8=frozen (weights quantized once, rowwise); also profiled
#   fp8_frozen      train.fp8=frozen alone (eager: its activation casts unfused)
#   compile_diff    train.compile_diffusion=true alone
#   compile_loss    objective.compile_loss=true alone
#   fused_adam      optim.fused=true alone (torch's fused AdamW inside ZeRO-2)
#   fast_mb2        fast at micro-batch 2
#   fast_fp8_mb2    fast_fp8 at micro-batch 2
#   fast_torch      fast on plain PyTorch (deepspeed.enabled=false: fp32 masters, autocast, no ZeRO)
#   fast_chunk4k    fast with objective.chunk_size=4096 (4x fewer loss chunks)
#   fast_mb4        fast at micro-batch 4 (for the 1.7B shape; the 8B one is expected "oom")
# OUT/bench.json (provenance, every result, the profile breakdown), bench.md (the table with MFU
# by part and the projected wall-clock of the paper's 8-GPU run: 1.92B row tokens), bench.png,
# OUT/profile/<point>/trace.json.gz (chrome://tracing or Perfetto), breakdown.{json,md}.
set -euo pipefail
out=${1:?usage: bash scripts/profile_train.sh OUT [BUDGET_S] [extra bench_train args...]}
budget=${2:-340}
shift $(($# < 2 ? $# : 2))
cd "$(dirname "$0")/.."
fast="train.compile_frozen=true train.compile_diffusion=true objective.compile_loss=true"
fast="$fast objective.fused_loss=true optim.fused=true"

PYTHONUNBUFFERED=1 python -m scripts.bench_train "$out" \
  --shapes qwen3_8b,qwen3_1.7b --seq-lens 2048 --blocks-per-row 256 \
  --checkpointing off --attention flex --deepspeed zero2 --warmup 2 --steps 4 --budget-s "$budget" \
  --variant "baseline:" \
  --variant "fast:$fast" \
  --variant "fast_fp8:$fast train.fp8=frozen" \
  --variant "fp8_frozen:train.fp8=frozen" \
  --variant "compile_diff:train.compile_diffusion=true" \
  --variant "compile_loss:objective.compile_loss=true" \
  --variant "fused_adam:optim.fused=true" \
  --variant "fast_mb2:$fast train.micro_batch_size=2" \
  --variant "fast_fp8_mb2:$fast train.fp8=frozen train.micro_batch_size=2" \
  --variant "fast_torch:$fast deepspeed.enabled=false" \
  --variant "fast_chunk4k:$fast objective.chunk_size=4096" \
  --variant "fast_mb4:$fast train.micro_batch_size=4" \
  --profile baseline,fast,fast_fp8 --profile-steps 2 --project-row-tokens 1.92e9 --project-gpus 8 \
  "$@"
