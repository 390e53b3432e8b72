"""The engine's Triton backend (fused kernels + kernels/ attention) and, on CUDA, its CUDA graphs.

Off the GPU these run in Triton's interpreter (TRITON_INTERPRET=1, as CI sets it), fp32 and small;
with CUDA they also run in bf16 and through captured graphs.
"""

import os

import pytest
import torch

from kernels.matmul import Matmul
from models.engine import OrthrusEngine
from models.engine_ops import TorchOps, TritonOps
from tests.test_greedy import base_greedy, prompt

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
pytestmark = pytest.mark.skipif(
    not CUDA and os.environ.get("TRITON_INTERPRET") != "1",
    reason="Triton needs a CUDA GPU or TRITON_INTERPRET=1 set before triton is imported",
)
cuda_only = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
DTYPES = [torch.float32, torch.bfloat16] if CUDA else [torch.float32]
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2)}
# The bf16 GPU tests' model: a larger GQA shape (4 query heads per KV head, 64-wide heads), usual init scale.
GQA_SHAPE = dict(
    hidden_size=512,
    intermediate_size=1024,
    num_attention_heads=8,
    num_key_value_heads=2,
    head_dim=64,
    num_hidden_layers=3,
    initializer_range=0.02,
)


def _rand(*shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(DEVICE, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("with_residual", [False, True])
def test_add_rms_norm(dtype, with_residual):
    x, r, w = _rand(5, 96, dtype=dtype, seed=0), _rand(5, 96, dtype=dtype, seed=1), _rand(96, dtype=dtype, seed=2)
    residual = r if with_residual else None
    out, res = TritonOps.add_rms_norm(x, residual, w, 1e-6)
    ref_out, ref_res = TorchOps.add_rms_norm(x, residual, w, 1e-6)
    assert torch.equal(res, ref_res)  # one rounded add: bit-exact
    torch.testing.assert_close(out, ref_out, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("dst_at_start", [False, True])
def test_qkv_norm_rope(dtype, dst_at_start):
    """Inputs as the fused [q; k; v] projection gives them (strided column slices), 3 query heads per
    KV head (not a power of two), at a nonzero start; outputs into the cache or a block buffer."""
    T, H, Hkv, D, S = 5, 6, 2, 32, 40
    qkv = _rand(T, (H + 2 * Hkv) * D, dtype=dtype, seed=3)
    q, k, v = qkv[:, : H * D], qkv[:, H * D : (H + Hkv) * D], qkv[:, (H + Hkv) * D :]
    qw, kw = _rand(D, dtype=dtype, seed=4), _rand(D, dtype=dtype, seed=5)
    angles = torch.arange(S)[:, None] * torch.rand(D // 2, generator=torch.Generator().manual_seed(6)).repeat(2)
    cos, sin = angles.cos().to(DEVICE, dtype), angles.sin().to(DEVICE, dtype)
    start = torch.tensor([7], device=DEVICE)
    rows = S if dst_at_start else T
    outs = []
    for ops in (TritonOps, TorchOps):
        k_dst = torch.full((1, Hkv, rows, D), float("nan"), dtype=dtype, device=DEVICE)
        v_dst = torch.full_like(k_dst, float("nan"))
        q_out = ops.qkv_norm_rope(q, k, v, qw, kw, cos, sin, start, k_dst, v_dst, dst_at_start, 1e-6)
        outs.append((q_out, k_dst, v_dst))
    (q1, k1, v1), (q2, k2, v2) = outs
    assert q1.shape == q2.shape == (1, H, T, D)
    torch.testing.assert_close(q1, q2, **TOL[dtype])
    torch.testing.assert_close(k1, k2, equal_nan=True, **TOL[dtype])  # same rows written, same values
    assert torch.equal(v1.nan_to_num(), v2.nan_to_num())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_silu_mul(dtype):
    """Contiguous inputs, and the two halves of a fused gate|up product's output (row stride 2 x 1500); the
    result is contiguous either way."""
    g, u = _rand(3, 1500, dtype=dtype, seed=7), _rand(3, 1500, dtype=dtype, seed=8)
    torch.testing.assert_close(TritonOps.silu_mul(g, u), TorchOps.silu_mul(g, u), **TOL[dtype])
    gu = torch.cat([g, u], dim=1)
    out = TritonOps.silu_mul(gu[:, :1500], gu[:, 1500:])
    assert out.is_contiguous()
    torch.testing.assert_close(out, TorchOps.silu_mul(g, u), **TOL[dtype])
    with pytest.raises(ValueError, match="unit column stride"):
        TritonOps.silu_mul(gu[:, ::2], gu[:, 1::2])


def test_greedy_matches_base(make_model):
    model = make_model(seed=21).to(DEVICE)
    ids = prompt(6, seed=21).to(DEVICE)
    engine = OrthrusEngine(model, 64, backend="triton", cuda_graphs=CUDA)
    for K in (1, 4):
        out = engine.generate(ids, 9, block_size=K)
        assert torch.equal(out.sequences, base_greedy(model, ids, 9))


@cuda_only
@pytest.mark.parametrize("prompt_len,block_size", [(1, 32), (33, 8), (20, 2)])
def test_cuda_graphs_match_base_fp32(make_model, prompt_len, block_size):
    model = make_model(seed=prompt_len + block_size).cuda()
    ids = prompt(prompt_len, seed=block_size).cuda()
    engine = OrthrusEngine(model, 128)
    assert engine.backend == "triton" and engine.cuda_graphs
    out = engine.generate(ids, 40, block_size=block_size)
    assert torch.equal(out.sequences, base_greedy(model, ids, 40))
    eos = int(out.sequences[0, prompt_len + 17])
    out = engine.generate(ids, 40, block_size=block_size, eos_token_id=eos)
    assert torch.equal(out.sequences, base_greedy(model, ids, 40, eos_token_id=eos))


@cuda_only
@torch.no_grad()
def test_cuda_bf16_backends_agree(make_model):
    """bf16 draft and verify logits of the Triton path against the PyTorch path, at a larger GQA shape."""
    model = make_model(seed=30, **GQA_SHAPE).to("cuda", torch.bfloat16)
    ids = prompt(300, seed=30).cuda()
    logits = {}
    for backend in ("triton", "torch"):
        engine = OrthrusEngine(model, 512, backend=backend)
        engine.prefill(ids[0])
        engine.last.fill_(5)
        steps = engine.steps(16)
        draft = steps.draft().float().clone()
        logits[backend] = draft, steps.verify().float()
    for got, ref in zip(logits["triton"], logits["torch"]):
        assert (got - ref).norm() / ref.norm() < 1e-2


@pytest.mark.parametrize("matmul", ["triton", "invariant"])
def test_skinny_matmul_greedy_matches_base(make_model, matmul):
    """The engine on the Triton matrix products (kernels/matmul.py) decodes like the base model."""
    model = make_model(seed=22).to(DEVICE)
    ids = prompt(7, seed=22).to(DEVICE)
    engine = OrthrusEngine(model, 64, backend="triton", cuda_graphs=CUDA, matmul=matmul)
    for K in (1, 4):
        out = engine.generate(ids, 9, block_size=K)
        assert torch.equal(out.sequences, base_greedy(model, ids, 9))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@torch.no_grad()
def test_batch_invariant_verify_equals_ar_steps(make_model, dtype):
    """batch_invariant: the verify pass's logits for a block of K tokens are bitwise the logits of K
    one-token AR steps over the same tokens (and the cache rows they write are the same)."""
    model = make_model(seed=23).to(DEVICE, dtype)
    ids = prompt(11, seed=23).to(DEVICE)[0]
    tokens = prompt(6, seed=24).to(DEVICE)[0]
    block = OrthrusEngine(model, 64, backend="triton", cuda_graphs=CUDA, batch_invariant=True)
    block.prefill(ids)
    block.last.fill_(int(tokens[0]))
    steps = block.steps(6)
    steps.block[0, 1:].copy_(tokens[1:])
    logits = steps.verify().clone()
    single = OrthrusEngine(model, 64, backend="triton", cuda_graphs=CUDA, batch_invariant=True)
    single.prefill(ids)
    for i in range(6):
        single.last.fill_(int(tokens[i]))
        assert torch.equal(single.steps(1).verify()[0], logits[i])
        single.start.add_(1)
    n = 11 + 6
    assert torch.equal(single.cache.kv[:, :, :, :, :n], block.cache.kv[:, :, :, :, :n])


@pytest.mark.parametrize("prompt_len,block_size", [(5, 1), (5, 3), (33, 8)])
def test_batch_invariant_greedy(make_model, prompt_len, block_size):
    """batch_invariant decoding: the base model's greedy output, and Orthrus equals the engine's own K = 1."""
    model = make_model(seed=prompt_len + block_size).to(DEVICE)
    ids = prompt(prompt_len, seed=block_size).to(DEVICE)
    engine = OrthrusEngine(model, 96, backend="triton", cuda_graphs=CUDA, batch_invariant=True)
    out = engine.generate(ids, 17, block_size=block_size)
    assert torch.equal(out.sequences, base_greedy(model, ids, 17))
    assert torch.equal(out.sequences, engine.generate(ids, 17, block_size=1).sequences)


@cuda_only
@torch.no_grad()
def test_batch_invariant_bf16_orthrus_equals_ar(make_model):
    """bf16 on the GPU, with CUDA graphs: Orthrus output is the engine's own AR output bit for bit."""
    model = make_model(seed=31, **GQA_SHAPE, vocab_size=1000, mask_token_id=999).to("cuda", torch.bfloat16)
    engine = OrthrusEngine(model, 512, batch_invariant=True)
    for seed in range(3):
        ids = prompt(100, seed=seed).cuda()
        ar = engine.generate(ids, 64, block_size=1)
        for K in (8, 32):
            assert torch.equal(engine.generate(ids, 64, block_size=K).sequences, ar.sequences)


def test_batch_invariant_needs_triton(make_model):
    with pytest.raises(ValueError, match="batch_invariant"):
        OrthrusEngine(make_model(), 32, backend="torch", batch_invariant=True)
    with pytest.raises(ValueError, match="batch_invariant"):
        OrthrusEngine(make_model(), 32, backend="triton", batch_invariant=True, matmul="torch")


# Programmatic Dependent Launch (kernels/pdl.py): on by default on sm_90+, off elsewhere.
SM90 = CUDA and torch.cuda.get_device_capability()[0] >= 9


def test_pdl_option(make_model):
    model = make_model(seed=24).to(DEVICE)
    assert OrthrusEngine(model, 32, backend="triton").pdl == SM90  # default: on exactly where supported
    assert not OrthrusEngine(model, 32, backend="torch").pdl
    assert not OrthrusEngine(model, 32, backend="triton", pdl=False).pdl
    with pytest.raises(ValueError, match="pdl=True needs .*Pass pdl=False"):
        OrthrusEngine(model, 32, backend="torch", pdl=True)
    if not SM90:
        with pytest.raises(ValueError, match="pdl=True needs .*Pass pdl=False"):
            OrthrusEngine(model, 32, backend="triton", pdl=True)


@pytest.mark.parametrize("matmul", ["torch", "triton"])
@torch.no_grad()
def test_pdl_path_matches(interpreted_pdl, make_model, matmul):
    """Every kernel's PDL variant, in the interpreter (gdc_* as no-ops): the same draft and verify
    logits bit for bit, and the same greedy output. matmul="torch" runs the SiLU * up kernel,
    "triton" the skinny products."""
    model = make_model(seed=25)
    ids = prompt(9, seed=25)
    engines = [OrthrusEngine(model, 64, backend="triton", matmul=matmul, pdl=pdl) for pdl in (False, True)]
    assert engines[1].pdl and not engines[0].pdl
    logits = []
    for engine in engines:
        engine.prefill(ids[0])
        engine.last.fill_(5)
        steps = engine.steps(4)
        logits.append((steps.draft().clone(), steps.verify().clone(), steps.accept().clone()))
    for a, b in zip(*logits):
        assert torch.equal(a, b)
    assert torch.equal(
        engines[1].generate(ids, 6, block_size=4).sequences, engines[0].generate(ids, 6, block_size=4).sequences
    )


@pytest.mark.skipif(not SM90, reason="PDL needs a CUDA GPU of compute capability >= 9.0")
@pytest.mark.parametrize("matmul", ["auto", "invariant"])
def test_pdl_cuda_graphs_fp32(make_model, matmul):
    """fp32 with CUDA graphs: PDL on and off both give the base model's greedy output."""
    model = make_model(seed=26).cuda()
    ids = prompt(13, seed=26).cuda()
    ref = base_greedy(model, ids, 30)
    for pdl in (True, False):
        engine = OrthrusEngine(model, 128, pdl=pdl, batch_invariant=matmul == "invariant")
        assert engine.cuda_graphs and engine.pdl == pdl
        for K in (1, 4, 8):
            assert torch.equal(engine.generate(ids, 30, block_size=K).sequences, ref), (pdl, K)


@pytest.mark.skipif(not SM90, reason="PDL needs a CUDA GPU of compute capability >= 9.0")
@pytest.mark.parametrize("batch_invariant", [False, True])
@torch.no_grad()
def test_pdl_cuda_graphs_same_bits_bf16(make_model, monkeypatch, batch_invariant):
    """bf16 with CUDA graphs: with the same matrix-product configs, PDL on gives the draft and verify
    logits of PDL off bit for bit (a kernel reading its input before the previous kernel finished
    would show here), and token-for-token the same greedy output. The products are tuned per PDL
    setting, so the PDL-off engine is given the PDL-on engine's choices."""
    monkeypatch.setattr(Matmul, "_timed", {})
    model = make_model(seed=32, **GQA_SHAPE, vocab_size=1000, mask_token_id=999).to("cuda", torch.bfloat16)
    ids = prompt(100, seed=32).cuda()
    engines, logits = [], []
    for pdl in (True, False):
        engine = OrthrusEngine(model, 512, pdl=pdl, batch_invariant=batch_invariant)
        engine.prefill(ids[0])
        for K in (1, 8, 32):
            engine.steps(K)  # captures the graphs, tuning every product shape the decoding below uses
        engine.last.fill_(5)
        logits.append((engine.steps(32).draft().clone(), engine.steps(32).verify().clone()))
        engines.append(engine)
        Matmul._timed.update({key[:-1] + (False,): ranked for key, ranked in Matmul._timed.items() if key[-1]})
    assert engines[0].cuda_graphs and engines[0].pdl and not engines[1].pdl
    assert engines[0].mm.chosen == engines[1].mm.chosen
    for a, b in zip(*logits):
        assert torch.equal(a, b)
    for seed in range(2):
        ids = prompt(100, seed=seed).cuda()
        for K in (1, 8, 32):
            on, off = (e.generate(ids, 64, block_size=K).sequences for e in engines)
            assert torch.equal(on, off), (seed, K)
