"""Writing results: atomic JSON, and markdown tables of one evaluation.

Results are written to a temporary file and renamed into place (data._io), so a crash or a
concurrent reader never sees half a metrics.json.
"""

import json
import os
from pathlib import Path

from data._io import atomic_write_text
from eval.metrics import sampling_target
from eval.paper_tables import UNIT_NOTE, report_temperature

MIB = 2**20


def write_json(path: str | os.PathLike, obj) -> Path:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")
    return Path(path)


def read_json(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no results file at {path} (write one with python -m scripts.evaluate)")
    return json.loads(path.read_text())


def markdown_table(headers: list[str], rows: list[list]) -> str:
    def cell(v):
        if v is None:
            return "–"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1e-2 and v != 0 else f"{v:.2f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# The columns of one speed row (eval.metrics.summarize) in every table of runs: header -> key.
SPEED_KEYS = {
    "benchmark": "benchmark",
    "K": "block_size",
    "prompts": "num_prompts",
    "TPF": "tpf",
    "TPF pooled": "tpf_token_weighted",
    "accept len (tok/verify)": "acceptance_length",
    "tok/iter (diagnostic)": "tokens_per_iteration",
    "decode tok/s": "decode_tokens_per_second",
    "speedup": "speedup",
    "end-to-end speedup": "speedup_end_to_end",
    "TTFT ms": "ttft_ms",
}
SPEED_COLUMNS = list(SPEED_KEYS)


def speed_cells(row: dict) -> list:
    return [row[key] for key in SPEED_KEYS.values()]


def run_markdown(report: dict) -> str:
    """The human-readable companion of one metrics.json."""
    prov, model = report["provenance"], report["model"]
    git = prov["git"]
    out = [
        f"# {report['name']}\n",
        f"- command: `{prov['command']}`",
        f"- commit: {git['commit']}{' (dirty tree)' if git['dirty'] else ''} (from {git.get('source', 'git')}); "
        f"sources that ran: sha256 {prov.get('source_hash', {}).get('sha256')}",
        f"- device: {prov['device']}; torch {prov['torch']}, transformers {prov['transformers']}; {prov['timestamp']}",
        f"- model: {model['base']} ({model['dtype']}), trained block size K={model['block_size']}, "
        f"max_new_tokens={report['decode']['max_new_tokens']}, sampling={report['decode']['sampling']}",
        *(
            [f"- diffusion view {model['diffusion']}: trained by train.py with `{' '.join(model['trained_with'])}`"]
            if model.get("trained_with")
            else []
        ),
        f"- KV cache: Orthrus adds 0 persistent bytes; transient diffusion-block K/V "
        f"{model['kv_overhead']['diffusion_block_bytes']} B "
        f"({model['kv_overhead']['diffusion_block_bytes'] / MIB:.2f} MiB), "
        f"vs {model['kv_overhead']['kv_bytes_per_token']} B per context token in the base cache\n",
        "## Speed and acceptance\n",
        UNIT_NOTE + "\n",
        f"Decoder: {report['decode']['decode_fn']}. Timing protocol: {report['timing_protocol']}.\n",
        "decode tok/s excludes the prefill and first token (TTFT, its own column) at batch 1; speedup = decode "
        "tok/s over K=1 on the same decoder; end-to-end speedup includes the prefill.\n",
        markdown_table(
            [*SPEED_COLUMNS, "peak MiB"],
            [[*speed_cells(r), r["peak_memory_bytes"] / MIB] for r in report["runs"]],
        ),
    ]
    if report["fidelity"]:
        out += [
            "## Fidelity\n",
            "Sampling test: every sampled token against the base sampler given its prefix (eval/fidelity.py); "
            "it fails (passed = False) with probability alpha for a lossless decoder (false alarms: simulated "
            "rate beside it) and catches broken acceptance rules (tests/test_fidelity_rules.py).\n",
            markdown_table(
                [
                    "benchmark",
                    "dtype",
                    "K",
                    "exact-match tokens",
                    "exact-match sequences",
                    "sampled tokens",
                    "sampling test p",
                    "alpha",
                    "false alarms (sim.)",
                    "passed",
                    "zero-prob tokens",
                    "two-sample p",
                ],
                [
                    [
                        f["benchmark"],
                        f["dtype"],
                        f["block_size"],
                        _get(f, "exact_match", "token_rate"),
                        _get(f, "exact_match", "sequence_rate"),
                        _get(f, "sampling", "num_tokens"),
                        _get(f, "sampling", "pvalue"),
                        _get(f, "sampling", "alpha"),
                        _get(f, "sampling", "false_alarm_rate_simulated"),
                        _get(f, "sampling", "passed"),
                        _get(f, "sampling", "zero_probability_tokens"),
                        _get(f, "two_sample", "bonferroni_pvalue"),
                    ]
                    for f in report["fidelity"]
                ],
            ),
        ]
    if report["context_sweep"]:
        out += [
            "## Throughput vs context length\n",
            markdown_table(
                ["context", "K", "TPF", "decode tok/s", "speedup", "TTFT ms"],
                [
                    [
                        r["context_len"],
                        r["block_size"],
                        r["tpf"],
                        r["decode_tokens_per_second"],
                        r["speedup"],
                        r["ttft_ms"],
                    ]
                    for r in report["context_sweep"]
                ],
            ),
        ]
    return "\n".join(out)


def _get(row: dict, section: str, key: str):
    return (row.get(section) or {}).get(key)


def sampling_target_rows(reports: list[dict]) -> list[dict]:
    """Each sampled run's speedup against eval.metrics.sampling_target, the greedy run of the same dtype
    among `reports` supplying the greedy tokens per iteration and speedup (per prompt set and K > 1)."""
    greedy = {
        (rep["model"]["dtype"], r["benchmark"], r["block_size"]): r
        for rep in reports
        if report_temperature(rep) == 0
        for r in rep["runs"]
    }
    rows = []
    for rep in reports:
        if report_temperature(rep) == 0:
            continue
        for r in rep["runs"]:
            g = greedy.get((rep["model"]["dtype"], r["benchmark"], r["block_size"]))
            if r["block_size"] == 1 or g is None or g["speedup"] is None or r["speedup"] is None:
                continue  # no K = 1 run in one of the two reports: no speedup to compare
            t = sampling_target(r["tokens_per_iteration"], g["tokens_per_iteration"], g["speedup"])
            rows.append(
                {
                    "run": rep["name"],
                    "benchmark": r["benchmark"],
                    "K": r["block_size"],
                    "tok/iter": r["tokens_per_iteration"],
                    "greedy tok/iter": g["tokens_per_iteration"],
                    "greedy speedup": g["speedup"],
                    "target": t,
                    "speedup": r["speedup"],
                    "of target": r["speedup"] / t,
                }
            )
    return rows


def against_reference_rows(reports: list[dict], reference: str, tolerance: float) -> list[dict]:
    """Each run's tokens per iteration (and TPF) over the run named `reference` at the same prompt set and K:
    e.g. views trained with different settings, decoded alike. `within` = |ratio - 1| <= tolerance."""
    ref = [rep for rep in reports if rep["name"] == reference]
    if len(ref) != 1:
        names = [rep["name"] for rep in reports]
        raise ValueError(
            f"reference run {reference!r}: {len(ref)} runs of that name among {names}; give each run its own name "
            "(scripts/summarize_speed.py --names)"
        )
    base = {(r["benchmark"], r["block_size"]): r for r in ref[0]["runs"]}
    rows = []
    for rep in reports:
        for r in rep["runs"]:
            b = base.get((r["benchmark"], r["block_size"]))
            if b is None or r["block_size"] == 1:
                continue
            ratio = r["tokens_per_iteration"] / b["tokens_per_iteration"]
            rows.append(
                {
                    "run": rep["name"],
                    "benchmark": r["benchmark"],
                    "K": r["block_size"],
                    "tok/iter": r["tokens_per_iteration"],
                    f"{reference} tok/iter": b["tokens_per_iteration"],
                    "ratio": f"{ratio:.4f}",
                    "TPF ratio": f"{r['tpf'] / b['tpf']:.4f}",
                    f"within {tolerance:.0%}": abs(ratio - 1) <= tolerance,
                }
            )
    return rows


def speed_summary_markdown(reports: list[dict], against: dict | None = None) -> str:
    """One table over several evaluations (e.g. greedy and sampling, fp32 and bf16): per run, benchmark
    and K the acceptance, decode speedup, TTFT and the sampling test; with `against` ({"reference",
    "tolerance", "rows": `against_reference_rows`}), each run's tokens per iteration against the reference
    run's; then each run's provenance."""
    rows, prov = [], []
    for rep in reports:
        fid = {(f["benchmark"], f["block_size"]): f for f in rep["fidelity"]}
        for r in rep["runs"]:
            f = fid.get((r["benchmark"], r["block_size"]), {})
            rows.append(
                [
                    rep["name"],
                    rep["model"]["dtype"],
                    rep["decode"]["sampling"],
                    *speed_cells(r),
                    _get(f, "exact_match", "sequence_rate"),
                    _get(f, "sampling", "pvalue"),
                    _get(f, "sampling", "passed"),
                ]
            )
        p, git = rep["provenance"], rep["provenance"]["git"]
        prov.append(
            f"- {rep['name']}: `{p['command']}`; commit {git['commit']} (dirty: {git['dirty']}, from "
            f"{git.get('source')}); sources sha256 {p.get('source_hash', {}).get('sha256')}; {p['device']}; "
            f"{p['timestamp']}"
        )
    protocols = sorted({rep["timing_protocol"] for rep in reports})
    target = sampling_target_rows(reports)
    return "\n".join(
        [
            "# Decode speed and fidelity (measured)\n",
            "Timing protocol: " + " / ".join(protocols) + ".\n",
            UNIT_NOTE + "\n",
            "speedup = decode tokens/s (prefill and first token excluded) "
            "over K=1 on the same decoder in the same warm state; TTFT = time to first token; exact match = greedy "
            "output vs transformers' generate (sequence rate); sampling p = the per-token test of sampled tokens "
            "against the base sampler (passed at its alpha).\n",
            markdown_table(["run", "dtype", "sampling", *SPEED_COLUMNS, "exact match", "sampling p", "passed"], rows),
            *(
                [
                    "## Sampling against its target\n",
                    "target = sampled tok/iter / greedy tok/iter x greedy speedup (the same dtype, prompt set and K): "
                    "the speedup sampling reaches if a sampled iteration costs what a greedy one does; of target = "
                    "measured sampled speedup / target.\n",
                    markdown_table(list(target[0]), [list(r.values()) for r in target]),
                ]
                if target
                else []
            ),
            *(
                [
                    f"## Against {against['reference']}\n",
                    f"ratio = tok/iter / {against['reference']}'s at the same prompt set and K (TPF ratio likewise); "
                    f"within = the ratio within {against['tolerance']:.0%} of 1.\n",
                    markdown_table(list(against["rows"][0]), [list(r.values()) for r in against["rows"]]),
                ]
                if against and against["rows"]
                else []
            ),
            "## Provenance\n",
            *prov,
            "",
        ]
    )


# --- scripts/bench_decode.py ----------------------------------------------------------------


def bench_markdown(results: dict, ks: list[int]) -> str:
    """bench.md of scripts/bench_decode.py: per shape the step times, roofline and labelled projections,
    memory, divergence, engine variants and matrix products; then the small model's divergence."""
    K = max(ks)
    git = results.get("provenance", {}).get("git", {})
    lines = [
        f"# Orthrus engine decode benchmark ({results['device']})",
        "",
        f"`{results['command']}`  ",
        f"commit {results['commit']} (dirty: {git.get('dirty')}, from "
        f"{git.get('source')}; sources sha256 {results.get('provenance', {}).get('source_hash', {}).get('sha256')}), "
        f"torch {results['torch']}, "
        f"transformers {results['transformers']}, triton {results['triton']}; measured copy bandwidth "
        f"{results['bandwidth_TBps']:.2f} TB/s (read + write). Random weights, bf16, batch 1; the engine "
        "uses fused q/k/v weights (a copy, size below"
        + ("; the unfused numbers follow each table" if any("unfused_qkv" in r for r in results["shapes"]) else "")
        + "). Times are medians "
        "of CUDA-event timings of graph replays (ms). Roofline = (weights + KV bytes read) / copy bandwidth.",
        "",
    ]
    for res in results["shapes"]:
        lines += [f"## {res['shape']}", ""]
        if not res["engine"]:
            lines += ["Not timed (the run's --budget-s was spent).", ""]
        head = ["ctx", "transformers step", "engine AR step", "AR roofline"]
        for k in ks:
            head += [f"draft K={k}", f"verify K={k}", f"iteration K={k}"]
        paper = {label: f for label, f in results["paper_figures"].items() if f["shape"] == res["shape"]}
        head += [f"iteration roofline K={K}"]
        for f in paper.values():
            head += [
                f"projected tok/s at {f['value']} tokens/iteration (paper¹, K={K})",
                "projected speedup vs engine AR (paper¹)",
            ]
        if res["engine"]:
            lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for ctx, row in res["engine"].items():
            roof = res["roofline_ms"][ctx]
            proj = res["projection"][ctx]
            cells = [
                str(ctx),
                f"{res.get('hf_step_ms', {}).get(ctx, float('nan')):.2f}",
                f"{row['ar_step_ms']:.2f}",
                f"{roof['ar_step']:.2f}",
            ]
            for k in ks:
                cells += [
                    f"{row[f'draft_ms_K{k}']:.2f}",
                    f"{row[f'verify_ms_K{k}']:.2f}",
                    f"{row[f'iteration_ms_K{k}']:.2f}",
                ]
            cells += [f"{roof[f'iteration_K{K}']:.2f}"]
            for label in paper:
                cells += [f"{proj[f'tokens_per_s@{label}']:.0f}", f"{proj[f'speedup_vs_engine_ar@{label}']:.2f}x"]
            lines.append("| " + " | ".join(cells) + " |")
        for f in paper.values():
            lines += [
                "",
                f"¹ Projection, not a measurement: the paper's {f['value']} {f['unit']} ({f['model']}, "
                f"{f['benchmark']}; {f['source']}) over this table's measured K={K} iteration time.",
            ]
        m = res["memory"]
        lines += [
            "",
            f"Memory: diffusion view {m['diffusion_view_weights_GB']:.2f} GB "
            f"({100 * m['diffusion_view_fraction_of_params']:.1f}% of parameters); KV cache "
            f"{m['kv_cache_GB']:.2f} GB for {m['kv_cache_rows']} rows; draft block keys/values "
            f"{m['draft_block_kv_MiB'][K]:.2f} MiB at K={K}; CUDA-graph pools (activations of all steps, reserved) "
            f"{m.get('graph_pools_reserved_MB', float('nan')):.0f} MB; fused q/k/v weight copy "
            f"{m['fused_qkv_copy_GB']:.2f} GB.",
        ]
        if "hf_generate_ms_per_token_ctx256" in res:
            lines.append(
                f"transformers `generate` (greedy, ctx 256): {res['hf_generate_ms_per_token_ctx256']:.2f} ms/token."
            )
        if "unfused_qkv" in res:
            lines.append(
                "Without the fused q/k/v copy, ctx 256: "
                + ", ".join(f"{k} {v:.2f}" for k, v in res["unfused_qkv"].items())
                + "."
            )
        if "backend_cross_check" in res:
            lines.append(
                f"Triton vs PyTorch path on the same inputs (logits: relative error, argmax agreement): "
                f"{res['backend_cross_check']}."
            )
        for key in (k for k in res if k.startswith("divergence_bf16")):
            d = res[key]
            lines.append(
                f"bf16 divergence ({key.removeprefix('divergence_bf16').strip('_') or 'engine'}) over "
                f"{d['prompts']} random prompts x {d['new_tokens']} tokens: "
                + "; ".join(
                    f"{k}: {100 * d[k]['fraction_diverged']:.0f}% of prompts, first at {d[k]['first_divergence']}"
                    for k in d
                    if isinstance(d[k], dict) and "fraction_diverged" in d[k]
                )
                + f"; top-1/top-2 logit gap {d['top1_top2_logit_gap']}; measured TPF {d['measured_tpf_mean']:.2f}."
            )
        lines += variants_table(res, ks) + gemm_table(res)
        lines.append("")
    small = results.get("small_model_divergence")
    if small:
        lines += [
            f"## Greedy divergence on the trained small model ({small['model']})",
            "",
            f"{small['prompts']} prompts of {small['prompt_tokens']} tokens from held-out modules "
            f"{', '.join(small['prompt_source'])}, {small['new_tokens']} new tokens each; trained diffusion view: "
            f"{small['trained_diffusion_view']}. First divergence = index of the first differing new token.",
            "",
            "| dtype | comparison | prompts | diverged | first divergence at |",
            "|---|---|---|---|---|",
        ]
        for dtype in ("float32", "bfloat16"):
            d = small.get(dtype, {})
            for key in sorted(k for k in d if isinstance(d[k], dict) and "fraction_diverged" in d[k]):
                lines.append(
                    f"| {dtype} | {key} | {d[key]['prompts']} | {100 * d[key]['fraction_diverged']:.0f}% "
                    f"| {sorted(d[key]['first_divergence'])} |"
                )
        for dtype in ("float32", "bfloat16"):
            if dtype in small:
                lines.append(
                    f"\n{dtype}: tokens per iteration {small[dtype]['tpf_mean']}; top-1/top-2 logit gap along the AR "
                    f"output {small[dtype]['top1_top2_logit_gap']}."
                )
        lines.append("")
    return "\n".join(lines)


def variants_table(res, ks) -> list[str]:
    """Engine variants side by side (ms): AR step, and draft / verify / iteration at each K."""
    variants = res.get("engine_variants", {})
    if len(variants) < 2:
        return []
    head = ["variant", "ctx", "AR step"] + [f"{s} K={k}" for k in ks for s in ("draft", "verify", "iteration")]
    pdl = res.get("variant_pdl", {})
    lines = [
        "",
        "Engine variants (auto: the default engine; invariant: batch_invariant=True; torch: cuBLAS only; "
        "triton: skinny Triton products only; nopdl: the default engine without Programmatic Dependent Launch; "
        f"PDL on in: {', '.join(v for v in variants if pdl.get(v)) or 'none'}):",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for variant, rows in variants.items():
        for ctx, row in rows.items():
            lines.append(
                "| "
                + " | ".join(
                    [variant, str(ctx), f"{row['ar_step_ms']:.2f}"]
                    + [f"{row[f'{s}_ms_K{k}']:.2f}" for k in ks for s in ("draft", "verify", "iteration")]
                )
                + " |"
            )
    return lines


def gemm_table(res) -> list[str]:
    """The matrix-product probe: time and weight bandwidth per implementation."""
    if not res.get("gemm_probe"):
        return []
    lines = [
        "",
        "Matrix products at decode shapes (kernel time in CUDA graphs, weights read from device memory):",
        "",
        "| matrix | N x K | rows | impl | us | weight TB/s | config |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in res["gemm_probe"]:
        lines.append(
            f"| {r['matrix']} | {r['out_features']} x {r['in_features']} | {r['rows']} | {r['impl']} | "
            f"{r['us']:.1f} | {r['weight_TBps']:.2f} | {r['config']} |"
        )
    return lines
