"""Recount the MFU of stored training results with train/flops.py's count.

MFU = model FLOPs / time / peak FLOP/s. A stored result keeps its times (bench.json: the step
time; metrics.jsonl: one MFU per logged window, whose elapsed time is implied) and FLOPs of the
rule it was measured with. The FLOPs of a step depend only on its batches and block draws, and
those are a deterministic function of the run's config (synthetic documents, packing seed,
`train.loop.block_seed`). So `replay` redraws every micro-batch exactly as the run did, no model
needed, and counts it twice: with the rule the result was published with (`published_rule`:
the backward charged at 2x the whole diffusion forward, weight gradients of every trainable
parameter), which must reproduce the stored FLOPs (the check that the replay is the run's), and
with train/flops.py. Then MFU = stored MFU x new FLOPs / published FLOPs over the same steps.

Entry point: scripts/recount_mfu.py (writes results/mfu_recount.json).
"""

from collections.abc import Iterator

import torch
from omegaconf import DictConfig, OmegaConf

from models.shapes import shape_config
from train.blocks import sample_blocks
from train.data import batches, build_dataset, synthetic_data
from train.distributed import Dist
from train.flops import FLOP_PARTS, flop_terms
from train.loop import block_seed


def published_rule(terms: dict, config, blocks, trainable: list[str]) -> float:
    """The FLOPs of a micro-batch as the published MFUs counted them: AR forward + 3x the
    diffusion forward + 2 x (every trainable parameter, norms included) x diffusion tokens."""
    norms = sum(config.head_dim for name in ("q_norm_diff", "k_norm_diff") if name in trainable)
    T = blocks.input_ids.numel()
    weights = terms["diffusion_backward_weights"]["matmul"] + 2 * norms * config.num_hidden_layers * T
    return sum(terms["ar_forward"].values()) + 3 * sum(terms["diffusion_forward"].values()) + weights


def step_flops(data_cfg: DictConfig, *, shape: str, block_size: int, mask_token_id: int, trainable: list[str],
               blocks_per_row: int, micro_batch_size: int, grad_accum: int, seed: int, steps: int, rank: int = 0,
               world_size: int = 1) -> Iterator[tuple[float, dict[str, float]]]:
    """(published FLOPs, train/flops.py FLOPs by part) of each optimizer step of one rank, as the
    Trainer draws them (train.loop.Trainer.train)."""
    config = shape_config(shape, block_size=block_size, mask_token_id=mask_token_id)
    dist = Dist(rank, world_size, rank, torch.device("cpu"))
    dataset = build_dataset(data_cfg, vocab_size=config.vocab_size, mask_token_id=mask_token_id, dist=dist)
    data = batches(dataset, micro_batch_size)
    for step in range(steps):
        old, new = 0.0, dict.fromkeys(FLOP_PARTS, 0.0)
        for micro in range(grad_accum):
            batch = next(data)
            blocks = sample_blocks(batch, blocks_per_row=blocks_per_row, block_size=block_size,
                                   mask_token_id=mask_token_id, num_denoise_steps=1,
                                   seed=block_seed(seed, step, micro * world_size + rank))
            terms = flop_terms(config, batch["doc_ids"], blocks, trainable)
            old += published_rule(terms, config, blocks, trainable)
            for part, t in terms.items():
                new[part] += sum(t.values())
        yield old, new


def recount_bench_result(r: dict, settings: dict, world_size: int, *, trainable: list[str], mask_token_id: int,
                         block_size: int) -> dict:
    """One "ok" setting of a scripts/bench_train.py report: {"published": replayed FLOPs per step and
    GPU by the published rule, "parts": train/flops.py FLOPs by part} (the bench's data section,
    timed steps only, averaged over ranks as the bench averages)."""
    s, W = settings, world_size
    m, G, warm, steps = s["micro_batch_size"], s["grad_accum"], s["warmup"], s["steps"]
    rows = (warm + steps) * m * G * W
    data = OmegaConf.create(synthetic_data(r["seq_len"], max(rows, 4 * W), seed=0))
    old, new = 0.0, dict.fromkeys(FLOP_PARTS, 0.0)
    for rank in range(W):
        per_step = list(step_flops(data, shape=r["shape"], block_size=block_size, mask_token_id=mask_token_id,
                                   trainable=trainable, blocks_per_row=r["blocks_per_row"], micro_batch_size=m,
                                   grad_accum=G, seed=0, steps=warm + steps, rank=rank, world_size=W))[warm:]
        old += sum(o for o, _ in per_step) / steps / W
        for part in FLOP_PARTS:
            new[part] += sum(n[part] for _, n in per_step) / steps / W
    return {"published": old, "parts": new}


def recount_train_log(records: list[dict], cfg: DictConfig, *, skip_steps: int) -> dict:
    """A train.py run's metrics.jsonl windows recounted; the mean over windows after `skip_steps`
    (as scripts/summarize_train_run.py averages). Replays the run's own config (world size 1)."""
    t, model = cfg.train, cfg.model
    steps = records[-1]["step"]
    per_step = [(o, sum(n.values())) for o, n in step_flops(
        cfg.data, shape=model.shape, block_size=model.block_size, mask_token_id=model.mask_token_id,
        trainable=list(model.trainable), blocks_per_row=cfg.objective.blocks_per_row,
        micro_batch_size=t.micro_batch_size, grad_accum=t.grad_accum, seed=t.seed, steps=steps,
    )]
    windows, start = [], 0
    for r in records:
        old = sum(o for o, _ in per_step[start:r["step"]])
        new = sum(n for _, n in per_step[start:r["step"]])
        windows.append({"step": r["step"], "mfu_published": r["mfu"], "mfu": r["mfu"] * new / old})
        start = r["step"]
    steady = [w for w in windows if w["step"] > skip_steps] or windows
    return {"windows": windows, "mfu": sum(w["mfu"] for w in steady) / len(steady),
            "mfu_published": sum(w["mfu_published"] for w in steady) / len(steady)}


def recount_train_summary(summary: dict, cfg: DictConfig) -> dict:
    """A run summarised without its metrics.jsonl: its mean MFU over `averaged_over_steps`, scaled
    by the FLOP ratio over those steps (exact when the windows took equal times)."""
    first, last = summary["averaged_over_steps"]
    log_every = cfg.logging.log_every
    t, model = cfg.train, cfg.model
    per_step = [(o, sum(n.values())) for o, n in step_flops(
        cfg.data, shape=model.shape, block_size=model.block_size, mask_token_id=model.mask_token_id,
        trainable=list(model.trainable), blocks_per_row=cfg.objective.blocks_per_row,
        micro_batch_size=t.micro_batch_size, grad_accum=t.grad_accum, seed=t.seed, steps=last,
    )][first - log_every:last]
    ratio = sum(n for _, n in per_step) / sum(o for o, _ in per_step)
    return {"mfu_published": summary["mfu"], "mfu": summary["mfu"] * ratio, "flop_ratio": ratio}
