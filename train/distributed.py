"""Process topology from the launcher's environment: one code path for every launch.

python train.py                          one process (no process group unless DeepSpeed)
torchrun --nproc_per_node=N train.py     RANK / WORLD_SIZE / LOCAL_RANK / MASTER_* set
deepspeed --num_gpus=N train.py          same variables (its --local_rank flag is dropped
                                         by train.py before Hydra parses the command line)
Hydra's submitit Slurm launcher          one task per GPU; the variables come from Slurm
"""

import contextlib
import importlib
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(process_group: bool = False) -> Dist:
    """Read the topology, pick this rank's device, and start the process group when there is
    more than one rank (or when `process_group` asks for one anyway: DeepSpeed always needs it)."""
    if "RANK" not in os.environ and os.environ.get("SUBMITIT_EXECUTOR") == "slurm":
        from submitit.helpers import TorchDistributedEnvironment

        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if (world_size > 1 or process_group) and not dist.is_initialized():
        if world_size == 1:  # a single process still needs a rendezvous address
            os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(_free_port()))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world_size, local_rank, device)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def skip_deepspeed_cpu_comm_op() -> None:
    """On the CPU, DeepSpeed JIT-compiles a shared-memory comm op (about a minute) that runs on
    one host do not need; the tests skip it the same way (tests/test_train_loop.py)."""
    if torch.cuda.is_available():
        return
    with contextlib.suppress(ImportError):
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def broadcast_object(obj, src: int = 0):
    """rank `src`'s object on every rank (identity without a process group)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor
