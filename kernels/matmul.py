"""Matrix products for decoding passes: x (M, K) @ w (N, K)^T, bf16/fp32, fp32 sums, a Triton kernel timed
against cuBLAS per weight shape and row tile.

At batch 1 a decode pass multiplies 1 to 32 token rows (MAX_SKINNY_ROWS) by every weight matrix once, so
each product is a stream of the weight through the SMs and its speed is the bandwidth it reaches. cuBLAS
reads the Qwen3-8B weights at 2.2-2.8 TB/s at these shapes (docs/LOG.md, engine runs 1 and 2); this kernel
is built to stream them instead. A batched pass multiplies B x K rows (256 at B = 16, K = 16), about as
much MMA work as weight stream per product; there the kernel runs row tiles of 64 and 128 rows, launched with
PDL and with gate/up's SiLU * up in its epilogue (cuBLAS needs a separate kernel for it). Which runs is timed
(`Matmul`), by default up to DEFAULT_TRITON_ROWS rows (below: where the tiles beat cuBLAS on an H200).

* One program owns BLOCK_M rows by BLOCK_N output columns and walks the K dimension in BLOCK_K tiles,
  software-pipelined over `num_stages` tiles. The row tile is the fastest-varying program index, so the
  programs that read one weight tile run together and it comes from device memory about once. Too few
  output tiles to fill the GPU are split along K (`split_k` programs per output tile): each writes an fp32
  partial and a second kernel adds the partials in split order, so the result is deterministic (no atomics).
* `gate_up` reads the gate and up matrices in the same program (no fused weight copy) and applies
  SiLU(gate) * up in the epilogue, rounding where `F.silu(F.linear(..)) * F.linear(..)` rounds: one
  kernel (plus the split reduction) instead of two products and an elementwise kernel.
* `swap_ab` computes the tile as w @ x^T and transposes the sums: the same products, with the weight
  tile in the MMA's wide operand. Measured at 32 rows on an H100 it made the q/k/v product faster
  than cuBLAS (docs/LOG.md, the 2026-11-23 diagnosis rounds); which form runs is part of the tuned config.
* The tile sizes and split count are a `MatmulConfig`, chosen per weight shape and row tile by timing a
  short candidate list on the GPU (`Matmul`), where cuBLAS is one of the candidates unless the mode asks
  for batch invariance. Candidates are timed back to back in a CUDA graph, as a pass runs them, so
  what PDL overlaps between consecutive launches counts.
* With `pdl=True` (Programmatic Dependent Launch, sm_90+, `kernels/pdl.py`) the kernel may start while
  the previous kernel finishes: it asks L2 for its first weight tiles (PREFETCH_BYTES in all) before
  waiting for the activations, so a product's ramp-up overlaps the kernel before it. Same sums, bit
  for bit, as without PDL.

Batch invariance: for a fixed config, row m of the result depends only on row m of x and on the
weights. The rows are padded to BLOCK_M and every row goes through the same tiles, the same
`tl.dot`s in the same order and the same split reduction, so with a config chosen from the weight
shape alone (mode "invariant": BLOCK_M = 32 for every M, never cuBLAS) a token's output is bitwise
the same whether it is multiplied alone (an AR step) or with 31 others (a verify pass).
"""

import statistics
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels.attention import sm_count
from kernels.pdl import launch_options, prefetch_l2

# Weight bytes a product asks L2 for before it waits (PDL only), spread over its first-wave programs.
# Measured at Qwen3-8B on an H100 (docs/LOG.md, the 2026-11-23 diagnosis rounds): 2-4 MB best; 8-16 MB slower
# (the prefetch then competes with the previous product's stream and is evicted before use); none
# at all ~0.03 ms per iteration slower.
PREFETCH_BYTES = 4 << 20
# A product of up to MAX_SKINNY_ROWS rows is one row tile of the kernel, its tiles shaped to stream weights
# ("triton" runs no cuBLAS there); above, row tiles of 64 and 128 rows. Above MAX_TRITON_ROWS (prefill chunks,
# the largest batches) "auto" and "triton" run cuBLAS alone: the bound keeps tuning to the row tiles of
# decode passes.
MAX_SKINNY_ROWS = 32
MAX_TRITON_ROWS = 256
# The most rows at which "auto" and "triton" time the Triton kernel by default. Measured on an H200 at the Qwen3-8B
# shape (results/engine_batch_h200_2026-12-01/tiled_0a8616d): at 64 rows its tiles beat cuBLAS on gate/up and the
# B = 4, K = 16 iteration took 4% less; at 128 and 256 rows cuBLAS beat every tile on every product, so timing
# them there costs tuning time only (MAX_TRITON_ROWS still times them, for other GPUs).
DEFAULT_TRITON_ROWS = 64


