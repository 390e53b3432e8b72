"""Run folders: unique per run, never shared by two live runs, with a real train.log."""

import os
import subprocess
import sys
import time

import pytest
from hydra import compose, initialize_config_dir

import train.config  # noqa: F401  (registers ${pid:})
from tests.test_train_cli import FAST, REPO, steps_logged
from train.run_dir import (
    LOCK_FILE,
    RunFolder,
    RunFolderBusy,
    claim_run_dir,
    format_record,
    release_run_dir,
)

HOLD = (
    "import sys, time; from pathlib import Path; from train.run_dir import claim_run_dir; "
    "claim_run_dir(Path(sys.argv[1])); print('held', flush=True); time.sleep(60)"
)


def test_a_live_holder_is_refused_and_a_dead_one_is_not(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderBusy, match=rf"in use by a live run \(pid {holder.pid} on"):
            claim_run_dir(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    release_run_dir(claim_run_dir(tmp_path))  # the lock died with its process: no stale lock
    assert (tmp_path / LOCK_FILE).is_file()


def test_default_run_folder_is_unique_per_process():
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", return_hydra_config=True)
    assert cfg.hydra.run.dir.endswith(f"-{os.getpid()}")  # <date>/<time>-<pid>


def test_progress_lines_print_unmeasurable_metrics_as_na(tmp_path):
    folder = RunFolder(tmp_path)
    line = format_record(
        {
            "step": 3,
            "loss": 1.5,
            "acc_mean": 0.25,
            "lr": 1e-4,
            "grad_norm": 0.5,
            "tokens_per_s_per_gpu": 1000.0,
            "mfu": None,
            "elapsed_s": 2.0,
        },
        10,
    )
    folder.close()
    assert line.startswith("step 3/10 | loss 1.5000") and "mfu n/a" in line


@pytest.mark.slow
def test_two_concurrent_runs_cannot_share_a_folder(tmp_path):
    """The first run is long enough to be alive whatever the machine's speed; it is stopped once the second
    has been refused, so the check never depends on which run finishes first."""
    run = tmp_path / "run"
    cmd = [sys.executable, "train.py", *FAST, f"hydra.run.dir={run}"]
    first = subprocess.Popen(
        [*cmd, "train.steps=100000"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.time() + 300
        lock = run / LOCK_FILE
        while not (lock.is_file() and lock.read_text()) and first.poll() is None and time.time() < deadline:
            time.sleep(0.2)  # the lock names its holder once the first run holds the folder
        assert first.poll() is None, "the first run ended before the second started"
        second = subprocess.run([*cmd, "train.steps=4"], cwd=REPO, capture_output=True, text=True, timeout=600)
        assert second.returncode != 0 and "in use by a live run" in second.stderr, second.stderr[-3000:]
    finally:
        first.kill()
        first.communicate(timeout=60)
    steps = steps_logged(run) if (run / "metrics.jsonl").is_file() else []
    assert steps == list(range(1, len(steps) + 1))  # one run's records, not two interleaved
