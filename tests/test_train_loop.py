"""The training loop on a tiny model: it learns, only the diffusion view changes, and a killed
run resumed from its checkpoint continues exactly where the uninterrupted run would be."""

import importlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from models.orthrus import is_diffusion_param
from tests.tiny import tiny_run
from train.backend import TorchBackend
from train.blocks import sample_blocks
from train.checkpoint import CHECKPOINTS, DIFFUSION_DIR, list_checkpoints, trained_view
from train.data import batches
from train.flops import FLOP_PARTS
from train.loop import Trainer, run
from train.tracking import METRICS_FILE

FAST = [
    "logging.log_every=1",
    "data.synthetic_documents.num_documents=256",
    "data.synthetic_documents.max_length=96",
    "train.micro_batch_size=2",
    "objective.blocks_per_row=6",
    "optim.warmup_steps=3",
]


def compose_cfg(*overrides):
    return tiny_run(*FAST, *overrides)


def records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / METRICS_FILE).read_text().splitlines()]


def final_weights(run_dir) -> dict[str, torch.Tensor]:
    return load_file(str(Path(run_dir) / "diffusion_view" / "diffusion_view.safetensors"))


def test_loss_falls(tmp_path):
    """Measured on one fixed held-out batch before and after 30 steps (the per-step training
    loss is noisy; with random data and a random teacher much of the KL is irreducible)."""
    trainer = Trainer(
        compose_cfg("train.steps=30", "train.checkpoint_every=30", "optim.lr=3e-3", "objective.blocks_per_row=16"),
        tmp_path,
    )
    batch = next(batches(trainer.dataset, 8))
    mask = trainer.model.config.mask_token_id
    blocks = sample_blocks(
        batch, blocks_per_row=16, block_size=trainer.block_size, mask_token_id=mask, num_denoise_steps=1, seed=123
    )
    with torch.no_grad():
        before = trainer.objective(batch, blocks)[0].item()
    trainer.train()
    with torch.no_grad():
        after = trainer.objective(batch, blocks)[0].item()
    assert after < 0.9 * before
    log = records(tmp_path)
    assert len(log) == 30 and sum(r["loss"] for r in log[-5:]) < sum(r["loss"] for r in log[:5])
    last = log[-1]
    assert (
        len(last["acc"]) == trainer.block_size - 1
        and last["tokens"] == 30 * 2 * 64
        and last["tokens_per_s_per_gpu"] > 0
    )
    assert (last["mfu"] is None) == (not torch.cuda.is_available())  # MFU needs a GPU peak: n/a on the CPU


@pytest.mark.parametrize("trainable", [None, ["q_proj_diff", "k_proj_diff", "v_proj_diff"]])
def test_only_the_diffusion_view_learns(tmp_path, trainable):
    overrides = ["train.steps=4"] + ([f"model.trainable=[{','.join(trainable)}]"] if trainable else [])
    trainer = Trainer(compose_cfg(*overrides), tmp_path)
    model = trainer.model
    expected = {n for n, p in model.named_parameters() if is_diffusion_param(n)}
    if trainable:
        expected = {n for n in expected if any(f".{m}." in n for m in trainable)}
    base_before = {n: p.detach().clone() for n, p in model.named_parameters() if not is_diffusion_param(n)}

    batch = next(batches(trainer.dataset, 2))
    mask = model.config.mask_token_id
    blocks = sample_blocks(
        batch, blocks_per_row=6, block_size=trainer.block_size, mask_token_id=mask, num_denoise_steps=1, seed=0
    )
    trainer.backend.micro_step(batch, blocks, last=True)
    for name, p in model.named_parameters():
        if name in expected:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, f"{name} got a gradient"
    trainer.backend.step()
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in trainer.backend.optimizer.state} == expected

    trainer.train()
    for name, p in model.named_parameters():
        if name in base_before:
            assert torch.equal(p, base_before[name]), f"base weight {name} changed"


class Crash(Exception):
    pass


