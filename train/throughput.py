"""Training throughput: tokens/s/GPU, MFU by FLOP part, and peak memory per GPU of the real
`train.loop.Trainer`, over model shape x sequence length x gradient checkpointing x attention
executor (entry point: scripts/bench_train.py; commands: docs/scaling.md).

Every setting is a short run of the Trainer on the config composed from conf/ with the +exp=qwen3_*
recipe (K=32, KL, chunked loss, bf16, DeepSpeed per --deepspeed; random weights at the named shape;
synthetic documents of 256..seq_len tokens packed into seq_len rows; seq_len / 2 diffusion tokens
per row, i.e. seq_len / 64 blocks of K=32, the recipe's ratio) and the setting's overrides. A fresh
Trainer (model, data, objective, backend) is built per setting; it writes no checkpoint.

Settings:
  checkpointing on|off   train.gradient_checkpointing (recompute each diffusion layer)
  attention flex         compiled flex attention (the training default on CUDA)
            flex_eager   the same flex_attention call without torch.compile: PyTorch's unfused
                         reference, which materialises the score matrix
            sdpa         dense boolean mask + scaled_dot_product_attention (CPU default)
Timing: `warmup` steps (compilation, allocator warm-up), then `steps` timed steps; Trainer.train's
on_step hook marks the end of each optimizer step (after a CUDA synchronize), so a step's time runs
from the end of the previous one; with several ranks the slowest rank's mean counts.
tokens/s/GPU counts packed input tokens (micro_batch_size x grad_accum x seq_len per step and
GPU), like the Trainer's log. MFU = model FLOPs / time / peak FLOP/s, FLOPs by part as the Trainer
counts them (train.flops on the blocks actually drawn): AR forward, diffusion forward, diffusion
backward (activation gradients back through every, mostly frozen, layer + weight gradients of the
trainable projections). Recomputation from gradient checkpointing is not counted (the MFU
convention). Peak memory: torch.cuda.max_memory_allocated per rank over the timed steps (weights,
optimizer state, activations; not the allocator's cache).

Variants (--variant NAME:OVERRIDE ...): named sets of Hydra overrides (objective.fused_loss=true,
train.fp8=frozen, train.micro_batch_size=2, ...), each run at every setting: the before/after
table of the speed knobs (docs/training.md, "Training speed"). tokens/s/GPU, gradient
checkpointing and micro-batch come from each variant's composed config. --profile NAME,...:
those variants' settings also run `--profile-steps` steps under torch.profiler after the timed
steps (train/profile.py), written to OUT_DIR/profile/<setting>/. Each result carries the projected
wall-clock of a run of --project-row-tokens row tokens on --project-gpus GPUs at its throughput
(a projection: rows / (tokens/s/GPU x GPUs), perfect data-parallel scaling assumed).

An out-of-memory error is caught and recorded as status "oom"; the wall-clock budget bounds the
sweep: a setting that would not finish in time is recorded as "skipped". After every setting
OUT_DIR gets bench.json (provenance, every result), bench.md (a table) and bench.png, each written
atomically, so a run killed from outside still leaves the finished settings.
"""

import contextlib
import json
import os
import tempfile
import time
import traceback
from datetime import datetime, timedelta, timezone
from pathlib import Path

ATTENTION = {"flex": "flex", "flex_eager": "flex", "sdpa": "sdpa"}  # setting -> objective.attention
DEEPSPEED = ("none", "zero2", "zero3")
PARTS = ("ar_forward", "diffusion_forward", "diffusion_backward")


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


def point_config(shape: str, checkpointing: bool, args, variant=()):
    """The config that fixes one point's batch shape, block size and gradient checkpointing, composed
    once per point from `point_overrides`."""
    from train.config import compose

    return compose(point_overrides(shape, checkpointing, args, variant))


def point_overrides(shape: str, checkpointing: bool, args, variant=()) -> list[str]:
    """The overrides of one point, which end every setting's list too (`setting_overrides`): the shape,
    DeepSpeed, the command line's batch and checkpointing, then --override and the variant (last, so they
    win: a variant may set train.micro_batch_size or train.gradient_checkpointing)."""
    from train.config import shape_overrides

    return [
        *shape_overrides(shape),
        f"deepspeed={args.deepspeed}",
        f"train.micro_batch_size={args.micro_batch_size}",
        f"train.grad_accum={args.grad_accum}",
        f"train.gradient_checkpointing={checkpointing}",
        *args.override,
        *variant,
    ]


