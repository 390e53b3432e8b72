"""The device sampler's kernels (kernels/sample.py) against their PyTorch twins and the transform.

The Triton kernels run in the interpreter off the GPU. Equality with the PyTorch path is exact (same
Philox numbers, same arithmetic), which is what lets the engine's statistical tests
(tests/test_engine_sampling.py) run on the fast PyTorch path and still speak for the kernels.
"""

import os

import pytest
import torch

import kernels.sample as ks
from models.sampling import SamplingParams, logits_to_probs
from tests.test_sampling import ALPHA, chi2_pvalue

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
pytestmark = pytest.mark.skipif(
    not CUDA and os.environ.get("TRITON_INTERPRET") != "1",
    reason="Triton needs a CUDA GPU or TRITON_INTERPRET=1 set before triton is imported",
)
PARAMS = [SamplingParams(1.0), SamplingParams(0.7, 8, 0.9), SamplingParams(0.6, 0, 0.8), SamplingParams(1.3, 5)]


def _logits(rows, vocab, seed):
    return (torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * 2).to(DEVICE)


def test_transform_keeps_ties_whole():
    # top-k = 2 with the 2nd value tied three times: all three are kept (as transformers keeps s >= kth)
    logits = torch.tensor([[3.0, 2.0, 2.0, 2.0, 1.0, 0.0]])
    probs = logits_to_probs(logits, SamplingParams(1.0, top_k=2))
    assert (probs[0, :4] > 0).all() and (probs[0, 4:] == 0).all()
    # top-p: the tied group at the boundary is kept or dropped whole (here kept: the token above holds
    # less than top_p of the mass)
    probs = logits_to_probs(logits, SamplingParams(1.0, top_p=0.5))
    assert (probs[0, :4] > 0).all() and (probs[0, 4:] == 0).all()
    stats = ks.transform_stats(logits, 1.0, 2, 1.0)
    torch.testing.assert_close(
        ks.log_probs_from_stats(logits, 1.0, stats).exp(), logits_to_probs(logits, SamplingParams(1.0, 2))
    )


def test_philox_matches_triton():
    """The PyTorch Philox draws tl.philox's numbers: sample_rows agrees token for token over many rows."""
    logits = _logits(16, 50, 0)
    stats = ks.transform_stats(logits, 1.0, 0, 1.0)
    rng = torch.tensor([2**40 + 12345, 7], device=DEVICE)
    a = ks.sample_rows(logits, stats, 1.0, rng, ks.DRAFT, use_triton=True)
    b = ks.sample_rows(logits, stats, 1.0, rng, ks.DRAFT, use_triton=False)
    assert torch.equal(a, b)
    u = ks.uniform_ref(rng[0], torch.arange(10**5), 0, 0, 0)
    assert 0 < u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.01


@pytest.mark.parametrize(
    "params,rule", [(p, "exact") for p in PARAMS] + [(PARAMS[1], r) for r in ks.BROKEN_RULES], ids=str
)
def test_kernels_match_reference(params, rule, monkeypatch):
    """Drafts, acceptance and the residual/bonus token: the Triton kernels equal the PyTorch twin, over
    several vocabulary chunks, for sampled and greedy drafts, K = 1 and K = 5, and every rule."""
    monkeypatch.setattr(ks, "BLOCK_V", 16)  # 37 tokens: three chunks per row
    monkeypatch.setattr(ks, "rejection_rule", lambda: rule)
    T, V = params.temperature, 37
    results = {}
    for use_triton in (True, False):
        out = []
        for seed in range(2):
            p = _logits(5, V, seed)
            q = p[:4] + 0.7 * _logits(4, V, seed + 100)  # q near p, so drafts are often accepted
            rng = torch.tensor([seed, 3 + seed], device=DEVICE)
            p_stats, q_stats = (ks.transform_stats(x, T, params.top_k, params.top_p) for x in (p, q))
            draft = ks.sample_rows(q, q_stats, T, rng, ks.DRAFT, use_triton=use_triton)
            greedy_draft = q.argmax(-1)
            out.append(draft)
            out += ks.accept(p, p_stats, q, q_stats, draft, T, rng, use_triton=use_triton)
            out += ks.accept(p, p_stats, None, None, greedy_draft, T, rng, use_triton=use_triton)
            out += ks.accept(p[:1], p_stats[:1], None, None, greedy_draft[:0], T, rng, use_triton=use_triton)
        results[use_triton] = out
    for a, b in zip(results[True], results[False]):
        assert torch.equal(a, b)
    if rule == "exact":
        assert any(n.item() > 0 for n in results[True][1::7]), "no draft accepted: the test would miss acceptance"


def test_sample_rows_follows_the_transform():
    """One draw from each of 300 copies of one row (each row its own Philox stream) follows p."""
    params = SamplingParams(1.3, 8, 0.95)
    row = _logits(1, 12, 5) / 2
    logits = row.expand(300, -1).contiguous()
    stats = ks.transform_stats(logits, params.temperature, params.top_k, params.top_p)
    tokens = ks.sample_rows(
        logits, stats, params.temperature, torch.tensor([9, 0], device=DEVICE), ks.DRAFT, use_triton=True
    )
    probs = logits_to_probs(row, params)[0].cpu()
    assert (probs > 0).sum() >= 4
    assert chi2_pvalue(tokens.cpu(), probs) > ALPHA


def test_unknown_rule_is_named(monkeypatch):
    monkeypatch.setattr(ks, "rejection_rule", lambda: "accept_most")
    p = _logits(2, 8, 0)
    stats = ks.transform_stats(p, 1.0, 0, 1.0)
    with pytest.raises(ValueError, match="accept_most"):
        ks.accept(p, stats, None, None, p[:1].argmax(-1), 1.0, torch.zeros(2, dtype=torch.long), use_triton=False)


def test_scores_multiply_by_the_float32_inverse_temperature():
    """Scores are logits times fl32(1 / T), in PyTorch and in the kernels: PyTorch on CUDA divides by a
    scalar through its reciprocal, so an exact division in one place and not the other differs by an ulp,
    enough to drop the only kept token of a row. An exact division here fails this test."""
    x = torch.randn(4096, generator=torch.Generator().manual_seed(0)) * 8
    inv = torch.tensor(1 / 0.6, dtype=torch.float32)
    assert not torch.equal(x / 0.6, x * inv)  # the two roundings do differ on these logits
    assert torch.equal(ks.scores(x, 0.6), x * inv)


@pytest.mark.parametrize("use_triton", [False, True])
def test_a_single_kept_token_is_always_drawn(use_triton):
    """top-p small enough to keep only the best token: every draw is the argmax (the kept set is never
    empty, which would draw token 0). Seen broken on a GPU when the kernels divided by T exactly."""
    logits = _logits(64, 3000, seed=5)
    stats = ks.transform_stats(logits, 0.6, 20, 1e-6)
    rng = torch.tensor([7, 3], device=DEVICE)
    draws = ks.sample_rows(logits, stats, 0.6, rng, 0, use_triton=use_triton)
    assert torch.equal(draws, logits.argmax(-1))
