"""Decode-time ablation: single-step vs multi-step denoising of the draft (orthrus-small, CPU).

The paper (arXiv 2605.12825) reports single-step denoising at TPF 6.35 against 3.53 for multi-step,
in TPF units (tokens / all forward passes: the multi-step arm pays for its extra draft passes). Here the
shipped small model drafts each block in S diffusion
passes (`generate(..., denoise_steps=S)`, confidence-ordered unmasking) and is decoded greedily;
greedy output is the base model's whatever S, so exact match vs S=1 must be 1.0.

    python -m scripts.ablate_denoise_steps --n 12 --steps 1 2 4
"""

import argparse
import json
import time

import matplotlib
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from data._io import atomic_write_text
from data.tokenizer import load_tokenizer
from eval.figures import save_figure
from eval.prompts import PromptSpec, encode_prompt, load_prompts
from eval.provenance import REPO_ROOT, provenance
from eval.report import markdown_table, write_json
from models.checkpoint import load_orthrus
from models.generate import generate


def paper_tpf() -> dict[str, float]:
    numbers = json.loads((REPO_ROOT / "eval/paper_numbers.json").read_text())["numbers"]
    return {
        n["method"].rsplit("_", 2)[-2]: n["value"]
        for n in numbers
        if n["method"] in ("orthrus_ablation_single_step", "orthrus_ablation_multi_step")
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifacts", default="artifacts/orthrus-small")
    ap.add_argument("--n", type=int, default=12, help="prompts from each set (HumanEval, held-out)")
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="results/small_denoise_steps_cpu_2026-11-23")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    art, out_dir = REPO_ROOT / args.artifacts, REPO_ROOT / args.out
    steps = sorted(set(args.steps) | {1})  # S=1 is the reference for exact match

    model = load_orthrus(str(art / "base"), str(art / "diffusion"), dtype=torch.float32, device="cpu").eval()
    tok = load_tokenizer(str(art / "tokenizer"))
    sets = {
        "humaneval": PromptSpec(source="humaneval"),
        "heldout": PromptSpec(source="jsonl", path=str(art / "heldout_prompts.jsonl")),
    }
    prompts = [
        (name, encode_prompt(tok, p.text, chat_template=False))
        for name, spec in sets.items()
        for p in load_prompts(spec, args.n)
    ]

    runs = {}
    for S in steps:
        rows, t0 = [], time.perf_counter()
        for name, ids in prompts:
            t = time.perf_counter()
            r = generate(model, torch.tensor([ids]), args.max_new_tokens, block_size=args.block_size, denoise_steps=S)
            rows.append(
                {
                    "set": name,
                    "tokens": r.new_tokens.tolist(),
                    "emitted": sum(r.emitted),
                    "iterations": len(r.emitted),
                    "forwards": r.ar_forwards + r.diffusion_forwards,
                    "new": r.num_new_tokens,
                    "seconds": time.perf_counter() - t,
                }
            )
        runs[S] = (rows, time.perf_counter() - t0)
        print(f"S={S}: {runs[S][1]:.1f} s", flush=True)

    ref = [r["tokens"] for r in runs[1][0]]
    results = []
    for S, (rows, wall) in runs.items():
        for subset in ("all", *sets):
            sel = [r for r in rows if subset == "all" or r["set"] == subset]
            match = [r["tokens"] == ref[i] for i, r in enumerate(rows) if subset == "all" or r["set"] == subset]
            results.append(
                {
                    "denoise_steps": S,
                    "prompts": subset,
                    "n": len(sel),
                    "tokens_per_iteration": sum(r["emitted"] for r in sel) / sum(r["iterations"] for r in sel),
                    "tokens_per_forward": sum(r["new"] for r in sel) / sum(r["forwards"] for r in sel),
                    "exact_match_vs_s1": sum(match) / len(match),
                    "wall_s": sum(r["seconds"] for r in sel),
                }
            )
    assert all(r["exact_match_vs_s1"] == 1.0 for r in results), "greedy decoding must not depend on S"

    paper = paper_tpf()
    report = {
        "about": "Decode-time denoising steps S (drafting each block in S diffusion passes), orthrus-small, greedy.",
        "provenance": provenance("cpu"),
        "setup": {
            "block_size": args.block_size,
            "max_new_tokens": args.max_new_tokens,
            "n_per_set": args.n,
            "dtype": "float32",
            "prompt_sets": list(sets),
            "chat_template": False,
            "decode": "models.generate (reference loop)",
        },
        "paper_tpf": {**paper, "source": "eval/paper_numbers.json (arXiv 2605.12825 ablation)"},
        "results": results,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "results.json", report)

    prov = report["provenance"]
    table = markdown_table(
        [
            "S (passes/draft)",
            "prompts",
            "n",
            "tok/iter (diagnostic)",
            "TPF pooled (tok / all passes)",
            "exact match vs S=1",
            "wall s",
        ],
        [
            [
                r["denoise_steps"],
                r["prompts"],
                r["n"],
                r["tokens_per_iteration"],
                r["tokens_per_forward"],
                r["exact_match_vs_s1"],
                r["wall_s"],
            ]
            for r in results
        ],
    )
    md = (
        f"# Decode-time denoising steps (orthrus-small, CPU)\n\n"
        f"Greedy, fp32, K={args.block_size}, max_new_tokens={args.max_new_tokens}, first {args.n} HumanEval + "
        f"first {args.n} held-out prompts (raw, no chat template), reference loop `models/generate.py`. "
        f"S=1 is the shipped single-step drafter; S>1 drafts each block in S diffusion passes, fixing the most "
        f"confident masked slots after each pass. The diffusion view was trained for one step only.\n\n{table}\n"
        f"TPF pooled = total tokens / all forward passes (prefill, verify and every diffusion pass): the paper's "
        f"unit, pooled over prompts; tok/iter = tokens per draft+verify iteration, a diagnostic only.\n\n"
        f"Paper (arXiv 2605.12825 ablation, `eval/paper_numbers.json`): single-step {paper['single']} vs "
        f"multi-step {paper['multi']} TPF (its model and setup, not this one's).\n\n"
        f"Command: `{prov['command']}`; commit `{prov['git']['commit']}` (dirty: {prov['git']['dirty']}); "
        f"{prov['device']}; torch {prov['torch']}.\n\n![TPF by S](tpf_by_steps.png)\n"
    )
    atomic_write_text(out_dir / "README.md", md)

    allr = [r for r in results if r["prompts"] == "all"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = range(len(allr))
    ax.bar(
        [i - 0.2 for i in x], [r["tokens_per_iteration"] for r in allr], 0.4, label="tokens / iteration (diagnostic)"
    )
    ax.bar([i + 0.2 for i in x], [r["tokens_per_forward"] for r in allr], 0.4, label="TPF pooled (tokens / all passes)")
    ax.set_xticks(list(x), [f"S={r['denoise_steps']}" for r in allr])
    ax.axhline(paper["single"], ls="--", c="g", lw=1, label=f"paper single-step TPF {paper['single']}")
    ax.axhline(paper["multi"], ls=":", c="r", lw=1, label=f"paper multi-step TPF {paper['multi']}")
    ax.set_ylabel("tokens")
    ax.set_title(f"orthrus-small, greedy, K={args.block_size}, n={2 * args.n} (CPU)")
    ax.legend(fontsize=7)
    save_figure(fig, out_dir / "tpf_by_steps.png")
    print(table)


if __name__ == "__main__":
    main()
