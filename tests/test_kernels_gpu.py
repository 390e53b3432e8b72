"""Checks of the decode kernels and the engine's Triton path at real Qwen3 shapes, in bf16: GPU only
(marker `gpu`; skipped without CUDA). Run them on a GPU machine with `python -m pytest -m gpu tests/`."""

import pytest
import torch

from eval.decode_bench import build_model, random_ids
from kernels.attention import diffusion_attention, verify_attention
from kernels.reference import diffusion_attention_ref, verify_attention_ref
from models.engine import OrthrusEngine

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

BF16_REL_ERR = 2e-2  # bf16 has an 8-bit mantissa: ~4e-3 per rounding, a few roundings per output


@pytest.mark.parametrize("K,ctx", [(1, 4096), (32, 4096), (32, 300)])
def test_decode_attention_bf16_matches_float64_reference(K, ctx):
    """Qwen3-8B attention shape (32 query heads, 8 KV heads, head dim 128) against the float64 references."""
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(1, 32, K, 128, generator=g, device="cuda", dtype=torch.bfloat16)
    kc = torch.randn(1, 8, 4200, 128, generator=g, device="cuda", dtype=torch.bfloat16)
    vc = torch.randn_like(kc)
    kb, vb = kc[:, :, 4100 : 4100 + K].contiguous(), vc[:, :, 4100 : 4100 + K].contiguous()
    start = torch.tensor([ctx], device="cuda")
    for got, ref in (
        (diffusion_attention(q, kc, vc, start, kb, vb, 0.088), diffusion_attention_ref(q, kc, vc, ctx, kb, vb, 0.088)),
        (verify_attention(q, kc, vc, start, 0.088), verify_attention_ref(q, kc, vc, ctx, 0.088)),
    ):
        assert float((got.double() - ref).norm() / ref.norm()) < BF16_REL_ERR


@pytest.mark.parametrize("per_position", [False, True])
def test_ragged_decode_attention_at_batch_64(per_position):
    """One launch over 64 cache slots of Qwen3-8B attention shape with S_max = 4096 + K, each at its own
    length (0, the clamp limit S_max - K, and random in between), against the float64 reference slot by
    slot: the per-slot length reads, offsets into a 0.5 GB cache and split-K combine at a serving shape."""
    K, S_max, B = 8, 4096 + 8, 64
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(B, 32, K, 128, generator=g, device="cuda", dtype=torch.bfloat16)
    kc = torch.randn(B, 8, S_max, 128, generator=g, device="cuda", dtype=torch.bfloat16)
    vc = torch.randn_like(kc)
    kb, vb = torch.randn_like(kc[:, :, :K]), torch.randn_like(kc[:, :, :K])
    start = torch.randint(0, S_max - K + 1, (B,), generator=g, device="cuda")
    start[:3] = torch.tensor([0, S_max - K, 1])
    draft = diffusion_attention(q, kc, vc, start, kb, vb, 0.088)
    verify = verify_attention(q, kc, vc, start, 0.088, per_position=per_position)
    for b, n in enumerate(start.tolist()):
        s = slice(b, b + 1)
        ref = diffusion_attention_ref(q[s], kc[s], vc[s], n, kb[s], vb[s], 0.088)
        assert rel_err(draft[s].double(), ref) < BF16_REL_ERR, ("draft", b, n)
        ref = verify_attention_ref(q[s], kc[s], vc[s], n, 0.088)
        assert rel_err(verify[s].double(), ref) < BF16_REL_ERR, ("verify", b, n)


@torch.inference_mode()
def passes(model, backend, ids, block=None):
    """Draft and verify logits (float64) after a 256-token prefill; the verify block is `block` (default: the
    drafts this run made), so both backends verify the same tokens."""
    engine = OrthrusEngine(model, 320, backend=backend, cuda_graphs=False)
    engine.prefill(ids)
    engine.last.fill_(int(ids[-1]))
    steps = engine.steps(32)
    draft = steps.draft().double()
    block = steps.block[0, 1:].clone() if block is None else block
    steps.block[0, 1:].copy_(block)
    return draft, steps.verify().double(), block


def rel_err(a, b) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_triton_path_matches_torch_path_at_qwen3_1_7b_shape(dtype):
    """The engine's Triton path against its PyTorch path on the same inputs: equal to rounding in fp32; in bf16
    no further from the fp32 PyTorch path than the bf16 PyTorch path is (the bf16 noise level)."""
    model = build_model("qwen3_1.7b", "cuda")
    ids = random_ids(model, 256, "cuda", seed=1)[0]
    for p in model.parameters():
        p.data = p.data.float()
    d32, v32, block = passes(model, "torch", ids)
    for p in model.parameters():
        p.data = p.data.to(dtype)
    dt, vt, _ = passes(model, "triton", ids, block)
    dp, vp, _ = passes(model, "torch", ids, block)
    if dtype == torch.float32:
        assert rel_err(dt, dp) < 1e-4 and rel_err(vt, vp) < 1e-4
    else:
        assert rel_err(dt, d32) < 2 * rel_err(dp, d32) + 1e-3 and rel_err(vt, v32) < 2 * rel_err(vp, v32) + 1e-3
