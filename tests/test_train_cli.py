"""`python train.py` end to end in a subprocess: a short run, its resume, a dry run, a typo."""

import importlib.util
import json
import subprocess
from pathlib import Path

import torch

from tests.tiny import REPO, TINY_RUN, run_python

FAST = [
    *TINY_RUN,
    "logging.log_every=1",
    "data.synthetic_documents.num_documents=128",
    "train.micro_batch_size=2",
    "objective.blocks_per_row=4",
    "train.checkpoint_every=5",
]


def train_py(*args: str) -> subprocess.CompletedProcess:
    return run_python("train.py", *args, timeout=600)


def steps_logged(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_tiny_run_and_resume(tmp_path):
    run = tmp_path / "run"
    done = train_py("train.steps=5", *FAST, f"hydra.run.dir={run}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert steps_logged(run) == [1, 2, 3, 4, 5]
    for path in (
        ".hydra/config.yaml",
        "config.yaml",
        "checkpoints/step_00000005/trainer_state.pt",
        "diffusion_view/diffusion_view.safetensors",
    ):
        assert (run / path).is_file(), path

    log = (run / "train.log").read_text()
    assert "step 5/5 | loss" in log and f"diffusion view saved to {run}/diffusion_view" in log
    assert ("mfu n/a" in log) != torch.cuda.is_available()

    more = train_py(f"resume={run}", "train.steps=7")  # the saved config, plus one override
    assert more.returncode == 0, more.stderr[-3000:]
    assert steps_logged(run) == [1, 2, 3, 4, 5, 6, 7]
    assert "steps: 7" in (run / "config.yaml").read_text()
    assert "resumed from step 5" in (run / "train.log").read_text()

    again = train_py(f"resume={run}", "train.steps=7")
    assert again.returncode == 0 and "already finished" in (run / "train.log").read_text()
    assert steps_logged(run) == [1, 2, 3, 4, 5, 6, 7]


def test_embedded_default_runs(tmp_path):
    """The README's first command, cut to a few steps: orthrus-small, local corpus slice, CPU."""
    run = tmp_path / "default"
    done = train_py(
        "train.steps=3",
        "logging.log_every=1",
        "logging.wandb.mode=disabled",
        "logging.progress_bar=false",
        f"hydra.run.dir={run}",
        f"data.build_corpus.out_dir={tmp_path / 'corpus'}",
        "data.build_corpus.max_bytes=300000",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert steps_logged(run) == [1, 2, 3]
    assert (run / "diffusion_view/diffusion_view.safetensors").is_file()


def test_dry_run_prints_the_composed_config():
    done = train_py("+exp=qwen3_8b", "--cfg", "job")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "base: Qwen/Qwen3-8B" in done.stdout and "zero_stage: 2" in done.stdout
    for line in (
        "seq_len: 2048",
        "blocks_per_row: 256",
        "lr: 0.0002",
        "warmup_steps: 369",
        "grad_clip: 1.0",
        "steps: 7374",
        "precision: bf16",
        "loss: kl",
        "source: data_out/self_distill/qwen3-8b",
    ):
        assert line in done.stdout, line  # the paper's recipe


def test_typo_fails_naming_the_key():
    done = train_py("optim.lr_typo=1")
    assert done.returncode != 0 and "lr_typo" in done.stderr


def test_launcher_argv():
    spec = importlib.util.spec_from_file_location("train_entry", REPO / "train.py")
    entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entry)
    assert entry.launcher_argv(["--local_rank=3", "train.steps=2"], rank=0) == ["train.steps=2"]
    rank1 = entry.launcher_argv(["a=1"], rank=1)
    assert rank1[-4:-1] == ["hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]
    assert rank1[-1].startswith("hydra.run.dir=") and "runs/" not in rank1[-1]  # no stray folder per rank
