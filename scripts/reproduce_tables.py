"""Evaluate a list of checkpoints, then write the paper-style tables and figures.

    python scripts/reproduce_tables.py                         # the released 1.7B/4B/8B models (GPU, hub)
    python scripts/reproduce_tables.py reproduce.run=[] \\
        'reproduce.metrics=[results/a/metrics.json,results/b/metrics.json]'   # tables from existing runs only
    python scripts/reproduce_tables.py '+reproduce.checkpoints.mine={label: qwen3_8b, model: {base: ckpt/}}' \\
        reproduce.run=[mine,orthrus_qwen3_8b]

The checkpoints named in `reproduce.run` are looked up in `reproduce.checkpoints` (name ->
overrides of the eval config, conf/eval.yaml); one whose ${out_dir}/<name>/metrics.json exists
is not re-run unless reproduce.skip_existing=false. Writes to reproduce.out_dir: tables.md, one CSV per table,
paper_sources.csv, and PNG figures (TPF per benchmark and model, acceptance-length
histograms, throughput vs context length when a run measured it).
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hydra
from omegaconf import DictConfig, OmegaConf

from data._io import atomic_write_text
from eval import figures
from eval.paper_tables import PaperNumbers, fidelity_table, memory_table, sources_markdown, speed_table, to_csv
from eval.report import markdown_table, read_json
from scripts.evaluate import run as evaluate


def evaluate_checkpoints(cfg: DictConfig) -> list[Path]:
    """metrics.json of every configured checkpoint, evaluating those not already done."""
    paths = []
    for name in cfg.reproduce.run:
        if name not in cfg.reproduce.checkpoints:
            raise KeyError(f"reproduce.run names {name!r}, which is not in reproduce.checkpoints "
                           f"(known: {sorted(cfg.reproduce.checkpoints)})")
        run_cfg = OmegaConf.merge(cfg, cfg.reproduce.checkpoints[name], {"name": name})
        path = Path(run_cfg.out_dir) / name / "metrics.json"
        if not (cfg.reproduce.skip_existing and path.is_file()):
            path = evaluate(run_cfg)
        paths.append(path)
    return paths


def write_tables(metrics_paths: list[Path], paper_numbers: Path, out_dir: Path) -> list[Path]:
    """Tables (markdown + CSV) and figures from metrics files; returns the files written."""
    if not metrics_paths:
        raise ValueError("no metrics files: set reproduce.run and/or reproduce.metrics")
    reports = [read_json(p) for p in metrics_paths]
    paper = PaperNumbers(read_json(paper_numbers))
    sources: list[dict] = []
    tables = {
        "speed": ("TPF, acceptance and speedup (largest K per model; speedup = wall-clock vs K=1 on the same decode function)",
                  speed_table(reports, paper, sources)),
        "fidelity": ("Fidelity (greedy exact match vs transformers.generate; sampling: per-token test vs the base "
                     "sampler, and the two-sample test)",
                     fidelity_table(reports)),
        "memory": ("KV-cache overhead and peak memory", memory_table(reports, paper, sources)),
    }
    written = []
    md = ["# Orthrus: reproduced tables\n", "Runs: " + ", ".join(
        f"{r['name']} ({r['provenance']['git']['commit'] or 'no git'}{', dirty' if r['provenance']['git']['dirty'] else ''};"
        f" {r['provenance']['device']})" for r in reports) + "\n"]
    for key, (title, (headers, rows)) in tables.items():
        md += [f"## {title}\n", markdown_table(headers, rows)]
        path = out_dir / f"{key}.csv"
        atomic_write_text(path, to_csv(headers, rows))
        written.append(path)
    if sources:
        md.append(sources_markdown(sources))
        rows = [[i, n["metric"], n["method"], n["model"], n["benchmark"], n["value"], n["qualifier"],
                 n["source"]["original"], f"{n['source']['file']}, {n['source']['section']}"] for i, n in enumerate(sources, 1)]
        path = out_dir / "paper_sources.csv"
        atomic_write_text(path, to_csv(["ref", "metric", "method", "model", "benchmark", "value", "qualifier", "source", "via"], rows))
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
    paths = evaluate_checkpoints(cfg) + [Path(p) for p in cfg.reproduce.metrics]
    for path in write_tables(paths, Path(cfg.reproduce.paper_numbers), Path(cfg.reproduce.out_dir)):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