def setting_overrides(
    point, shape: str, seq_len: int, attention: str, args, world_size: int, variant=(), extra_steps=0
):
    """The Hydra overrides of one setting and its blocks per row (--diffusion-fraction of the row), from the
    point's composed config `point` (`point_config`): the setting's own (data, steps, attention, precision,
    logging), then the point's (`point_overrides`, with the checkpointing the point composed to), so
    --override and the variant still come last and win; `extra_steps` run after the timed ones (the profile)."""
    from train.config import synthetic_data_overrides

    K = point.model.block_size or 32
    blocks_per_row = args.blocks_per_row or max(1, int(seq_len * args.diffusion_fraction) // K)
    steps = args.warmup + args.steps + extra_steps
    rows = steps * point.train.micro_batch_size * point.train.grad_accum * world_size
    overrides = [
        *synthetic_data_overrides(seq_len, max(rows, 4 * world_size)),
        f"objective.blocks_per_row={blocks_per_row}",
        f"objective.attention={ATTENTION[attention]}",
        f"train.steps={steps}",
        f"train.precision={args.precision}",
        f"logging.log_every={steps}",
        "logging.progress_bar=false",
        "logging.wandb.mode=disabled",
        *point_overrides(shape, point.train.gradient_checkpointing, args, variant),
    ]
    return overrides, blocks_per_row, K


def run_setting(
    point,
    shape: str,
    seq_len: int,
    attention: str,
    args,
    dist,
    run_dir: Path,
    variant=(),
    profile_dir: Path | None = None,
):
    """Build the Trainer of one setting (`point`: its `point_config`) and run its warm-up + timed
    steps on this rank (then, with `profile_dir`, 1 + args.profile_steps profiled steps on rank 0);
    raises on out-of-memory (the Trainer is released either way). Returns this rank's timings,
    FLOPs and effective settings."""
    import torch

    from eval.metrics import free_memory
    from train.config import compose
    from train.loop import Trainer
    from train.profile import StepProfiler

    timed = args.warmup + args.steps
    profiler = None
    if profile_dir is not None:
        profiler = StepProfiler(profile_dir, start_after=timed, active=args.profile_steps, device=dist.device)
    extra = profiler.total_steps - timed if profiler else 0
    overrides, blocks_per_row, K = setting_overrides(
        point, shape, seq_len, attention, args, dist.world_size, variant, extra
    )
    cfg = compose(overrides)
    cuda = dist.device.type == "cuda"
    marks = {"flops": {}, "times": [], "losses": []}

    def on_step(step: int, flops: dict, losses: list) -> None:
        if cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        if step == args.warmup:
            marks["warm"] = now
            if cuda:
                torch.cuda.reset_peak_memory_stats()
        elif args.warmup < step <= timed:
            marks["times"].append(now - marks["last"])
            for k, v in flops.items():
                marks["flops"][k] = marks["flops"].get(k, 0.0) + v
            marks["losses"] += losses
        if step == timed:
            marks["peak"] = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
            marks["end"] = now
        marks["last"] = now
        if profiler is not None and dist.is_main:
            profiler.on_step(step)

    free_memory()
    trainer = None
    try:
        start = time.perf_counter()
        trainer = Trainer(cfg, run_dir)
        if cuda:
            torch.cuda.synchronize()
        build_s = time.perf_counter() - start
        params = [(getattr(p, "ds_numel", p.numel()), p.requires_grad) for p in trainer.model.parameters()]
        start = time.perf_counter()
        with attention_setting(attention):
            trainer.train(on_step=on_step, save=False)
        losses = [float(x) for x in marks["losses"]]
        return {
            "blocks_per_row": blocks_per_row,
            "diffusion_tokens_per_row": blocks_per_row * K,
            "micro_batch_size": cfg.train.micro_batch_size,
            "grad_accum": cfg.train.grad_accum,
            "gradient_checkpointing": cfg.train.gradient_checkpointing,
            "profile": profiler.result if profiler is not None else None,
            "step_times_s": marks["times"],
            "timed_wall_s": marks["end"] - marks["warm"],
            "warmup_s": marks["warm"] - start,
            "flops_sums": marks["flops"],
            "max_memory_gib": marks["peak"],
            "loss_first": losses[0],
            "loss_last": losses[-1],
            "build_s": build_s,
            "params_total": sum(n for n, _ in params),
            "params_trainable": sum(n for n, trainable in params if trainable),
        }
    finally:
        if trainer is not None:
            trainer.close()
            engine = getattr(trainer.backend, "engine", None)
            if engine is not None:
                engine.destroy()
        if args.deepspeed == "zero3":
            release_zero3_globals()
        del trainer
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
    r0 = local[0]
    tokens = r0["micro_batch_size"] * r0["grad_accum"] * seq_len
    times = sorted(r0["step_times_s"])
    memory = [r["max_memory_gib"] for r in local]
    return {
        "blocks_per_row": r0["blocks_per_row"],
        "diffusion_tokens_per_row": r0["diffusion_tokens_per_row"],
        "micro_batch_size": r0["micro_batch_size"],
        "grad_accum": r0["grad_accum"],
        "gradient_checkpointing": r0["gradient_checkpointing"],
        "tokens_per_step_per_gpu": tokens,
        "step_time_s": step_s,
        "step_time_s_median_rank0": times[len(times) // 2],
        "step_times_s_rank0": r0["step_times_s"],
        "step_time_s_per_rank": [sum(r["step_times_s"]) / len(r["step_times_s"]) for r in local],
        "tokens_per_s_per_gpu": tokens / step_s,
        "projected_hours": projected_hours(tokens / step_s, args.project_row_tokens, args.project_gpus),
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


def projected_hours(tokens_per_s_per_gpu: float, row_tokens: float, gpus: int) -> float:
    """A projection, not a measurement: hours for `row_tokens` packed row tokens on `gpus` GPUs at
    this per-GPU throughput, with perfect data-parallel scaling."""
    return row_tokens / (tokens_per_s_per_gpu * gpus) / 3600


# --------------------------------------------------------------------------- reports


def write_reports(report: dict, out: Path) -> None:
    from data._io import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "bench.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out / "bench.md", markdown(report))
    plot(report, out / "bench.png")


def markdown(report: dict) -> str:
    from train.profile import markdown as profile_markdown

    prov, s = report["provenance"], report["settings"]
    git = prov["git"]
    lines = [
        "# Training throughput",
        "",
        f"{prov['device']} x {report['world_size']} (world size), torch {prov['torch']}, "
        f"DeepSpeed {report['deepspeed_version']}, backend `{s['deepspeed']}`, {s['precision']}; "
        f"commit `{git['commit']}`{' (dirty)' if git['dirty'] else ''}, sources sha256 "
        f"`{prov['source_hash']['sha256'][:12]}`.",
        f"Per setting: {s['warmup']} warm-up + {s['steps']} timed steps of micro_batch_size {s['micro_batch_size']} x "
        f"grad_accum {s['grad_accum']} rows per GPU; MFU against {s['peak_flops_per_gpu']:.3g} FLOP/s per GPU "
        "(model FLOPs of train/flops.py, recomputation not counted).",
        "",
        f"Command: `{report['command']}`",
        "",
        "| variant | shape | seq | GC | micro-batch | attention | status | tokens/s/GPU | MFU | step (s) | peak GiB | "
        "TFLOP/step: AR fwd / diff fwd / diff bwd | MFU: AR / fwd / bwd | projected h |",
        "|---|---|---:|---|---:|---|---|---:|---:|---:|---:|---|---|---:|",
    ]
    for r in report["results"]:
        gc_ = "on" if r["gradient_checkpointing"] else "off"
        head = (
            f"| {r['variant']} | {r['shape']} | {r['seq_len']} | {gc_} | {r['micro_batch_size']} | {r['attention']} |"
        )
        head += f" {r['status']} |"
        if r["status"] != "ok":
            lines.append(f"{head} | | | {_gib(r.get('max_memory_gib'))} | | | |")
            continue
        f, mp = r["flops_per_step_per_gpu"], r["mfu_by_part"]
        lines.append(
            f"{head} {r['tokens_per_s_per_gpu']:,.0f} | {r['mfu']:.3f} | "
            f"{r['step_time_s']:.3f} | {_gib(r['max_memory_gib'])} | "
            f"{f['ar_forward'] / 1e12:.1f} / {f['diffusion_forward'] / 1e12:.1f} / "
            f"{f['diffusion_backward'] / 1e12:.1f} | "
            f"{mp['ar_forward']:.3f} / {mp['diffusion_forward']:.3f} / {mp['diffusion_backward']:.3f} | "
            f"{r['projected_hours']:.1f} |"
        )
    proj = s["projection"]
    lines += [
        "",
        f"projected h: a projection, not a measurement: {proj['row_tokens']:.3g} row tokens on {proj['gpus']} GPUs "
        f"at the measured tokens/s/GPU, {proj['formula']}.",
    ]
    lines += speedups(report)
    if s["variants"]:
        lines += ["", "Variants (Hydra overrides on top of the setting):", ""]
        lines += [f"- `{name}`: {' '.join(f'`{o}`' for o in ov) or '(none)'}" for name, ov in s["variants"].items()]
    for r in report["results"]:
        if r.get("profile"):
            lines += ["", f"### Profile: {r.get('variant', '')}, {r['shape']}, seq {r['seq_len']}", ""]
            lines += [f"Trace and breakdown: `{r['profile']['dir']}/`.", "", profile_markdown(r["profile"])]
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


def speedups(report: dict) -> list[str]:
    """Markdown lines: per shape and sequence length, the fastest variant against the first one
    (the baseline), when more than one variant ran."""
    first = next(iter(report["settings"]["variants"]), None)
    ok = [r for r in report["results"] if r["status"] == "ok"]
    groups = dict.fromkeys((r["shape"], r["seq_len"]) for r in ok)
    if len(report["settings"]["variants"]) < 2 or not groups:
        return []
    lines = [
        "",
        f"| shape | seq | {first} tokens/s/GPU | fastest variant | tokens/s/GPU | x {first} | peak GiB | projected h |",
        "|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for shape, seq_len in groups:
        rs = [r for r in ok if (r["shape"], r["seq_len"]) == (shape, seq_len)]
        base = max((r["tokens_per_s_per_gpu"] for r in rs if r.get("variant") == first), default=None)
        best = max(rs, key=lambda r: r["tokens_per_s_per_gpu"])
        ratio = f"{best['tokens_per_s_per_gpu'] / base:.2f}" if base else ""
        lines.append(
            f"| {shape} | {seq_len} | {f'{base:,.0f}' if base else ''} | {best.get('variant', '')} | "
            f"{best['tokens_per_s_per_gpu']:,.0f} | {ratio} | {_gib(best['max_memory_gib'])} | "
            f"{best['projected_hours']:.1f} |"
        )
    return lines


def _gib(x) -> str:
    return "" if x is None else f"{x:.1f}"


def plot(report: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    from eval.figures import save_figure  # selects the Agg backend

    s = report["settings"]
    ok = [r for r in report["results"] if r["status"] == "ok"]
    shapes = list(dict.fromkeys(r["shape"] for r in report["results"])) or ["(none)"]
    rows = (("tokens_per_s_per_gpu", "tokens/s/GPU"), ("mfu", "MFU"), ("max_memory_gib", "peak memory per GPU (GiB)"))
    fig, axes = plt.subplots(len(rows), len(shapes), figsize=(4.2 * len(shapes), 9), squeeze=False)
    for col, shape in enumerate(shapes):
        settings = dict.fromkeys(
            (r.get("variant"), r["gradient_checkpointing"], r["attention"]) for r in ok if r["shape"] == shape
        )
        for variant, gc_, attn in settings:
            rs = sorted(
                (
                    r
                    for r in ok
                    if r["shape"] == shape
                    and r.get("variant") == variant
                    and r["gradient_checkpointing"] == gc_
                    and r["attention"] == attn
                ),
                key=lambda r: r["seq_len"],
            )
            label = f"{variant + ', ' if len(s['variants']) > 1 else ''}GC {'on' if gc_ else 'off'}, {attn}"
            for row, (key, _) in enumerate(rows):
                points = [(r["seq_len"], r[key]) for r in rs if r[key] is not None]
                if points:
                    axes[row][col].plot(*zip(*points), "o-", label=label)
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
        f"{report['provenance']['device']}, {report['settings']['deepspeed']}; red x: out of memory", fontsize=9
    )
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


# --------------------------------------------------------------------------- driver


def run_benchmark(args, command: list[str]) -> dict | None:
    """The sweep over args.shapes x args.seq_lens x args.checkpointing x args.attention (parsed by
    scripts/bench_train.py); `command` is the command line for the provenance. Returns the report
    on rank 0 (None elsewhere)."""
    start = time.perf_counter()
    import torch

    from eval.metrics import free_memory
    from eval.provenance import provenance
    from train.distributed import broadcast_object, skip_deepspeed_cpu_comm_op
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
        "command": None,
        "world_size": dist.world_size,
        "provenance": None,
        "deepspeed_version": _deepspeed_version(),
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
            "variants": {name: list(ov) for name, ov in args.variants.items()},
            "profile": args.profile,
            "profile_steps": args.profile_steps,
            "projection": {
                "row_tokens": args.project_row_tokens,
                "gpus": args.project_gpus,
                "formula": "hours = row_tokens / (tokens_per_s_per_gpu * gpus) / 3600 (perfect data-parallel scaling)",
            },
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
            report["provenance"] = provenance(dist.device, command)  # its source hash covers what has run
            report["command"] = report["provenance"]["command"]
            write_reports(report, out)

    settings = [(s, c, a) for s in args.seq_lens for c in args.checkpointing for a in args.attention]
    # variant-major: every shape gets the first variant (the baseline) before any gets the second
    points = [(v, shape, *setting) for v in args.variants for shape in args.shapes for setting in settings]
    for variant, shape, seq_len, checkpointing, attention in points:
        point = point_config(shape, checkpointing, args, args.variants[variant])
        checkpointing = bool(point.train.gradient_checkpointing)
        base = {  # every row, also oom / skipped / unsupported, names the batch shape it has or would have run
            "variant": variant,
            "shape": shape,
            "seq_len": seq_len,
            "gradient_checkpointing": checkpointing,
            "micro_batch_size": point.train.micro_batch_size,
            "grad_accum": point.train.grad_accum,
            "attention": attention,
        }
        name = f"{variant}: {shape} seq {seq_len} GC {'on' if checkpointing else 'off'} {attention}"
        slug = f"{variant}_{shape}_seq{seq_len}_gc{'on' if checkpointing else 'off'}_{attention}"
        profile_dir = out / "profile" / slug if variant in args.profile else None
        if dist.device.type == "cpu" and attention != "sdpa":
            reason = "flex attention has no backward on the CPU (PyTorch); CUDA only"
            report["results"].append({**base, "status": "unsupported", "reason": reason})
            publish()
            continue
        elapsed = time.perf_counter() - start
        # the shape's latest setting scaled by seq_len; a shape not run yet: the costliest setting so far
        seen = last_cost.get(shape)
        estimate = (
            seen[1] * seq_len / seen[0] if seen else max((w * seq_len / s for s, w in last_cost.values()), default=0.0)
        )
        if not broadcast_object(elapsed + estimate < args.budget_s):  # rank 0 decides for all
            report["results"].append({**base, "status": "skipped", "reason": "wall-clock budget"})
            publish()
            continue
        t0 = time.perf_counter()
        status, error, local = "ok", None, None
        with tempfile.TemporaryDirectory(prefix="bench_train_") as run_dir:  # rank 0's is the run's
            try:
                local = run_setting(
                    point,
                    shape,
                    seq_len,
                    attention,
                    args,
                    dist,
                    Path(run_dir),
                    variant=args.variants[variant],
                    profile_dir=profile_dir,
                )
            except Exception as e:  # noqa: BLE001  (recorded; the sweep goes on)
                status = "oom" if is_oom(e) else "error"
                error = f"{type(e).__name__}: {str(e)[:400]}"
                if status == "error":
                    error += "\n" + traceback.format_exc()[-2500:]
            free_memory()  # after the except block: its traceback no longer pins the failed step's tensors
            statuses = gather((status, error, local), dist)  # every rank is done with rank 0's folder
        wall = time.perf_counter() - t0
        last_cost[shape] = (seq_len, wall)
        worst = next((s for s in ("error", "oom") if any(st == s for st, _, _ in statuses)), "ok")
        result = {**base, "status": worst, "wall_s": wall}
        if worst == "ok":
            result.update(summarize([loc for _, _, loc in statuses], seq_len=seq_len, args=args, peak_flops=peak_flops))
            if local["profile"] is not None:
                result["profile"] = {"dir": str(profile_dir.relative_to(out)), **local["profile"]}
            if shape not in report["models"]:
                report["models"][shape] = {k: local[k] for k in ("params_total", "params_trainable", "build_s")}
            say(
                f"[bench] {name}: {result['tokens_per_s_per_gpu']:,.0f} tokens/s/GPU, MFU {result['mfu']:.3f}, "
                f"peak {_gib(result['max_memory_gib']) or '-'} GiB, {wall:.0f} s",
                flush=True,
            )
        else:
            result["errors"] = {str(rank): err for rank, (s, err, _) in enumerate(statuses) if err}  # JSON keys
            if torch.cuda.is_available():
                result["max_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
            say(f"[bench] {name}: {worst} {next(iter(result['errors'].values()), '')[:200]}", flush=True)
        report["results"].append(result)
        publish()
    report["complete"] = all(r["status"] != "skipped" for r in report["results"])
    report["finished_utc"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    publish()
    return report if dist.is_main else None


def _deepspeed_version() -> str | None:
    try:
        import deepspeed

        return deepspeed.__version__
    except Exception:  # noqa: BLE001  (absent, or fails to import without its toolchain)
        return None


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
