"""Evaluate a list of checkpoints, then write the paper-style tables and figures.

    python scripts/reproduce_tables.py                         # the released 1.7B/4B/8B models (GPU, hub)
    python scripts/reproduce_tables.py reproduce.run=[] \\
        'reproduce.metrics=[results/a/metrics.json,results/b/metrics.json]'   # tables from existing runs only
    python scripts/reproduce_tables.py '+reproduce.checkpoints.mine={label: qwen3_8b, model: {base: ckpt/}}' \\
        reproduce.run=[mine,orthrus_qwen3_8b]

The checkpoints named in `reproduce.run` are looked up in `reproduce.checkpoints` (name ->
overrides of the eval config, conf/eval.yaml); one whose ${out_dir}/<name>/metrics.json exists
is not re-run unless reproduce.skip_existing=false. Writes to reproduce.out_dir: tables.md, one CSV per table,
table1.csv (the paper's Table 1 layout), paper_sources.csv, and PNG figures (TPF per benchmark and model,
acceptance-length histograms, throughput vs context length when a run measured it).
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hydra
from omegaconf import DictConfig, OmegaConf

from data._io import atomic_write_text
from eval import figures
from eval.paper_tables import (UNIT_NOTE, PaperNumbers, fidelity_table, memory_table, sources_markdown, speed_table,
                               table1, to_csv)
from eval.report import markdown_table, read_json, run_markdown, write_json
from eval.runner import DecodeFn
from models.generate import generate
from scripts.evaluate import run as evaluate
from scripts.run_small_pipeline import EngineDecode


def evaluate_checkpoints(cfg: DictConfig, decode_fn: DecodeFn = generate) -> list[Path]:
    """metrics.json of every configured checkpoint, evaluating those not already done."""
    paths = []
    for name in cfg.reproduce.run:
        if name not in cfg.reproduce.checkpoints:
            raise KeyError(f"reproduce.run names {name!r}, which is not in reproduce.checkpoints "
                           f"(known: {sorted(cfg.reproduce.checkpoints)})")
        run_cfg = OmegaConf.merge(cfg, cfg.reproduce.checkpoints[name], {"name": name})
        path = Path(run_cfg.out_dir) / name / "metrics.json"
        if not (cfg.reproduce.skip_existing and path.is_file()):
            path = (evaluate_suite if cfg.reproduce.suite_lengths else evaluate)(run_cfg, decode_fn=decode_fn)
        paths.append(path)
    return paths


def evaluate_suite(cfg: DictConfig, decode_fn: DecodeFn = generate) -> Path:
    """One evaluate call per benchmark at its suite max_new_tokens (conf/eval/suite.yaml), merged into
    ${out_dir}/<name>/metrics.json (each benchmark's own file stays under <name>/<benchmark>/)."""
    merged = None
    for bench in cfg.benchmarks:
        length = cfg.suite[bench].max_new_tokens if bench in cfg.suite else cfg.decode.max_new_tokens
        part = read_json(evaluate(OmegaConf.merge(cfg, {"name": f"{cfg.name}/{bench}", "benchmarks": [bench],
                                                         "decode": {"max_new_tokens": length}}), decode_fn=decode_fn))
        if merged is None:
            merged = {**part, "name": cfg.name, "runs": [], "fidelity": [], "context_sweep": []}
            merged["config"]["benchmarks"] = list(cfg.benchmarks)
        for key in ("runs", "fidelity", "context_sweep"):
            merged[key] += part[key]
        merged.setdefault("max_new_tokens_by_benchmark", {})[bench] = length
    out = Path(cfg.out_dir) / cfg.name
    atomic_write_text(out / "metrics.md", run_markdown(merged))
    return write_json(out / "metrics.json", merged)


def write_tables(metrics_paths: list[Path], paper_numbers: Path, out_dir: Path) -> list[Path]:
    """Tables (markdown + CSV) and figures from metrics files; returns the files written."""
    if not metrics_paths:
        raise ValueError("no metrics files: set reproduce.run and/or reproduce.metrics")
    reports = [read_json(p) for p in metrics_paths]
    paper = PaperNumbers.load(paper_numbers)
    sources: list[dict] = []
    tables = {
        "table1": ("Table 1 layout: TPF (tokens / all forward passes), speedup and accuracy vs the base (largest K per model)",
                   table1(reports, paper, sources)),
        "speed": ("TPF, acceptance length and speedup in their units (largest K per model)",
                  speed_table(reports, paper, sources)),
        "fidelity": ("Fidelity (greedy exact match vs transformers.generate; sampling KL and two-sample test)",
                     fidelity_table(reports)),
        "memory": ("KV-cache overhead and peak memory", memory_table(reports, paper, sources)),
    }
    written = []
    md = ["# Orthrus: reproduced tables\n", "Runs: " + ", ".join(
        f"{r['name']} ({r['provenance']['git']['commit'] or 'no git'}{', dirty' if r['provenance']['git']['dirty'] else ''};"
        f" {r['provenance']['device']})" for r in reports) + "\n"]
    for key, (title, (headers, rows)) in tables.items():
        units = [UNIT_NOTE + "\n"] if key in ("table1", "speed") else []
        md += [f"## {title}\n", *units, markdown_table(headers, rows)]
        path = out_dir / f"{key}.csv"
        atomic_write_text(path, to_csv(headers, rows))
        written.append(path)
    if sources:
        md.append(sources_markdown(paper, sources))
        rows = [[i, n["metric"], n["method"], n["model"], n["benchmark"], n["temperature"], n["value"], n["unit"],
                 n["qualifier"], paper.source_text(n)] for i, n in enumerate(sources, 1)]
        path = out_dir / "paper_sources.csv"
        headers = ["ref", "metric", "method", "model", "benchmark", "T", "value", "unit", "qualifier", "source"]
        atomic_write_text(path, to_csv(headers, rows))
        written.append(path)
    for fig in (figures.tpf_by_benchmark(reports, paper, out_dir / "tpf_by_benchmark.png"),
                figures.acceptance_histograms(reports, out_dir / "acceptance_histograms.png"),
                figures.throughput_vs_context(reports, out_dir / "throughput_vs_context.png")):
        if fig is not None:
            md.append(f"![{fig.stem}]({fig.name})\n")
            written.append(fig)
    atomic_write_text(out_dir / "tables.md", "\n".join(md))
    return [out_dir / "tables.md", *written]


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    decode_fn = EngineDecode(cfg.reproduce.engine_max_seq_len) if cfg.reproduce.engine else generate
    paths = evaluate_checkpoints(cfg, decode_fn) + [Path(p) for p in cfg.reproduce.metrics]
    for path in write_tables(paths, Path(cfg.reproduce.paper_numbers), Path(cfg.reproduce.out_dir)):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
