"""Fused Triton elementwise kernels of a decoder layer: residual add + RMSNorm; q/k RMSNorm + RoPE +
writing k/v into the cache; SiLU * up.

Why fuse: at batch 1 a layer's matrix products are a few large weight reads, and in eager PyTorch the
~25 small elementwise kernels around them cost about as much again (each is a launch plus a trip through
memory). The kernels round where PyTorch rounds (to the model dtype after each op `transformers` runs in
that dtype), so in bf16 they give the same values as `models/engine_ops.TorchOps` up to the order of the
fp32 reductions. Every length or position is a one-element int64 tensor on the device (nothing is read
back to the host, so each call can be captured in a CUDA graph). `pdl`: launch with Programmatic
Dependent Launch (`kernels/pdl.py`; CUDA sm_90+).
"""

import torch
import triton
import triton.language as tl

from kernels.pdl import launch_options


def add_rms_norm(x, residual, weight, eps, pdl=False):
    """(rms_norm(x + residual), x + residual) for contiguous rows x (T, N); residual None: x is the stream."""
    if x.dim() != 2 or not x.is_contiguous() or weight.shape != (x.shape[1],):
        raise ValueError(
            f"expected contiguous rows (T, N) and a weight (N,), got {tuple(x.shape)}, {tuple(weight.shape)}"
        )
    T, N = x.shape
    out = torch.empty_like(x)
    res_out = x if residual is None else torch.empty_like(x)
    _add_rms_norm_kernel[(T,)](
        x,
        x if residual is None else residual,
        weight,
        out,
        res_out,
        N,
        eps,
        HAS_RESIDUAL=residual is not None,
        BLOCK=triton.next_power_of_2(N),
        num_warps=4 if N <= 2048 else 8,
        **launch_options(pdl, x.device),
    )
    return out, res_out


