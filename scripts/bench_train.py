"""Training throughput benchmark: tokens/s/GPU, MFU by FLOP part, and peak memory per GPU, over
model shape x sequence length x gradient checkpointing x attention executor.

    python -m scripts.bench_train OUT_DIR [--shapes qwen3_1.7b,qwen3_4b,qwen3_8b] [--seq-lens 2048,4096,8192]
        [--checkpointing on,off] [--attention flex,flex_eager] [--deepspeed zero2] [--warmup 3] [--steps 5]
        [--budget-s 540] [--commit SHA] [--override KEY=VALUE ...]
    torchrun --standalone --nproc_per_node=N -m scripts.bench_train OUT_DIR ...      (one process per GPU)
    python -m scripts.bench_train OUT_DIR --shapes tiny --seq-lens 64,128            (CPU, seconds)

Every configuration is a short run of the real training step, built from the same pieces as
`train.loop.Trainer` (conf/ composed by Hydra with the +exp=qwen3_* recipe: K=32, KL, chunked
loss, bf16, DeepSpeed per --deepspeed; random weights at the named shape; synthetic documents of
256..seq_len tokens packed into seq_len rows; seq_len / 2 diffusion tokens per row, i.e.
seq_len / 64 blocks of K=32, the recipe's ratio): per micro-batch `sample_blocks` with
`block_seed`, `backend.micro_step` (AR pass under no_grad + diffusion pass + chunked KL +
backward), then `backend.step()` (clip, AdamW, schedule). The model is built once per shape and
reused across settings (a fresh backend/optimizer per setting; with ZeRO-3, which partitions
the module it wraps, once per setting).

Settings:
  --checkpointing on|off       train.gradient_checkpointing (recompute each diffusion layer)
  --attention flex             compiled flex attention (the training default on CUDA)
              flex_eager       the same flex_attention call without torch.compile: PyTorch's
                               unfused reference, which materialises the score matrix
              sdpa             dense boolean mask + scaled_dot_product_attention (CPU default)
Timing: --warmup steps (compilation, allocator warm-up), then --steps timed steps, each between
two CUDA events (perf_counter on the CPU); with several ranks the slowest rank's mean counts.
tokens/s/GPU counts packed input tokens (micro_batch_size x grad_accum x seq_len per step and
GPU), like train.loop's log. MFU = model FLOPs / time / --peak-flops, FLOPs from
train.flops.micro_batch_flops_breakdown on the blocks actually drawn: AR forward, diffusion
forward, diffusion backward (activation gradients back through every, mostly frozen, layer +
weight gradients of the trainable projections). Recomputation from gradient checkpointing is
not counted (the MFU convention). Peak memory: torch.cuda.max_memory_allocated per rank, reset
before each setting (weights, optimizer state, activations; not the allocator's cache).

An out-of-memory error is caught and recorded as status "oom"; --budget-s bounds the wall clock:
a setting that would not finish in time is recorded as "skipped". After every setting OUT_DIR
gets bench.json (environment, command, commit, every result), bench.md (a table) and bench.png,
each written atomically, so a run killed from outside still leaves the finished settings.
The GPU copy of the repo has no .git: pass --commit or ORTHRUS_COMMIT. Commands: docs/scaling.md.
"""

import argparse
import contextlib
import json
import os
import shlex
import socket
import subprocess
import sys
import time
import traceback
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"
SHAPES = ("tiny", "qwen3_1.7b", "qwen3_4b", "qwen3_8b")
ATTENTION = {"flex": "flex", "flex_eager": "flex", "sdpa": "sdpa"}  # setting -> objective.attention
DEEPSPEED = ("none", "zero2", "zero3")
PARTS = ("ar_forward", "diffusion_forward", "diffusion_backward")


# --------------------------------------------------------------------------- shared with dp_parity.py


def shape_overrides(shape: str) -> list[str]:
    """Hydra overrides for a model shape: `tiny` (conf/model/tiny) or a Qwen3 shape with random
    weights and the paper recipe (+exp=qwen3_*: K=32, KL, chunked loss, bf16 on GPU); synthetic
    documents either way (named explicitly: the config's defaults may change)."""
    if shape == "tiny":
        return ["model=tiny", "data=synthetic"]
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}: choose from {SHAPES}")
    return [
        f"+exp={shape}",
        "model.base=null",
        f"model.shape={shape}",
        "data=synthetic",
        "~data.load_tokenized_dataset",
    ]


