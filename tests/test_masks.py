"""The draft and verify visibility rules (models/masks.py) and the paths built on them: the PyTorch decode
ops, the training masks and the kernels' float64 references all read the one definition, so breaking
the rule there changes every one of them."""

import torch

import models.masks as masks
from kernels.reference import diffusion_attention_ref, verify_attention_ref
from models.engine_ops import TorchOps
from train.attention import ar_attention_mask, block_mask_mod, dense_mask


def test_draft_mask_by_hand():
    # 3 cache rows (2 valid) then a block of 2: every block query sees rows 0, 1 and both block keys
    expected = torch.tensor([[1, 1, 0, 1, 1], [1, 1, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(masks.draft_mask(2, 3, 2, "cpu"), expected)
    assert torch.equal(masks.draft_mask(torch.tensor(2), 3, 2, "cpu"), expected)  # a device length


def test_verify_mask_by_hand():
    # block of 2 at positions 2, 3 over a cache of 5 rows: causal, row 4 unseen
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    assert torch.equal(masks.verify_mask(2, 2, 5, "cpu"), expected)


def test_training_mask_is_the_decode_mask_per_block():
    """One block of one row whose context is [0, a) is exactly decoding's draft mask at ctx_len = a."""
    L, K, a = 7, 3, 4
    mod = block_mask_mod(torch.tensor([[0]]), torch.tensor([[a]]), L, K)
    assert torch.equal(dense_mask(mod, 1, K, L + K, "cpu")[0, 0], masks.draft_mask(a, L, K, "cpu"))
    pos = torch.arange(L)
    assert torch.equal(
        ar_attention_mask(torch.zeros(1, L, dtype=torch.long))[0, 0], masks.verify_visible(pos[:, None], pos)
    )


def _attention_inputs(seed=0, S=9, K=3):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, 4, K, 16, generator=g)
    k_cache, v_cache, k_blk, v_blk = (torch.randn(1, 2, n, 16, generator=g) for n in (S, S, K, K))
    return q, k_cache, v_cache, k_blk, v_blk


def test_breaking_the_rule_breaks_every_path(monkeypatch):
    """Each consumer agrees with the others under the rule, and each moves when the one definition does."""
    q, k_cache, v_cache, k_blk, v_blk = _attention_inputs()
    start, ctx = torch.tensor(5), torch.tensor(5)

    def outputs():
        ops_verify = TorchOps.verify_attention(q, k_cache, v_cache, start, 0.25)
        ops_draft = TorchOps.diffusion_attention(q, k_cache, v_cache, ctx, k_blk, v_blk, 0.25)
        ref_verify = verify_attention_ref(q, k_cache, v_cache, start, 0.25).float()
        ref_draft = diffusion_attention_ref(q, k_cache, v_cache, ctx, k_blk, v_blk, 0.25).float()
        ar = ar_attention_mask(torch.zeros(1, 6, dtype=torch.long))
        blocks = dense_mask(block_mask_mod(torch.tensor([[0]]), torch.tensor([[2]]), 6, 3), 1, 3, 9, "cpu")
        return ops_verify, ops_draft, ref_verify, ref_draft, ar, blocks

    good = outputs()
    torch.testing.assert_close(good[0], good[2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(good[1], good[3], rtol=1e-5, atol=1e-5)

    monkeypatch.setattr(masks, "verify_visible", lambda query_pos, key_pos: key_pos < query_pos + 2)  # peeks ahead
    rule = masks.draft_visible
    monkeypatch.setattr(
        masks, "draft_visible", lambda q, kv, lo, hi, n, k: rule(q, kv, lo, hi + 1, n, k)
    )  # one more row
    bad = outputs()
    for i in range(4):
        assert not torch.allclose(good[i], bad[i], rtol=1e-5, atol=1e-5), f"output {i} ignores models/masks.py"
    torch.testing.assert_close(bad[0], bad[2], rtol=1e-5, atol=1e-5)  # still one rule for both
    torch.testing.assert_close(bad[1], bad[3], rtol=1e-5, atol=1e-5)
    assert not torch.equal(good[4], bad[4]) and not torch.equal(good[5], bad[5]), (
        "training masks ignore models/masks.py"
    )
