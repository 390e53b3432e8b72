"""The training loop: build everything from the composed config, then step, log, checkpoint.

    trainer = Trainer(cfg, run_dir)   # model, data, objective, backend, tracker; resumes if asked
    trainer.train()                   # steps start_step..train.steps, returns the last record

Each config section is turned into the dataclass of the module that uses it (ModelConfig,
ObjectiveConfig, OptimConfig, DeepSpeedConfig, LoggingConfig, TrainConfig), so a key in the
yaml is an argument in the code and unknown keys fail at once.
"""

import hashlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from data._io import atomic_write_text
from data.tokenizer import load_tokenizer
from models.checkpoint import save_base, save_diffusion_view
from train.backend import DeepSpeedBackend, DeepSpeedConfig, TorchBackend
from train.blocks import sample_blocks
from train.checkpoint import (
    DIFFUSION_DIR,
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    restore_rng,
    save_checkpoint,
)
from train.compile import compile_diffusion_layers, compile_frozen_modules
from train.config import typed_section
from train.data import batches, build_dataset, check_data_inputs, data_tokenizer
from train.distributed import barrier, broadcast_object, init_distributed
from train.flops import micro_batch_flops_breakdown, next_token_flops
from train.fp8 import FP8_MODES, check_fp8_device, convert_frozen_linears, require_torchao
from train.model import ModelConfig, build_model
from train.objective import DistillationObjective, NextTokenObjective, ObjectiveConfig
from train.optim import OptimConfig
from train.run_dir import RunFolder, log
from train.tracking import LoggingConfig, Tracker, WindowMeter

PRECISIONS = ("auto", "bf16", "fp32")
CONFIG_FILE = "config.yaml"
BASE_DIR = "base"  # objective.kind=next_token: the pretrained AR model, a plain Qwen3 checkpoint


@dataclass
class TrainConfig:
    steps: int = 1000  # optimizer steps
    micro_batch_size: int = 1  # packed rows per forward, per GPU
    grad_accum: int = 1  # micro-batches per optimizer step
    gradient_checkpointing: bool = False  # recompute each diffusion layer in backward
    fp8: str = "none"  # frozen Linear layers in float8: none | frozen | torchao (train/fp8.py)
    compile_frozen: bool = False  # torch.compile each layer's frozen MLP and norms (train/compile.py)
    compile_diffusion: bool = False  # torch.compile the diffusion pass's per-layer math around attention
    precision: str = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    seed: int = 0  # random weights and block sampling
    checkpoint_every: int = 500  # steps; the last step is always saved
    keep_last: int = 2  # checkpoints kept on disk

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"train.precision={self.precision!r}: choose one of {PRECISIONS}")
        if self.fp8 not in FP8_MODES:
            raise ValueError(f"train.fp8={self.fp8!r}: choose one of {FP8_MODES}")
        for key in ("steps", "micro_batch_size", "grad_accum", "checkpoint_every", "keep_last"):
            if getattr(self, key) < 1:
                raise ValueError(f"train.{key}={getattr(self, key)} must be >= 1")