def synthetic_data_overrides(seq_len: int, rows: int, seed: int = 0) -> list[str]:
    from train.data import synthetic_data

    data = synthetic_data(seq_len, rows, seed)
    return [f"data.{section}.{k}={v}" for section, values in data.items() for k, v in values.items()]


def compose(overrides: list[str]):
    """conf/config.yaml composed with `overrides` (Hydra's compose API, as the tests use it)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import train.config  # noqa: F401  (registers ${floor_div:...})

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


def skip_deepspeed_cpu_comm_op() -> None:
    """On the CPU, DeepSpeed JIT-compiles a shared-memory comm op (about a minute) that these
    runs do not need; the tests skip it the same way (tests/test_train_loop.py)."""
    import torch

    if torch.cuda.is_available():
        return
    with contextlib.suppress(ImportError):
        import importlib

        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(commit: str | None) -> dict:
    """Provenance: commit (--commit, $ORTHRUS_COMMIT, else git), device, library versions."""
    import torch
    import transformers

    try:
        import deepspeed

        ds_version = deepspeed.__version__
    except Exception:  # noqa: BLE001  (absent, or fails to import without its toolchain)
        ds_version = None
    return {
        "commit": commit or os.environ.get("ORTHRUS_COMMIT") or git_commit(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "gpus_visible": torch.cuda.device_count(),
        "host": socket.gethostname(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "deepspeed": ds_version,
    }


# --------------------------------------------------------------------------- one setting


@contextlib.contextmanager
def attention_setting(name: str):
    """flex_eager: train.attention's flex call without torch.compile (it compiles on CUDA)."""
    import train.attention as attention

    if name != "flex_eager":
        yield
        return
    compiled_flex = attention._flex

    def eager_flex(q, k, v, block_mask, scale, compiled):
        return compiled_flex(q, k, v, block_mask, scale, compiled=False)

    attention._flex = eager_flex
    try:
        yield
    finally:
        attention._flex = compiled_flex


def is_oom(error: BaseException) -> bool:
    import torch

    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    return isinstance(error, oom) or "out of memory" in str(error).lower()


def release_zero3_globals() -> None:
    """DeepSpeed ZeRO-3 (0.19) keeps a destroyed engine reachable from two module globals: the
    forward module stack of parameter_offload and an unbounded functools.lru_cache on
    PartitionedParameterCoordinator.__params_to_release (keyed by the coordinator itself).
    Clear both so the engine, its optimizer state and the partitioned model can be freed."""
    try:
        from deepspeed.runtime.zero import parameter_offload, partitioned_param_coordinator
    except ImportError:
        return
    stack = getattr(parameter_offload, "FWD_MODULE_STACK", None)
    if isinstance(stack, list):
        stack.clear()
    fn = getattr(
        partitioned_param_coordinator.PartitionedParameterCoordinator,
        "_PartitionedParameterCoordinator__params_to_release",
        None,
    )
    for f in (fn, *(c.cell_contents for c in (getattr(fn, "__closure__", None) or ()))):
        if hasattr(f, "cache_clear"):
            f.cache_clear()


class Shape:
    """One model shape: config sections composed from conf/, the model built once."""

    def __init__(self, name: str, args, dist):
        import torch

        from train.backend import DeepSpeedConfig
        from train.loop import resolve_mask_token_id
        from train.model import ModelConfig
        from train.optim import OptimConfig

        self.name, self.args, self.dist = name, args, dist
        cfg = compose([*shape_overrides(name), f"deepspeed={args.deepspeed}", *args.override])
        section = lambda key: _container(cfg[key])  # noqa: E731
        self.model_cfg = ModelConfig(**section("model"))
        self.ds_cfg = DeepSpeedConfig(**section("deepspeed"))
        self.optim_cfg = OptimConfig(**section("optim"))
        self.objective = section("objective")
        self.train = section("train")
        self.seed = self.train["seed"]
        precision = args.precision if args.precision != "auto" else self.train["precision"]
        self.bf16 = precision == "bf16" or (precision == "auto" and dist.device.type == "cuda")
        self.mask_token_id = resolve_mask_token_id(self.model_cfg, cfg.data)
        self.model = None
        self.build_s = None
        self._dtype = torch.bfloat16 if self.bf16 else torch.float32

    def build(self):
        import torch

        from eval.metrics import free_memory
        from train.model import build_model

        free_memory()
        start = time.perf_counter()
        self.model = build_model(
            self.model_cfg,
            dtype=self._dtype,
            device=self.dist.device,
            seed=self.seed,
            mask_token_id=self.mask_token_id,
            master_fp32=not self.ds_cfg.enabled,
        )
        if self.dist.device.type == "cuda":
            torch.cuda.synchronize()
        self.build_s = time.perf_counter() - start
        self.params_total = sum(p.numel() for p in self.model.parameters())
        self.params_trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        return self.model

    def drop_model(self):
        from eval.metrics import free_memory

        self.model = None
        free_memory()


