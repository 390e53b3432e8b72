"""optim.fused: torch's fused AdamW makes the same update as the default (foreach) one, in plain
PyTorch and through DeepSpeed's torch_adam path (its config dict)."""

import pytest
import torch
from torch import nn

from train.backend import DeepSpeedConfig, deepspeed_config
from train.optim import OptimConfig, build_optimizer


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 8), nn.LayerNorm(8))


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def updated_weights(fused: bool) -> tuple[torch.Tensor, dict]:
    model = make_model()
    optimizer = build_optimizer(model, OptimConfig(lr=1e-2, weight_decay=0.1, fused=fused))
    for step in range(3):
        model(torch.randn(4, 16, generator=torch.Generator().manual_seed(step))).square().sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    return flat(model), optimizer.defaults


def test_fused_adamw_makes_the_same_update():
    fused, defaults = updated_weights(fused=True)
    plain, plain_defaults = updated_weights(fused=False)
    assert defaults["fused"] is True and not plain_defaults["fused"]
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(
        plain, flat(make_model()), rtol=1e-3, atol=1e-4
    )  # the steps moved the weights: the comparison can fail


def test_deepspeed_gets_fused_torch_adamw():
    optim = OptimConfig(fused=True)
    params = deepspeed_config(DeepSpeedConfig(enabled=True), optim, 1, 1, 1, True)["optimizer"]["params"]
    assert params["torch_adam"] is True and params["fused"] is True
    plain = deepspeed_config(DeepSpeedConfig(enabled=True), OptimConfig(), 1, 1, 1, True)["optimizer"]["params"]
    assert "fused" not in plain
    with pytest.raises(ValueError, match="deepspeed.torch_adam=false"):
        deepspeed_config(DeepSpeedConfig(enabled=True, torch_adam=False), optim, 1, 1, 1, True)
