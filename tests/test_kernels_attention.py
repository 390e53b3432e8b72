"""Decode attention kernels vs. the float64 references.

Without CUDA the Triton kernels run in the interpreter on CPU (fp32, small shapes); with CUDA the same
cases also run in bf16, plus larger decode shapes, default split counts and CUDA-graph replay.
"""

import itertools
import random
import zlib

import pytest
import torch

from kernels.attention import diffusion_attention, verify_attention
from kernels.reference import diffusion_attention_ref, verify_attention_ref

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
DTYPES = [torch.float32, torch.bfloat16] if CUDA else [torch.float32]
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2}  # rtol = atol
cuda_only = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")


# (batch, kv_heads, group, block_len, head_dim, length, num_splits, length_on_device, q_transposed).
# Every (length, K, G) combination, with the other fields drawn from a fixed-seed RNG. Lengths are not
# multiples of the 64-key tile; num_splits=None is the default heuristic (one split off the GPU), 1
# writes the output directly, 3 and 4 go through the combine kernel (short lengths leave splits empty).
_rng = random.Random(0)
SMALL_CASES = [
    (
        _rng.choice([1, 2]),
        _rng.choice([1, 2]),
        group,
        block_len,
        _rng.choice([32, 64]),
        length,
        _rng.choice([None, 1, 3, 4]),
        _rng.random() < 0.5,
        _rng.random() < 0.5,
    )
    for length, block_len, group in itertools.product([0, 1, 37, 130], [1, 4, 7, 8], [1, 4])
] + [(1, 1, 8, 17, 32, 70, 2, True, True)]  # 136 query rows: two row blocks of 128
CUDA_CASES = [
    (1, 8, 4, 16, 128, 1000, None, False, True),
    (1, 8, 4, 32, 128, 4133, None, True, True),
    (2, 8, 2, 8, 128, 2049, None, True, False),
    (1, 8, 8, 32, 128, 777, None, False, True),
    (3, 4, 4, 7, 64, 300, 5, False, False),
]


def _case_id(case):
    b, hkv, g, k, d, n, splits, on_device, q_t = case
    return (
        f"B{b}-Hkv{hkv}-G{g}-K{k}-D{d}-len{n}-splits{splits}-{'tensor' if on_device else 'int'}{'-qT' if q_t else ''}"
    )


def _inputs(case, dtype, device=DEVICE):
    """Random q, k/v cache (S_max a little past the block) and the block's own keys/values. With
    q_transposed, q is the (B, K, H, D) -> (B, H, K, D) view a model makes."""
    batch, kv_heads, group, block_len, head_dim, length, _, _, q_transposed = case
    heads, max_len = kv_heads * group, length + block_len + 5
    gen = torch.Generator(device=device).manual_seed(zlib.crc32(repr(case).encode()))

    def randn(*shape):
        return torch.randn(*shape, generator=gen, device=device, dtype=torch.float32).to(dtype)

    if q_transposed:
        q = randn(batch, block_len, heads, head_dim).transpose(1, 2)
    else:
        q = randn(batch, heads, block_len, head_dim)
    k_cache, v_cache = randn(batch, kv_heads, max_len, head_dim), randn(batch, kv_heads, max_len, head_dim)
    k_blk, v_blk = randn(batch, kv_heads, block_len, head_dim), randn(batch, kv_heads, block_len, head_dim)
    return q, k_cache, v_cache, k_blk, v_blk


def _length_arg(length, on_device, device=DEVICE):
    return torch.tensor(length, dtype=torch.int32, device=device) if on_device else length


def _assert_close(out, ref, dtype):
    assert out.dtype == dtype and out.shape == ref.shape
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)


