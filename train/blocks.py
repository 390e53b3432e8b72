"""Diffusion blocks cut from a packed batch: where they start, what they hold, what they predict.

Training reproduces decoding. At decode time a block starts at the last accepted token `x[a]`
(position a, not yet in the AR cache), holds [x[a], MASK x (K-1)] at positions a..a+K-1, sees
the AR cache of x[:a] and its own K tokens, and its logits at block index i draft x[a+i+1].
Here every row of a packed batch (B, L) yields `blocks_per_row` such blocks at once.

Anchor choice: per row, `blocks_per_row` anchors drawn uniformly *without replacement* among
the positions a whose next token x[a+1] is in the same document (so every block has at least
one target). Uniform anchors weight every context length as the data does; a block that
crosses its document's end keeps its K slots (decoding does too) but its targets stop at the
document end. When a row has fewer eligible anchors than blocks, the extra blocks are kept
as padding with no targets, so shapes stay static (one compiled kernel, one BlockMask size).

Targets: block index i (0..K-2) predicts x[a+i+1]; its teacher is the AR view's distribution
at row index a+i (the AR logits there predict x[a+i+1] from x[:a+i+1], the oracle draft).
Block index K-1 has no target: decoding discards its logits too.

Multi-step denoising (the paper's ablation, `num_denoise_steps` S > 1): each block draws a
step s in 0..S-1 and reveals round(s/S * (K-1)) of its K-1 mask slots, chosen at random, with
fill tokens (the data token, or the teacher's greedy token: see `objective.py`); revealed
slots are inputs, not targets. S = 1 reveals nothing: the single-step objective.
"""

from dataclasses import dataclass, fields

import torch


@dataclass
class DiffusionBlocks:
    """All blocks of a batch, flattened per row: block j of row b holds columns j*K..j*K+K-1."""

    input_ids: torch.Tensor  # (B, n*K) [x[a], MASK...]; revealed slots hold the data token
    position_ids: torch.Tensor  # (B, n*K) the row's document positions of a..a+K-1
    ctx_start: torch.Tensor  # (B, n) first row index of the anchor's document segment
    ctx_end: torch.Tensor  # (B, n) the anchor a: AR keys in [ctx_start, ctx_end) are visible
    reveal: torch.Tensor  # (B, n*K) bool: slot is filled (multi-step), not masked
    # one entry per target (valid targets only, N of them):
    target_row: torch.Tensor  # (N,) batch index b
    target_col: torch.Tensor  # (N,) column in the block tensors (j*K + i): the predicting slot
    teacher_col: torch.Tensor  # (N,) row index a+i of the teacher distribution
    target_pos: torch.Tensor  # (N,) block index i, 0..K-2
    target_token: torch.Tensor  # (N,) the data token x[a+i+1]
    block_size: int

    @property
    def num_blocks(self) -> int:
        return self.ctx_start.shape[1]

    def to(self, device) -> "DiffusionBlocks":
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return DiffusionBlocks(**{k: v.to(device) if torch.is_tensor(v) else v for k, v in moved.items()})


