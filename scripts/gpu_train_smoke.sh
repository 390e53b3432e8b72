#!/usr/bin/env bash
# Single-GPU smoke test of the training path at real Qwen3-8B shapes (random weights, synthetic
# data: no network, no corpus): the +exp=qwen3_8b recipe (K=32, 256 blocks per 2,048-token row,
# KL, bf16, ZeRO-2, speed=fast_fp8 at micro-batch 2, compiled flex attention), a few hundred steps,
# then a throughput summary as JSON. It peaks near 108 GiB (an H200-class GPU, compute capability 9.0 for
# float8); on an 80 GB GPU or one without float8 add speed=fast train.micro_batch_size=1 (65.7 GiB;
# docs/training.md, "Training speed").
#
#   TORCH_CUDA_ARCH_LIST=9.0 bash scripts/gpu_train_smoke.sh OUT.json [STEPS] [hydra overrides...]
#
# OUT.json: tokens_per_s_per_gpu and mfu (means over the records after the first 20 steps,
# which hold compilation), loss at the start and end, peak memory, the device, the command.
# The run itself (metrics.jsonl, checkpoint) goes to $SMOKE_RUN_DIR (default: a temp folder).
set -euo pipefail
out=${1:?usage: bash scripts/gpu_train_smoke.sh OUT.json [STEPS] [hydra overrides...]}
steps=${2:-200}
shift $(($# < 2 ? $# : 2))
run_dir=${SMOKE_RUN_DIR:-$(mktemp -d /tmp/orthrus-smoke.XXXXXX)}
cd "$(dirname "$0")/.."

# synthetic documents of 256..4096 tokens (packed rows hold a few long documents, like SFT data);
# ~data.load_tokenized_dataset drops the preset's tokenizer setting, which synthetic data lacks
cmd=(python train.py +exp=qwen3_8b model.base=null model.shape=qwen3_8b
     data=synthetic '~data.load_tokenized_dataset' data.synthetic_documents.num_documents=1024 data.synthetic_documents.min_length=256
     data.synthetic_documents.max_length=4096
     "train.steps=$steps" train.grad_accum=1 "train.checkpoint_every=$steps" train.keep_last=1
     logging.log_every=10 logging.wandb.mode=disabled logging.progress_bar=false
     "hydra.run.dir=$run_dir" "$@")
echo "${cmd[*]}" >&2
PYTHONUNBUFFERED=1 "${cmd[@]}"

python - "$run_dir/metrics.jsonl" "$out" "${cmd[*]}" <<'EOF'
import json, sys

import torch

metrics, out, command = sys.argv[1:]
records = [json.loads(line) for line in open(metrics)]
steady = [r for r in records if r["step"] > 20] or records
mean = lambda key: sum(r[key] for r in steady) / len(steady)
summary = {
    "device": torch.cuda.get_device_name(0),
    "steps": records[-1]["step"],
    "tokens_per_s_per_gpu": mean("tokens_per_s_per_gpu"),
    "mfu": mean("mfu"),
    "steady_records": len(steady),
    "loss_first": records[0]["loss"],
    "loss_last": records[-1]["loss"],
    "acc_mean_last": records[-1]["acc_mean"],
    "max_memory_gib": max(r.get("max_memory_gib", 0.0) for r in records),
    "command": command,
}
with open(out, "w") as f:
    json.dump(summary, f, indent=2)
print(json.dumps(summary, indent=2))
EOF