def qkv_norm_rope(q, k, v, q_weight, k_weight, cos_table, sin_table, start, k_dst, v_dst, dst_at_start, eps, pdl=False):
    """Per-head RMSNorm of q and k, RoPE at positions start[b] + t, k/v stored into k_dst/v_dst at rows
    start[b] + t (the cache) or t (a block buffer). The T rows are B blocks of T / B tokens, block b
    in slot b of k_dst/v_dst (B, Hkv, rows, D) at its own start[b] (start: (B,) int64). Returns q as
    (B, H, T / B, D)."""
    T, D = q.shape[0], cos_table.shape[-1]
    H, Hkv = q.shape[1] // D, k.shape[1] // D
    B = k_dst.shape[0]
    for name, t in (("q", q), ("k", k), ("v", v), ("k_dst", k_dst), ("v_dst", v_dst)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in its last dim")
    q_out = torch.empty(T, H, D, dtype=q.dtype, device=q.device)
    _qkv_norm_rope_kernel[(T,)](
        q,
        k,
        v,
        q.stride(0),
        k.stride(0),
        v.stride(0),
        q_weight,
        k_weight,
        cos_table,
        sin_table,
        start,
        T // B,
        q_out,
        k_dst,
        v_dst,
        k_dst.stride(0),
        v_dst.stride(0),
        k_dst.stride(1),
        k_dst.stride(2),
        v_dst.stride(1),
        v_dst.stride(2),
        eps,
        H,
        Hkv,
        DST_AT_START=dst_at_start,
        HEAD_DIM=D,
        BLOCK_H=triton.next_power_of_2(H),
        BLOCK_KV=triton.next_power_of_2(Hkv),
        num_warps=4,
        **launch_options(pdl, q.device),
    )
    return q_out.view(B, T // B, H, D).transpose(1, 2)


def silu_mul(gate, up, pdl=False):
    """silu(gate) * up for two tensors of one shape, either contiguous or (rows, N) with any row stride and
    unit column stride (e.g. the two halves of a fused [gate; up] product's output); the result is contiguous."""
    shape = gate.shape
    if gate.shape != up.shape:
        raise ValueError(f"gate {tuple(gate.shape)} and up {tuple(up.shape)} must be of one shape")
    if gate.is_contiguous() and up.is_contiguous():
        gate, up = gate.view(-1, shape[-1]), up.view(-1, shape[-1])
    elif gate.dim() != 2 or gate.stride(1) != 1 or up.stride(1) != 1:
        raise ValueError(
            "gate and up must be contiguous, or (rows, N) with unit column stride; "
            f"got strides {gate.stride()} and {up.stride()}"
        )
    M, N = gate.shape
    out = torch.empty(M, N, dtype=gate.dtype, device=gate.device)
    block = min(1024, triton.next_power_of_2(N))
    _silu_mul_kernel[(M, triton.cdiv(N, block))](
        gate, up, out, N, gate.stride(0), up.stride(0), BLOCK=block, **launch_options(pdl, gate.device)
    )
    return out.view(shape)


@triton.jit
def _add_rms_norm_kernel(
    x_ptr,
    res_ptr,
    w_ptr,
    out_ptr,
    res_out_ptr,
    n_cols,
    eps,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    """One row per program: residual add (rounded to the model dtype, as torch's add), RMSNorm in fp32,
    cast, then the weight product rounded again (as `weight * h.to(dtype)`)."""
    if USE_PDL:
        # A small kernel: let the next one (a matrix product) launch at once and start on its weights;
        # it still waits for this kernel to complete before reading what it writes.
        tl.extra.cuda.gdc_launch_dependents()
    row = tl.program_id(0).to(tl.int64) * n_cols
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    dtype = x_ptr.dtype.element_ty
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)  # the norm weight: read-only
    if USE_PDL:
        tl.extra.cuda.gdc_wait()  # x and the residual come from earlier kernels
    x = tl.load(x_ptr + row + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + row + cols, mask=mask, other=0.0)
        x = (r.to(tl.float32) + x.to(tl.float32)).to(dtype)
        tl.store(res_out_ptr + row + cols, x, mask=mask)
    xf = x.to(tl.float32)
    rstd = tl.math.rsqrt(tl.sum(xf * xf, axis=0) / n_cols + eps)
    y = (w * (xf * rstd).to(dtype).to(tl.float32)).to(dtype)
    tl.store(out_ptr + row + cols, y, mask=mask)


@triton.jit
def _norm_rope_heads(src, w_ptr, cos, sin, n_heads, eps, BLOCK_H: tl.constexpr, HEAD_DIM: tl.constexpr):
    """RMSNorm of each head vector (rows of a (n_heads, D) tile), then RoPE (x * cos + rotate_half(x) * sin),
    rounding like PyTorch in the model dtype. rotate_half is a gather at (d + D/2) mod D with the first half
    negated; the norm scale is one scalar per head, so the rotated vector is normalised element by element
    exactly like the original. Returns the tile and the offsets/mask it came from."""
    dtype = src.dtype.element_ty
    heads = tl.arange(0, BLOCK_H)[:, None]
    d = tl.arange(0, HEAD_DIM)[None, :]
    rot = (d + HEAD_DIM // 2) % HEAD_DIM
    mask = heads < n_heads
    x = tl.load(src + heads * HEAD_DIM + d, mask=mask, other=0.0).to(tl.float32)
    xr = tl.load(src + heads * HEAD_DIM + rot, mask=mask, other=0.0).to(tl.float32)
    rstd = tl.math.rsqrt(tl.sum(x * x, axis=1) / HEAD_DIM + eps)[:, None]
    xn = (tl.load(w_ptr + d).to(tl.float32) * (x * rstd).to(dtype).to(tl.float32)).to(dtype).to(tl.float32)
    xrn = (tl.load(w_ptr + rot).to(tl.float32) * (xr * rstd).to(dtype).to(tl.float32)).to(dtype).to(tl.float32)
    xrn = tl.where(d < HEAD_DIM // 2, -xrn, xrn)
    out = ((xn * cos).to(dtype).to(tl.float32) + (xrn * sin).to(dtype).to(tl.float32)).to(dtype)
    return out, heads, d, mask


@triton.jit
def _qkv_norm_rope_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    stride_q,
    stride_k,
    stride_v,
    qw_ptr,
    kw_ptr,
    cos_ptr,
    sin_ptr,
    start_ptr,
    block_len,
    q_out_ptr,
    k_dst_ptr,
    v_dst_ptr,
    stride_kd_b,
    stride_vd_b,
    stride_kd_h,
    stride_kd_t,
    stride_vd_h,
    stride_vd_t,
    eps,
    num_heads,
    num_kv_heads,
    DST_AT_START: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_KV: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    """One token per program; token t is position i = t % block_len of block b = t // block_len. Query
    heads are normed, rotated and written to q_out (T, H, D); key heads are normed, rotated and stored
    at row (start[b] + i if DST_AT_START else i) of slot b of k_dst; value heads are copied to the same
    row of v_dst."""
    if USE_PDL:
        # A small kernel: let the next one (attention) launch at once; it still waits for this one.
        # Wait before everything: q/k/v and start come from earlier kernels (and the RoPE rows depend on start).
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()
    t = tl.program_id(0)
    b = t // block_len
    i = t % block_len
    start = tl.load(start_ptr + b).to(tl.int32)
    d = tl.arange(0, HEAD_DIM)[None, :]
    cos = tl.load(cos_ptr + (start + i) * HEAD_DIM + d).to(tl.float32)
    sin = tl.load(sin_ptr + (start + i) * HEAD_DIM + d).to(tl.float32)
    row = i
    if DST_AT_START:
        row += start
    k_dst_ptr += b * stride_kd_b
    v_dst_ptr += b * stride_vd_b

    q, heads, d, mask = _norm_rope_heads(q_ptr + t * stride_q, qw_ptr, cos, sin, num_heads, eps, BLOCK_H, HEAD_DIM)
    tl.store(q_out_ptr + (t * num_heads + heads) * HEAD_DIM + d, q, mask=mask)
    k, heads, d, mask = _norm_rope_heads(k_ptr + t * stride_k, kw_ptr, cos, sin, num_kv_heads, eps, BLOCK_KV, HEAD_DIM)
    tl.store(k_dst_ptr + heads * stride_kd_h + row * stride_kd_t + d, k, mask=mask)
    v = tl.load(v_ptr + t * stride_v + heads * HEAD_DIM + d, mask=mask)
    tl.store(v_dst_ptr + heads * stride_vd_h + row * stride_vd_t + d, v, mask=mask)


@triton.jit
def _silu_mul_kernel(g_ptr, u_ptr, out_ptr, n_cols, stride_g, stride_u, BLOCK: tl.constexpr, USE_PDL: tl.constexpr):
    """Grid (rows, column blocks): silu(gate) rounded to the model dtype (as F.silu), times up, rounded again."""
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()  # small: let the next kernel launch (it still waits for this one)
        tl.extra.cuda.gdc_wait()  # gate and up come from earlier kernels
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    dtype = g_ptr.dtype.element_ty
    g = tl.load(g_ptr + row * stride_g + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + row * stride_u + cols, mask=mask, other=0.0).to(tl.float32)
    s = (g / (1.0 + tl.exp(-g))).to(dtype).to(tl.float32)
    tl.store(out_ptr + row * n_cols + cols, (s * u).to(dtype), mask=mask)
