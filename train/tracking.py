"""What a run reports: a JSONL file (the record of truth), wandb, and a tqdm bar, on rank 0.

Every `log_every` steps one record, averaged over the steps since the last one and over ranks:
    step, loss, lr, grad_norm, acc (draft accuracy per block index i: student argmax ==
    teacher argmax), acc_mean, tokens_per_s_per_gpu (packed input tokens), mfu (model FLOPs
    from train/flops.py over `peak_flops_per_gpu`; null off CUDA, where that peak means nothing),
    tokens (seen so far, all ranks), elapsed_s,
    and on CUDA max_memory_gib (peak allocated on this rank).
Each record is also a progress line in <run>/train.log (train/run_dir.py).
On resume the JSONL file is cut back to the checkpoint's step, so the file of a resumed run
reads like one uninterrupted run.
"""

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from data._io import atomic_write_text
from train.distributed import all_reduce_sum
from train.run_dir import format_record, log

METRICS_FILE = "metrics.jsonl"


@dataclass
class WandbConfig:
    mode: str = "offline"  # "online" | "offline" | "disabled"
    project: str = "orthrus"
    entity: str | None = None
    name: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class LoggingConfig:
    log_every: int = 10
    progress_bar: bool = True
    peak_flops_per_gpu: float = 989e12  # dense bf16 of an H100 / H200 SXM
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def __post_init__(self):
        if isinstance(self.wandb, dict):
            self.wandb = WandbConfig(**self.wandb)
        if self.wandb.mode not in ("online", "offline", "disabled"):
            raise ValueError(f"logging.wandb.mode={self.wandb.mode!r}: choose online, offline or disabled")
        if self.log_every < 1:
            raise ValueError(f"logging.log_every={self.log_every} must be >= 1")


def truncate_jsonl(path: Path, last_step: int) -> None:
    """Keep the records with step <= last_step (and drop a torn last line), atomically."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("step", 0) <= last_step:
            kept.append(line)
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))


class Tracker:
    """JSONL + wandb + progress bar on the main rank; a no-op elsewhere."""

    def __init__(
        self,
        run_dir: Path,
        cfg: LoggingConfig,
        *,
        config: dict,
        total_steps: int,
        start_step: int,
        wandb_id: str | None,
        is_main: bool,
    ):
        self.is_main = is_main
        self.total_steps = total_steps
        self.wandb_run = None
        self.bar = None
        if not is_main:
            return
        self.path = Path(run_dir) / METRICS_FILE
        truncate_jsonl(self.path, start_step)
        if cfg.wandb.mode != "disabled":
            import wandb

            w = cfg.wandb
            self.wandb_run = wandb.init(
                project=w.project,
                entity=w.entity,
                name=w.name,
                tags=list(w.tags),
                mode=w.mode,
                dir=str(run_dir),
                config=config,
                id=wandb_id,
                resume="allow",
            )
        if cfg.progress_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", dynamic_ncols=True)

    @property
    def wandb_id(self) -> str | None:
        return self.wandb_run.id if self.wandb_run is not None else None

    def log(self, record: dict) -> None:
        if not self.is_main:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.wandb_run is not None:
            flat = {k: v for k, v in record.items() if k not in ("acc", "step")}
            flat.update({f"acc/pos_{i:02d}": a for i, a in enumerate(record["acc"])})
            self.wandb_run.log(flat, step=record["step"])
        if self.bar is not None:
            mfu = "n/a" if record["mfu"] is None else f"{record['mfu']:.3f}"
            self.bar.set_postfix(loss=f"{record['loss']:.4f}", acc=f"{record['acc_mean']:.3f}", mfu=mfu)
        log.info(format_record(record, self.total_steps))

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()


class WindowMeter:
    """Sums over the steps since the last record, kept on the device (no sync per step)."""

    def __init__(self, num_positions: int, device: torch.device):
        self.num_positions, self.device = num_positions, device
        self.reset()

    def reset(self) -> None:
        # loss sum, micro-batches, tokens, flops, then correct[i] and count[i] per block index
        self.sums = torch.zeros(4 + 2 * self.num_positions, dtype=torch.float64, device=self.device)
        self.grad_norm = float("nan")
        self.steps = 0
        self.start = time.perf_counter()

    def add_micro(self, loss: torch.Tensor, stats: dict, tokens: int, flops: float) -> None:
        P = self.num_positions
        self.sums[0] += loss.double()
        self.sums[1:4] += torch.tensor([1.0, tokens, flops], dtype=torch.float64, device=self.device)
        self.sums[4 : 4 + P] += stats["correct"].double()
        self.sums[4 + P :] += stats["count"].double()

    def add_step(self, grad_norm: float) -> None:
        self.grad_norm = grad_norm
        self.steps += 1

    def record(self, *, step: int, lr: float, world_size: int, peak_flops: float, tokens_total: int) -> dict:
        """Average over the window and all ranks (a collective), then start a new window."""
        sums = all_reduce_sum(self.sums.clone()).cpu()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - self.start
        P = self.num_positions
        loss, micro, tokens, flops = sums[:4].tolist()
        correct, count = sums[4 : 4 + P], sums[4 + P :]
        acc = (correct / count.clamp(min=1)).tolist()
        record = {
            "step": step,
            "loss": loss / micro,
            "lr": lr,
            "grad_norm": self.grad_norm,
            "acc_mean": float(correct.sum() / count.sum().clamp(min=1)),
            "acc": acc,
            "tokens_per_s_per_gpu": tokens / world_size / elapsed,
            "mfu": flops / world_size / elapsed / peak_flops if self.device.type == "cuda" else None,
            "tokens": tokens_total,
            "elapsed_s": elapsed,
        }
        if self.device.type == "cuda":
            record["max_memory_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        self.reset()
        return record
