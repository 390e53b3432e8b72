#!/usr/bin/env bash
# Training speed at the paper's density on one GPU: a step profile and the before/after table of
# the speed knobs (docs/training.md, "Training speed"), at the Qwen3-8B and Qwen3-1.7B shapes
# (random weights, synthetic documents; 2,048-token rows, 256 blocks of K=32 per row: 8,192
# diffusion tokens per row; ZeRO-2, bf16, compiled flex attention). One scripts.bench_train run:
#
#   eval "$(bash .whl/device-install)"     # hydra, datasets, deepspeed (+ torchao for the fp8 variants)
#   TORCH_CUDA_ARCH_LIST=9.0 bash scripts/profile_train.sh OUT [BUDGET_S] [extra bench_train args...]
#
# Variants, in this order (each on both shapes before the next; what does not fit in BUDGET_S,
# default 420 s, is recorded "skipped"; an out-of-memory point is recorded "oom"; without torchao
# the fp8 points are recorded "error" with the install hint):
#   baseline          the recipe's defaults (GC off, micro-batch 1); also profiled (OUT/profile/)
#   fused             objective.fused_loss=true: no recomputation of the lm_head + KL chunks
#   fp8_frozen        train.fp8=frozen: frozen Linear layers in float8, no weight gradients
#   compiled          train.compile_frozen=true: each layer's frozen MLP and norms compiled
#   all               fused + fp8_frozen + compiled; also profiled
#   mb2               micro-batch 2 (GC off)
#   gc                gradient checkpointing on (the memory-saving setting)
#   mb2_gc            micro-batch 2 with gradient checkpointing
#   all_mb2_gc        all + micro-batch 2 with gradient checkpointing
#   fp8_torchao       train.fp8=torchao: torchao's Float8Linear as is (forms unused weight gradients)
#   fused_fp8_frozen  fused + fp8_frozen, eager
#   flex64            objective.flex_block_size=64: finer block-sparse tiles
# OUT/bench.json (provenance, every result, the profile breakdown), bench.md (the table with MFU
# by part and the projected wall-clock of the paper's 8-GPU run: 1.92B row tokens), bench.png,
# OUT/profile/<point>/trace.json.gz (chrome://tracing or Perfetto), breakdown.{json,md}.
set -euo pipefail
out=${1:?usage: bash scripts/profile_train.sh OUT [BUDGET_S] [extra bench_train args...]}
budget=${2:-420}
shift $(($# < 2 ? $# : 2))
cd "$(dirname "$0")/.."
python -c "import torchao.float8" 2>/dev/null || echo "torchao not importable: the fp8 variants will record the error" >&2

PYTHONUNBUFFERED=1 python -m scripts.bench_train "$out" \
  --shapes qwen3_8b,qwen3_1.7b --seq-lens 2048 --blocks-per-row 256 \
  --checkpointing off --attention flex --deepspeed zero2 --warmup 2 --steps 4 --budget-s "$budget" \
  --variant "baseline:" \
  --variant "fused:objective.fused_loss=true" \
  --variant "fp8_frozen:train.fp8=frozen" \
  --variant "compiled:train.compile_frozen=true" \
  --variant "all:objective.fused_loss=true train.fp8=frozen train.compile_frozen=true" \
  --variant "mb2:train.micro_batch_size=2" \
  --variant "gc:train.gradient_checkpointing=true" \
  --variant "mb2_gc:train.micro_batch_size=2 train.gradient_checkpointing=true" \
  --variant "all_mb2_gc:objective.fused_loss=true train.fp8=frozen train.compile_frozen=true train.micro_batch_size=2 train.gradient_checkpointing=true" \
  --variant "fp8_torchao:train.fp8=torchao" \
  --variant "fused_fp8_frozen:objective.fused_loss=true train.fp8=frozen" \
  --variant "flex64:objective.flex_block_size=64" \
  --profile baseline,all --profile-steps 2 --project-row-tokens 1.92e9 --project-gpus 8 \
  "$@"