def _container(node) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=True)


def run_setting(shape: Shape, seq_len: int, checkpointing: bool, attention: str, args) -> dict:
    """Warm-up + timed steps of one setting on this rank; raises on OOM (caller cleans up)."""
    import torch
    from omegaconf import OmegaConf

    from eval.metrics import free_memory
    from train.backend import DeepSpeedBackend, TorchBackend
    from train.blocks import sample_blocks
    from train.data import batches, build_dataset, synthetic_data
    from train.flops import FLOP_PARTS, micro_batch_flops_breakdown
    from train.loop import block_seed
    from train.objective import DistillationObjective, ObjectiveConfig

    dist, m, G = shape.dist, args.micro_batch_size, args.grad_accum
    model = shape.model if shape.model is not None else shape.build()
    K = model.config.block_size
    blocks_per_row = args.blocks_per_row or max(1, int(seq_len * args.diffusion_fraction) // K)
    obj_cfg = ObjectiveConfig(
        **{**shape.objective, "blocks_per_row": blocks_per_row, "attention": ATTENTION[attention]}
    )
    total_steps = args.warmup + args.steps
    rows = total_steps * m * G * dist.world_size
    dataset = build_dataset(
        OmegaConf.create(synthetic_data(seq_len, max(rows, 4 * dist.world_size), seed=shape.seed)),
        vocab_size=model.config.vocab_size,
        mask_token_id=model.config.mask_token_id,
        dist=dist,
    )
    data = batches(dataset, m)
    for p in model.parameters():  # no stale gradients from an earlier setting (e.g. one that ran out of memory)
        p.grad = None
    cuda = dist.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    objective = DistillationObjective(model, obj_cfg, checkpointing)
    backend = None
    try:
        if shape.ds_cfg.enabled:  # as train.loop.Trainer builds it
            backend = DeepSpeedBackend(
                objective,
                shape.ds_cfg,
                shape.optim_cfg,
                total_steps=total_steps,
                micro_batch_size=m,
                grad_accum=G,
                world_size=dist.world_size,
                bf16=shape.bf16,
            )
        else:
            backend = TorchBackend(
                objective,
                shape.optim_cfg,
                total_steps=total_steps,
                grad_accum=G,
                autocast=shape.bf16,
                distributed=dist.world_size > 1,
            )
        flops = dict.fromkeys(FLOP_PARTS, 0.0)
        times, losses = [], []
        events = []
        warm_start = time.perf_counter()
        with attention_setting(attention):
            for step in range(total_steps):
                timed = step >= args.warmup
                if timed and step == args.warmup:
                    if cuda:
                        torch.cuda.synchronize()
                    warmup_s = time.perf_counter() - warm_start
                    wall_start = time.perf_counter()
                if cuda:
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                t0 = time.perf_counter()
                for micro in range(G):  # the micro-step of train.loop.Trainer.train
                    batch = next(data)
                    blocks = sample_blocks(
                        batch,
                        blocks_per_row=blocks_per_row,
                        block_size=K,
                        mask_token_id=model.config.mask_token_id,
                        num_denoise_steps=obj_cfg.num_denoise_steps,
                        seed=block_seed(shape.seed, step, micro * dist.world_size + dist.rank),
                    )
                    if timed:
                        for k, v in micro_batch_flops_breakdown(
                            model.config, batch["doc_ids"], blocks, shape.model_cfg.trainable
                        ).items():
                            flops[k] += v
                    batch = {k: v.to(dist.device, non_blocking=True) for k, v in batch.items()}
                    loss, _ = backend.micro_step(batch, blocks.to(dist.device), last=micro == G - 1)
                    losses.append(loss)
                backend.step()
                if cuda:
                    end.record()
                    if timed:
                        events.append((start, end))
                elif timed:
                    times.append(time.perf_counter() - t0)
            if cuda:
                torch.cuda.synchronize()
                times = [s.elapsed_time(e) / 1e3 for s, e in events]
            timed_wall = time.perf_counter() - wall_start
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
        loss_values = [float(x) for x in losses]
        return {
            "blocks_per_row": blocks_per_row,
            "diffusion_tokens_per_row": blocks_per_row * K,
            "step_times_s": times,
            "timed_wall_s": timed_wall,
            "warmup_s": warmup_s,
            "flops_sums": flops,
            "max_memory_gib": peak,
            "loss_first": loss_values[0],
            "loss_last": loss_values[-1],
            "params_trainable": shape.params_trainable,
        }
    finally:
        engine = getattr(backend, "engine", None)
        if engine is not None:
            engine.destroy()  # removes ZeRO's gradient hooks from the (reused) module
        del backend, objective
        for p in model.parameters():
            p.grad = None
        if shape.ds_cfg.enabled and shape.ds_cfg.zero_stage == 3:
            release_zero3_globals()
            shape.drop_model()  # ZeRO-3 has partitioned it
        del model
        free_memory()


def summarize(local: list[dict], *, seq_len: int, args, peak_flops: float) -> dict:
    """Combine the ranks' results of one setting: the slowest rank's mean step time counts."""
    steps = args.steps
    step_s = max(sum(r["step_times_s"]) / len(r["step_times_s"]) for r in local)
    per_rank_flops = [{k: v / steps for k, v in r["flops_sums"].items()} for r in local]
    parts = {k: sum(f[k] for f in per_rank_flops) / len(local) for k in per_rank_flops[0]}
    flops = {
        "ar_forward": parts["ar_forward"],
        "diffusion_forward": parts["diffusion_forward"],
        "diffusion_backward": parts["diffusion_backward_activations"] + parts["diffusion_backward_weights"],
        "diffusion_backward_activations": parts["diffusion_backward_activations"],
        "diffusion_backward_weights": parts["diffusion_backward_weights"],
    }
    flops["total"] = flops["ar_forward"] + flops["diffusion_forward"] + flops["diffusion_backward"]
    tokens = args.micro_batch_size * args.grad_accum * seq_len
    r0 = local[0]
    times = sorted(r0["step_times_s"])
    memory = [r["max_memory_gib"] for r in local]
    return {
        "blocks_per_row": r0["blocks_per_row"],
        "diffusion_tokens_per_row": r0["diffusion_tokens_per_row"],
        "tokens_per_step_per_gpu": tokens,
        "step_time_s": step_s,
        "step_time_s_median_rank0": times[len(times) // 2],
        "step_times_s_rank0": r0["step_times_s"],
        "step_time_s_per_rank": [sum(r["step_times_s"]) / len(r["step_times_s"]) for r in local],
        "tokens_per_s_per_gpu": tokens / step_s,
        "mfu": flops["total"] / step_s / peak_flops,
        "mfu_by_part": {k: flops[k] / step_s / peak_flops for k in PARTS},
        "flops_per_step_per_gpu": flops,
        "flops_share": {k: flops[k] / flops["total"] for k in PARTS},
        "max_memory_gib": max(memory) if memory[0] is not None else None,
        "max_memory_gib_per_rank": memory,
        "warmup_s": max(r["warmup_s"] for r in local),
        "timed_wall_s": max(r["timed_wall_s"] for r in local),
        "loss_first": r0["loss_first"],
        "loss_last": r0["loss_last"],
    }


# --------------------------------------------------------------------------- reports


def write_reports(report: dict, out: Path) -> None:
    from data._io import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "bench.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out / "bench.md", markdown(report))
    plot(report, out / "bench.png")


def markdown(report: dict) -> str:
    env, s = report["environment"], report["settings"]
    lines = [
        "# Training throughput",
        "",
        f"{env['device']} x {report['world_size']} (world size), torch {env['torch']}, DeepSpeed {env['deepspeed']}, "
        f"backend `{s['deepspeed']}`, {s['precision']}; commit `{env['commit']}`.",
        f"Per setting: {s['warmup']} warm-up + {s['steps']} timed steps of micro_batch_size {s['micro_batch_size']} x "
        f"grad_accum {s['grad_accum']} rows per GPU; MFU against {s['peak_flops_per_gpu']:.3g} FLOP/s per GPU "
        "(model FLOPs of train/flops.py, recomputation not counted).",
        "",
        f"Command: `{report['command']}`",
        "",
        *(
            [
                f"FLOPs and MFU recounted from the stored step times by `{report['mfu_recount']['command']}` "
                f"(commit `{report['mfu_recount']['commit']}`).",
                "",
            ]
            if "mfu_recount" in report
            else []
        ),
        "| shape | seq | GC | attention | status | tokens/s/GPU | MFU | step (s) | peak GiB | "
        "TFLOP/step: AR fwd / diff fwd / diff bwd | MFU: AR / fwd / bwd |",
        "|---|---:|---|---|---|---:|---:|---:|---:|---|---|",
    ]
    for r in report["results"]:
        gc_ = "on" if r["gradient_checkpointing"] else "off"
        head = f"| {r['shape']} | {r['seq_len']} | {gc_} | {r['attention']} | {r['status']} |"
        if r["status"] != "ok":
            lines.append(f"{head} | | | {_gib(r.get('max_memory_gib'))} | | |")
            continue
        f, mp = r["flops_per_step_per_gpu"], r["mfu_by_part"]
        lines.append(
            f"{head} {r['tokens_per_s_per_gpu']:,.0f} | {r['mfu']:.3f} | "
            f"{r['step_time_s']:.3f} | {_gib(r['max_memory_gib'])} | "
            f"{f['ar_forward'] / 1e12:.1f} / {f['diffusion_forward'] / 1e12:.1f} / "
            f"{f['diffusion_backward'] / 1e12:.1f} | "
            f"{mp['ar_forward']:.3f} / {mp['diffusion_forward']:.3f} / {mp['diffusion_backward']:.3f} |"
        )
    lines += [
        "",
        f"Complete: {report['complete']} (elapsed {report['elapsed_s']:.0f} s of a {s['budget_s']:.0f} s budget).",
        "",
    ]
    if report.get("models"):
        lines += ["| shape | parameters | trainable | build (s) |", "|---|---:|---:|---:|"]
        for name, mdl in report["models"].items():
            lines.append(
                f"| {name} | {mdl['params_total'] / 1e9:.3f} B | "
                f"{mdl['params_trainable'] / 1e9:.3f} B | {mdl['build_s']:.1f} |"
            )
        lines.append("")
    lines.append("![throughput](bench.png)\n")
    return "\n".join(lines)


def _gib(x) -> str:
    return "" if x is None else f"{x:.1f}"


def plot(report: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    from eval.figures import save_figure  # selects the Agg backend

    ok = [r for r in report["results"] if r["status"] == "ok"]
    shapes = list(dict.fromkeys(r["shape"] for r in report["results"])) or ["(none)"]
    rows = (("tokens_per_s_per_gpu", "tokens/s/GPU"), ("mfu", "MFU"), ("max_memory_gib", "peak memory per GPU (GiB)"))
    fig, axes = plt.subplots(len(rows), len(shapes), figsize=(4.2 * len(shapes), 9), squeeze=False)
    for col, shape in enumerate(shapes):
        settings = dict.fromkeys((r["gradient_checkpointing"], r["attention"]) for r in ok if r["shape"] == shape)
        for gc_, attn in settings:
            rs = sorted(
                (
                    r
                    for r in ok
                    if r["shape"] == shape and r["gradient_checkpointing"] == gc_ and r["attention"] == attn
                ),
                key=lambda r: r["seq_len"],
            )
            for row, (key, _) in enumerate(rows):
                points = [(r["seq_len"], r[key]) for r in rs if r[key] is not None]
                if points:
                    axes[row][col].plot(*zip(*points), "o-", label=f"GC {'on' if gc_ else 'off'}, {attn}")
        for r in report["results"]:
            if r["shape"] == shape and r["status"] == "oom":
                axes[0][col].plot([r["seq_len"]], [0], "x", color="red", ms=9)
        axes[0][col].set_title(f"{shape} (world {report['world_size']})")
        for row, (_, label) in enumerate(rows):
            ax = axes[row][col]
            ax.set(xlabel="seq_len", ylabel=label)
            ax.set_xscale("log", base=2)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    fig.suptitle(
        f"{report['environment']['device']}, {report['settings']['deepspeed']}; red x: out of memory", fontsize=9
    )
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


# --------------------------------------------------------------------------- driver


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--shapes", default="qwen3_1.7b,qwen3_4b,qwen3_8b", help=f"comma list of {', '.join(SHAPES)}")
    ap.add_argument("--seq-lens", default="2048,4096,8192")
    ap.add_argument("--checkpointing", default="on,off", help="comma list of on | off")
    ap.add_argument("--attention", default="flex,flex_eager", help=f"comma list of {', '.join(ATTENTION)}")
    ap.add_argument("--deepspeed", default="zero2", choices=DEEPSPEED, help="none: plain PyTorch / DDP")
    ap.add_argument("--precision", default="auto", help="auto (the config's: bf16 on GPU, fp32 on CPU) | bf16 | fp32")
    ap.add_argument("--micro-batch-size", type=int, default=1, help="rows per micro-batch and GPU")
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument(
        "--diffusion-fraction", type=float, default=0.5, help="diffusion tokens per row / seq_len (recipe: 0.5)"
    )
    ap.add_argument(
        "--blocks-per-row", type=int, default=None, help="fixed blocks per row (overrides --diffusion-fraction)"
    )
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--budget-s", type=float, default=540.0, help="wall-clock budget of the whole sweep")
    ap.add_argument(
        "--peak-flops", type=float, default=None, help="per GPU; default logging.peak_flops_per_gpu (989e12)"
    )
    ap.add_argument(
        "--pg-timeout-s", type=float, default=300.0, help="collective timeout (a rank that runs out of memory alone)"
    )
    ap.add_argument("--commit", default=None, help="default: $ORTHRUS_COMMIT, else git rev-parse HEAD")
    ap.add_argument(
        "--override", action="append", default=[], help="extra Hydra override, e.g. objective.chunk_size=2048"
    )
    args = ap.parse_args(argv)
    args.shapes = _list(args.shapes)
    args.seq_lens = [int(x) for x in _list(args.seq_lens)]
    flags = {"on": True, "off": False, "true": True, "false": False}
    args.checkpointing = [flags[x.lower()] for x in _list(args.checkpointing)]
    args.attention = _list(args.attention)
    for name, values, allowed in (("--shapes", args.shapes, SHAPES), ("--attention", args.attention, ATTENTION)):
        bad = [v for v in values if v not in allowed]
        if bad:
            ap.error(f"{name}: unknown {bad}; choose from {list(allowed)}")
    if args.steps < 1 or args.warmup < 0:
        ap.error("need --steps >= 1 and --warmup >= 0")
    return args


def _list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def init_dist(args):
    """torchrun's topology (train.distributed), with a bounded collective timeout."""
    import torch
    import torch.distributed as tdist

    from train.distributed import init_distributed

    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not tdist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        tdist.init_process_group(backend, timeout=timedelta(seconds=args.pg_timeout_s))
    return init_distributed(process_group=args.deepspeed != "none")


def gather(obj, dist) -> list:
    import torch.distributed as tdist

    if dist.world_size == 1 or not tdist.is_initialized():
        return [obj]
    out = [None] * dist.world_size
    tdist.all_gather_object(out, obj)
    return out


def main(argv: list[str] | None = None) -> dict | None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    start = time.perf_counter()
    import torch

    from eval.metrics import free_memory
    from train.distributed import broadcast_object
    from train.tracking import LoggingConfig

    if torch.cuda.is_available():  # one compiled flex kernel per (shape, seq_len): more than dynamo's default 8
        import torch._dynamo.config as dynamo_config

        for key in ("recompile_limit", "cache_size_limit"):
            with contextlib.suppress(AttributeError):
                setattr(dynamo_config, key, max(64, getattr(dynamo_config, key)))
    if args.deepspeed != "none":
        skip_deepspeed_cpu_comm_op()
    dist = init_dist(args)
    peak_flops = args.peak_flops or LoggingConfig().peak_flops_per_gpu
    precision = args.precision if args.precision != "auto" else ("bf16" if dist.device.type == "cuda" else "fp32")
    report = {
        "command": shlex.join(["python", "-m", "scripts.bench_train", *argv]),
        "world_size": dist.world_size,
        "environment": environment(args.commit),
        "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": {
            "deepspeed": args.deepspeed,
            "precision": precision,
            "micro_batch_size": args.micro_batch_size,
            "grad_accum": args.grad_accum,
            "diffusion_fraction": args.diffusion_fraction,
            "blocks_per_row": args.blocks_per_row,
            "warmup": args.warmup,
            "steps": args.steps,
            "budget_s": args.budget_s,
            "peak_flops_per_gpu": peak_flops,
            "overrides": args.override,
        },
        "models": {},
        "results": [],
        "complete": False,
        "elapsed_s": 0.0,
    }
    out = args.out_dir
    say = print if dist.is_main else (lambda *a, **k: None)
    last_cost: dict[str, tuple[int, float]] = {}  # shape -> (seq_len, wall s) of its latest setting

    def publish():
        report["elapsed_s"] = time.perf_counter() - start
        if dist.is_main:
            write_reports(report, out)

    settings = [(s, c, a) for s in args.seq_lens for c in args.checkpointing for a in args.attention]
    for shape_name in args.shapes:
        shape = None
        for seq_len, checkpointing, attention in settings:
            base = {
                "shape": shape_name,
                "seq_len": seq_len,
                "gradient_checkpointing": checkpointing,
                "attention": attention,
            }
            if dist.device.type == "cpu" and attention != "sdpa":
                reason = "flex attention has no backward on the CPU (PyTorch); CUDA only"
                report["results"].append({**base, "status": "unsupported", "reason": reason})
                publish()
                continue
            elapsed = time.perf_counter() - start
            # the shape's latest setting scaled by seq_len; a shape not run yet: the costliest setting so far
            seen = last_cost.get(shape_name)
            estimate = (
                seen[1] * seq_len / seen[0]
                if seen
                else max((w * seq_len / s for s, w in last_cost.values()), default=0.0)
            )
            go = broadcast_object(elapsed + estimate < args.budget_s)  # rank 0 decides for all
            if not go:
                report["results"].append({**base, "status": "skipped", "reason": "wall-clock budget"})
                publish()
                continue
            t0 = time.perf_counter()
            status, error, local = "ok", None, None
            try:
                if shape is None:
                    shape = Shape(shape_name, args, dist)
                if shape.model is None:
                    shape.build()
                    report["models"][shape_name] = {
                        "params_total": shape.params_total,
                        "params_trainable": shape.params_trainable,
                        "build_s": shape.build_s,
                    }
                    say(
                        f"[bench] built {shape_name}: {shape.params_total / 1e9:.2f} B parameters "
                        f"in {shape.build_s:.1f} s",
                        flush=True,
                    )
                local = run_setting(shape, seq_len, checkpointing, attention, args)
            except Exception as e:  # noqa: BLE001  (recorded; the sweep goes on)
                status = "oom" if is_oom(e) else "error"
                error = f"{type(e).__name__}: {str(e)[:400]}"
                if status == "error":
                    error += "\n" + traceback.format_exc()[-2500:]
                if shape is not None and status == "error":
                    shape.drop_model()  # rebuilt for the next setting: no half-updated state
            free_memory()  # after the except block: its traceback no longer pins the failed step's tensors
            statuses = gather((status, error, local), dist)
            wall = time.perf_counter() - t0
            last_cost[shape_name] = (seq_len, wall)
            worst = (
                "error"
                if any(s == "error" for s, _, _ in statuses)
                else ("oom" if any(s == "oom" for s, _, _ in statuses) else "ok")
            )
            result = {**base, "status": worst, "wall_s": wall}
            if worst == "ok":
                result.update(
                    summarize([loc for _, _, loc in statuses], seq_len=seq_len, args=args, peak_flops=peak_flops)
                )
            else:
                result["errors"] = {str(rank): err for rank, (s, err, _) in enumerate(statuses) if err}  # JSON keys
                if torch.cuda.is_available():
                    result["max_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
            report["results"].append(result)
            publish()
            if worst == "ok":
                say(
                    f"[bench] {shape_name} seq {seq_len} GC {'on' if checkpointing else 'off'} {attention}: "
                    f"{result['tokens_per_s_per_gpu']:,.0f} tokens/s/GPU, MFU {result['mfu']:.3f}, "
                    f"peak {_gib(result['max_memory_gib']) or '-'} GiB, {wall:.0f} s",
                    flush=True,
                )
            else:
                say(
                    f"[bench] {shape_name} seq {seq_len} GC {'on' if checkpointing else 'off'} {attention}: {worst} "
                    f"{next(iter(result['errors'].values()), '')[:200]}",
                    flush=True,
                )
        if shape is not None:
            shape.drop_model()
    report["complete"] = all(r["status"] != "skipped" for r in report["results"])
    report["finished_utc"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    publish()
    return report if dist.is_main else None


if __name__ == "__main__":
    main()
