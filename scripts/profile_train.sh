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
# default 340 s, is recorded "skipped"; an out-of-memory point is recorded "oom"). The settings
# groups are conf/speed/ (plain: every knob off; fast: the five bf16 knobs; fast_fp8: fast +
# train.fp8=frozen); the recipes (+exp=qwen3_*) default to fast_fp8 (8B, 4B) or fast (1.7B), so every
# variant names its group.
# The first five decide the defaults, so a short budget measures them:
#   baseline        speed=plain at micro-batch 1; also profiled (OUT/profile/)
#   fast            speed=fast; also profiled
#   fast_fp8        speed=fast_fp8; also profiled
#   fast_fp8_mb2    speed=fast_fp8 at micro-batch 2 (the 8B recipe's default and its fastest)
#   fast_mb4        speed=fast at micro-batch 4 (the 1.7B shape's default; the 8B one is expected "oom")
#   fast_mb2        speed=fast at micro-batch 2 (the 8B recipe on a GPU without float8)
#   fp8_frozen      plain + train.fp8=frozen alone (eager: its activation casts unfused)
#   compile_frozen  plain + train.compile_frozen=true alone
#   compile_diff    plain + train.compile_diffusion=true alone
#   compile_loss    plain + objective.compile_loss=true alone
#   fused_loss      plain + objective.fused_loss=true alone
#   fused_adam      plain + optim.fused=true alone (torch's fused AdamW inside ZeRO-2)
#   fast_mb2_gc     fast at micro-batch 2 with gradient checkpointing (the trade for 80 GB GPUs)
#   fast_torch      fast on plain PyTorch (deepspeed.enabled=false: fp32 masters, autocast, no ZeRO)
#   fast_chunk4k    fast with objective.chunk_size=4096 (4x fewer loss chunks)
# OUT/bench.json (provenance, every result, the profile breakdown), bench.md (the table with MFU
# by part and the projected wall-clock of the paper's 8-GPU run: 1.92B row tokens), bench.png,
# OUT/profile/<point>/trace.json.gz (chrome://tracing or Perfetto), breakdown.{json,md}.
set -euo pipefail
out=${1:?usage: bash scripts/profile_train.sh OUT [BUDGET_S] [extra bench_train args...]}
budget=${2:-340}
shift $(($# < 2 ? $# : 2))
cd "$(dirname "$0")/.."

PYTHONUNBUFFERED=1 python -m scripts.bench_train "$out" \
  --shapes qwen3_8b,qwen3_1.7b --seq-lens 2048 --blocks-per-row 256 \
  --checkpointing off --attention flex --deepspeed zero2 --warmup 2 --steps 4 --budget-s "$budget" \
  --variant "baseline:speed=plain" \
  --variant "fast:speed=fast" \
  --variant "fast_fp8:speed=fast_fp8" \
  --variant "fast_fp8_mb2:speed=fast_fp8 train.micro_batch_size=2" \
  --variant "fast_mb4:speed=fast train.micro_batch_size=4" \
  --variant "fast_mb2:speed=fast train.micro_batch_size=2" \
  --variant "fp8_frozen:speed=plain train.fp8=frozen" \
  --variant "compile_frozen:speed=plain train.compile_frozen=true" \
  --variant "compile_diff:speed=plain train.compile_diffusion=true" \
  --variant "compile_loss:speed=plain objective.compile_loss=true" \
  --variant "fused_loss:speed=plain objective.fused_loss=true" \
  --variant "fused_adam:speed=plain optim.fused=true" \
  --variant "fast_mb2_gc:speed=fast train.micro_batch_size=2 train.gradient_checkpointing=true" \
  --variant "fast_torch:speed=fast deepspeed.enabled=false" \
  --variant "fast_chunk4k:speed=fast objective.chunk_size=4096" \
  --profile baseline,fast,fast_fp8 --profile-steps 2 --project-row-tokens 1.92e9 --project-gpus 8 \
  "$@"