def block_seed(seed: int, step: int, position: int) -> int:
    """The block-sampling seed of one micro-batch, from its position in the global batch
    (micro * world_size + rank). Independent of any RNG state, so resuming at any step draws
    the same blocks; and since rank r's micro-batch j holds the row that a one-process run feeds
    as micro-batch j * world_size + r, every world size draws the same blocks for the same rows
    (scripts/dp_parity.py checks the curves match). The trailing ":0" keeps the seeds of
    one-process runs (e.g. the shipped orthrus-small view) what they were before this rule."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{step}:{position}:0".encode()).digest()[:8], "big") >> 1


def resolve_mask_token_id(model_cfg: ModelConfig, data_cfg: DictConfig) -> int | None:
    """model.mask_token_id, else the data tokenizer's mask token, else None (the checkpoint's)."""
    if model_cfg.mask_token_id is not None:
        return model_cfg.mask_token_id
    tokenizer = data_tokenizer(data_cfg)
    return load_tokenizer(tokenizer).mask_token_id if tokenizer is not None else None


def _section(cfg: DictConfig, key: str, cls):
    return typed_section(cls, key, OmegaConf.to_container(cfg[key], resolve=True))


class Trainer:
    def __init__(self, cfg: DictConfig, run_dir: str | Path):
        self.cfg = cfg
        self.model_cfg = _section(cfg, "model", ModelConfig)
        self.objective_cfg = _section(cfg, "objective", ObjectiveConfig)
        self.optim_cfg = _section(cfg, "optim", OptimConfig)
        self.ds_cfg = _section(cfg, "deepspeed", DeepSpeedConfig)
        self.log_cfg = _section(cfg, "logging", LoggingConfig)
        self.train_cfg = t = _section(cfg, "train", TrainConfig)
        zero3 = self.ds_cfg.enabled and self.ds_cfg.zero_stage == 3
        if zero3 and (t.fp8 != "none" or self.objective_cfg.fused_loss):
            raise ValueError(
                "deepspeed=zero3 partitions the frozen weights that train.fp8 and objective.fused_loss keep "
                "for backward: use deepspeed=zero2 (or none), or speed=plain "
                "(train.fp8=none objective.fused_loss=false)"
            )
        check_data_inputs(cfg.data)

        self.dist = init_distributed(process_group=self.ds_cfg.enabled)
        self.run_dir = Path(broadcast_object(str(run_dir)))  # rank 0's: launchers may differ per rank
        self.folder = RunFolder(self.run_dir) if self.dist.is_main else None  # refuses a folder in use
        device = self.dist.device
        bf16 = t.precision == "bf16" or (t.precision == "auto" and device.type == "cuda")
        if bf16 and device.type == "cpu":
            raise ValueError("train.precision=bf16 needs a GPU; on the CPU use train.precision=fp32 (or auto)")
        check_fp8_device(t.fp8, device)
        if t.fp8 == "torchao":
            require_torchao()  # before the model is built

        self.pretrain = self.objective_cfg.kind == "next_token"
        if self.pretrain and (cfg.resume or zero3):
            raise ValueError(
                "objective.kind=next_token writes only the final base: it cannot resume=, and with "
                "deepspeed=zero3 the base is partitioned at export; use deepspeed=none or zero2"
            )
        resume_from = latest_checkpoint(Path(cfg.resume)) if cfg.resume else None
        self.model = build_model(
            self.model_cfg,
            dtype=torch.bfloat16 if bf16 else torch.float32,
            device=device,
            seed=t.seed,
            mask_token_id=resolve_mask_token_id(self.model_cfg, cfg.data),
            master_fp32=not self.ds_cfg.enabled,
            train_base=self.pretrain,
        )
        # weights before the backend exists: DeepSpeed ZeRO-3 partitions them when it starts
        state = load_checkpoint(resume_from, model=self.model) if resume_from is not None else None
        converted = convert_frozen_linears(self.model, t.fp8)
        if converted:
            log.info("train.fp8=%s: %d frozen Linear layers run in float8", t.fp8, len(converted))
        if t.compile_frozen:
            compile_frozen_modules(self.model)
        if t.compile_diffusion:
            compile_diffusion_layers(self.model)
        self.block_size = self.model.config.block_size
        self.dataset = build_dataset(
            cfg.data,
            vocab_size=self.model.config.vocab_size,
            mask_token_id=self.model.config.mask_token_id,
            dist=self.dist,
        )
        if self.pretrain:
            self.objective = NextTokenObjective(self.model, t.gradient_checkpointing)
        else:
            self.objective = DistillationObjective(self.model, self.objective_cfg, t.gradient_checkpointing)
        if self.ds_cfg.enabled:
            self.backend = DeepSpeedBackend(
                self.objective,
                self.ds_cfg,
                self.optim_cfg,
                total_steps=t.steps,
                micro_batch_size=t.micro_batch_size,
                grad_accum=t.grad_accum,
                world_size=self.dist.world_size,
                bf16=bf16,
            )
        else:
            self.backend = TorchBackend(
                self.objective,
                self.optim_cfg,
                total_steps=t.steps,
                grad_accum=t.grad_accum,
                autocast=bf16,
                distributed=self.dist.world_size > 1,
            )

        self.start_step, self.tokens_seen, wandb_id = 0, 0, None
        if resume_from is not None:
            self.backend.load(resume_from)
            self.dataset.load_state_dict(state["data"])
            self.start_step, self.tokens_seen, wandb_id = state["step"], state["tokens"], state["wandb_id"]
            restore_rng(resume_from, self.dist.rank)
            log.info("resumed from step %d (%s)", self.start_step, resume_from)
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            _write_config(self.run_dir / CONFIG_FILE, cfg)
        self.tracker = Tracker(
            self.run_dir,
            self.log_cfg,
            config=OmegaConf.to_container(cfg, resolve=True),
            total_steps=t.steps,
            start_step=self.start_step,
            wandb_id=wandb_id,
            is_main=self.dist.is_main,
        )

    def train(self, on_step: Callable[[int, dict, list], None] | None = None, save: bool = True) -> dict | None:
        """Run the remaining steps; return the last logged record (rank 0; None elsewhere).

        on_step(step, flops, losses), if given, is called right after each optimizer step (before
        logging and saving) with the steps done, this rank's model FLOPs of the step by part
        (train.flops) and its micro-batch losses (device tensors): what a benchmark times.
        save=False writes no checkpoint and no final export (a throughput measurement)."""
        t, obj = self.train_cfg, self.objective_cfg
        data = batches(self.dataset, t.micro_batch_size)
        device = self.dist.device
        meter = WindowMeter(self.block_size - 1, device)
        record = None
        if self.start_step >= t.steps:
            log.info(
                "already finished: %s is at step %d of train.steps=%d; raise train.steps to continue",
                self.run_dir,
                self.start_step,
                t.steps,
            )
            self.close()
            return None
        for step in range(self.start_step, t.steps):
            lr = self.backend.lr()
            step_flops, losses = {}, []
            for micro in range(t.grad_accum):
                batch = next(data)  # on the CPU: blocks and FLOP counts are made there, no GPU sync
                if self.pretrain:
                    blocks, parts = None, {"next_token": next_token_flops(self.model.config, batch["doc_ids"])}
                else:
                    blocks = sample_blocks(
                        batch,
                        blocks_per_row=obj.blocks_per_row,
                        block_size=self.block_size,
                        mask_token_id=self.model.config.mask_token_id,
                        num_denoise_steps=obj.num_denoise_steps,
                        seed=block_seed(t.seed, step, micro * self.dist.world_size + self.dist.rank),
                    ).to(device)
                    parts = micro_batch_flops_breakdown(
                        self.model.config, batch["doc_ids"], blocks, self.model_cfg.trainable
                    )
                for k, v in parts.items():
                    step_flops[k] = step_flops.get(k, 0.0) + v
                tokens = batch["input_ids"].numel()
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                loss, stats = self.backend.micro_step(batch, blocks, last=micro == t.grad_accum - 1)
                self.tokens_seen += tokens * self.dist.world_size
                meter.add_micro(loss, stats, tokens, sum(parts.values()))
                losses.append(loss)
            meter.add_step(self.backend.step())
            if on_step is not None:
                on_step(step + 1, step_flops, losses)
            self.tracker.advance()
            done = step + 1
            if done % self.log_cfg.log_every == 0 or done == t.steps:
                record = meter.record(
                    step=done,
                    lr=lr,
                    world_size=self.dist.world_size,
                    peak_flops=self.log_cfg.peak_flops_per_gpu,
                    tokens_total=self.tokens_seen,
                )
                self.tracker.log(record)
            if save and (done % t.checkpoint_every == 0 or done == t.steps):
                self.save(done)
                meter.start = time.perf_counter()  # saving time is not training throughput
        if save:
            self.finish()
        else:
            barrier()
            self.close()
        return record if self.dist.is_main else None

    def save(self, step: int) -> None:
        if self.pretrain:  # checkpoints hold the diffusion view; a pretraining run exports its base at the end
            return
        trainer_state = {
            "step": step,
            "tokens": self.tokens_seen,
            "data": self.dataset.state_dict(),
            "wandb_id": self.tracker.wandb_id,
        }
        save_checkpoint(
            checkpoint_path(self.run_dir, step),
            model=self.model,
            backend=self.backend,
            trainer_state=trainer_state,
            rank=self.dist.rank,
            diffusion_meta=self._meta(step),
        )
        if self.dist.is_main:
            prune_checkpoints(self.run_dir, self.train_cfg.keep_last)

    def finish(self) -> None:
        """Export the final diffusion view to <run>/diffusion_view (what evaluation loads), or
        when pretraining the AR model to <run>/base (a Qwen3 checkpoint with the data's tokenizer)."""
        with self.backend.gathered():
            if self.dist.is_main and self.pretrain:
                tokenizer = data_tokenizer(self.cfg.data)
                path = save_base(self.model, self.run_dir / BASE_DIR, load_tokenizer(tokenizer) if tokenizer else None)
                log.info("base model saved to %s", path)
            elif self.dist.is_main:
                path = save_diffusion_view(
                    self.model, self.run_dir / DIFFUSION_DIR, extra_meta=self._meta(self.train_cfg.steps)
                )
                log.info("diffusion view saved to %s", path)
        barrier()
        self.close()

    def close(self) -> None:
        self.tracker.close()
        if self.folder is not None:
            self.folder.close()

    def _meta(self, step: int) -> dict:
        return {
            "base": self.model_cfg.base or self.model_cfg.shape,
            "step": step,
            "tokens": self.tokens_seen,
            "objective": asdict(self.objective_cfg),
            "trainable": list(self.model_cfg.trainable),
        }


def _write_config(path: Path, cfg: DictConfig) -> None:
    """The resolved config of this run, next to its outputs (atomic)."""
    atomic_write_text(path, OmegaConf.to_yaml(cfg, resolve=True))


def run(cfg: DictConfig, run_dir: str | Path) -> dict | None:
    return Trainer(cfg, run_dir).train()
