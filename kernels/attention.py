"""Triton decode attention for Orthrus: the diffusion (draft) pass and the AR verify pass.

Both passes have a block of K <= 32 query tokens against a long, shared KV cache, so the work is a few
query rows times many keys and is bound by reading the cache. The kernels are therefore built like
flash-decoding:

* One program owns one (batch, KV head) pair and all G = H / Hkv query heads that share it, so each
  K/V tile is loaded once for G * K query rows (GQA). Rows are ordered `g * K + i` (head kvh * G + g,
  block position i), the head order of `repeat_interleave` / HF `repeat_kv`. More than 128 rows are
  cut into row blocks of 128 (registers), which then read the same tiles.
* The key sequence is dealt in whole tiles to `num_splits` programs so that even a batch-1 call fills
  the GPU. Each split runs an fp32 online softmax over its tiles and writes an unnormalised partial
  output plus its running max and sum; `_combine_splits_kernel` merges the partials. With one split
  the attention kernel normalises and writes the output itself.
* The valid length (`ctx_len` / `start`) may be a Python int or a one-element integer tensor on the
  device. With a tensor nothing is read back to the host, the grid depends only on shapes and the
  cache capacity, and which tiles each split takes is worked out inside the kernels from the length,
  so the call can be captured in a CUDA graph and replayed while the length changes. Splits left
  without tiles at short lengths write nothing and the combine kernel skips them.

Scores are computed in base 2 (`exp2` with `scale * log2(e)`), as in FlashAttention.

With `pdl=True` (Programmatic Dependent Launch, CUDA sm_90+, `kernels/pdl.py`) every kernel waits for
the previous kernel at its start (all it reads comes from earlier kernels), and the attention kernels
let the next kernel launch once their key loop is done, so its launch and weight loads overlap their
stores and the combine pass.
"""

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels.pdl import launch_options

LOG2E = math.log2(math.e)
# Masked-out scores are -inf; the running max starts at a finite value instead so that a row that
# has seen no valid key yet gives exp2(-inf - m) = 0 and exp2(m - m) = 1 rather than NaN.
_M_INIT = tl.constexpr(-1.0e30)


@triton.jit
def _read_length(length, slot, len_stride, LEN_ON_DEVICE: tl.constexpr):
    """The valid length of cache slot `slot`: a scalar argument (every slot), or (CUDA-graph path) an
    integer in device memory, one per slot (len_stride 1) or one for all (len_stride 0)."""
    if LEN_ON_DEVICE:
        n = tl.load(length + slot * len_stride).to(tl.int32)
    else:
        n = length
    return n


@triton.jit
def _split_layout(kv_len, num_splits, BLOCK_N: tl.constexpr):
    """Deal the kv_len keys in whole BLOCK_N tiles to the splits, the same number to each.

    Returns (tiles, tiles per split, splits in use). Splits from `splits in use` on got no tiles;
    at least one split is always in use (it may still have no cache tiles).
    """
    n_tiles = tl.cdiv(kv_len, BLOCK_N)
    tiles_per_split = tl.maximum(tl.cdiv(n_tiles, num_splits), 1)
    used_splits = tl.maximum(tl.cdiv(n_tiles, tiles_per_split), 1)
    return n_tiles, tiles_per_split, used_splits


