"""Run lm-eval tasks with the base model (`hf`) and with Orthrus (`orthrus`) and check that
accuracy, and every generation, are identical (greedy decoding is lossless).

    python scripts/lm_eval_compare.py --orthrus chiennv/Orthrus-Qwen3-8B --tasks gsm8k --limit 200 \\
        --dtype bfloat16 --device cuda --out results/lm_eval/orthrus_qwen3_8b_gsm8k.json
    python scripts/lm_eval_compare.py --orthrus ckpt/ --base Qwen/Qwen3-8B --tasks my_task --include-path eval/tasks

--base defaults to --orthrus: the `hf` model then loads the same checkpoint with plain
transformers, whose forward is the frozen base model. Exit status 1 when anything differs.
"""

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lm_eval import simple_evaluate
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager

import models.orthrus  # noqa: F401  (registers model_type "orthrus" with AutoModelForCausalLM)
from data._io import atomic_write_text
from eval.lm_eval_adapter import OrthrusLM
from eval.provenance import provenance
from models.checkpoint import resolve_device


def run_tasks(lm, tasks: list[str], task_manager: TaskManager, **kwargs) -> dict:
    """lm-eval results for one model, with per-sample responses kept."""
    return simple_evaluate(model=lm, tasks=tasks, task_manager=task_manager, log_samples=True,
                           bootstrap_iters=0, **kwargs)


def compare(base_lm, orthrus_lm, tasks: list[str], task_manager: TaskManager, **kwargs) -> dict:
    """Metrics of both models per task, and which samples' generations differ."""
    out = {"identical": True, "tasks": {}}
    base, ours = run_tasks(base_lm, tasks, task_manager, **kwargs), run_tasks(orthrus_lm, tasks, task_manager, **kwargs)
    for task in base["results"]:
        metrics = {"hf": _metrics(base["results"][task]), "orthrus": _metrics(ours["results"][task])}
        base_resps = {s["doc_id"]: s["resps"] for s in base["samples"].get(task, [])}
        our_resps = {s["doc_id"]: s["resps"] for s in ours["samples"].get(task, [])}
        differ = sorted(d for d in base_resps if base_resps[d] != our_resps.get(d))
        same = metrics["hf"] == metrics["orthrus"] and not differ and base_resps.keys() == our_resps.keys()
        out["tasks"][task] = {**metrics, "num_samples": len(base_resps), "differing_doc_ids": differ, "identical": same}
        out["identical"] &= same
    out["orthrus_tokens_per_iteration"] = getattr(orthrus_lm, "tokens_per_iteration", None)
    return out


def _metrics(task_results: dict) -> dict:
    return {k: float(v) for k, v in task_results.items() if "," in k and "_stderr" not in k}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orthrus", required=True, help="Orthrus checkpoint: hub name or folder (Qwen3 or merged)")
    parser.add_argument("--diffusion", default=None, help="diffusion-view file/folder when --orthrus is a plain Qwen3")
    parser.add_argument("--base", default=None, help="base model for `hf` (default: --orthrus)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer (default: the checkpoint's)")
    parser.add_argument("--tasks", nargs="+", required=True)
    parser.add_argument("--include-path", default=None, help="folder of extra task yamls (e.g. eval/tasks)")
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
    report = compare(base_lm, orthrus_lm, args.tasks, task_manager, limit=args.limit,
                     num_fewshot=args.num_fewshot, apply_chat_template=args.apply_chat_template)
    report["provenance"] = provenance(args.device)
    for task, r in report["tasks"].items():
        print(f"{task}: hf={r['hf']} orthrus={r['orthrus']} differing samples={len(r['differing_doc_ids'])}/{r['num_samples']}")
    print(f"Orthrus TPF on generation requests: {report['orthrus_tokens_per_iteration']:.2f}")
    print("IDENTICAL" if report["identical"] else "DIFFERENT")
    if args.out:
        atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    return 0 if report["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
