"""Run lm-eval tasks with the base model (`hf`) and with Orthrus (`orthrus`) and check that
accuracy, and every generation, are identical (greedy decoding is lossless).

    python -m scripts.lm_eval_compare --orthrus chiennv/Orthrus-Qwen3-8B --tasks gsm8k --limit 200 \\
        --dtype bfloat16 --device cuda --out results/lm_eval/orthrus_qwen3_8b_gsm8k.json
    python -m scripts.lm_eval_compare --orthrus artifacts/orthrus-small/base \
        --diffusion artifacts/orthrus-small/diffusion --tasks orthrus_python_local \
        --include-path eval/lm_eval_tasks --limit 4 --dtype float32 --out /tmp/cmp.json

--base defaults to --orthrus: the `hf` model then loads the same checkpoint with plain
transformers, whose forward is the frozen base model. Exit status 1 when anything differs.
"""

import argparse
import json
import sys

from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager

import models.orthrus  # noqa: F401  (registers model_type "orthrus" with AutoModelForCausalLM)
from data._io import atomic_write_text
from eval.lm_eval_adapter import OrthrusLM, compare
from eval.provenance import provenance
from models.checkpoint import resolve_device


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orthrus", required=True, help="Orthrus checkpoint: hub name or folder (Qwen3 or merged)")
    parser.add_argument("--diffusion", default=None, help="diffusion-view file/folder when --orthrus is a plain Qwen3")
    parser.add_argument("--base", default=None, help="base model for `hf` (default: --orthrus)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer (default: the checkpoint's)")
    parser.add_argument("--tasks", nargs="+", required=True)
    parser.add_argument("--include-path", default=None, help="folder of extra task yamls (e.g. eval/lm_eval_tasks)")
    parser.add_argument("--limit", type=float, default=None)
    parser.add_argument("--block-size", type=int, default=None)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--device", default="auto", help="auto: CUDA when present, else the CPU")
    parser.add_argument("--apply-chat-template", action="store_true")
    parser.add_argument("--num-fewshot", type=int, default=None)
    parser.add_argument("--out", default=None, help="write the comparison here as JSON")
    args = parser.parse_args(argv)
    args.device = str(resolve_device(args.device))  # HFLM takes a concrete device

    common = dict(tokenizer=args.tokenizer, dtype=args.dtype, device=args.device, batch_size=1)
    base_lm = HFLM(pretrained=args.base or args.orthrus, **common)
    orthrus_lm = OrthrusLM(pretrained=args.orthrus, diffusion=args.diffusion, block_size=args.block_size, **common)
    task_manager = TaskManager(include_path=args.include_path)
    report = compare(
        base_lm,
        orthrus_lm,
        args.tasks,
        task_manager,
        limit=args.limit,
        num_fewshot=args.num_fewshot,
        apply_chat_template=args.apply_chat_template,
    )
    report["provenance"] = provenance(args.device)
    for task, r in report["tasks"].items():
        print(
            f"{task}: hf={r['hf']} orthrus={r['orthrus']} "
            f"differing samples={len(r['differing_doc_ids'])}/{r['num_samples']}"
        )
    print(
        "Orthrus tokens per draft+verify iteration (diagnostic, ~2x the paper's TPF) on generation requests: "
        f"{report['orthrus_tokens_per_iteration']:.2f}"
    )
    print("IDENTICAL" if report["identical"] else "DIFFERENT")
    if args.out:
        atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    return 0 if report["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
