"""Who attends to whom in training, written once and run by two executors.

Keys of the diffusion pass are [AR keys of the row (L) ; diffusion keys of all blocks (n*K)].
Query q of block j = q // K may see
  * AR key kv < L   iff ctx_start[b, j] <= kv < ctx_end[b, j] (same document, before the anchor);
  * diffusion key   iff it belongs to block j (bidirectional inside the block).
That is `models.masks.draft_visible`, the rule of decoding's `models.orthrus.prefix_attend(cache,
ctx_len=a)`, for every block at once. Padding blocks have an empty AR range, so no query row is
ever fully masked. The AR pass is causal (`models.masks.verify_visible`) within each document.

`block_mask_mod` applies it to a batch of blocks. On CUDA it drives flex attention (compiled, a
sparse BlockMask: most AR tiles of a block are either fully visible or skipped); on the CPU,
where compiled flex attention is not worth its compile time, the same function is evaluated
on index grids into a dense boolean mask for SDPA. Tests check both executors agree.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention
from torch.profiler import record_function

from models import masks
from models.orthrus import AttendFn
from train.blocks import DiffusionBlocks
from train.profile import ATTENTION as ATTENTION_RANGE

MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
EXECUTORS = ("auto", "flex", "sdpa")


def block_mask_mod(ctx_start: torch.Tensor, ctx_end: torch.Tensor, ar_len: int, block_size: int) -> MaskMod:
    """mask_mod(b, h, q, kv) -> bool for the diffusion pass (flex attention's signature)."""

    def mask_mod(b, h, q, kv):
        block = q // block_size
        return masks.draft_visible(q, kv, ctx_start[b, block], ctx_end[b, block], ar_len, block_size)

    return mask_mod


def dense_mask(mask_mod: MaskMod, batch: int, q_len: int, kv_len: int, device) -> torch.Tensor:
    """Evaluate a mask_mod on the full (B, 1, Q, KV) index grid (the SDPA executor's mask)."""
    b = torch.arange(batch, device=device)[:, None, None, None]
    q = torch.arange(q_len, device=device)[None, None, :, None]
    kv = torch.arange(kv_len, device=device)[None, None, None, :]
    return mask_mod(b, torch.zeros_like(b), q, kv)


def ar_attention_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """(B, 1, L, L) bool: causal within each document of a packed row.

    Passed explicitly to the AR pass: transformers only infers packed documents from
    position_ids when no cache is given, and this pass must fill a cache.
    """
    pos = torch.arange(doc_ids.shape[1], device=doc_ids.device)
    causal = masks.verify_visible(pos[:, None], pos[None, :])
    return (causal & (doc_ids[:, :, None] == doc_ids[:, None, :]))[:, None]


def resolve_executor(name: str, device: torch.device) -> str:
    if name not in EXECUTORS:
        raise ValueError(f"objective.attention={name!r}: choose one of {EXECUTORS} (auto = flex on CUDA, sdpa on CPU)")
    if name == "auto":
        return "flex" if device.type == "cuda" else "sdpa"
    return name


_compiled_flex = None


def _flex(q, k, v, block_mask: BlockMask, scale: float, compiled: bool) -> torch.Tensor:
    """Flex attention, compiled once per process on CUDA (eager elsewhere, e.g. CPU tests)."""
    global _compiled_flex
    if not compiled:
        return flex_attention(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=True)
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=True)


def training_attend(
    cache, blocks: DiffusionBlocks, scale: float, executor: str, flex_block_size: int | None = None
) -> AttendFn:
    """attend(layer, q, k, v) for `diffusion_forward` over all blocks of a batch.

    `cache` holds the AR pass's keys/values (B, Hkv, L, D) per layer. The block queries/keys
    are cast to the cache dtype, so the diffusion pass attends at the base model's precision.
    `flex_block_size`: the BlockMask's tile (queries and keys), flex's default (128) when None;
    smaller tiles skip more of the masked AR keys of K=32 blocks but give the kernel smaller
    tiles (a size below the kernel's own tile may be refused by flex attention's compiler).
    """
    B, T = blocks.input_ids.shape
    L = cache.layers[0].keys.shape[2]
    device = cache.layers[0].keys.device
    mask_mod = block_mask_mod(blocks.ctx_start, blocks.ctx_end, L, blocks.block_size)
    if executor == "flex":
        tile = {} if flex_block_size is None else {"BLOCK_SIZE": flex_block_size}
        mask = create_block_mask(mask_mod, B, None, T, L + T, device=device, **tile)
    else:
        mask = dense_mask(mask_mod, B, T, L + T, device)

    def attend(idx: int, q, k, v):
        layer = cache.layers[idx]
        q, k, v = (t.to(layer.keys.dtype) for t in (q, k, v))
        k_all = torch.cat([layer.keys, k], dim=2)
        v_all = torch.cat([layer.values, v], dim=2)
        with record_function(ATTENTION_RANGE):
            if executor == "flex":
                return _flex(q, k_all, v_all, mask, scale, compiled=q.is_cuda)
            return F.scaled_dot_product_attention(
                q, k_all, v_all, attn_mask=mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
            )

    return attend
