"""The Triton matrix products of kernels/matmul.py vs float64, their batch invariance, and what Matmul times.

Off the GPU the kernels run in Triton's interpreter (fp32, small shapes that are not multiples of
the tiles); with CUDA also bf16 and a real decode shape.
"""

import pytest
import torch
import torch.nn.functional as F

import kernels.matmul
from kernels.elementwise import silu_mul
from kernels.matmul import (
    CUBLAS,
    CUBLAS_FUSED,
    MAX_SKINNY_ROWS,
    MAX_TRITON_ROWS,
    PREFETCH_BYTES,
    Matmul,
    MatmulConfig,
    candidate_configs,
    prefetch_tiles,
    triton_matmul,
    tuning_candidates,
)
from kernels.reference import matmul_ref

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
DTYPES = [torch.float32, torch.bfloat16] if CUDA else [torch.float32]
TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}
# (block_m, block_n, block_k, split_k): one split, and three splits (K = 300 has 10 tiles of 32: 4 + 4 + 2);
# swap_ab (w @ x^T) with one and three splits
CONFIGS = [
    MatmulConfig(16, 32, 32, 1),
    MatmulConfig(32, 16, 32, 3),
    MatmulConfig(16, 32, 64, 2),
    MatmulConfig(16, 64, 32, 1, swap_ab=True),
    MatmulConfig(32, 64, 32, 3, swap_ab=True),
]


def _rand(*shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) / shape[-1] ** 0.25).to(DEVICE, dtype)


# Row tiles of 64 and 128 rows (the many-row candidates; the interpreter needs small column and K tiles to stay
# fast): one split, three splits (K = 300: 4 + 4 + 2 tiles of 32), two of 64 (3 + 2), swap_ab
MANY_ROW_CONFIGS = [
    MatmulConfig(64, 32, 32, 1),
    MatmulConfig(128, 16, 32, 3, num_warps=8),
    MatmulConfig(64, 64, 64, 2, num_stages=2),
    MatmulConfig(128, 64, 32, 3, swap_ab=True),
]
# (rows, config): the one-row-tile configs at 1..32 rows; the many-row ones with M not a multiple of the tile
# (masked rows of the last tile; 150 rows: three row tiles of 64 or two of 128)
ROWS_AND_CONFIGS = [(M, c) for M in (1, 5, 17, 32) for c in CONFIGS]
ROWS_AND_CONFIGS += [(M, c) for M in (40, 150) for c in MANY_ROW_CONFIGS]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("gate_up", [False, True])
@pytest.mark.parametrize("M,config", ROWS_AND_CONFIGS, ids=str)
def test_matches_float64(M, gate_up, config, dtype):
    """Every row-tile size, with the gate/up epilogue and the split sums, against float64."""
    x, w, w2 = (
        _rand(M, 300, dtype=dtype, seed=M),
        _rand(70, 300, dtype=dtype, seed=1),
        _rand(70, 300, dtype=dtype, seed=2),
    )
    out = triton_matmul(x, w, config, w2 if gate_up else None)
    assert out.shape == (M, 70) and out.dtype == dtype
    torch.testing.assert_close(
        out.double(), matmul_ref(x, w, w2 if gate_up else None), rtol=TOL[dtype], atol=TOL[dtype]
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "config",
    [MatmulConfig(32, 32, 32, 1), MatmulConfig(32, 16, 32, 3), MatmulConfig(32, 64, 32, 3, swap_ab=True)],
    ids=str,
)
@pytest.mark.parametrize("gate_up", [False, True])
def test_rows_do_not_depend_on_batch(gate_up, config, dtype):
    """Each row of a 32-row product equals that row multiplied alone, bit for bit (same config). Off the GPU
    the interpreter computes fp32 tile products with numpy's BLAS, whose summation order depends on the
    number of rows (triton 3.9), so there fp32 rows are compared to within a few ulps of a 300-term sum."""
    x, w, w2 = (
        _rand(32, 300, dtype=dtype, seed=3),
        _rand(70, 300, dtype=dtype, seed=4),
        _rand(70, 300, dtype=dtype, seed=5),
    )
    w2 = w2 if gate_up else None
    full = triton_matmul(x, w, config, w2)

    def same(a, b):
        if torch.cuda.is_available() or dtype != torch.float32:
            return torch.equal(a, b)
        return torch.allclose(a, b, rtol=1e-5, atol=1e-6)

    for m in (0, 7, 31):
        assert same(triton_matmul(x[m : m + 1], w, config, w2)[0], full[m])
    assert same(triton_matmul(x[:9], w, config, w2), full[:9])


