"""Two ways to run the same objective: plain PyTorch (CPU, one GPU, DDP) and DeepSpeed ZeRO.

Both expose the same four operations to the loop, so the loop has no backend branches:
    micro_step(batch, blocks, last) -> (loss, stats)   forward + backward of one micro-batch
    step() -> grad_norm                                 clip, optimizer and LR-schedule step
    lr() -> float                                       the LR the next step will use
    save(folder) / load(folder)                         optimizer + schedule state (all ranks)

Plain PyTorch keeps trainable weights in fp32 (AdamW's master copy) with bf16 autocast on
CUDA. DeepSpeed casts the module to bf16 and keeps fp32 masters inside its ZeRO optimizer;
its config dict is built here from conf/deepspeed/*.yaml plus the optim and train sections,
so batch size, clipping and the optimizer are written once, in the Hydra config.
"""

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.profiler import record_function

from train import profile
from train.optim import OptimConfig, build_optimizer, build_scheduler, param_groups

OPTIMIZER_FILE = "optimizer.pt"
DEEPSPEED_TAG = "deepspeed"


@dataclass
class DeepSpeedConfig:
    enabled: bool = False  # False: plain PyTorch (DDP when WORLD_SIZE > 1)
    zero_stage: int = 2
    torch_adam: bool = True  # torch's AdamW instead of FusedAdam: no JIT build (~50 s) at start
    overlap_comm: bool = True
    contiguous_gradients: bool = True
    reduce_bucket_size: int = 500_000_000
    allgather_bucket_size: int = 500_000_000  # ZeRO-2
    offload_optimizer: bool = False  # Adam state and fp32 masters in CPU memory
    stage3_prefetch_bucket_size: int = 50_000_000  # ZeRO-3
    stage3_param_persistence_threshold: int = 100_000  # ZeRO-3: smaller params stay unpartitioned

    def __post_init__(self):
        if self.enabled and self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"deepspeed.zero_stage={self.zero_stage}: choose 0, 1, 2 or 3")


def deepspeed_config(
    ds: DeepSpeedConfig, optim: OptimConfig, micro_batch_size: int, grad_accum: int, world_size: int, bf16: bool
) -> dict:
    """The DeepSpeed config dict (what a ds_config.json would hold), built from our sections."""
    zero = {
        "stage": ds.zero_stage,
        "overlap_comm": ds.overlap_comm,
        "contiguous_gradients": ds.contiguous_gradients,
        "reduce_bucket_size": ds.reduce_bucket_size,
    }
    if ds.zero_stage == 2:
        zero["allgather_bucket_size"] = ds.allgather_bucket_size
    if ds.zero_stage == 3:
        zero["stage3_prefetch_bucket_size"] = ds.stage3_prefetch_bucket_size
        zero["stage3_param_persistence_threshold"] = ds.stage3_param_persistence_threshold
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if optim.fused and not ds.torch_adam:
        raise ValueError(
            "optim.fused=true picks torch's fused AdamW, but deepspeed.torch_adam=false asks for DeepSpeed's "
            "FusedAdam (fused already): set one of them"
        )
    adam = {"torch_adam": ds.torch_adam} | ({"fused": True} if optim.fused else {})
    return {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": micro_batch_size * grad_accum * world_size,
        "gradient_clipping": optim.grad_clip or 0.0,
        "bf16": {"enabled": bf16},
        "zero_optimization": zero,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": optim.lr,
                "betas": list(optim.betas),
                "eps": optim.eps,
                "weight_decay": optim.weight_decay,
                **adam,  # DeepSpeed's torch_adam path passes the rest to torch.optim.AdamW
            },
        },
        "steps_per_print": 2**31 - 1,  # our logger reports; keep DeepSpeed quiet
        "wall_clock_breakdown": False,
    }


class TorchBackend:
    def __init__(
        self, objective, optim: OptimConfig, *, total_steps: int, grad_accum: int, autocast: bool, distributed: bool
    ):
        self.objective = objective
        self.module = DistributedDataParallel(objective) if distributed else objective
        self.optimizer = build_optimizer(objective, optim)
        self.scheduler = build_scheduler(self.optimizer, optim, total_steps)
        self.grad_clip = optim.grad_clip
        self.grad_accum = grad_accum
        self.autocast = autocast
        self.distributed = distributed

    def micro_step(self, batch, blocks, last: bool):
        # DDP all-reduces gradients only on the last micro-batch of a step
        sync = contextlib.nullcontext() if last or not self.distributed else self.module.no_sync()
        device_type = batch["input_ids"].device.type
        with sync:
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=self.autocast):
                loss, stats = self.module(batch, blocks)
            with record_function(profile.BACKWARD):
                (loss / self.grad_accum).backward()
        return loss.detach(), stats

    def step(self) -> float:
        with record_function(profile.OPTIMIZER):
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip or math.inf)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def gathered(self):
        """Inside, the diffusion view's parameters are whole (always, without ZeRO-3)."""
        return contextlib.nullcontext()

    def save(self, folder: Path, is_main: bool) -> None:
        if is_main:  # optimizer state is replicated across DDP ranks
            torch.save(
                {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
                folder / OPTIMIZER_FILE,
            )

    def load(self, folder: Path) -> None:
        state = torch.load(folder / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


class DeepSpeedBackend:
    def __init__(
        self,
        objective,
        ds: DeepSpeedConfig,
        optim: OptimConfig,
        *,
        total_steps: int,
        micro_batch_size: int,
        grad_accum: int,
        world_size: int,
        bf16: bool,
    ):
        import deepspeed

        self.config = deepspeed_config(ds, optim, micro_batch_size, grad_accum, world_size, bf16)
        self.zero_stage = ds.zero_stage
        self.objective = objective
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=objective,
            model_parameters=param_groups(objective, optim.weight_decay),
            config=self.config,
            lr_scheduler=lambda opt: build_scheduler(opt, optim, total_steps),
        )

    def micro_step(self, batch, blocks, last: bool):
        loss, stats = self.engine(batch, blocks)
        with record_function(profile.BACKWARD):
            self.engine.backward(loss)  # scales by 1 / gradient_accumulation_steps
        with record_function(profile.OPTIMIZER):
            self.engine.step()  # an optimizer step only at the accumulation boundary
        return loss.detach(), stats

    def step(self) -> float:
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else math.nan

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def gathered(self):
        """ZeRO-3 partitions every parameter: gather the whole diffusion view (frozen parts too)."""
        if self.zero_stage != 3:
            return contextlib.nullcontext()
        import deepspeed

        params = [p for _, p in self.objective.model.diffusion_named_parameters()]
        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)

    def save(self, folder: Path, is_main: bool) -> None:
        self.engine.save_checkpoint(str(folder), tag=DEEPSPEED_TAG, save_latest=False, exclude_frozen_parameters=True)

    def load(self, folder: Path) -> None:
        path, _ = self.engine.load_checkpoint(str(folder), tag=DEEPSPEED_TAG, load_module_strict=False)
        if path is None:
            raise FileNotFoundError(
                f"no DeepSpeed state under {folder / DEEPSPEED_TAG}: was this checkpoint written with deepspeed=none?"
            )