@dataclass(frozen=True)
class MatmulConfig:
    block_m: int
    block_n: int
    block_k: int
    split_k: int
    num_warps: int = 4
    num_stages: int = 3
    swap_ab: bool = False  # multiply w @ x^T: the weight tile is the MMA's wide operand (wgmma on Hopper)


@triton.jit
def _finish(acc, acc2, dtype: tl.constexpr, GATE_UP: tl.constexpr):
    """Round the fp32 sums to the output dtype; for gate/up, silu(gate) * up rounded like PyTorch:
    each product rounded, silu rounded, the product rounded."""
    if GATE_UP:
        g = acc.to(dtype).to(tl.float32)
        u = acc2.to(dtype).to(tl.float32)
        s = (g / (1.0 + tl.exp(-g))).to(dtype).to(tl.float32)
        return (s * u).to(dtype)
    return acc.to(dtype)


@triton.jit
def _dot_acc(x, w, acc, SWAP_AB: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """acc + x @ w^T for a (rows, K) tile x and a (columns, K) tile w; with SWAP_AB acc is held
    transposed and gets w @ x^T (the weight tile as the MMA's wide operand)."""
    if SWAP_AB:
        acc = tl.dot(w, tl.trans(x), acc, input_precision=DOT_PRECISION)
    else:
        acc = tl.dot(x, tl.trans(w), acc, input_precision=DOT_PRECISION)
    return acc


@triton.jit(do_not_specialize=["M", "pf_tiles"])
def _matmul_kernel(
    x_ptr,
    w_ptr,
    w2_ptr,
    out_ptr,
    part_ptr,
    M,
    N,
    K,
    stride_xm,
    stride_wn,
    stride_w2n,
    stride_om,
    k_tiles_per_split,
    pf_tiles,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GATE_UP: tl.constexpr,
    PARTIAL: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    USE_PDL: tl.constexpr,
    SWAP_AB: tl.constexpr,
):
    """Grid (row tiles, column tiles, splits). Split s sums K tiles [s * k_tiles_per_split, ...) and,
    with PARTIAL, stores fp32 sums at part[(s * M + m) * N + n] (gate/up: the up sums after all of
    gate's, at + splits * M * N); otherwise it finishes and stores the output. M is not specialised
    on, so M = 1 runs the same compiled code as M = 32. Every split has at least one K tile.

    With USE_PDL (kernels/pdl.py) the program first prefetches its leading weight tiles into L2, then
    waits for the previous kernel (gdc_wait) and runs the same loop: the sums are bitwise those of
    the kernel without PDL. (Loading the first tile into registers before the wait instead, a peeled
    loop iteration, compiled to up to twice the registers and issued the pipeline's later loads only
    after that tile's dot.)"""
    pid_m, pid_n, pid_s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_mask, n_mask = offs_m < M, offs_n < N
    k_lo = pid_s * k_tiles_per_split * BLOCK_K
    k_hi = tl.minimum(k_lo + k_tiles_per_split * BLOCK_K, K)
    x_ptrs = x_ptr + offs_m[:, None].to(tl.int64) * stride_xm + offs_k[None, :]
    w_ptrs = w_ptr + offs_n[:, None].to(tl.int64) * stride_wn + offs_k[None, :]
    w2_ptrs = w2_ptr + offs_n[:, None].to(tl.int64) * stride_w2n + offs_k[None, :]
    if SWAP_AB:
        acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
        acc2 = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    else:
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        acc2 = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)

    if USE_PDL:
        # Before waiting for x, ask L2 for this program's first `pf_tiles` weight tiles: the
        # weights never depend on an earlier kernel, so they stream in while the previous kernel
        # finishes, and the loop below (unchanged: same loads, same dots) finds them in L2. A hint
        # only: no registers are held across the wait and the result does not change.
        pf_n = tl.minimum(offs_n, N - 1)[:, None].to(tl.int64)
        _PF_STEP: tl.constexpr = 64 if BLOCK_K >= 64 else BLOCK_K  # one prefetch per 128 B line of bf16
        _PF_COUNT: tl.constexpr = BLOCK_K // _PF_STEP
        for t in range(pf_tiles):  # a runtime count: one compiled kernel serves every weight shape
            pf_k = tl.minimum(k_lo + t * BLOCK_K + tl.arange(0, _PF_COUNT) * _PF_STEP, k_hi - 1)
            prefetch_l2(w_ptr + pf_n * stride_wn + pf_k[None, :])
            if GATE_UP:
                prefetch_l2(w2_ptr + pf_n * stride_w2n + pf_k[None, :])
        tl.extra.cuda.gdc_wait()  # x comes from an earlier kernel, which may also still read out/part
    for k in range(k_lo, k_hi, BLOCK_K):
        k_mask = (k + offs_k) < K
        x = tl.load(x_ptrs + k, mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        w = tl.load(w_ptrs + k, mask=n_mask[:, None] & k_mask[None, :], other=0.0)
        acc = _dot_acc(x, w, acc, SWAP_AB, DOT_PRECISION)
        if GATE_UP:
            w2 = tl.load(w2_ptrs + k, mask=n_mask[:, None] & k_mask[None, :], other=0.0)
            acc2 = _dot_acc(x, w2, acc2, SWAP_AB, DOT_PRECISION)
    if USE_PDL:
        # The weight stream is done: let the next kernel launch and start loading its own weights
        # while this one stores (it still waits for this kernel to complete before reading them).
        tl.extra.cuda.gdc_launch_dependents()

    if SWAP_AB:
        acc, acc2 = tl.trans(acc), tl.trans(acc2)
    out_mask = m_mask[:, None] & n_mask[None, :]
    if PARTIAL:
        part = (pid_s * M + offs_m[:, None]).to(tl.int64) * N + offs_n[None, :]
        tl.store(part_ptr + part, acc, mask=out_mask)
        if GATE_UP:
            tl.store(part_ptr + tl.num_programs(2) * M * N + part, acc2, mask=out_mask)
    else:
        out = _finish(acc, acc2, out_ptr.dtype.element_ty, GATE_UP)
        tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :], out, mask=out_mask)


