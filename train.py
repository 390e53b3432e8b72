"""Train the Orthrus diffusion view on a frozen Qwen3 (config: conf/, commands: docs/training.md).

    python train.py                                   tiny CPU run (the embedded default)
    python train.py +exp=qwen3_8b                     the paper's 8B run (launch per GPU)
    torchrun --nproc_per_node=8 train.py +exp=qwen3_8b
    deepspeed --num_gpus=8 train.py +exp=qwen3_8b
    python train.py resume=runs/2026-11-22/12-00-00   continue a run from its last checkpoint
    python train.py +exp=qwen3_8b --cfg job           print the composed config, run nothing

Two command-line conveniences are handled here, before Hydra parses argv:
  * `resume=<run>` re-composes the run's own saved config (<run>/.hydra/config.yaml) and keeps
    writing into <run>; further key=value overrides apply on top (e.g. train.steps=2000);
  * the `--local_rank=N` flag the deepspeed launcher appends is dropped (LOCAL_RANK is also in
    the environment), and ranks other than 0 write no Hydra output folder or log file.
"""

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import train.config  # noqa: F401  (registers ${floor_div:...})


def launcher_argv(argv: list[str], rank: int) -> list[str]:
    """Rewrite argv for resume / deepspeed / non-zero ranks (see the module docstring)."""
    args = [a for a in argv if not a.startswith("--local_rank")]
    resume = [a for a in args if a.startswith("resume=")]
    if resume:
        run = Path(resume[-1].split("=", 1)[1]).expanduser().resolve()
        saved = run / ".hydra" / "config.yaml"
        if not saved.is_file():
            raise SystemExit(f"resume={run}: no {saved}; pass the folder of a run started by train.py")
        rest = [a for a in args if not a.startswith("resume=")]
        args = ["--config-path", str(saved.parent), "--config-name", "config", f"hydra.run.dir={run}", f"resume={run}", *rest]
    if rank > 0:
        args += ["hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]
    return args


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from train.loop import run

    run(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    sys.argv = [sys.argv[0], *launcher_argv(sys.argv[1:], int(os.environ.get("RANK", "0")))]
    main()