def _check_diffusion(case, dtype):
    q, k_cache, v_cache, k_blk, v_blk = _inputs(case, dtype)
    length, num_splits, on_device = case[5:8]
    k_cache[:, :, length:] = float("nan")  # [ctx_len, S_max) is stale in a real cache
    v_cache[:, :, length:] = float("nan")
    scale = q.shape[-1] ** -0.5
    out = diffusion_attention(
        q, k_cache, v_cache, _length_arg(length, on_device), k_blk, v_blk, scale, num_splits=num_splits
    )
    _assert_close(out, diffusion_attention_ref(q, k_cache, v_cache, length, k_blk, v_blk, scale), dtype)


def _check_verify(case, dtype):
    q, k_cache, v_cache, _, _ = _inputs(case, dtype)
    length, num_splits, on_device = case[5:8]
    block_len = q.shape[2]
    k_cache[:, :, length + block_len :] = float("nan")  # beyond the block nothing is written yet
    v_cache[:, :, length + block_len :] = float("nan")
    scale = q.shape[-1] ** -0.5
    out = verify_attention(q, k_cache, v_cache, _length_arg(length, on_device), scale, num_splits=num_splits)
    _assert_close(out, verify_attention_ref(q, k_cache, v_cache, length, scale), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", SMALL_CASES, ids=_case_id)
def test_diffusion_attention(case, dtype):
    _check_diffusion(case, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", SMALL_CASES, ids=_case_id)
def test_verify_attention(case, dtype):
    _check_verify(case, dtype)


@cuda_only
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CUDA_CASES, ids=_case_id)
def test_diffusion_attention_cuda_shapes(case, dtype):
    _check_diffusion(case, dtype)


@cuda_only
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CUDA_CASES, ids=_case_id)
def test_verify_attention_cuda_shapes(case, dtype):
    _check_verify(case, dtype)


def test_single_query_passes_agree():
    """With K = 1 the two passes coincide: one query seeing the whole prefix plus itself."""
    case = (1, 2, 4, 1, 32, 37, 2, False, False)
    q, k_cache, v_cache, k_blk, v_blk = _inputs(case, torch.float32)
    k_cache[:, :, 37:38], v_cache[:, :, 37:38] = k_blk, v_blk
    diff = diffusion_attention(q, k_cache, v_cache, 37, k_blk, v_blk, 0.2, num_splits=2)
    ver = verify_attention(q, k_cache, v_cache, 37, 0.2, num_splits=2)
    torch.testing.assert_close(diff, ver, rtol=1e-5, atol=1e-5)


@cuda_only
@pytest.mark.parametrize("kind", ["diffusion", "verify"])
def test_cuda_graph_replay_with_device_length(kind):
    """Captured once with the length on the device, replayed for other lengths without re-capture."""
    dtype, max_len = torch.bfloat16, 4096
    case = (1, 8, 4, 16, 128, max_len - 16, None, True, True)
    q, k_cache, v_cache, k_blk, v_blk = _inputs(case, dtype)
    scale = 128**-0.5
    length = torch.tensor(100, dtype=torch.int32, device="cuda")

    def call():
        if kind == "diffusion":
            return diffusion_attention(q, k_cache, v_cache, length, k_blk, v_blk, scale)
        return verify_attention(q, k_cache, v_cache, length, scale)

    stream = torch.cuda.Stream()  # warm up (compile) outside the capture
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        call()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = call()

    for n in [100, 1, 2500, max_len - 16]:
        length.fill_(n)
        graph.replay()
        if kind == "diffusion":
            ref = diffusion_attention_ref(q, k_cache, v_cache, n, k_blk, v_blk, scale)
        else:
            ref = verify_attention_ref(q, k_cache, v_cache, n, scale)
        _assert_close(out, ref, dtype)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(head_dim=48), "power of two"),
        (dict(length=50), "out of range"),
        (dict(kv_heads=3), "multiple of num_kv_heads"),
        (dict(length_dtype=torch.float32), "int32/int64"),
    ],
)
def test_clear_errors(change, message):
    head_dim, kv_heads = change.get("head_dim", 32), change.get("kv_heads", 2)
    q = torch.zeros(1, 4, 4, head_dim, device=DEVICE)
    cache = torch.zeros(1, kv_heads, 40, head_dim, device=DEVICE)
    blk = torch.zeros(1, kv_heads, 4, head_dim, device=DEVICE)
    length = change.get("length", 10)
    if "length_dtype" in change:
        length = torch.tensor(length, dtype=change["length_dtype"], device=DEVICE)
    with pytest.raises(ValueError, match=message):
        diffusion_attention(q, cache, cache, length, blk, blk, 1.0)
    with pytest.raises(ValueError, match=message):
        verify_attention(q, cache, cache, length, 1.0)


