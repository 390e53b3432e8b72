"""Skinny matrix products (kernels/matmul.py) vs float64, and their batch invariance.

Off the GPU the kernels run in Triton's interpreter (fp32, small shapes that are not multiples of
the tiles); with CUDA also bf16 and a real decode shape.
"""

import pytest
import torch
import torch.nn.functional as F

from kernels.matmul import Matmul, MatmulConfig, candidate_configs, skinny_matmul
from kernels.reference import matmul_ref

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
DTYPES = [torch.float32, torch.bfloat16] if CUDA else [torch.float32]
TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}
# (block_m, block_n, block_k, split_k): one split, and three splits (K = 300 has 10 tiles of 32: 4 + 4 + 2)
CONFIGS = [MatmulConfig(16, 32, 32, 1), MatmulConfig(32, 16, 32, 3), MatmulConfig(16, 32, 64, 2)]


def _rand(*shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) / shape[-1] ** 0.25).to(DEVICE, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("config", CONFIGS, ids=str)
@pytest.mark.parametrize("gate_up", [False, True])
@pytest.mark.parametrize("M", [1, 5, 17, 32])
def test_matches_float64(M, gate_up, config, dtype):
    x, w, w2 = _rand(M, 300, dtype=dtype, seed=M), _rand(70, 300, dtype=dtype, seed=1), _rand(70, 300, dtype=dtype, seed=2)
    out = skinny_matmul(x, w, config, w2 if gate_up else None)
    assert out.shape == (M, 70) and out.dtype == dtype
    torch.testing.assert_close(out.double(), matmul_ref(x, w, w2 if gate_up else None), rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("config", [MatmulConfig(32, 32, 32, 1), MatmulConfig(32, 16, 32, 3)], ids=str)
@pytest.mark.parametrize("gate_up", [False, True])
def test_rows_do_not_depend_on_batch(gate_up, config, dtype):
    """Each row of a 32-row product equals that row multiplied alone, bit for bit (same config)."""
    x, w, w2 = _rand(32, 300, dtype=dtype, seed=3), _rand(70, 300, dtype=dtype, seed=4), _rand(70, 300, dtype=dtype, seed=5)
    w2 = w2 if gate_up else None
    full = skinny_matmul(x, w, config, w2)
    for m in (0, 7, 31):
        assert torch.equal(skinny_matmul(x[m:m + 1], w, config, w2)[0], full[m])
    assert torch.equal(skinny_matmul(x[:9], w, config, w2), full[:9])


def test_strided_rows():
    """Row slices of a wider activation (the LM head reads one row of the residual stream)."""
    x = _rand(6, 400, dtype=torch.float32, seed=6)[:, 50:350]
    w = _rand(40, 300, dtype=torch.float32, seed=7)
    torch.testing.assert_close(skinny_matmul(x, w, CONFIGS[1]).double(), matmul_ref(x, w), rtol=1e-4, atol=1e-4)


def test_candidates_fill_the_gpu():
    for N, K, gate_up in ((4096, 4096, False), (12288, 4096, True), (4096, 12288, False), (151936, 4096, False)):
        configs = candidate_configs(32, N, K, 132, gate_up)
        assert configs and len(configs) <= 12
        for c in configs:
            assert 66 <= -(-N // c.block_n) * c.split_k <= 2 * 132 or c.split_k == 1
            assert c.num_stages * (32 + (1 + gate_up) * c.block_n) * c.block_k * 2 <= 160 * 1024


def test_matmul_modes():
    x, w, w2 = _rand(5, 300, dtype=torch.float32, seed=8), _rand(70, 300, dtype=torch.float32, seed=9), \
        _rand(70, 300, dtype=torch.float32, seed=10)
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


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_decode_shape_bf16_cuda():
    w, w2 = _rand(12288, 4096, dtype=torch.bfloat16, seed=11), _rand(12288, 4096, dtype=torch.bfloat16, seed=12)
    mm = Matmul("invariant", lambda g, u: F.silu(g) * u)
    x = _rand(32, 4096, dtype=torch.bfloat16, seed=13)
    full = mm.gate_up(x, w, w2)
    torch.testing.assert_close(full.double(), matmul_ref(x, w, w2), rtol=2e-2, atol=2e-2)
    assert torch.equal(mm.gate_up(x[5:6], w, w2)[0], full[5])
