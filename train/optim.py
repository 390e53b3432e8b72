"""AdamW over the trainable (diffusion-view) parameters only, and its LR schedule.

Only parameters with requires_grad enter the optimizer, so the frozen base gets neither
gradients nor optimizer state (a third of the memory of full fine-tuning at 8B is Adam state).
Matrices are weight-decayed; norm weights and biases are not, as usual. `fused`: torch's fused
AdamW (one multi-tensor kernel for the whole update; DeepSpeed's torch_adam path gets it too),
instead of the foreach one (a kernel per elementwise op over each tensor list).
"""

import functools
import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class OptimConfig:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # the cosine ends at min_lr_ratio * lr
    grad_clip: float | None = 1.0  # max global grad norm; None: no clipping
    fused: bool = False  # torch's fused AdamW: one kernel per parameter chunk, not one per op per tensor list

    def __post_init__(self):
        self.betas = tuple(self.betas)
        if self.lr <= 0:
            raise ValueError(f"optim.lr={self.lr} must be > 0")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"optim.min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")
        if self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps={self.warmup_steps} must be >= 0")


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters split into decayed (matrices) and non-decayed (norms, biases) groups."""
    trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("no trainable parameters: model.trainable selects none of the diffusion view's modules")
    decay = [p for n, p in trainable if p.ndim >= 2]
    no_decay = [p for n, p in trainable if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(module: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    groups = param_groups(module, cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=cfg.fused or None)


def warmup_cosine(step: int, *, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """LR multiplier: linear warmup over `warmup_steps`, then cosine to `min_lr_ratio` at `total_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule's shape always comes from the current config (a resumed run may extend
    `train.steps`); its state_dict holds only the step count."""
    schedule = functools.partial(
        warmup_cosine, warmup_steps=cfg.warmup_steps, total_steps=total_steps, min_lr_ratio=cfg.min_lr_ratio
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