@pytest.mark.parametrize("num_splits", [1, 3])
@pytest.mark.parametrize("block_len", [1, 5, 8])
def test_verify_per_position_is_batch_invariant(block_len, num_splits):
    """per_position: query i of a K block is bitwise the one-query call at start + i (same splits),
    and still the exact attention. Start and lengths are not multiples of the 64-key tile."""
    case = (1, 2, 4, block_len, 32, 150, num_splits, True, True)
    q, k_cache, v_cache, _, _ = _inputs(case, DTYPES[-1])
    start = torch.tensor([150], device=DEVICE)
    out = verify_attention(q, k_cache, v_cache, start, 0.2, num_splits=num_splits, per_position=True)
    _assert_close(out, verify_attention_ref(q, k_cache, v_cache, 150, 0.2), DTYPES[-1])
    for i in range(block_len):
        one = verify_attention(
            q[:, :, i : i + 1], k_cache, v_cache, start + i, 0.2, num_splits=num_splits, per_position=True
        )
        assert torch.equal(one[:, :, 0], out[:, :, i])


# Programmatic Dependent Launch (kernels/pdl.py): the kernels' PDL variants give the same bits.
SM90 = CUDA and torch.cuda.get_device_capability()[0] >= 9
PDL_CASES = [
    (1, 2, 4, 5, 32, 150, 3, True, True),
    (2, 1, 1, 8, 64, 37, 1, False, False),
    (1, 2, 2, 7, 32, 130, 4, True, False),
]


def _check_pdl_same_bits(case, dtype):
    q, k_cache, v_cache, k_blk, v_blk = _inputs(case, dtype)
    length, num_splits, on_device = case[5:8]
    ctx = _length_arg(length, on_device)
    outs = [
        diffusion_attention(q, k_cache, v_cache, ctx, k_blk, v_blk, 0.2, num_splits=num_splits, pdl=pdl)
        for pdl in (False, True)
    ]
    assert torch.equal(*outs)
    for per_position in (False, True):
        if per_position and q.shape[0] != 1:
            continue
        outs = [
            verify_attention(q, k_cache, v_cache, ctx, 0.2, num_splits=num_splits, per_position=per_position, pdl=pdl)
            for pdl in (False, True)
        ]
        assert torch.equal(*outs)


@pytest.mark.parametrize("case", PDL_CASES, ids=_case_id)
def test_pdl_path_matches(interpreted_pdl, case):
    """In the interpreter (gdc_* as no-ops): split, combined and single-split launches, per position too."""
    _check_pdl_same_bits(case, torch.float32)


@pytest.mark.skipif(not SM90, reason="PDL needs a CUDA GPU of compute capability >= 9.0")
@pytest.mark.parametrize("case", CUDA_CASES[:3], ids=_case_id)
def test_pdl_same_bits_cuda(case):
    _check_pdl_same_bits(case, torch.bfloat16)


@pytest.mark.skipif(SM90, reason="PDL is supported on this GPU")
def test_pdl_unsupported_is_a_clear_error():
    q, k_cache, v_cache, k_blk, v_blk = _inputs(PDL_CASES[0], torch.float32)
    with pytest.raises(ValueError, match="pdl=True"):
        verify_attention(q, k_cache, v_cache, 150, 0.2, pdl=True)
    with pytest.raises(ValueError, match="pdl=True"):
        diffusion_attention(q, k_cache, v_cache, 150, k_blk, v_blk, 0.2, pdl=True)
