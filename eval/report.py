"""Writing results: atomic JSON, and markdown tables of one evaluation.

Results are written to a temporary file and renamed into place (data._io), so a crash or a
concurrent reader never sees half a metrics.json.
"""

import json
import os
from pathlib import Path

from data._io import atomic_write_text
from eval.paper_tables import UNIT_NOTE

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
        f"- model: {model['base']} ({model['dtype']}), K={model['block_size']}, "
        f"max_new_tokens={report['decode']['max_new_tokens']}, sampling={report['decode']['sampling']}",
        f"- KV cache: Orthrus adds 0 persistent bytes; transient diffusion-block K/V "
        f"{model['kv_overhead']['diffusion_block_bytes']} B ({model['kv_overhead']['diffusion_block_bytes'] / MIB:.2f} MiB), "
        f"vs {model['kv_overhead']['kv_bytes_per_token']} B per context token in the base cache\n",
        "## Speed and acceptance\n",
        UNIT_NOTE + "\n",
        f"Decoder: {report['decode']['decode_fn']}. Timing protocol: {report['timing_protocol']}.\n",
        "decode tok/s excludes the prefill and first token (TTFT, its own column); speedup = decode tok/s over "
        "K=1 on the same decoder; end-to-end speedup includes the prefill.\n",
        markdown_table(
            ["benchmark", "K", "prompts", "TPF", "TPF pooled", "accept len (tok/verify)", "tok/iter (diagnostic)",
             "decode tok/s", "speedup", "end-to-end speedup", "TTFT ms", "peak MiB"],
            [[r["benchmark"], r["block_size"], r["num_prompts"], r["tpf"], r["tpf_token_weighted"],
              r["acceptance_length"], r["tokens_per_iteration"], r["decode_tokens_per_second"], r["speedup"],
              r["speedup_end_to_end"], r["ttft_ms"], r["peak_memory_bytes"] / MIB] for r in report["runs"]],
        ),
    ]
    if report["fidelity"]:
        out += ["## Fidelity\n",
                "Sampling test: every sampled token against the base sampler given its prefix (eval/fidelity.py); "
                "it fails (passed = False) with probability alpha for a lossless decoder (false alarms: simulated "
                "rate beside it) and catches broken acceptance rules (tests/test_fidelity_rules.py).\n",
                markdown_table(
            ["benchmark", "dtype", "K", "exact-match tokens", "exact-match sequences", "sampled tokens",
             "sampling test p", "alpha", "false alarms (sim.)", "passed", "zero-prob tokens", "two-sample p"],
            [[f["benchmark"], f["dtype"], f["block_size"], _get(f, "exact_match", "token_rate"),
              _get(f, "exact_match", "sequence_rate"), _get(f, "sampling", "num_tokens"), _get(f, "sampling", "pvalue"),
              _get(f, "sampling", "alpha"), _get(f, "sampling", "false_alarm_rate_simulated"),
              _get(f, "sampling", "passed"), _get(f, "sampling", "zero_probability_tokens"),
              _get(f, "two_sample", "bonferroni_pvalue")] for f in report["fidelity"]],
        )]
    if report["context_sweep"]:
        out += ["## Throughput vs context length\n", markdown_table(
            ["context", "K", "TPF", "decode tok/s", "speedup", "TTFT ms"],
            [[r["context_len"], r["block_size"], r["tpf"], r["decode_tokens_per_second"], r["speedup"],
              r["ttft_ms"]]
             for r in report["context_sweep"]],
        )]
    return "\n".join(out)


def _get(row: dict, section: str, key: str):
    return (row.get(section) or {}).get(key)


def speed_summary_markdown(reports: list[dict]) -> str:
    """One table over several evaluations (e.g. greedy and sampling, fp32 and bf16): per run, benchmark
    and K the acceptance, decode speedup, TTFT and the sampling test; then each run's provenance."""
    rows, prov = [], []
    for rep in reports:
        fid = {(f["benchmark"], f["block_size"]): f for f in rep["fidelity"]}
        for r in rep["runs"]:
            f = fid.get((r["benchmark"], r["block_size"]), {})
            rows.append([rep["name"], rep["model"]["dtype"], rep["decode"]["sampling"], r["benchmark"], r["block_size"],
                         r["num_prompts"], r["tokens_per_iteration"], r["decode_tokens_per_second"], r["speedup"],
                         r["speedup_end_to_end"], r["ttft_ms"], _get(f, "exact_match", "sequence_rate"),
                         _get(f, "sampling", "pvalue"), _get(f, "sampling", "passed")])
        p, git = rep["provenance"], rep["provenance"]["git"]
        prov.append(f"- {rep['name']}: `{p['command']}`; commit {git['commit']} (dirty: {git['dirty']}, from "
                    f"{git.get('source')}); sources sha256 {p.get('source_hash', {}).get('sha256')}; {p['device']}; "
                    f"{p['timestamp']}")
    protocols = sorted({rep["timing_protocol"] for rep in reports})
    return "\n".join([
        "# Decode speed and fidelity (measured)\n",
        "Timing protocol: " + " / ".join(protocols) + ".\n",
        "TPF = tokens per draft+verify iteration; speedup = decode tokens/s (prefill and first token excluded) "
        "over K=1 on the same decoder in the same warm state; TTFT = time to first token; exact match = greedy "
        "output vs transformers' generate (sequence rate); sampling p = the per-token test of sampled tokens "
        "against the base sampler (passed at its alpha).\n",
        markdown_table(["run", "dtype", "sampling", "benchmark", "K", "prompts", "TPF", "decode tok/s", "speedup",
                        "end-to-end speedup", "TTFT ms", "exact match", "sampling p", "passed"], rows),
        "## Provenance\n", *prov, "",
    ])
