"""Float64 PyTorch references for the decode kernels.

Deliberately naive (explicit masks from `models/masks.py`, explicit softmax, `repeat_interleave` for GQA)
so they are easy to
check by eye; the Triton kernels in `kernels/attention.py` and `kernels/accept.py` are tested against them.
"""

import torch

from models.masks import draft_mask, verify_mask


def _as_int(length) -> int:
    """References may sync: a device-tensor length is read back to the host."""
    return int(length.item()) if isinstance(length, torch.Tensor) else int(length)


def _attention_f64(q, k, v, mask, scale):
    """softmax(q k^T * scale + mask) v in float64. q: (B, H, T, D); k, v: (B, Hkv, S, D); mask: (T, S) bool.
    Keys no query sees are dropped first: a cache's stale rows may hold anything, NaN included."""
    seen = mask.any(0)
    k, v, mask = k[:, :, seen], v[:, :, seen], mask[:, seen]
    group = q.shape[1] // k.shape[1]
    k = k.double().repeat_interleave(group, dim=1)
    v = v.double().repeat_interleave(group, dim=1)
    scores = torch.einsum("bhtd,bhsd->bhts", q.double(), k) * scale
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.einsum("bhts,bhsd->bhtd", probs, v)


def diffusion_attention_ref(q, k_cache, v_cache, ctx_len, k_blk, v_blk, scale):
    """Draft pass: every block query sees the first `ctx_len` cache entries and all K block keys."""
    k = torch.cat([k_cache, k_blk], dim=2)
    v = torch.cat([v_cache, v_blk], dim=2)
    mask = draft_mask(_as_int(ctx_len), k_cache.shape[2], k_blk.shape[2], q.device)
    return _attention_f64(q, k, v, mask, scale)


def verify_attention_ref(q, k_cache, v_cache, start, scale):
    """Verify pass: block query i sees cache entries [0, start + i] (the block is already in the cache)."""
    mask = verify_mask(_as_int(start), q.shape[2], k_cache.shape[2], q.device)
    return _attention_f64(q, k_cache, v_cache, mask, scale)


def greedy_accept_ref(draft, ar):
    """Longest prefix with draft[i] == ar[i], and the AR token right after it (the bonus token)."""
    matches = (draft == ar[:, : draft.shape[1]]).long()
    accept_len = matches.cumprod(dim=1).sum(dim=1)
    bonus = ar.gather(1, accept_len[:, None]).squeeze(1)
    return accept_len, bonus


def matmul_ref(x, w, w2=None):
    """x @ w^T in float64; with w2 (gate/up): silu(x @ w^T) * (x @ w2^T)."""
    y = x.double() @ w.double().T
    if w2 is None:
        return y
    return torch.nn.functional.silu(y) * (x.double() @ w2.double().T)
