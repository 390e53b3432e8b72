#!/bin/bash
# usage: bash .cache/gpu/abl.sh <commit> <train-timeout> <extra args of the train stage...>
set -o pipefail
commit=$1; timeout=$2; shift 2
eval "$(bash .whl/device-install)" || exit 1
export TORCH_CUDA_ARCH_LIST=9.0 PYTHONUNBUFFERED=1 ORTHRUS_COMMIT=$commit HF_DATASETS_DISABLE_PROGRESS_BARS=1
export PYTHONPATH=$PWD/.cache/device_py:$PYTHONPATH
nvidia-smi --query-gpu=name,memory.used --format=csv
start=$(date +%s)
python scripts/run_small_ablations.py --stages prep,train,pack --pack-dir $OUT --train-timeout $timeout "$@" 2>&1 | tee $OUT/abl.log
echo "elapsed $(( $(date +%s) - start )) s"
exit 0
