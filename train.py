"""Train the Orthrus diffusion view on a frozen Qwen3 (config: conf/, commands: docs/training.md).

    python train.py                                   tiny CPU run (the embedded default)
    python train.py +exp=qwen3_8b                     the paper's 8B run (launch per GPU)
    torchrun --nproc_per_node=8 train.py +exp=qwen3_8b
    deepspeed --num_gpus=8 train.py +exp=qwen3_8b
    python train.py resume=runs/2026-11-22/12-00-00-4242   continue a run from its last checkpoint
    python train.py +exp=qwen3_8b --cfg job           print the composed config, run nothing

Two command-line conveniences are handled here, before Hydra parses argv:
  * `resume=<run>` re-composes the run's own saved config (<run>/.hydra/config.yaml) and keeps
    writing into <run>; further key=value overrides apply on top (e.g. train.steps=2000), config-group
    switches (model=tiny) are refused;
  * the `--local_rank=N` flag the deepspeed launcher appends is dropped (LOCAL_RANK is also in
    the environment), and ranks other than 0 write no Hydra output folder or log file.
"""

import os
import sys
import tempfile
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import train.config  # noqa: F401  (registers ${floor_div:...} and ${pid:})
from train.run_dir import RunFolderBusy, check_run_dir_free

CONF = Path(__file__).resolve().parent / "conf"
GROUPS = {p.name for p in CONF.iterdir() if p.is_dir()}


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
        switches = [a for a in rest if a.split("=", 1)[0].lstrip("+~").split("@")[0] in GROUPS]
        if switches:
            raise SystemExit(
                f"resume={run} continues that run's saved config, so config-group switches {switches} "
                "cannot apply: override single keys instead (e.g. model.block_size=16, "
                "data.packed_dataset.seq_len=512), or start a new run with the new groups"
            )
        args = [
            "--config-path",
            str(saved.parent),
            "--config-name",
            "config",
            f"hydra.run.dir={run}",
            f"resume={run}",
            *rest,
        ]
    if rank > 0:  # rank 0's folder is used (broadcast); a per-rank scratch folder keeps runs/ clean
        args += [
            "hydra.output_subdir=null",
            "hydra/job_logging=disabled",
            "hydra/hydra_logging=disabled",
            f"hydra.run.dir={Path(tempfile.gettempdir()) / f'orthrus-rank{rank}-{os.getpid()}'}",
        ]
    return args


def check_explicit_run_dir(args: list[str]) -> None:
    """A folder named on the command line (hydra.run.dir=, or resume=) must not be held by a live run:
    checked before Hydra writes its .hydra/ files into it (train/run_dir.py holds it for the run)."""
    named = [a.split("=", 1)[1] for a in args if a.startswith("hydra.run.dir=")]
    if named:
        try:
            check_run_dir_free(Path(named[-1]))
        except RunFolderBusy as err:
            raise SystemExit(str(err)) from None


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from train.loop import run

    run(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    rank = int(os.environ.get("RANK", "0"))
    sys.argv = [sys.argv[0], *launcher_argv(sys.argv[1:], rank)]
    if rank == 0:
        check_explicit_run_dir(sys.argv[1:])
    main()
