"""The engine's per-layer operations, in two interchangeable backends.

`TorchOps` is plain PyTorch written to match `transformers`' Qwen3 layer by layer (it is what the
CPU tests run, and the cross-check for the fast path), its attention masked by the rules of
`models/masks.py`. `TritonOps` is the fast path on CUDA: the fused elementwise kernels of
`kernels/elementwise.py` and the decode attention and acceptance kernels of `kernels/`.

Both backends take the same arguments; every length or position is an int64 tensor on the device,
so nothing here reads back to the host and every call can be captured in a CUDA graph.
Tensors: rows are tokens (T, ...), B blocks of T / B tokens, block b in cache slot b at its own start[b]
(ragged contexts); caches are one layer's (B, Hkv, S_max, D) views, lengths (B,) tensors. Every op takes
`pdl`: launch the Triton kernels with Programmatic Dependent Launch (`kernels/pdl.py`; CUDA sm_90+),
so each one's launch overlaps the end of the kernel before it; `TorchOps` ignores it (PyTorch
launches its own kernels).
"""

import torch
import torch.nn.functional as F
from transformers.models.qwen3.modeling_qwen3 import apply_rotary_pos_emb

from kernels import accept, attention, elementwise
from models.masks import draft_mask, verify_mask


class TorchOps:
    """Reference backend: `transformers`' Qwen3 math, with masks instead of host-side slicing."""

    @staticmethod
    def add_rms_norm(x, residual, weight, eps, pdl=False):
        """(rms_norm(x + residual), x + residual); residual None means x is the residual stream."""
        if residual is not None:
            x = residual + x
        return _rms_norm(x, weight, eps), x

    @staticmethod
    def qkv_norm_rope(
        q, k, v, q_weight, k_weight, cos_table, sin_table, start, k_dst, v_dst, dst_at_start, eps, pdl=False
    ):
        """Per-head RMSNorm of q and k, RoPE at positions start[b] + t, and k/v stored into slot b of
        k_dst/v_dst (B, Hkv, rows, D) at rows start[b] + t (the cache) or t (a block buffer). q: (T, H*D),
        k, v: (T, Hkv*D), any row stride, T = B blocks of T / B tokens. Returns q as (B, H, T / B, D)."""
        B, D = k_dst.shape[0], cos_table.shape[-1]
        T = q.shape[0] // B
        t = torch.arange(T, device=q.device)
        positions = start.view(B, 1) + t  # (B, T)
        qh = _rms_norm(q.view(B, T, -1, D), q_weight, eps).transpose(1, 2)
        kh = _rms_norm(k.view(B, T, -1, D), k_weight, eps).transpose(1, 2)
        qh, kh = apply_rotary_pos_emb(qh, kh, cos_table[positions], sin_table[positions])
        rows = positions if dst_at_start else t.expand(B, T)
        slot = torch.arange(B, device=q.device)[:, None].expand(B, T)
        k_dst[slot, :, rows] = kh.transpose(1, 2)
        v_dst[slot, :, rows] = v.view(B, T, -1, D)
        return qh

    @staticmethod
    def silu_mul(gate, up, pdl=False):
        return F.silu(gate) * up

    @staticmethod
    def diffusion_attention(q, k_cache, v_cache, ctx_len, k_blk, v_blk, scale, pdl=False):
        """Block queries of slot b see its cache rows [0, ctx_len[b]) and every key of its block."""
        keys = torch.cat([k_cache, k_blk], dim=2)
        values = torch.cat([v_cache, v_blk], dim=2)
        mask = draft_mask(ctx_len, k_cache.shape[2], k_blk.shape[2], q.device)
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scale, enable_gqa=True)

    @staticmethod
    def verify_attention(q, k_cache, v_cache, start, scale, per_position=False, pdl=False):
        """Block query t of slot b sees its cache rows [0, start[b] + t] (the block is already in the cache).
        per_position is the Triton kernel's batch-invariance switch; PyTorch picks its own kernels, so
        the engine refuses batch_invariant with this backend and the flag is always False here."""
        mask = verify_mask(start, q.shape[2], k_cache.shape[2], q.device)
        return F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=mask, scale=scale, enable_gqa=True)

    @staticmethod
    def greedy_accept(draft, ar, pdl=False):
        """draft (B, K-1), ar (B, K) -> (B,) longest agreeing prefix lengths (int64)."""
        n = draft.shape[1]
        return (draft == ar[:, :n]).long().cumprod(1).sum(1)


def _rms_norm(x, weight, eps):
    """Qwen3RMSNorm.forward, verbatim: fp32 statistics, cast back, then scale."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


class TritonOps:
    """Fast backend: the fused elementwise kernels of `kernels/elementwise.py` and the `kernels/` decode
    attention and acceptance."""

    add_rms_norm = staticmethod(elementwise.add_rms_norm)
    qkv_norm_rope = staticmethod(elementwise.qkv_norm_rope)
    silu_mul = staticmethod(elementwise.silu_mul)
    diffusion_attention = staticmethod(attention.diffusion_attention)
    verify_attention = staticmethod(attention.verify_attention)

    @staticmethod
    def greedy_accept(draft, ar, pdl=False):
        return accept.greedy_accept(draft, ar, pdl=pdl)[0]