def segment_starts(doc_ids: torch.Tensor) -> torch.Tensor:
    """(B, L) -> (B, L): row index where each token's document segment begins."""
    B, L = doc_ids.shape
    idx = torch.arange(L, device=doc_ids.device).expand(B, L)
    is_start = torch.ones_like(doc_ids, dtype=torch.bool)
    is_start[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    return torch.where(is_start, idx, torch.zeros_like(idx)).cummax(dim=1).values


def sample_anchors(
    doc_ids: torch.Tensor, blocks_per_row: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(anchors (B, n) ascending, valid (B, n)): uniform without replacement among eligible positions."""
    B, L = doc_ids.shape
    if not 1 <= blocks_per_row <= L - 1:
        raise ValueError(f"objective.blocks_per_row={blocks_per_row} must be in [1, seq_len - 1 = {L - 1}]")
    eligible = torch.zeros(B, L, dtype=torch.bool)
    eligible[:, :-1] = doc_ids[:, 1:].cpu() == doc_ids[:, :-1].cpu()
    scores = torch.rand(B, L, generator=generator)
    scores[~eligible] = -1.0
    top = scores.topk(blocks_per_row, dim=1)
    anchors, order = top.indices.sort(dim=1)
    valid = top.values.gather(1, order) >= 0
    return anchors, valid


def build_blocks(
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    doc_ids: torch.Tensor,
    anchors: torch.Tensor,
    valid: torch.Tensor,
    *,
    block_size: int,
    mask_token_id: int,
    num_denoise_steps: int = 1,
    generator: torch.Generator | None = None,
) -> DiffusionBlocks:
    """The block inputs and targets for `anchors` (B, n) of a packed batch (all on the CPU)."""
    if num_denoise_steps < 1:
        raise ValueError(
            f"objective.num_denoise_steps={num_denoise_steps} must be >= 1 (1 = single-step, the paper's choice)"
        )
    B, L = input_ids.shape
    K, n = block_size, anchors.shape[1]
    offsets = torch.arange(K)
    rows = torch.arange(B)[:, None, None]

    slots = anchors[:, :, None] + offsets  # (B, n, K) row index of each slot, may run past L
    in_row = slots < L
    slots_c = slots.clamp(max=L - 1)
    same_doc = in_row & (doc_ids[rows, slots_c] == doc_ids.gather(1, anchors)[:, :, None]) & valid[:, :, None]

    block_ids = torch.full((B, n, K), mask_token_id, dtype=input_ids.dtype)
    block_ids[:, :, 0] = input_ids.gather(1, anchors)
    block_pos = position_ids.gather(1, anchors)[:, :, None] + offsets

    reveal = torch.zeros(B, n, K, dtype=torch.bool)
    if num_denoise_steps > 1:
        reveal = _reveal_slots(B, n, K, num_denoise_steps, generator) & same_doc
        block_ids[reveal] = input_ids[rows.expand_as(slots_c), slots_c][reveal]  # teacher-forced fill

    starts = segment_starts(doc_ids).gather(1, anchors)
    ctx_start = torch.where(valid, starts, torch.zeros_like(starts))
    ctx_end = torch.where(valid, anchors, torch.zeros_like(anchors))

    # target at slot i predicts the token in slot i+1 (row index a+i+1)
    has_target = torch.zeros(B, n, K, dtype=torch.bool)
    has_target[:, :, :-1] = same_doc[:, :, 1:] & ~reveal[:, :, 1:]
    b, j, i = has_target.nonzero(as_tuple=True)
    return DiffusionBlocks(
        input_ids=block_ids.view(B, n * K),
        position_ids=block_pos.view(B, n * K),
        ctx_start=ctx_start,
        ctx_end=ctx_end,
        reveal=reveal.view(B, n * K),
        target_row=b,
        target_col=j * K + i,
        teacher_col=anchors[b, j] + i,
        target_pos=i,
        target_token=input_ids[b, anchors[b, j] + i + 1],
        block_size=K,
    )


def _reveal_slots(B: int, n: int, K: int, steps: int, generator: torch.Generator | None) -> torch.Tensor:
    """(B, n, K) bool: per block a step s ~ U{0..steps-1} reveals round(s/steps*(K-1)) random slots of 1..K-1."""
    step = torch.randint(0, steps, (B, n, 1), generator=generator)
    count = torch.round(step.float() / steps * (K - 1)).long()
    rank = torch.rand(B, n, K - 1, generator=generator).argsort(dim=2).argsort(dim=2)  # a random order of slots 1..K-1
    reveal = torch.zeros(B, n, K, dtype=torch.bool)
    reveal[:, :, 1:] = rank < count
    return reveal


def sample_blocks(
    batch: dict[str, torch.Tensor],
    *,
    blocks_per_row: int,
    block_size: int,
    mask_token_id: int,
    num_denoise_steps: int,
    seed: int,
) -> DiffusionBlocks:
    """Anchors and blocks for one micro-batch, drawn from their own generator seeded by `seed`
    (the loop derives it from the run seed, step, micro-step and rank), so a resumed run draws
    the same blocks without restoring any global RNG."""
    generator = torch.Generator().manual_seed(seed)
    ids, pos, docs = (batch[k].cpu() for k in ("input_ids", "position_ids", "doc_ids"))
    anchors, valid = sample_anchors(docs, blocks_per_row, generator)
    return build_blocks(
        ids,
        pos,
        docs,
        anchors,
        valid,
        block_size=block_size,
        mask_token_id=mask_token_id,
        num_denoise_steps=num_denoise_steps,
        generator=generator,
    )
