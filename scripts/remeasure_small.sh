#!/usr/bin/env bash
# Re-measure orthrus-small (artifacts/orthrus-small) with the timing protocol of eval/timing.py: the fast
# engine, K = 1/8/16/32, 256 new tokens, fp32 and bf16; HumanEval (164 prompts) and the held-out set
# (artifacts/orthrus-small/heldout_prompts.jsonl, 64 prompts). Each run is one `python -m scripts.evaluate` command,
# so each metrics.json records the command that reproduces it; `summary` tables and plots them all.
#
#   bash scripts/remeasure_small.sh OUT greedy     # fp32 + bf16 greedy, all prompts; exact match on 8 per set
#   bash scripts/remeasure_small.sh OUT sampling   # T=0.6/top-k 20/top-p 0.95 and T=1, fp32 + bf16,
#                                                  # the first $SAMPLING_LIMIT prompts of each set (default 32)
#   DTYPES=bfloat16 bash ...                      # one dtype only (default: float32 bfloat16)
#   bash scripts/remeasure_small.sh OUT summary    # OUT/summary.md, summary.json, speedup_by_k.png
#
# Sampling runs every K > 1 through the per-token fidelity test (alpha 1e-3; all sampled tokens of the run).
# On a GPU machine whose copy of the tree has no .git, pass the launching checkout's state:
#   ORTHRUS_COMMIT=$(git rev-parse HEAD) \
#   ORTHRUS_DIRTY=$(git status --porcelain --untracked-files=no | grep -q . && echo true || echo false)
set -euo pipefail
OUT=${1:?usage: remeasure_small.sh OUT greedy|sampling|summary}
PART=${2:?usage: remeasure_small.sh OUT greedy|sampling|summary}
ART=${ART:-artifacts/orthrus-small}
SAMPLING_LIMIT=${SAMPLING_LIMIT:-32}
DTYPES=${DTYPES:-float32 bfloat16}
COMMON=(out_dir="$OUT" model.base="$ART/base" model.diffusion="$ART/diffusion" tokenizer="$ART/tokenizer"
        'benchmarks=[humaneval,local_jsonl]' prompt_sets.local_jsonl.path="$ART/heldout_prompts.jsonl"
        prompt_sets.local_jsonl.id_field=id prompt.chat_template=false 'decode.block_sizes=[1,8,16,32]'
        decode.max_new_tokens=256 decode.engine=fast decode.batch_size=1 model.device=cuda progress=false)  # batch 1
TOP_P=(decode.temperature=0.6 decode.top_k=20 decode.top_p=0.95)
T1=(decode.temperature=1.0)

run() { echo "=== $*"; python -m scripts.evaluate "${COMMON[@]}" "$@"; }

case $PART in
  greedy)
    for dtype in $DTYPES; do
      run name="greedy_$dtype" model.dtype=$dtype fidelity.num_prompts=8
    done ;;
  sampling)
    for dtype in $DTYPES; do
      run name="sampling_t0.6_$dtype" model.dtype=$dtype limit="$SAMPLING_LIMIT" fidelity.exact_match=false "${TOP_P[@]}"
      run name="sampling_t1_$dtype" model.dtype=$dtype limit="$SAMPLING_LIMIT" fidelity.exact_match=false "${T1[@]}"
    done ;;
  summary)
    python -m scripts.summarize_speed "$OUT"/*/metrics.json --out "$OUT" ;;
  *) echo "unknown part $PART: use greedy, sampling or summary" >&2; exit 2 ;;
esac