@triton.jit(do_not_specialize=["M"])
def _split_sum_kernel(
    part_ptr, out_ptr, M, N, splits, stride_om, GATE_UP: tl.constexpr, BLOCK: tl.constexpr, USE_PDL: tl.constexpr
):
    """Add the splits' partials in split order (deterministic) and finish like the one-split kernel."""
    if USE_PDL:
        # A short kernel: let the next one launch at once and load its weights meanwhile (it still
        # waits for this kernel to complete). Everything this one reads comes from the product kernel.
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < M * N
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    acc2 = tl.zeros([BLOCK], dtype=tl.float32)
    for s in range(splits):
        acc += tl.load(part_ptr + s * M * N + offs, mask=mask, other=0.0)
        if GATE_UP:
            acc2 += tl.load(part_ptr + (splits + s) * M * N + offs, mask=mask, other=0.0)
    out = _finish(acc, acc2, out_ptr.dtype.element_ty, GATE_UP)
    tl.store(out_ptr + (offs // N) * stride_om + offs % N, out, mask=mask)


def triton_matmul(
    x: torch.Tensor, w: torch.Tensor, config: MatmulConfig, w2: torch.Tensor | None = None, pdl: bool = False
):
    """x (M, K) @ w (N, K)^T, or with w2: silu(x @ w^T) * (x @ w2^T). Rows of x and w contiguous in K.
    pdl: launch both kernels with Programmatic Dependent Launch (CUDA sm_90+ only, kernels/pdl.py);
    the result is bitwise the same either way."""
    M, K = x.shape
    N = w.shape[0]
    for name, t in (("x", x), ("w", w), ("w2", w2)):
        if t is not None and (t.dim() != 2 or t.shape[1] != K or t.stride(1) != 1 or t.dtype != x.dtype):
            raise ValueError(
                f"{name}: expected (rows, {K}) contiguous in the last dim, dtype {x.dtype}; "
                f"got {tuple(t.shape)} {t.dtype} strides {t.stride()}"
            )
    if w2 is not None and w2.shape != w.shape:
        raise ValueError(f"gate {tuple(w.shape)} and up {tuple(w2.shape)} differ")
    c = config
    k_tiles = triton.cdiv(K, c.block_k)
    per_split = triton.cdiv(k_tiles, c.split_k)
    splits = triton.cdiv(k_tiles, per_split)  # no empty splits
    out = torch.empty(M, N, dtype=x.dtype, device=x.device)
    part = (
        torch.empty((2 if w2 is not None else 1) * splits * M * N, dtype=torch.float32, device=x.device)
        if splits > 1
        else out
    )
    gate_up = w2 is not None
    w2 = w if w2 is None else w2
    pdl_options = launch_options(pdl, x.device)
    grid = (triton.cdiv(M, c.block_m), triton.cdiv(N, c.block_n), splits)
    prefetch = prefetch_tiles(grid, c, per_split, (2 if gate_up else 1) * w.element_size(), x.device) if pdl else 0
    _matmul_kernel[grid](
        x,
        w,
        w2,
        out,
        part,
        M,
        N,
        K,
        x.stride(0),
        w.stride(0),
        w2.stride(0),
        out.stride(0),
        per_split,
        prefetch,
        BLOCK_M=c.block_m,
        BLOCK_N=c.block_n,
        BLOCK_K=c.block_k,
        GATE_UP=gate_up,
        PARTIAL=splits > 1,
        SWAP_AB=c.swap_ab,
        DOT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
        num_warps=c.num_warps,
        num_stages=c.num_stages,
        **pdl_options,
    )
    if splits > 1:
        block = 1024
        _split_sum_kernel[(triton.cdiv(M * N, block),)](
            part, out, M, N, splits, out.stride(0), GATE_UP=gate_up, BLOCK=block, **pdl_options
        )
    return out


def prefetch_tiles(grid, config: MatmulConfig, per_split: int, bytes_per_element: int, device) -> int:
    """Weight tiles each program prefetches into L2 before its gdc_wait: PREFETCH_BYTES of distinct weight
    spread over the programs of the first wave (about one per SM; later ones start when the weights are
    streaming anyway), at most the program's own; none where one tile is already over the budget. The
    grid[0] row tiles of one column tile run next to each other and read (and prefetch) the same weight,
    so the first wave holds first_wave / grid[0] distinct weight streams."""
    first_wave = min(grid[0] * grid[1] * grid[2], sm_count(device))
    tile_bytes = config.block_n * config.block_k * bytes_per_element
    return min(per_split, PREFETCH_BYTES // (triton.cdiv(first_wave, grid[0]) * tile_bytes))


def candidate_configs(
    rows: int, N: int, K: int, sm_count: int, gate_up: bool = False, elem_bytes: int = 2
) -> list[MatmulConfig]:
    """A short list to time for a product of `rows` rows (a row tile: a power of two >= 16).
    Tiles: up to MAX_SKINNY_ROWS rows, one row tile of `rows` by column tiles of 32/64/128 and K tiles of
    128/256 (a weight stream: long K tiles keep many loads in flight); above, row tiles of 64 and 128 (at most
    `rows`) by column tiles of 64/128/256 and K tiles of 64, as cuBLAS's kernels at 256 rows have (the
    nvjet_*_64xS kernels of the B = 16 profile in results/engine_batch_h200_2026-12-01), for 2-byte types only:
    fp32's exact products run on the FMA units, where tiles this large spill registers (compiled for sm_90 with
    Triton 3.9: kilobytes of stack per thread, against none in bf16), so cuBLAS alone runs them.
    Each tile: 4 warps where its fp32 sums (two sets with gate_up) are at most 128 x 128 (128 registers per
    thread), else 8 warps, and left out above 128 x 256 (they would spill); with the split counts (powers of
    two) that give between half a wave and two waves of programs with >= 2 K tiles per split (else one
    split), pipelined as deep as shared memory allows (<= 160 KB of `elem_bytes` values, 2 to 4 stages;
    tiles that do not fit two stages are left out: they would fail only after a long compilation).
    gate_up streams two weight tiles per step. For 2-byte types, tiles of >= 64 columns and < 64 rows come
    both ways round: x @ w^T, and swap_ab (w @ x^T, the weight tile as the MMA's first operand: Hopper's
    wgmma needs >= 64 rows there, so at 16-32 token rows only the swapped form gets it; pointless for fp32,
    whose exact products run on the FMA units)."""
    if rows <= MAX_SKINNY_ROWS:
        tiles = [(rows, block_n, block_k) for block_n in (32, 64, 128) for block_k in (128, 256)]
    else:
        tiles = [(m, n, 64) for m in (64, 128) if m <= rows and elem_bytes == 2 for n in (64, 128, 256)]
    out = []
    for block_m, block_n, block_k in tiles:
        sums = block_m * block_n * (2 if gate_up else 1)
        stages = min(4, 160 * 1024 // ((block_m + (2 if gate_up else 1) * block_n) * block_k * elem_bytes))
        if sums > 128 * 256 or stages < 2:
            continue
        k_tiles = triton.cdiv(K, block_k)
        tiles_out = triton.cdiv(rows, block_m) * triton.cdiv(N, block_n)
        splits = [s for s in (1, 2, 4, 8, 16) if s == 1 or k_tiles // s >= 2]
        splits = [s for s in splits if sm_count // 2 <= tiles_out * s <= 2 * sm_count] or splits[:1]
        warps = 4 if sums <= 128 * 128 else 8
        swaps = (False, True) if elem_bytes == 2 and block_n >= 64 > block_m else (False,)
        out += [MatmulConfig(block_m, block_n, block_k, s, warps, stages, swap) for s in splits for swap in swaps]
    return out


CHAIN_CALLS = 16  # calls per timed CUDA graph when tuning


def weight_copies(weights: tuple, limit: int = CHAIN_CALLS) -> list[tuple]:
    """`weights` followed by clones of it, enough that all of them together exceed twice the L2 cache
    (at most `limit`): products cycling through them read their weights from device memory, as in a
    decoding pass, not from L2."""
    size = sum(t.numel() * t.element_size() for t in weights)
    l2 = torch.cuda.get_device_properties(weights[0].device).L2_cache_size
    copies = [weights]
    while len(copies) < limit and len(copies) * size < 2 * l2:
        copies.append(tuple(t.clone() for t in weights))
    return copies


def chain_ms(calls, n_calls: int = CHAIN_CALLS) -> float:
    """Median time per call of `calls` cycled through n_calls times and replayed back to back from one
    CUDA graph, the way a decoding pass runs its products: with PDL a Triton kernel's launch and weight
    prefetch overlap the end of the call before it (a cuBLAS launch does not), which timing calls one
    at a time, L2 flushed in between, cannot show. Each call is run once first (compilation, library
    handles), on a side stream as graph capture requires."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for call in calls:
            call()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(n_calls):
            calls[i % len(calls)]()
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / n_calls)
    return statistics.median(times[2:])


CUBLAS, CUBLAS_FUSED = "cublas", "cublas_fused"  # `Matmul` choices besides a MatmulConfig of the Triton kernel


def cublas_choices(mode: str, rows: int, fused: bool) -> tuple[str, ...]:
    """The cuBLAS choices a tuning mode of `Matmul` may make for a product of `rows` rows (the row tile): "auto"
    at every row count, "triton" only above MAX_SKINNY_ROWS rows, "invariant" never (a row's result must not
    depend on M); with a fused [gate; up] weight the one product against it first, then the two products."""
    if mode == "auto" or (mode == "triton" and rows > MAX_SKINNY_ROWS):
        return (CUBLAS_FUSED, CUBLAS) if fused else (CUBLAS,)
    return ()


def triton_timed(mode: str, rows: int, triton_rows: int) -> bool:
    """Whether a tuning mode of `Matmul` times the Triton kernel for a product of `rows` rows (the row tile):
    "invariant" at every row count (the kernel is all it runs), "auto" and "triton" up to `triton_rows`."""
    return mode == "invariant" or rows <= triton_rows


def tuning_candidates(
    mode: str,
    rows: int,
    N: int,
    K: int,
    sms: int,
    gate_up=False,
    fused=False,
    elem_bytes=2,
    *,
    triton_rows: int,
) -> list:
    """What `Matmul` in a tuning mode times for one product of `rows` rows (the row tile), each of which it may
    choose (the fastest runs): the Triton kernel's `candidate_configs` where `triton_timed`, and
    `cublas_choices`. Off CUDA the first one runs untimed: the kernel up to MAX_SKINNY_ROWS rows, and above
    them cuBLAS where the mode may choose it (the CPU tests run Triton in its slow interpreter, and products
    of many rows are prefill chunks and batched passes there)."""
    configs = candidate_configs(rows, N, K, sms, gate_up, elem_bytes) if triton_timed(mode, rows, triton_rows) else []
    cublas = list(cublas_choices(mode, rows, fused))
    return configs + cublas if rows <= MAX_SKINNY_ROWS else cublas + configs


class Matmul:
    """The engine's matrix products: x @ w^T (`linear`) and silu(x @ gate^T) * (x @ up^T) (`gate_up`).

    mode "torch": cuBLAS (`F.linear`) and `silu_mul`. "auto": per (row tile, weight shape), the fastest of
    cuBLAS and the Triton kernel's candidate configs, timed on first use (on CUDA, in a CUDA-graph chain:
    `chain_ms`; elsewhere the first candidate); the row tile is M rounded up to a power of two (>= 16); cuBLAS
    alone above `triton_rows` rows. "triton": the same without cuBLAS up to MAX_SKINNY_ROWS rows.
    "invariant": the Triton kernel for every row count with BLOCK_M = 32 and one config per weight shape, so
    each row's result does not depend on M.
    gate/up given a fused [gate; up] weight as well (`gate_up(..., fused)`; the engine's `fuse_gate_up`):
    cuBLAS may run one product against it (CUBLAS_FUSED: N = 2 x intermediate, fewer partial waves of output
    tiles than two products of N each) and SiLU * up on the two halves of its output. "torch" then always runs
    it; "auto" and "triton" (above MAX_SKINNY_ROWS rows) time it against the two products and the Triton
    kernel (which reads the halves as gate and up), so it runs only where it is the fastest. Only what the mode
    may choose is timed (`tuning_candidates`). Off CUDA the first candidate runs: the Triton kernel up to
    MAX_SKINNY_ROWS rows (and in "invariant"), cuBLAS above (the fused product where given).
    Timings are shared by all instances (`_timed`) that time the same candidates, so engines of one model tune
    once.
    pdl: launch the Triton kernels with Programmatic Dependent Launch (kernels/pdl.py; CUDA sm_90+).
    `silu_mul` should launch the same way (the engine passes it with the same setting). Candidates are
    timed with the same setting as they will run, and timings are kept per setting.
    triton_rows: the most rows (row tile) at which "auto" and "triton" time the Triton kernel, MAX_SKINNY_ROWS to
    MAX_TRITON_ROWS; default DEFAULT_TRITON_ROWS (what the H200 measured, above); products of more rows run on
    cuBLAS.
    """

    MODES = ("torch", "auto", "triton", "invariant")
    _timed: dict = {}

    def __init__(self, mode: str, silu_mul, pdl: bool = False, triton_rows: int = DEFAULT_TRITON_ROWS):
        if mode not in self.MODES:
            raise ValueError(f"matmul={mode!r}: choose one of {self.MODES}")
        if not MAX_SKINNY_ROWS <= triton_rows <= MAX_TRITON_ROWS:
            raise ValueError(
                f'triton_rows={triton_rows}: choose from {MAX_SKINNY_ROWS} (MAX_SKINNY_ROWS, where "triton" runs '
                f"the Triton kernel alone) to {MAX_TRITON_ROWS} (MAX_TRITON_ROWS, the kernel's largest row tiles)"
            )
        self.mode, self.silu_mul, self.pdl, self.triton_rows = mode, silu_mul, pdl, triton_rows
        # (rows tile, N, K, gate_up, fused) -> MatmulConfig, CUBLAS or CUBLAS_FUSED, for reports
        self.chosen: dict = {}

    def linear(self, x, w):
        return self._run(self._choice(x, w), x, w)

    def gate_up(self, x, gate, up, fused=None):
        """silu(x @ gate^T) * (x @ up^T); fused: None, or [gate; up] as one (2N, K) matrix (the engine's are
        views: gate and up are its halves)."""
        if fused is not None and fused.shape != (2 * gate.shape[0], gate.shape[1]):
            raise ValueError(f"fused {tuple(fused.shape)} is not [gate; up] of gate {tuple(gate.shape)}")
        fused = None if self.mode == "invariant" else fused  # the Triton kernel at every row count
        return self._run(self._choice(x, gate, up, fused), x, gate, up, fused)

    def _run(self, choice, x, w, w2=None, fused=None):
        """One product by `choice` (a MatmulConfig, CUBLAS or CUBLAS_FUSED); w2: up (gate_up)."""
        if choice == CUBLAS_FUSED:
            y, n = F.linear(x, fused), w.shape[0]
            return self.silu_mul(y[:, :n], y[:, n:])
        if choice == CUBLAS:
            return F.linear(x, w) if w2 is None else self.silu_mul(F.linear(x, w), F.linear(x, w2))
        return triton_matmul(x, w, choice, w2, pdl=self.pdl)

    def _choice(self, x, w, w2=None, fused=None):
        if self.mode == "torch":
            return CUBLAS if fused is None else CUBLAS_FUSED
        rows = MAX_SKINNY_ROWS if self.mode == "invariant" else max(16, triton.next_power_of_2(x.shape[0]))
        kernel = triton_timed(self.mode, rows, self.triton_rows)
        if not kernel and fused is None:
            return CUBLAS
        # timings are shared where the candidates are the same: whether cuBLAS and the kernel are among them
        cublas = bool(cublas_choices(self.mode, rows, fused is not None))
        key = (rows, *w.shape, w2 is not None, fused is not None, cublas, kernel, x.dtype, x.device.type, self.pdl)
        if key not in self._timed:
            self._timed[key] = self._tune(rows, x, w, w2, fused)
        choice = self._timed[key][0][1]  # [(ms, choice)], fastest first
        self.chosen[key[:5]] = choice
        return choice

    def _tune(self, rows, x, w, w2, fused):
        """[(ms, choice)] of this mode's `tuning_candidates`, fastest first."""
        N, K = w.shape
        gate_up, sms = w2 is not None, sm_count(x.device)
        candidates = tuning_candidates(
            self.mode, rows, N, K, sms, gate_up, fused is not None, x.element_size(), triton_rows=self.triton_rows
        )
        if x.device.type != "cuda":
            return [(0.0, candidates[0])]
        xs = torch.randn(rows, K, device=x.device, dtype=x.dtype)
        if fused is not None:  # copies of the fused matrix, gate and up its halves (as in the engine)
            copies = [(c[:N], c[N:], c) for (c,) in weight_copies((fused,))]
        else:
            copies = weight_copies((w,) if w2 is None else (w, w2))
        ranked = []
        for choice in candidates:
            try:
                ranked.append((chain_ms([partial(self._run, choice, xs, *c) for c in copies]), choice))
            except triton.runtime.errors.OutOfResources:
                continue
        return sorted(ranked, key=lambda r: r[0])

    def choices(self) -> dict:
        """What this instance chose per (row tile, N, K, gate_up, fused), as strings (for a results file)."""
        return {str(k): str(c) for k, c in self.chosen.items()}

    @classmethod
    def report(cls) -> list[dict]:
        """Every tuned product (row tile, weight shape N x K, gate_up, fused weight given, cuBLAS and the Triton
        kernel among the candidates, dtype, PDL) with its four fastest candidates and their times (`fastest`:
        [ms, choice])."""
        return [
            {
                "row_tile": rows,
                "N": N,
                "K": K,
                "gate_up": gate_up,
                "fused": fused,
                "cublas": cublas,
                "triton": kernel,
                "dtype": str(dtype).removeprefix("torch."),
                "pdl": pdl,
                "fastest": [(round(ms, 4), str(c)) for ms, c in ranked[:4]],
            }
            for (rows, N, K, gate_up, fused, cublas, kernel, dtype, _, pdl), ranked in cls._timed.items()
        ]