def test_kill_and_resume_is_exact(tmp_path, monkeypatch):
    settings = ["train.steps=6", "train.checkpoint_every=3", "train.keep_last=3"]
    run(compose_cfg(*settings), tmp_path / "full")

    crashed = tmp_path / "crashed"
    step, calls = TorchBackend.step, []

    def crash_at_step_5(self):
        calls.append(1)
        if len(calls) == 5:  # after step 4 was logged, before step 5 finishes
            raise Crash
        return step(self)

    monkeypatch.setattr(TorchBackend, "step", crash_at_step_5)
    with pytest.raises(Crash):
        run(compose_cfg(*settings), crashed)
    monkeypatch.setattr(TorchBackend, "step", step)
    assert [r["step"] for r in records(crashed)] == [1, 2, 3, 4]
    assert [p.name for p in list_checkpoints(crashed)] == ["step_00000003"]

    run(compose_cfg(*settings, f"resume={crashed}"), crashed)
    full, resumed = records(tmp_path / "full"), records(crashed)
    keys = ("step", "loss", "lr", "grad_norm", "acc", "tokens")
    assert [{k: r[k] for k in keys} for r in resumed] == [{k: r[k] for k in keys} for r in full]
    a, b = final_weights(tmp_path / "full"), final_weights(crashed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoints_are_pruned_and_complete(tmp_path):
    run(compose_cfg("train.steps=6", "train.checkpoint_every=2", "train.keep_last=2"), tmp_path)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000004", "step_00000006"]
    assert sorted(p.name for p in (tmp_path / CHECKPOINTS).iterdir()) == [
        "step_00000004",
        "step_00000006",
    ]  # no temp folders
    assert (tmp_path / "config.yaml").is_file()
    assert trained_view(tmp_path) == tmp_path / DIFFUSION_DIR  # the final view


def test_on_step_sees_every_step_and_save_false_writes_no_checkpoint(tmp_path):
    """What train/throughput.py times: one call per optimizer step with the step's FLOPs by part
    (their sum is what the metrics record counts) and its micro-batch losses."""
    calls = []
    trainer = Trainer(compose_cfg("train.steps=3", "train.checkpoint_every=1", "train.grad_accum=2"), tmp_path)
    record = trainer.train(on_step=lambda step, flops, losses: calls.append((step, flops, losses)), save=False)
    assert [step for step, _, _ in calls] == [1, 2, 3] and all(len(losses) == 2 for _, _, losses in calls)
    assert tuple(calls[0][1]) == FLOP_PARTS and all(v > 0 for v in calls[0][1].values())
    assert record["loss"] == pytest.approx(sum(float(x) for x in calls[-1][2]) / 2, rel=1e-6)
    assert not (tmp_path / CHECKPOINTS).exists() and not (tmp_path / DIFFUSION_DIR).exists()
    assert (tmp_path / METRICS_FILE).is_file()


def test_trained_view_falls_back_to_the_latest_checkpoint(tmp_path):
    """Without a final view, the view of the highest step (by number, not name), even with no trainer state."""
    assert trained_view(tmp_path) is None
    for step in (300, 1000):
        (tmp_path / CHECKPOINTS / f"step_{step}" / DIFFUSION_DIR).mkdir(parents=True)
    (tmp_path / CHECKPOINTS / "step_2000").mkdir()  # no view in it
    assert trained_view(tmp_path) == tmp_path / CHECKPOINTS / "step_1000" / DIFFUSION_DIR


def test_resume_without_checkpoint_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Trainer(compose_cfg("train.steps=2", f"resume={tmp_path}"), tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_deepspeed_matches_torch_and_resumes(tmp_path, monkeypatch, zero):
    """DeepSpeed's engine (ZeRO-2/3, fp32 on the CPU) follows the plain-PyTorch loss curve and
    resumes exactly from its own checkpoint."""
    pytest.importorskip("deepspeed")
    ds_comm = importlib.import_module("deepspeed.comm.torch")  # (deepspeed.comm.torch the attribute is torch)
    monkeypatch.setattr(ds_comm, "build_shm_op", lambda: None)  # a CPU comm speed-up, JIT-compiled for a minute
    settings = ["train.steps=4", "train.checkpoint_every=2", "train.keep_last=3"]
    run(compose_cfg(*settings), tmp_path / "torch")
    run(compose_cfg(*settings, f"deepspeed={zero}"), tmp_path / "ds")
    for t, d in zip(records(tmp_path / "torch"), records(tmp_path / "ds")):
        assert d["loss"] == pytest.approx(t["loss"], rel=1e-4) and d["lr"] == t["lr"]
    assert (list_checkpoints(tmp_path / "ds")[0] / "deepspeed").is_dir()

    # resume the DeepSpeed run from step 2 in a copy whose later checkpoint is gone
    resumed = tmp_path / "ds_resumed"
    shutil.copytree(tmp_path / "ds", resumed)
    shutil.rmtree(list_checkpoints(resumed)[-1])
    run(compose_cfg(*settings, f"deepspeed={zero}", f"resume={resumed}"), resumed)
    assert [r["loss"] for r in records(resumed)] == [r["loss"] for r in records(tmp_path / "ds")]
    a, b = final_weights(tmp_path / "ds"), final_weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