def test_strided_rows():
    """Row slices of a wider activation (the LM head reads one row of the residual stream)."""
    x = _rand(6, 400, dtype=torch.float32, seed=6)[:, 50:350]
    w = _rand(40, 300, dtype=torch.float32, seed=7)
    torch.testing.assert_close(triton_matmul(x, w, CONFIGS[1]).double(), matmul_ref(x, w), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("rows", [16, 32, 64, 128, 256])
def test_candidates_fill_the_gpu(rows):
    """candidate_configs at decode shapes: short lists of legal tiles (tl.dot needs >= 16 in every dimension;
    row tiles within the rows, one of `rows` up to MAX_SKINNY_ROWS rows, of 64 or 128 above), between half a wave
    and two waves of programs where splitting K allows, within shared memory, fp32 sums <= 128 per thread
    (4 warps: 128 x 128; 8 warps: 128 x 256), swap_ab only where the row tile is under wgmma's 64 rows; for fp32
    (FMA products) none above MAX_SKINNY_ROWS rows."""
    for N, K, gate_up in ((4096, 4096, False), (12288, 4096, True), (4096, 12288, False), (151936, 4096, False)):
        configs = candidate_configs(rows, N, K, 132, gate_up)
        assert configs and len(configs) <= (24 if rows <= MAX_SKINNY_ROWS else 12)
        assert {c.swap_ab for c in configs} == ({False, True} if rows < 64 else {False})
        for c in configs:
            assert min(c.block_m, c.block_n, c.block_k) >= 16
            assert c.block_m == rows if rows <= MAX_SKINNY_ROWS else (c.block_m in (64, 128) and c.block_m <= rows)
            assert c.block_n >= 64 or not c.swap_ab  # wgmma needs >= 64 rows in the weight operand
            programs = -(-rows // c.block_m) * -(-N // c.block_n) * c.split_k
            assert 66 <= programs <= 2 * 132 or c.split_k == 1
            assert c.num_stages * (c.block_m + (1 + gate_up) * c.block_n) * c.block_k * 2 <= 160 * 1024
            assert c.block_m * c.block_n * (1 + gate_up) <= 128 * 32 * c.num_warps
        fp32 = candidate_configs(rows, N, K, 132, gate_up, elem_bytes=4)  # smem sized for 4 bytes, no swapped tiles
        assert bool(fp32) == (rows <= MAX_SKINNY_ROWS) and all(
            c.num_stages * (c.block_m + (1 + gate_up) * c.block_n) * c.block_k * 4 <= 160 * 1024 for c in fp32
        )
        assert not any(c.swap_ab for c in fp32)


def test_matmul_modes():
    x, w, w2 = (
        _rand(5, 300, dtype=torch.float32, seed=8),
        _rand(70, 300, dtype=torch.float32, seed=9),
        _rand(70, 300, dtype=torch.float32, seed=10),
    )
    silu_mul = lambda g, u: F.silu(g) * u  # noqa: E731
    ref, ref_gu = matmul_ref(x, w), matmul_ref(x, w, w2)
    for mode in Matmul.MODES:
        mm = Matmul(mode, silu_mul)
        torch.testing.assert_close(mm.linear(x, w).double(), ref, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(mm.gate_up(x, w, w2).double(), ref_gu, rtol=1e-4, atol=1e-4)
    inv = Matmul("invariant", silu_mul)
    assert torch.equal(inv.linear(x[2:3], w)[0], inv.linear(x, w)[2])
    assert all(c != "cublas" and c.block_m == 32 for c in inv.chosen.values())
    with pytest.raises(ValueError, match="matmul="):
        Matmul("fast", silu_mul)
    for rows in (16, 512):
        with pytest.raises(ValueError, match=f"triton_rows={rows}: choose from 32 .* to 256"):
            Matmul("auto", silu_mul, triton_rows=rows)


@pytest.mark.parametrize("grid", [(1, 96, 1), (1, 32, 4), (2, 96, 1), (4, 96, 1), (4, 32, 2)])
def test_prefetch_spends_its_budget_on_distinct_weight(monkeypatch, grid):
    """The first wave's programs prefetch about PREFETCH_BYTES of distinct weight: the grid[0] row tiles of a
    column tile share theirs, so a program of a many-row product prefetches grid[0] times the tiles of a
    one-row-tile product. Broken: the budget split over every program of the wave, as if none shared."""
    monkeypatch.setattr(kernels.matmul, "sm_count", lambda device: 132)
    config, per_split = MatmulConfig(128, 128, 64, 1, 8, 3), 64
    tile = config.block_n * config.block_k * 2
    streams = -(-min(grid[0] * grid[1] * grid[2], 132) // grid[0])  # distinct weight streams in the first wave
    tiles = prefetch_tiles(grid, config, per_split, 2, torch.device("cpu"))
    assert PREFETCH_BYTES - streams * tile < streams * tiles * tile <= PREFETCH_BYTES
    broken = PREFETCH_BYTES // (min(grid[0] * grid[1] * grid[2], 132) * tile)
    assert (PREFETCH_BYTES - streams * tile < streams * broken * tile) == (grid[0] == 1)


@pytest.mark.parametrize("broken", [None, "cublas_everywhere", "kernel_skinny_only"])
def test_only_candidates_a_mode_may_choose_are_timed(monkeypatch, broken):
    """tuning_candidates, what Matmul times per product (the fastest is the one chosen): the Triton kernel's
    configs for the row tile up to MAX_TRITON_ROWS rows in "auto" and "triton" (up to `triton_rows`:
    MAX_SKINNY_ROWS leaves the many-row tiles out), at every row count in "invariant" (whose row tile is always
    32), and cuBLAS (the fused product first, given a fused weight) wherever the mode may run it: "auto" at every
    row count, "triton" only above MAX_SKINNY_ROWS, "invariant" never. Above MAX_SKINNY_ROWS cuBLAS comes first:
    off CUDA it is what runs untimed there. Broken: cuBLAS among the candidates in every mode, as if "triton" and
    "invariant" could choose it; the Triton kernel only up to MAX_SKINNY_ROWS rows, as if batched passes could
    not run it."""
    if broken == "cublas_everywhere":
        monkeypatch.setattr(kernels.matmul, "cublas_choices", lambda mode, rows, fused: (CUBLAS,))
    if broken == "kernel_skinny_only":
        monkeypatch.setattr(
            kernels.matmul, "triton_timed", lambda mode, rows, triton_rows: mode == "invariant" or rows <= 32
        )
    N, K = 12288, 4096
    skinny, many = (candidate_configs(rows, N, K, 132, gate_up=True) for rows in (32, MAX_TRITON_ROWS))
    ok = []
    for fused in (False, True):
        cublas = [CUBLAS_FUSED, CUBLAS] if fused else [CUBLAS]
        for mode, rows, triton_rows, expected in [
            ("auto", 32, MAX_TRITON_ROWS, skinny + cublas),
            ("auto", MAX_TRITON_ROWS, MAX_TRITON_ROWS, cublas + many),
            ("auto", MAX_TRITON_ROWS, MAX_SKINNY_ROWS, cublas),
            ("auto", 2 * MAX_TRITON_ROWS, MAX_TRITON_ROWS, cublas),
            ("triton", 32, MAX_TRITON_ROWS, skinny),
            ("triton", MAX_TRITON_ROWS, MAX_TRITON_ROWS, cublas + many),
            ("triton", MAX_TRITON_ROWS, MAX_SKINNY_ROWS, cublas),
            ("triton", 2 * MAX_TRITON_ROWS, MAX_TRITON_ROWS, cublas),
            ("invariant", 32, MAX_TRITON_ROWS, skinny),
        ]:
            candidates = tuning_candidates(mode, rows, N, K, 132, True, fused, triton_rows=triton_rows)
            ok.append(candidates == expected)
    assert all(ok) != bool(broken), ok


def test_tunings_are_kept_apart_where_the_candidates_differ(monkeypatch):
    """Matmul.report(): one record per tuned product, fields apart. "auto" times cuBLAS at <= MAX_SKINNY_ROWS
    rows and "triton" does not, so the two do not share a tuning; "triton" and "invariant" at a 32-row tile do.
    At a 64-row tile "auto" times the Triton kernel unless its triton_rows is MAX_SKINNY_ROWS, so those two do
    not share one either. Off CUDA each is the first candidate, untimed (cuBLAS's fused product above
    MAX_SKINNY_ROWS rows). The products run on CPU tensors, the Triton ones as F.linear: what is checked is the
    report, and on a GPU machine Triton refuses CPU tensors outside its interpreter."""
    monkeypatch.setattr(Matmul, "_timed", {})
    monkeypatch.setattr(kernels.matmul, "triton_matmul", lambda x, w, config, w2=None, pdl=False: F.linear(x, w))
    torch_silu_mul = lambda g, u: F.silu(g) * u  # noqa: E731
    x, w = (_rand(*shape, dtype=torch.float32, seed=seed).cpu() for shape, seed in (((20, 300), 30), ((70, 300), 31)))
    for mode in ("triton", "auto", "invariant"):
        Matmul(mode, torch_silu_mul).linear(x, w)
    x40, fused = (
        _rand(*shape, dtype=torch.float32, seed=seed).cpu() for shape, seed in (((40, 300), 32), ((140, 300), 33))
    )
    for triton_rows in (MAX_TRITON_ROWS, MAX_SKINNY_ROWS):
        Matmul("auto", torch_silu_mul, triton_rows=triton_rows).gate_up(x40, fused[:70], fused[70:], fused)
    config = str(candidate_configs(32, 70, 300, 1, elem_bytes=4)[0])
    record = dict(row_tile=32, N=70, K=300, gate_up=False, fused=False, dtype="float32", pdl=False)
    fused_record = {**record, "row_tile": 64, "gate_up": True, "fused": True, "cublas": True}
    assert Matmul.report() == [
        {**record, "cublas": False, "triton": True, "fastest": [(0.0, config)]},
        {**record, "cublas": True, "triton": True, "fastest": [(0.0, config)]},
        {**fused_record, "triton": True, "fastest": [(0.0, CUBLAS_FUSED)]},
        {**fused_record, "triton": False, "fastest": [(0.0, CUBLAS_FUSED)]},
    ]


@pytest.mark.parametrize("M", [5, 40])
def test_gate_up_with_a_fused_weight(M):
    """gate_up given [gate; up] as one matrix (gate and up its halves, as the engine's fuse_gate_up makes them):
    every mode gives the product, up to MAX_SKINNY_ROWS rows and above. "torch", and off CUDA every mode but
    "invariant" above MAX_SKINNY_ROWS, run one product against the fused matrix and SiLU * up (the Triton
    kernel) on the two halves of its output (on CUDA "auto" and "triton" run what they timed fastest); the
    Triton matrix product reads the halves as gate and up. Broken: the fused matrix holds [up; gate], which the fused
    product must show."""
    x = _rand(M, 300, dtype=torch.float32, seed=21)
    fused = _rand(140, 300, dtype=torch.float32, seed=22)
    gate, up = fused[:70], fused[70:]
    ref = matmul_ref(x, gate, up)
    for mode in Matmul.MODES:
        mm = Matmul(mode, silu_mul)
        torch.testing.assert_close(mm.gate_up(x, gate, up, fused).double(), ref, rtol=1e-4, atol=1e-4)
        (choice,) = set(mm.chosen.values()) or {CUBLAS_FUSED}  # "torch" tunes nothing: always the fused product
        fused_product = choice == CUBLAS_FUSED
        if not CUDA:  # untimed: the first candidate
            assert fused_product == (mode == "torch" or (M > MAX_SKINNY_ROWS and mode != "invariant")), mode
        swapped = mm.gate_up(x, gate, up, torch.cat([up, gate]))
        assert torch.allclose(swapped.double(), ref, rtol=1e-4, atol=1e-4) != fused_product, mode
    with pytest.raises(ValueError, match="not \\[gate; up\\]"):
        Matmul("torch", silu_mul).gate_up(x, gate, up, fused[:100])


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_decode_shape_bf16_cuda():
    w, w2 = _rand(12288, 4096, dtype=torch.bfloat16, seed=11), _rand(12288, 4096, dtype=torch.bfloat16, seed=12)
    mm = Matmul("invariant", lambda g, u: F.silu(g) * u)
    x = _rand(32, 4096, dtype=torch.bfloat16, seed=13)
    full = mm.gate_up(x, w, w2)
    torch.testing.assert_close(full.double(), matmul_ref(x, w, w2), rtol=2e-2, atol=2e-2)
    assert torch.equal(mm.gate_up(x[5:6], w, w2)[0], full[5])


# Programmatic Dependent Launch (kernels/pdl.py). The PDL path prefetches each split's first weight
# tiles into L2 (addresses clamped to the split and the rows) before waiting for x: cases with one K
# tile per split (K = 300 in tiles of 64: 5 tiles, 5 splits), a single partial tile (K = 20 < BLOCK_K)
# and K not a multiple of BLOCK_K with several tiles per split.
SM90 = CUDA and torch.cuda.get_device_capability()[0] >= 9
PDL_CASES = [
    (300, MatmulConfig(16, 32, 64, 5)),
    (20, MatmulConfig(16, 32, 32, 1)),
    (20, MatmulConfig(32, 16, 64, 1)),
    (300, MatmulConfig(16, 32, 32, 1)),
    (300, MatmulConfig(32, 16, 32, 3)),
    (300, MatmulConfig(16, 64, 64, 5, swap_ab=True)),
    (300, MatmulConfig(32, 64, 32, 3, swap_ab=True)),
    (300, MatmulConfig(64, 32, 64, 5)),
]


@pytest.mark.parametrize("gate_up", [False, True])
@pytest.mark.parametrize("K,config", PDL_CASES, ids=str)
def test_pdl_path_matches(interpreted_pdl, K, config, gate_up):
    """The kernel's PDL variant (gdc_* calls as no-ops in the interpreter) gives the non-PDL result bit
    for bit, and the exact product."""
    for M in (1, 17):
        x, w, w2 = (
            _rand(M, K, dtype=torch.float32, seed=M),
            _rand(70, K, dtype=torch.float32, seed=14),
            _rand(70, K, dtype=torch.float32, seed=15),
        )
        w2 = w2 if gate_up else None
        out = triton_matmul(x, w, config, w2, pdl=True)
        assert torch.equal(out, triton_matmul(x, w, config, w2, pdl=False))
        torch.testing.assert_close(out.double(), matmul_ref(x, w, w2), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(SM90, reason="PDL is supported on this GPU")
def test_pdl_unsupported_is_a_clear_error():
    x, w = _rand(3, 64, dtype=torch.float32, seed=16), _rand(40, 64, dtype=torch.float32, seed=17)
    with pytest.raises(ValueError, match="pdl=True: .*pass pdl=False"):
        triton_matmul(x, w, CONFIGS[0], pdl=True)
    with pytest.raises(ValueError, match="pdl=True"):
        Matmul("triton", lambda g, u: F.silu(g) * u, pdl=True).linear(x, w)


@pytest.mark.skipif(not SM90, reason="PDL needs a CUDA GPU of compute capability >= 9.0")
@pytest.mark.parametrize("gate_up", [False, True])
def test_pdl_bitwise_cuda(gate_up):
    """bf16 at a decode shape, every tuning candidate at 1 and 32 rows and at 200 (a 256-row tile: row tiles of
    64 and 128, the last one part masked): with PDL the same bits as without, and the product."""
    N, K = (12288, 4096) if gate_up else (6144, 4096)
    w, w2 = _rand(N, K, dtype=torch.bfloat16, seed=18), _rand(N, K, dtype=torch.bfloat16, seed=19) if gate_up else None
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for M, rows in ((1, 32), (32, 32), (200, 256)):
        x = _rand(M, K, dtype=torch.bfloat16, seed=20 + M)
        ref = matmul_ref(x, w, w2)
        for config in candidate_configs(rows, N, K, sms, gate_up):
            out = triton_matmul(x, w, config, w2, pdl=True)
            assert torch.equal(out, triton_matmul(x, w, config, w2)), config
            torch.testing.assert_close(out.double(), ref, rtol=2e-2, atol=2e-2, msg=str(config))


@pytest.mark.skipif(not SM90, reason="PDL needs a CUDA GPU of compute capability >= 9.0")
def test_pdl_chain_in_cuda_graph():
    """A chain of dependent products (each one's x is the previous one's output, split-K sums between
    them) captured in a CUDA graph with PDL: each kernel must wait for its input, so the replay gives
    the eager non-PDL result bit for bit, also after the input changes."""
    K = 4096
    ws = [_rand(K, K, dtype=torch.bfloat16, seed=30 + i) for i in range(4)]
    configs = [MatmulConfig(32, 64, 128, 4, 4, 4), MatmulConfig(32, 64, 256, 1, 4, 3)] * 2

    def chain(x, pdl):
        for w, c in zip(ws, configs):
            x = triton_matmul(x, w, c, pdl=pdl)
        return x

    x = _rand(32, K, dtype=torch.bfloat16, seed=40)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        chain(x, True)  # compile outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = chain(x, True)
    for seed in (40, 41):
        x.copy_(_rand(32, K, dtype=torch.bfloat16, seed=seed))
        graph.replay()
        assert torch.equal(out, chain(x, False))