@triton.jit
def _online_softmax_step(q, k_t, v, mask, m_i, l_i, acc, qk_scale, DOT_PRECISION: tl.constexpr):
    """Fold one key tile into the running (max, sum, unnormalised output) of every query row.

    q: (M, D); k_t: (D, N) keys transposed; v: (N, D); mask: broadcastable to (M, N), True = attend.
    """
    s = tl.dot(q, k_t, input_precision=DOT_PRECISION) * qk_scale
    s = tl.where(mask, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    p = tl.exp2(s - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return m_new, l_i, acc


@triton.jit
def _load_query_rows(
    q_ptr,
    stride_qb,
    stride_qh,
    stride_qt,
    num_kv_heads,
    GROUP: tl.constexpr,
    BLOCK_LEN: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """This program's (batch, KV head, row block) and its BLOCK_M query rows g * K + i (zero padded)."""
    batch = tl.program_id(0) // num_kv_heads
    kv_head = tl.program_id(0) % num_kv_heads
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_mask = offs_m < GROUP * BLOCK_LEN
    head = kv_head * GROUP + offs_m // BLOCK_LEN
    pos = offs_m % BLOCK_LEN
    q_ptrs = q_ptr + batch * stride_qb + head[:, None] * stride_qh + pos[:, None] * stride_qt + offs_d[None, :]
    q = tl.load(q_ptrs, mask=row_mask[:, None], other=0.0)
    return batch, kv_head, offs_m, offs_d, row_mask, head, pos, q


@triton.jit(do_not_specialize=["length"])
def _attention_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    k_blk_ptr,
    v_blk_ptr,
    length,
    len_stride,
    out_ptr,
    o_part_ptr,
    m_part_ptr,
    l_part_ptr,
    stride_qb,
    stride_qh,
    stride_qt,
    stride_kcb,
    stride_kch,
    stride_kct,
    stride_vcb,
    stride_vch,
    stride_vct,
    stride_kbb,
    stride_kbh,
    stride_kbt,
    stride_vbb,
    stride_vbh,
    stride_vbt,
    stride_ob,
    stride_oh,
    stride_ot,
    num_kv_heads,
    num_splits,
    qk_scale,
    GROUP: tl.constexpr,
    BLOCK_LEN: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_B: tl.constexpr,
    LEN_ON_DEVICE: tl.constexpr,
    WRITE_FINAL: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    DRAFT: tl.constexpr,
    POSITIONS: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    """Grid (B * Hkv, row blocks, num_splits). Batch element b reads cache slot b // POSITIONS, whose
    length is n = length[slot] + b % POSITIONS (POSITIONS > 1: the per-position layout of
    `verify_attention`).

    DRAFT (the diffusion pass): cache tiles [0, n) are dealt to the splits and every block query sees
    them all; split 0 also takes the K block keys (k_blk/v_blk), with no mask between block queries and
    block keys. Otherwise (the verify pass; the block is already in the cache): cache tiles [0, n + K)
    are dealt to the splits and block query i sees keys [0, n + i].
    """
    if USE_PDL:
        # Let the combine kernel, and through it the o product, launch now: attention is latency-bound
        # (a few KB of keys per program), so the product's weight prefetch has the memory bus to
        # itself meanwhile. Measured on an H100: -0.25 ms per K = 8 iteration at Qwen3-8B.
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()  # q, the caches (with the verify block) and the length come from earlier kernels
    batch, kv_head, offs_m, offs_d, row_mask, head, pos, q = _load_query_rows(
        q_ptr, stride_qb, stride_qh, stride_qt, num_kv_heads, GROUP, BLOCK_LEN, HEAD_DIM, BLOCK_M
    )
    m_i = tl.full([BLOCK_M], _M_INIT, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    slot = batch // POSITIONS
    n = _read_length(length, slot, len_stride, LEN_ON_DEVICE) + batch % POSITIONS
    if DRAFT:
        kv_len = n
        last_key = pos * 0 + n - 1  # the whole context, for every query
    else:
        kv_len = n + BLOCK_LEN
        last_key = n + pos  # causal: the query at position n + i sees keys up to itself
    n_tiles, tiles_per_split, used_splits = _split_layout(kv_len, num_splits, BLOCK_N)
    tile_lo = tl.program_id(2) * tiles_per_split
    tile_hi = tl.minimum(tile_lo + tiles_per_split, n_tiles)
    k_base = k_cache_ptr + slot * stride_kcb + kv_head * stride_kch
    v_base = v_cache_ptr + slot * stride_vcb + kv_head * stride_vch
    for tile in range(tile_lo, tile_hi):
        offs_n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
        kv_mask = offs_n < kv_len
        k_t = tl.load(k_base + offs_n[None, :] * stride_kct + offs_d[:, None], mask=kv_mask[None, :], other=0.0)
        v = tl.load(v_base + offs_n[:, None] * stride_vct + offs_d[None, :], mask=kv_mask[:, None], other=0.0)
        visible = offs_n[None, :] <= last_key[:, None]
        m_i, l_i, acc = _online_softmax_step(q, k_t, v, visible, m_i, l_i, acc, qk_scale, DOT_PRECISION)

    if DRAFT:
        if tl.program_id(2) == 0:
            offs_b = tl.arange(0, BLOCK_B)
            blk_mask = offs_b < BLOCK_LEN
            kb_base = k_blk_ptr + batch * stride_kbb + kv_head * stride_kbh
            vb_base = v_blk_ptr + batch * stride_vbb + kv_head * stride_vbh
            k_t = tl.load(kb_base + offs_b[None, :] * stride_kbt + offs_d[:, None], mask=blk_mask[None, :], other=0.0)
            v = tl.load(vb_base + offs_b[:, None] * stride_vbt + offs_d[None, :], mask=blk_mask[:, None], other=0.0)
            m_i, l_i, acc = _online_softmax_step(q, k_t, v, blk_mask[None, :], m_i, l_i, acc, qk_scale, DOT_PRECISION)

    # The normalised output (single split), or this split's partial for the combine kernel. Partials are
    # laid out as (B * Hkv, num_splits, rows_pad[, D]) in fp32, rows_pad = G * K rounded up to whole row
    # blocks. Padding rows are stored too (their q is zero, so they are finite), which lets the combine
    # kernel read whole blocks without masks. Unused splits store nothing.
    if WRITE_FINAL:
        o = acc / l_i[:, None]
        ptrs = out_ptr + batch * stride_ob + head[:, None] * stride_oh + pos[:, None] * stride_ot + offs_d[None, :]
        tl.store(ptrs, o.to(out_ptr.dtype.element_ty), mask=row_mask[:, None])
    elif tl.program_id(2) < used_splits:
        rows_pad = tl.num_programs(1) * BLOCK_M
        part = (tl.program_id(0) * num_splits + tl.program_id(2)) * rows_pad + offs_m
        tl.store(o_part_ptr + part[:, None] * HEAD_DIM + offs_d[None, :], acc)
        tl.store(m_part_ptr + part, m_i)
        tl.store(l_part_ptr + part, l_i)


@triton.jit(do_not_specialize=["length"])
def _combine_splits_kernel(
    o_part_ptr,
    m_part_ptr,
    l_part_ptr,
    out_ptr,
    length,
    len_stride,
    stride_ob,
    stride_oh,
    stride_ot,
    num_kv_heads,
    num_splits,
    GROUP: tl.constexpr,
    BLOCK_LEN: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    ROWS_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_S: tl.constexpr,
    LEN_ON_DEVICE: tl.constexpr,
    BLOCK_IN_CACHE: tl.constexpr,
    POSITIONS: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    """Grid (B * Hkv, row blocks of BLOCK_R): merge the per-split partials of BLOCK_R query rows.

    `length` is the attention kernel's ctx_len / start; BLOCK_IN_CACHE says whether the split keys
    are length + K (verify) or length (diffusion), so the splits in use are found the same way;
    the length is read per slot and POSITIONS applied as the attention kernel did.
    The global max and sum come from all used splits' (max, sum) at once; the outputs are then
    accumulated split by split. A used split that saw no key for a row has max = _M_INIT and sum = 0,
    so its weight is 0; every row saw some key, so the global max is finite. BLOCK_R divides
    ROWS_PAD, so only the final store needs a row mask.
    """
    if USE_PDL:
        # A short kernel: let the next one (the o product) launch at once and load its weights meanwhile
        # (it still waits for this kernel to complete). The partials come from the attention kernel.
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()
    batch = tl.program_id(0) // num_kv_heads
    kv_head = tl.program_id(0) % num_kv_heads
    kv_len = _read_length(length, batch // POSITIONS, len_stride, LEN_ON_DEVICE) + batch % POSITIONS
    if BLOCK_IN_CACHE:
        kv_len += BLOCK_LEN
    _, _, used_splits = _split_layout(kv_len, num_splits, BLOCK_N)

    offs_r = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, HEAD_DIM)
    split_base = tl.program_id(0) * num_splits
    all_parts = (split_base + offs_s[:, None]) * ROWS_PAD + offs_r[None, :]
    split_mask = offs_s[:, None] < used_splits
    m = tl.load(m_part_ptr + all_parts, mask=split_mask, other=float("-inf"))
    l = tl.load(l_part_ptr + all_parts, mask=split_mask, other=0.0)
    m_max = tl.max(m, 0)
    l_sum = tl.sum(l * tl.exp2(m - m_max[None, :]), 0)

    acc = tl.zeros([BLOCK_R, HEAD_DIM], dtype=tl.float32)
    for split in range(used_splits):
        part = (split_base + split) * ROWS_PAD + offs_r
        w = tl.exp2(tl.load(m_part_ptr + part) - m_max)
        acc += tl.load(o_part_ptr + part[:, None] * HEAD_DIM + offs_d[None, :]) * w[:, None]

    head = kv_head * GROUP + offs_r // BLOCK_LEN
    pos = offs_r % BLOCK_LEN
    out_ptrs = out_ptr + batch * stride_ob + head[:, None] * stride_oh + pos[:, None] * stride_ot + offs_d[None, :]
    row_mask = offs_r < GROUP * BLOCK_LEN
    tl.store(out_ptrs, (acc / l_sum[:, None]).to(out_ptr.dtype.element_ty), mask=row_mask[:, None])


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors to fill; 1 off-GPU, where the interpreter runs programs one by one."""
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def _check_length(name: str, length, device: torch.device, hi: int, slots: int):
    """A length is a Python int in [0, hi] (every cache slot), or an integer tensor on the kernels' device
    with one value for all slots or one per slot (values cannot be checked without a host sync).
    Returns (kernel argument, on_device, stride of the per-slot values)."""
    if isinstance(length, torch.Tensor):
        if length.dim() > 1 or length.numel() not in (1, slots) or length.dtype not in (torch.int32, torch.int64):
            raise ValueError(
                f"{name} tensor must hold one int32/int64 value or one per cache slot ({slots}), got shape "
                f"{tuple(length.shape)} {length.dtype}"
            )
        if length.device != device:
            raise ValueError(f"{name} tensor is on {length.device} but the inputs are on {device}")
        return length, True, int(length.numel() > 1)
    length = int(length)
    if not 0 <= length <= hi:
        raise ValueError(f"{name}={length} out of range [0, {hi}] for this cache")
    return length, False, 0


def _check_qkv(q, k_cache, v_cache, tensors: dict, positions: int = 1):
    """Shape/dtype/layout checks shared by both wrappers (`positions` batch elements of q per cache
    slot). Returns (B, H, K, D, Hkv, S_max)."""
    if q.dim() != 4 or k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ValueError(
            f"expected q (B, H, K, D) and equal k/v caches (B, Hkv, S_max, D), got "
            f"{tuple(q.shape)}, {tuple(k_cache.shape)}, {tuple(v_cache.shape)}"
        )
    batch, heads, block_len, head_dim = q.shape
    kv_heads, max_len = k_cache.shape[1], k_cache.shape[2]
    if k_cache.shape[0] * positions != batch or k_cache.shape[3] != head_dim:
        raise ValueError(f"cache shape {tuple(k_cache.shape)} does not match q {tuple(q.shape)}")
    if heads % kv_heads != 0:
        raise ValueError(f"num_heads={heads} is not a multiple of num_kv_heads={kv_heads}")
    if head_dim < 16 or head_dim & (head_dim - 1):
        raise ValueError(f"head_dim must be a power of two >= 16 (tl.dot tile), got {head_dim}")
    if block_len < 1:
        raise ValueError("the block must hold at least one query")
    for name, t in tensors.items():
        if t.dtype != q.dtype or t.device != q.device:
            raise ValueError(f"{name} is {t.dtype} on {t.device}, q is {q.dtype} on {q.device}")
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in head_dim (stride(-1) == 1)")
    return batch, heads, block_len, head_dim, kv_heads, max_len


@dataclass
class _Launch:
    """How a call is tiled: the G * K query rows of a KV head in row blocks of block_m (rows_pad rounds
    rows up to whole blocks), keys in tiles of block_n, and the keys dealt to num_splits programs."""

    group: int
    rows: int
    block_m: int
    rows_pad: int
    block_n: int
    num_splits: int
    num_warps: int


def _plan(q, kv_heads: int, kv_len_bound: int, num_splits: int | None) -> _Launch:
    """Tile sizes, and by default as many splits as fit in one wave on the GPU (one program per SM,
    measured faster on H100 than two waves) while every split gets at least two key tiles."""
    batch, heads, block_len, head_dim = q.shape
    group = heads // kv_heads
    rows = group * block_len
    # All G * K rows of a KV head in one program, capped to bound registers (128 rows of 2-byte values,
    # 64 of fp32: 128 fp32 rows spilled, ~350 us per call at K = 32 on an H100 against ~6 for bf16);
    # tl.dot needs >= 16.
    block_m = max(16, min(128 if q.element_size() <= 2 else 64, triton.next_power_of_2(rows)))
    rows_pad = triton.cdiv(rows, block_m) * block_m
    block_n = 64
    if num_splits is None:
        programs_per_split = batch * kv_heads * (rows_pad // block_m)
        num_splits = max(1, min(sm_count(q.device) // programs_per_split, kv_len_bound // (2 * block_n)))
    if num_splits < 1:
        raise ValueError(f"num_splits must be >= 1, got {num_splits}")
    num_warps = 4 if block_m * head_dim <= 64 * 128 else 8
    return _Launch(group, rows, block_m, rows_pad, block_n, num_splits, num_warps)


def _outputs(q, kv_heads: int, launch: _Launch):
    """The output, plus fp32 partial buffers (B * Hkv, splits, rows_pad[, D]) when the keys are split.
    With one split the attention kernel writes the output directly and never touches the partial
    pointers, so the output stands in for them."""
    out = torch.empty_like(q)
    if launch.num_splits == 1:
        return out, out, out, out
    shape = (q.shape[0] * kv_heads, launch.num_splits, launch.rows_pad)
    o_part = torch.empty(*shape, q.shape[3], device=q.device, dtype=torch.float32)
    m_part = torch.empty(shape, device=q.device, dtype=torch.float32)
    l_part = torch.empty(shape, device=q.device, dtype=torch.float32)
    return out, o_part, m_part, l_part


def _attend(q, caches, length, scale, num_splits, kv_len_bound, draft, positions=1, block_b=16, pdl=False):
    """Plan, launch `_attention_kernel` over q and `caches` (k_cache, v_cache, k_blk, v_blk; the verify
    pass passes its cache as the unused block) and combine the splits.

    length: the checked (argument, on_device, stride) of `_check_length`. positions > 1: q's batch
    element b belongs to cache slot b // positions and is tiled as a one-query call alone would be
    (`verify_attention`'s per_position)."""
    length, on_device, len_stride = length
    kv_heads = caches[0].shape[1]
    launch = _plan(q[:1] if positions > 1 else q, kv_heads, kv_len_bound, num_splits)
    out, o_part, m_part, l_part = _outputs(q, kv_heads, launch)
    shape = dict(GROUP=launch.group, BLOCK_LEN=q.shape[2], HEAD_DIM=q.shape[3], BLOCK_N=launch.block_n)
    shape.update(LEN_ON_DEVICE=on_device, POSITIONS=positions, **launch_options(pdl, q.device))
    _attention_kernel[(q.shape[0] * kv_heads, launch.rows_pad // launch.block_m, launch.num_splits)](
        q,
        *caches,
        length,
        len_stride,
        out,
        o_part,
        m_part,
        l_part,
        *q.stride()[:3],
        *(s for t in caches for s in t.stride()[:3]),
        *out.stride()[:3],
        kv_heads,
        launch.num_splits,
        scale * LOG2E,
        BLOCK_M=launch.block_m,
        BLOCK_B=block_b,
        WRITE_FINAL=launch.num_splits == 1,
        DOT_PRECISION=_dot_precision(q.dtype),
        DRAFT=draft,
        num_warps=launch.num_warps,
        **shape,
    )
    if launch.num_splits == 1:
        return out  # the attention kernel normalised and wrote it
    # As many rows per combine program as still give one program per SM (a power of two <= 16, so it
    # divides rows_pad); per position, chosen as for one position alone (each is combined as it would be).
    block_r = 16
    tiling_batch = 1 if positions > 1 else q.shape[0]
    while block_r > 1 and tiling_batch * kv_heads * triton.cdiv(launch.rows, block_r) < sm_count(out.device):
        block_r //= 2
    _combine_splits_kernel[(q.shape[0] * kv_heads, triton.cdiv(launch.rows, block_r))](
        o_part,
        m_part,
        l_part,
        out,
        length,
        len_stride,
        *out.stride()[:3],
        kv_heads,
        launch.num_splits,
        ROWS_PAD=launch.rows_pad,
        BLOCK_R=block_r,
        BLOCK_S=triton.next_power_of_2(launch.num_splits),
        BLOCK_IN_CACHE=not draft,
        **shape,
    )
    return out


def _dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs get exact fp32 products (not TF32) so fp32 results match the reference tightly."""
    return "ieee" if dtype == torch.float32 else "tf32"


def diffusion_attention(
    q, k_cache, v_cache, ctx_len, k_blk, v_blk, scale: float, num_splits: int | None = None, pdl: bool = False
):
    """Draft-pass attention: each of the K block queries of batch element b sees cache keys
    [0, ctx_len[b]) and all K of its block keys.

    q: (B, H, K, D); k_cache, v_cache: (B, Hkv, S_max, D) (B cache slots), of which the first ctx_len[b]
    entries of slot b are valid (nothing beyond is read); k_blk, v_blk: (B, Hkv, K, D), the blocks' own
    diffusion-view keys/values.
    ctx_len: Python int (every slot), or an int32/int64 tensor on q's device with one value or one per
    slot (ragged contexts; CUDA-graph friendly; the values are then not range-checked, and the default
    num_splits is sized for S_max).
    num_splits: key-sequence splits per (batch, KV head, row block); by default about one program per SM.
    pdl: launch with Programmatic Dependent Launch (kernels/pdl.py; CUDA sm_90+); same results.
    Returns (B, H, K, D) in q's dtype.
    """
    batch, heads, block_len, head_dim, kv_heads, max_len = _check_qkv(
        q, k_cache, v_cache, {"k_cache": k_cache, "v_cache": v_cache, "k_blk": k_blk, "v_blk": v_blk}
    )
    if k_blk.shape != (batch, kv_heads, block_len, head_dim) or v_blk.shape != k_blk.shape:
        raise ValueError(
            f"k_blk/v_blk must be {(batch, kv_heads, block_len, head_dim)}, "
            f"got {tuple(k_blk.shape)}, {tuple(v_blk.shape)}"
        )
    length = _check_length("ctx_len", ctx_len, q.device, max_len, batch)
    bound = max_len if length[1] else length[0]
    block_b = max(16, triton.next_power_of_2(block_len))
    return _attend(q, (k_cache, v_cache, k_blk, v_blk), length, scale, num_splits, bound, True, 1, block_b, pdl)


def verify_attention(
    q,
    k_cache,
    v_cache,
    start,
    scale: float,
    num_splits: int | None = None,
    per_position: bool = False,
    pdl: bool = False,
):
    """Verify-pass (AR) attention over blocks already written to the cache at [start[b], start[b] + K):
    block query i of batch element b sees keys [0, start[b] + i] of cache slot b (nothing beyond
    start[b] + K is read).

    q: (B, H, K, D); k_cache, v_cache: (B, Hkv, S_max, D).
    start: Python int (every slot), or an int32/int64 tensor on q's device with one value or one per slot
    (ragged contexts; CUDA-graph friendly; the values are then not range-checked, and the default
    num_splits is sized for S_max).
    num_splits: key-sequence splits per (batch, KV head, row block); by default about one program per SM.
    per_position: compute each block position as its own one-query, batch-1 call at start[b] + i would
    (same row blocks, key tiles, splits and combine), so its result is bitwise the same as that call's
    whatever K and B are, given the same num_splits (the default one is when start is a device tensor:
    it is sized for S_max): the batch-invariant mode of the engine. The B * K positions become batch
    elements of one launch over the same cache; it does K times the programs of a one-query call.
    pdl: launch with Programmatic Dependent Launch (kernels/pdl.py; CUDA sm_90+); same results.
    Returns (B, H, K, D) in q's dtype.
    """
    batch, heads, block_len, head_dim = q.shape
    positions = block_len if per_position else 1
    if per_position:  # (B, H, K, D) -> (B * K, H, 1, D): one batch element per position
        q = q.transpose(1, 2).reshape(batch * block_len, heads, 1, head_dim)
    _, _, k, _, _, max_len = _check_qkv(q, k_cache, v_cache, {"k_cache": k_cache, "v_cache": v_cache}, positions)
    length = _check_length("start", start, q.device, max_len - block_len, batch)
    bound = max_len if length[1] else length[0] + k  # k: the keys past start one batch element adds
    caches = (k_cache, v_cache, k_cache, v_cache)  # the block is in the cache: no block buffers
    out = _attend(q, caches, length, scale, num_splits, bound, False, positions, pdl=pdl)
    return out.view(batch, block_len, heads, head_dim).transpose(1, 2) if per_position else out
