"""What many tests share: the tiny model (conf/model/tiny.yaml, the one tiny model of runs and tests), the
Hydra overrides of a short CPU training run on it, and running `python ...` from the repository root."""

import os
import subprocess
import sys
from pathlib import Path

from train.config import compose
from train.model import load_preset

REPO = Path(__file__).resolve().parent.parent
TINY = load_preset("tiny")
TINY_QWEN3 = TINY.config  # its Qwen3 fields, for plain Qwen3 checkpoints of the same shape
TINY_RUN = [
    "model=tiny",
    "data=synthetic",  # the smallest run, not the embedded default (orthrus-small)
    "logging.wandb.mode=disabled",
    "logging.progress_bar=false",
    "data.packed_dataset.seq_len=64",
]
SUBPROCESS_ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def tiny_run(*overrides: str):
    """conf/config.yaml composed for a short CPU run of the tiny model, `overrides` on top."""
    return compose([*TINY_RUN, *overrides])


def run_python(*args: str, timeout: int) -> subprocess.CompletedProcess:
    """`python ARGS` from the repository root, one thread, offline; output captured."""
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=timeout
    )
