#!/bin/bash
# usage: bash .cache/gpu/evalbench.sh <commit> <bench: 0|1>
set -o pipefail
commit=$1; bench=$2
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl_eval/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/.cache/device_py TORCH_CUDA_ARCH_LIST=9.0 PYTHONUNBUFFERED=1 ORTHRUS_COMMIT=$commit
nvidia-smi --query-gpu=name,memory.used --format=csv
start=$(date +%s)
python scripts/run_small_ablations.py --stages eval --sweeps block_size,loss,trainable,train_tokens --workers 4 > $OUT/eval.log 2>&1
tail -5 $OUT/eval.log; grep "\[eval\]" $OUT/eval.log
tar cf $OUT/evals.tar .cache/small/ablations/evals
echo "eval elapsed $(( $(date +%s) - start )) s"
if [ "$bench" = 1 ]; then
  timeout 150 python -m pytest -q -k pdl tests/test_kernels_matmul.py tests/test_kernels_attention.py tests/test_engine_triton.py > $OUT/tests_pdl.log 2>&1
  tail -3 $OUT/tests_pdl.log
  mkdir -p $OUT/bench
  timeout 300 python scripts/bench_decode.py --shapes qwen3_8b --ctx 256,4096 --ks 8,16,32 --variants auto,nopdl,invariant \
    --divergence-variants auto,invariant --prompts 4 --new-tokens 128 --skip unfused_qkv,hf_generate --budget-s 200 \
    --commit $commit --out $OUT/bench > $OUT/bench/bench_stdout.log 2>&1
  tail -30 $OUT/bench/bench_stdout.log
fi
echo "total elapsed $(( $(date +%s) - start )) s"
exit 0
