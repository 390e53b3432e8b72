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
        f"- commit: {git['commit']}{' (dirty tree)' if git['dirty'] else ''}",
        f"- device: {prov['device']}; torch {prov['torch']}, transformers {prov['transformers']}; {prov['timestamp']}",
        f"- model: {model['base']} ({model['dtype']}), K={model['block_size']}, "
        f"max_new_tokens={report['decode']['max_new_tokens']}, sampling={report['decode']['sampling']}",
        f"- KV cache: Orthrus adds 0 persistent bytes; transient diffusion-block K/V "
        f"{model['kv_overhead']['diffusion_block_bytes']} B ({model['kv_overhead']['diffusion_block_bytes'] / MIB:.2f} MiB), "
        f"vs {model['kv_overhead']['kv_bytes_per_token']} B per context token in the base cache\n",
        "## Speed and acceptance\n",
        UNIT_NOTE + "\n",
        markdown_table(
            ["benchmark", "K", "prompts", "TPF", "TPF pooled", "accept len (tok/verify)", "tok/iter (diagnostic)",
             "tok/s", "speedup", "TTFT ms", "peak MiB"],
            [[r["benchmark"], r["block_size"], r["num_prompts"], r["tpf"], r["tpf_token_weighted"],
              r["acceptance_length"], r["tokens_per_iteration"], r["tokens_per_second"], r["speedup"],
              1000 * r["mean_ttft_seconds"], r["peak_memory_bytes"] / MIB] for r in report["runs"]],
        ),
    ]
    if report["fidelity"]:
        out += ["## Fidelity\n", markdown_table(
            ["benchmark", "dtype", "K", "exact-match tokens", "exact-match sequences", "KL mean", "KL max",
             "KL = inf tokens", "TV max", "two-sample p"],
            [[f["benchmark"], f["dtype"], f["block_size"], _get(f, "exact_match", "token_rate"),
              _get(f, "exact_match", "sequence_rate"), _get(f, "sampling_kl", "kl_mean"), _get(f, "sampling_kl", "kl_max"),
              _get(f, "sampling_kl", "kl_infinite_tokens"), _get(f, "sampling_kl", "tv_max"),
              _get(f, "two_sample", "bonferroni_pvalue")] for f in report["fidelity"]],
        )]
    if report["context_sweep"]:
        out += ["## Throughput vs context length\n", markdown_table(
            ["context", "K", "TPF", "tok/s", "speedup"],
            [[r["context_len"], r["block_size"], r["tpf"], r["tokens_per_second"], r["speedup"]]
             for r in report["context_sweep"]],
        )]
    return "\n".join(out)


def _get(row: dict, section: str, key: str):
    return (row.get(section) or {}).get(key)
