#!/usr/bin/env bash
# The orthrus-small diffusion view, rebuilt from the shipped base and measured: one command.
#
#     bash scripts/orthrus_small.sh OUT_DIR          # the shipped recipe, one GPU (a few minutes)
#     bash scripts/orthrus_small.sh OUT_DIR toy      # the same commands at toy size: CPU, about a minute
#     EVAL_K='[16]' EVAL_ARGS='fidelity.exact_match=false' bash scripts/orthrus_small.sh OUT_DIR
#                                                  # evaluate fewer block sizes, no exact-match check
#     bash scripts/orthrus_small.sh OUT_DIR full ablate_ce_loss ablate_trainable   # + ablations
#     ARM_JOBS=3 ONLY_ABLATIONS=1 bash scripts/orthrus_small.sh OUT_DIR full ablate_speed
#                       # the arms train at once (Hydra's joblib launcher: one process per arm, one GPU
#                       # holds several small runs); steps 3-4 (the recipe's own view) skipped
#     ONLY_ABLATIONS=1 TRAIN_ARGS='speed=plain,fast' bash scripts/orthrus_small.sh OUT_DIR full ablate_speed
#                       # extra overrides of the ablations' train.py runs, e.g. a subset of the arms
#
# An ablation's folder OUT_DIR/ABLATION/ holds one sweep: the script refuses to start when it is not
# empty (another subset of arms: a fresh OUT_DIR, or remove that folder; OUT_DIR/self_distill/ is reused).
#
# Steps, each an ordinary entry point (the exact commands are echoed and can be rerun by hand):
#   1. the pinned inputs are checked against artifacts/orthrus-small/SHA256SUMS: base weights,
#      tokenizer, the 2000 self-distillation prompts (windows of CPython 3.11 stdlib sources,
#      shipped so the data does not depend on what a machine has installed) and held-out prompts;
#   2. self-distillation: the frozen base answers every prompt, greedy, fp32, 256 new tokens, on the
#      batched engine at K = 1 (python -m scripts.self_distill, decoder=fast) -> OUT_DIR/self_distill/;
#   3. train.py +exp=small on those answers, 1800 steps -> OUT_DIR/train/ (diffusion_view/ is the view);
#   4. python -m scripts.evaluate: HumanEval and the held-out prompts, greedy, fp32, 128 new tokens, at
#      each K of EVAL_K -> OUT_DIR/eval/metrics.json and metrics.md (TPF per K);
#   5. for each ABLATION named after the size: the arms of conf/exp/ABLATION.yaml (the arms every
#      model size uses), as a Hydra multirun of train.py '+exp=[ABLATION,small]' on the same data
#      -> OUT_DIR/ABLATION/arm_N/, each evaluated as in step 4 -> OUT_DIR/ABLATION/arm_N/eval/ (its
#      metrics.md names the arm's train.py overrides, e.g. speed=fast, from arm_N/.hydra/overrides.yaml).
set -euo pipefail

OUT=${1:?usage: bash scripts/orthrus_small.sh OUT_DIR [full|toy] [ABLATION ...]}
SIZE=${2:-full}
ABLATIONS=("${@:3}")
ART=${ART:-artifacts/orthrus-small}  # the shipped base, tokenizer and pinned prompts
cd "$(dirname "$0")/.."

case "$SIZE" in
  full)
    DISTILL=(max_new_tokens=256 batch_size=256 limit=null)
    TRAIN=()
    EVAL=(model.device=cuda "decode.block_sizes=${EVAL_K:-[8,16,32]}")
    ;;
  toy)  # every step, at a size a CPU runs in about a minute (tests/test_orthrus_small_recipe.py)
    DISTILL=(max_new_tokens=8 batch_size=2 limit=2 device=cpu)
    TRAIN=(train.steps=2 train.micro_batch_size=1 train.checkpoint_every=2 data.packed_dataset.seq_len=128
           objective.blocks_per_row=2 data.load_tokenized_dataset.num_proc=null logging.log_every=1)
    EVAL=(model.device=cpu "decode.block_sizes=${EVAL_K:-[1,8]}" limit=1 decode.max_new_tokens=8
          fidelity.num_prompts=1 progress=false)
    ;;
  *) echo "unknown size '$SIZE': use full or toy" >&2; exit 2 ;;
esac

