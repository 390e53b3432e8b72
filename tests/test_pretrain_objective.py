"""Pretraining is an objective of the one Trainer (objective.kind=next_token): every AR parameter
learns, the diffusion view does not, the next-token loss falls, and the run exports a Qwen3
base that loads like any other."""

import json
import math

import torch
from safetensors.torch import load_file

from models.checkpoint import load_orthrus
from models.orthrus import is_diffusion_param
from tests.tiny import tiny_run
from train.loop import BASE_DIR, Trainer

RUN = [
    "objective.kind=next_token",
    "logging.log_every=5",
    "data.synthetic_documents.num_documents=64",
    "data.synthetic_documents.max_length=96",
    "model.config.vocab_size=64",
    "model.mask_token_id=63",
    "train.steps=30",
    "train.micro_batch_size=4",
    "train.checkpoint_every=30",
    "optim.lr=1e-2",
    "optim.warmup_steps=3",
]


def test_next_token_objective_pretrains_the_base(tmp_path):
    trainer = Trainer(tiny_run(*RUN), tmp_path)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    assert all(p.requires_grad != is_diffusion_param(n) for n, p in trainer.model.named_parameters())
    last = trainer.train()
    log = (tmp_path / "metrics.jsonl").read_text().splitlines()
    losses = [json.loads(line)["loss"] for line in log]
    # uniform random documents over 63 tokens: the loss falls to their entropy, ln 63, and no lower
    assert losses[0] > math.log(63) + 0.4 and abs(losses[-1] - math.log(63)) < 0.1
    assert last["mfu"] is None if not torch.cuda.is_available() else last["mfu"] > 0  # MFU is n/a off CUDA
    for name, p in trainer.model.named_parameters():
        assert torch.equal(p, before[name]) == is_diffusion_param(name), name
    assert not (tmp_path / "diffusion_view").exists()
    saved = load_file(str(tmp_path / BASE_DIR / "model.safetensors"))
    assert not any(is_diffusion_param(k) for k in saved)
    model = load_orthrus(str(tmp_path / BASE_DIR), block_size=8, mask_token_id=63, dtype=torch.float32)
    for name, p in model.named_parameters():
        if not is_diffusion_param(name):
            torch.testing.assert_close(p, dict(trainer.model.named_parameters())[name], rtol=0, atol=0)
