"""The data-parallel parity judgement (eval/parity.py) fails runs that are broken, on curves from
the real Trainer: one that skips its optimizer step, one that scales its gradients wrongly.
The passing world-2 case (gloo ranks under torchrun) is tests/test_scale.py::test_dp_parity_*."""

import json
from pathlib import Path

import pytest
import torch

from eval.parity import TOLERANCES, judge_parity
from tests.tiny import tiny_run
from train.loop import Trainer
from train.tracking import METRICS_FILE

RUN = [
    "logging.log_every=1",
    "data.synthetic_documents.max_length=96",
    "objective.blocks_per_row=6",
    "data.synthetic_documents.num_documents=64",
    "train.steps=5",
    "train.micro_batch_size=1",
    "train.grad_accum=4",
    "train.checkpoint_every=5",
    "optim.lr=3e-3",
    "optim.warmup_steps=2",
]


def curve(run_dir: Path, break_run=None) -> list[dict]:
    trainer = Trainer(tiny_run(*RUN), run_dir)
    if break_run is not None:
        break_run(trainer)
    trainer.train()
    return [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return curve(tmp_path_factory.mktemp("ref"))


def judge(ref, other):
    return judge_parity(ref, other, **TOLERANCES["fp32"])


def test_the_same_run_passes(reference, tmp_path):
    verdict = judge(reference, curve(tmp_path))
    assert verdict["pass"], verdict["reasons"]
    assert verdict["loss_moved"] > 0.01


def test_a_run_that_skips_its_optimizer_step_fails(reference, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, closure=None: None)
    broken = curve(tmp_path)
    assert broken[0]["loss"] == reference[0]["loss"]  # same weights and data until the first update
    verdict = judge(reference, broken)
    assert not verdict["pass"] and any("moved" in r for r in verdict["reasons"])


def test_a_run_with_wrongly_scaled_gradients_fails(reference, tmp_path):
    """Gradients divided by 2 instead of the 4 micro-batches (e.g. summed over 2 ranks instead of
    averaged): Adam's updates barely change, the gradient norms double."""

    def wrong_scale(trainer):
        trainer.backend.grad_accum = 2

    verdict = judge(reference, curve(tmp_path, wrong_scale))
    assert not verdict["pass"] and any("gradient norms" in r for r in verdict["reasons"])
    assert verdict["max_rel_grad_norm_diff"] == pytest.approx(1.0, rel=0.05)


def test_a_flat_reference_cannot_pass():
    flat = [{"step": s, "loss": 1.0, "grad_norm": 1.0, "lr": 1e-3, "tokens": 64 * s} for s in (1, 2, 3)]
    verdict = judge(flat, flat)
    assert not verdict["pass"] and "never moved" in verdict["reasons"][0]
