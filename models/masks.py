"""Which keys a query may see in Orthrus' two attention passes, written once.

Draft pass (the diffusion view). Keys are [AR keys (`ar_len` rows) ; the diffusion keys of the blocks,
`block_size` each]. A query of block j sees the AR keys in [ctx_start_j, ctx_end_j) and every key of its
own block (bidirectional inside the block). Decoding drafts one block whose context is the cache prefix
[0, ctx_len); training drafts many blocks of packed documents at once, each with its document's range.

Verify pass (the AR view): a query at position p sees the keys at positions <= p (causal).

The rules take index tensors that broadcast against each other, so one definition serves every executor:
the dense boolean masks of the PyTorch decode paths (`models/orthrus.py`, `models/engine_ops.py`) and of the
float64 kernel references (`kernels/reference.py`), and the mask_mod of training's flex attention
(`train/attention.py`). The Triton kernels (`kernels/attention.py`) apply the same rules as loop bounds and
are tested against the references.
"""

import torch


def draft_visible(q, kv, ctx_start, ctx_end, ar_len: int, block_size: int) -> torch.Tensor:
    """Draft pass: may query q (of block q // block_size) see key kv? ctx_start/ctx_end: its block's AR range."""
    ar = (kv < ar_len) & (kv >= ctx_start) & (kv < ctx_end)
    own = (kv >= ar_len) & ((kv - ar_len) // block_size == q // block_size)
    return ar | own


def verify_visible(query_pos, key_pos) -> torch.Tensor:
    """Verify pass (and any AR pass): a query sees the keys at or before its own position."""
    return key_pos <= query_pos


def draft_mask(ctx_len, cache_len: int, block_size: int, device) -> torch.Tensor:
    """(block_size, cache_len + block_size) bool: one decode-time block over [cache rows ; block keys], the
    first `ctx_len` cache rows visible (ctx_len: an int or a one-element tensor on `device`); with B
    lengths (ragged contexts, one block per cache slot), (B, 1, block_size, cache_len + block_size)."""
    q = torch.arange(block_size, device=device)[:, None]
    kv = torch.arange(cache_len + block_size, device=device)[None, :]
    return draft_visible(q, kv, 0, _per_block(ctx_len, device), cache_len, block_size)


def verify_mask(start, block_size: int, cache_len: int, device) -> torch.Tensor:
    """(block_size, cache_len) bool: block query t (position start + t) over the cache rows, the block
    already written into the cache (start: an int or a one-element tensor on `device`); with B starts
    (ragged contexts, one block per cache slot), (B, 1, block_size, cache_len)."""
    query_pos = _per_block(start, device) + torch.arange(block_size, device=device)[:, None]
    return verify_visible(query_pos, torch.arange(cache_len, device=device)[None, :])


def _per_block(length, device) -> torch.Tensor:
    """A length as a scalar, or B lengths shaped to broadcast over (B, heads, queries, keys)."""
    length = torch.as_tensor(length, device=device)
    return length.reshape(()) if length.numel() == 1 else length.view(-1, 1, 1, 1)