run() { echo "+ $*"; "$@"; }

evaluate() {  # evaluate VIEW_FOLDER OUT_FOLDER
  run python -m scripts.evaluate name=eval out_dir="$2" model.base="$ART/base" model.diffusion="$1" \
    tokenizer="$ART/tokenizer" model.dtype=float32 prompt.chat_template=false decode.max_new_tokens=128 \
    benchmarks=[humaneval,local_jsonl] prompt_sets.local_jsonl.path="$ART/heldout_prompts.jsonl" \
    prompt_sets.local_jsonl.id_field=id "${EVAL[@]}" ${EVAL_ARGS:-}
}

declare -A NAMED=()
for name in "${ABLATIONS[@]}"; do
  [[ -f conf/exp/$name.yaml && $name == ablate_* ]] || {
    echo "no ablation conf/exp/$name.yaml; choose from: $(cd conf/exp && ls ablate_*.yaml | sed 's/.yaml//')" >&2
    exit 2; }
  [[ -z "${NAMED[$name]:-}" ]] || {
    echo "$name is named twice: both sweeps would write $OUT/$name; name each ablation once" >&2; exit 2; }
  NAMED[$name]=1
  [[ ! -d "$OUT/$name" || -z "$(ls -A "$OUT/$name")" ]] || {  # a sweep writes arm_0.. over what is there
    echo "$OUT/$name already holds an earlier sweep ($(ls -A "$OUT/$name" | head -4 | xargs)): this one would" \
      "overwrite some of its arms and evaluate the others as its own. Move or remove that folder" \
      "(rm -r $OUT/$name) to run $name again in $OUT (self_distill/ is reused), or give a fresh OUT_DIR" >&2
    exit 2; }
done
[[ "${ONLY_ABLATIONS:-}" =~ ^[01]?$ ]] || {
  echo "ONLY_ABLATIONS='$ONLY_ABLATIONS': 1 skips the recipe's own view, 0 or unset keeps it" >&2; exit 2; }
[[ "${ONLY_ABLATIONS:-}" != 1 || ${#ABLATIONS[@]} -gt 0 ]] || {
  echo "ONLY_ABLATIONS=1 skips the recipe's own view: name an ablation after the size (e.g. full ablate_speed)" >&2
  exit 2; }
[[ -z "${ARM_JOBS:-}" || "$ARM_JOBS" =~ ^[1-9][0-9]*$ ]] || {
  echo "ARM_JOBS='$ARM_JOBS': give the number of arms to train at once (a positive integer)" >&2; exit 2; }
(cd "$ART" && sha256sum --check --quiet SHA256SUMS) || {
  echo "the pinned inputs in $ART differ from $ART/SHA256SUMS: restore them from git" >&2; exit 1; }
DATA=(data=self_distill '~data.build_corpus' '~data.train_tokenizer'
      data.load_tokenized_dataset.source="$OUT/self_distill" data.load_tokenized_dataset.text_field=text
      data.packed_dataset.seq_len=1024 logging.progress_bar=false)

run python -m scripts.self_distill model_name_or_path="$ART/base" prompts_source="$ART/distill_prompts.jsonl.gz" \
  out_dir="$OUT/self_distill" split=train chat_template=false messages_field=null temperature=0.0 dtype=float32 \
  "${DISTILL[@]}"

if [[ "${ONLY_ABLATIONS:-}" != 1 ]]; then
  run python train.py +exp=small "${DATA[@]}" hydra.run.dir="$OUT/train" "${TRAIN[@]}"
  evaluate "$OUT/train/diffusion_view" "$OUT"
fi
LAUNCHER=()
[[ -n "${ARM_JOBS:-}" ]] && LAUNCHER=(hydra/launcher=joblib hydra.launcher.n_jobs="$ARM_JOBS")

for name in "${ABLATIONS[@]}"; do
  run python train.py -m "+exp=[$name,small]" "${DATA[@]}" hydra.sweep.dir="$OUT/$name" \
    hydra.sweep.subdir=arm_\${hydra.job.num} "${LAUNCHER[@]}" "${TRAIN[@]}" ${TRAIN_ARGS:-}
  for arm in "$OUT/$name"/arm_*/; do  # this sweep's arms only: the folder was empty (checked above)
    evaluate "${arm}diffusion_view" "${arm%/}"
  done
done
