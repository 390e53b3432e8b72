"""Training checkpoints: everything a resumed run needs to continue the same loss curve.

    <run>/checkpoints/step_00000100/
        diffusion_view/        the trained weights (models.checkpoint.save_diffusion_view)
        trainer_state.pt       step, data position (PackedDataset.state_dict), wandb run id
        optimizer.pt           AdamW + LR schedule (plain PyTorch backend)
        deepspeed/             engine state incl. partitioned fp32 masters (DeepSpeed backend)
        rng/rank<r>.pt         python / numpy / torch / cuda RNG states of every rank

A checkpoint folder is written under a temporary name and renamed into place once every rank
has finished (models.checkpoint.atomic_folder, coordinated across ranks), so a folder named
step_* is always complete; a crash mid-save leaves only a hidden temporary folder. Multi-node
runs need the run folder on a filesystem every node sees.
"""

import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from models.checkpoint import atomic_folder, load_diffusion_view, save_diffusion_view
from train.distributed import barrier, broadcast_object

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.pt"
DIFFUSION_DIR = "diffusion_view"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step_{step:08d}"


def _step_dirs(run_dir: Path, keep) -> list[Path]:
    """A run's checkpoint folders for which `keep(folder)` holds, by step (as a number, not a name),
    oldest first."""
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _STEP_DIR.match(p.name) and keep(p)]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    return _step_dirs(run_dir, lambda p: (p / STATE_FILE).is_file())


def latest_checkpoint(run_dir: Path) -> Path:
    found = list_checkpoints(run_dir)
    if not found:
        raise FileNotFoundError(
            f"resume={run_dir}: no checkpoint under {Path(run_dir) / CHECKPOINTS}; pass the folder of a run "
            "that saved one (train.checkpoint_every), or drop resume= to start fresh"
        )
    return found[-1]


def trained_view(run_dir: Path) -> Path | None:
    """The diffusion view a run left: its final one, else that of its latest checkpoint (whose
    trainer state may have been left behind, e.g. when only the view was copied); None if neither."""
    run_dir = Path(run_dir)
    if (run_dir / DIFFUSION_DIR).is_dir():
        return run_dir / DIFFUSION_DIR
    steps = _step_dirs(run_dir, lambda p: (p / DIFFUSION_DIR).is_dir())
    return steps[-1] / DIFFUSION_DIR if steps else None


def distributed_atomic_folder(folder: Path, write, rank: int) -> None:
    """atomic_folder for all ranks: rank 0 makes the temporary folder and renames it once
    every rank's write(tmp) has returned."""

    def write_all(tmp: Path) -> None:
        broadcast_object(str(tmp))
        write(tmp)
        barrier()

    if rank == 0:
        atomic_folder(folder, write_all)
    else:
        tmp = Path(broadcast_object(None))
        write(tmp)
        barrier()
    barrier()  # nobody proceeds (e.g. to prune old checkpoints) before the rename


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(folder: Path, *, model, backend, trainer_state: dict, rank: int, diffusion_meta: dict) -> None:
    """Write one checkpoint (a collective: every rank calls it)."""

    def write(tmp: Path) -> None:
        (tmp / "rng").mkdir(exist_ok=True)
        torch.save(rng_state(), tmp / "rng" / f"rank{rank}.pt")
        backend.save(tmp, is_main=rank == 0)
        with backend.gathered():
            if rank == 0:
                save_diffusion_view(model, tmp / DIFFUSION_DIR, extra_meta=diffusion_meta)
        if rank == 0:
            torch.save(trainer_state, tmp / STATE_FILE)

    distributed_atomic_folder(Path(folder), write, rank)


def load_checkpoint(folder: Path, *, model) -> dict:
    """Restore the diffusion weights; return the trainer state. The backend's optimizer state
    and the RNG (`restore_rng`, last thing before the loop) are restored by the caller."""
    folder = Path(folder)
    load_diffusion_view(model, folder / DIFFUSION_DIR)
    return torch.load(folder / STATE_FILE, weights_only=False)


def restore_rng(folder: Path, rank: int) -> None:
    rng_file = Path(folder) / "rng" / f"rank{rank}.pt"
    if not rng_file.is_file():
        raise FileNotFoundError(
            f"{rng_file} is missing: the checkpoint was written by fewer ranks; resume with the same world size"
        )
    set_rng_state(torch.load(rng_file, weights_only=False))


def prune_checkpoints(run_dir: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` checkpoints (rank 0 only)."""
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old)
