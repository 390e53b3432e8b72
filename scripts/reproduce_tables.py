"""Evaluate a list of checkpoints, then write the paper-style tables and figures.

    python -m scripts.reproduce_tables                         # the released 1.7B/4B/8B models (GPU, hub)
    python -m scripts.reproduce_tables reproduce.run=[] \\
        'reproduce.metrics=[results/a/metrics.json,results/b/metrics.json]'   # tables from existing runs only
    python -m scripts.reproduce_tables '+reproduce.checkpoints.mine={label: qwen3_8b, model: {base: ckpt/}}' \\
        reproduce.run=[mine,orthrus_qwen3_8b]

The checkpoints named in `reproduce.run` are looked up in `reproduce.checkpoints` (name ->
overrides of the eval config, conf/eval.yaml); one whose ${out_dir}/<name>/metrics.json exists
is not re-run unless reproduce.skip_existing=false. Writes to reproduce.out_dir: tables.md, one CSV per table,
table1.csv (the paper's Table 1 layout), paper_sources.csv, and PNG figures (TPF per benchmark and model,
acceptance-length histograms, throughput vs context length when a run measured it).
"""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from eval.evaluate import evaluate_checkpoints, write_tables


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    paths = evaluate_checkpoints(cfg) + [Path(p) for p in cfg.reproduce.metrics]
    for path in write_tables(paths, Path(cfg.reproduce.paper_numbers), Path(cfg.reproduce.out_dir)):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
