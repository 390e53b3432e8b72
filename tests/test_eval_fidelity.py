"""Fidelity checks: exact match (greedy), analytic sampling KL, and the two-sample test."""

import pytest
import torch

import models.generate as gen
from eval.fidelity import (
    _effective,
    effective_distributions,
    exact_match,
    greedy_fidelity,
    sampling_divergences,
    sampling_fidelity,
    two_sample_test,
)
from models.generate import generate
from models.sampling import SamplingParams

ALPHA = 1e-3  # significance level of the two-sample checks (fixed seeds: reproducible)
PROMPTS = [[5, 6, 7], [1, 2, 3, 4, 8, 9, 10], [42]]
SAMPLERS = [SamplingParams(temperature=1.0), SamplingParams(temperature=0.7, top_k=8, top_p=0.9)]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_exact_match_rates_by_hand():
    out = exact_match(candidates=[[1, 2, 3, 4], [1, 2, 9, 4], [7, 7]], references=[[1, 2, 3, 4], [1, 2, 3, 4], [7, 7, 7]])
    assert out["token_rate"] == pytest.approx((4 + 2 + 2) / (4 + 4 + 3))
    assert out["sequence_rate"] == pytest.approx(1 / 3)
    assert out["first_divergence"] == [None, 2, 2]


def test_greedy_exact_match_is_one(make_model):
    model = make_model(seed=2)
    out = greedy_fidelity(model, PROMPTS, 20, block_size=4, progress=False)
    assert out["token_rate"] == 1.0 and out["sequence_rate"] == 1.0


def test_greedy_exact_match_catches_a_wrong_candidate(make_model):
    model = make_model(seed=2)
    good = [generate(model, torch.tensor([p]), 10).new_tokens.tolist() for p in PROMPTS]
    bad = [good[0], good[1][:5] + [(good[1][5] + 1) % 90] + good[1][6:], good[2]]
    out = greedy_fidelity(model, PROMPTS, 10, candidates=bad, progress=False)
    assert out["sequence_rate"] == pytest.approx(2 / 3) and out["first_divergence"] == [None, 5, None]


def test_effective_distribution_is_the_target():
    g = torch.Generator().manual_seed(0)
    p, q = torch.softmax(torch.randn(50, generator=g) * 3, -1), torch.softmax(torch.randn(50, generator=g) * 3, -1)
    target = p.double() / p.double().sum()
    torch.testing.assert_close(_effective(p, q), target, rtol=0, atol=1e-12)
    torch.testing.assert_close(_effective(p, p), target, rtol=0, atol=1e-12)  # empty residual
    assert (_effective(p, q) - q.double()).abs().max() > 0.1  # the drafter's q is far from p here


@pytest.mark.parametrize("sampling", SAMPLERS, ids=str)
def test_sampling_kl_is_zero(make_model, sampling):
    model = make_model(seed=3)
    results = [generate(model, torch.tensor([p]), 19, block_size=4, sampling=sampling,
                        generator=torch.Generator().manual_seed(i)) for i, p in enumerate(PROMPTS)]
    assert sum(sum(r.accepted) for r in results) > 0, "some drafts must be accepted for the check to mean anything"
    out = sampling_fidelity(model, results, sampling, progress=False)
    assert out["num_tokens"] == 3 * 19
    assert out["kl_max"] <= 1e-6 and out["tv_max"] <= 1e-5 and out["kl_infinite_tokens"] == 0


def test_sampling_kl_is_zero_for_the_engine(make_model):
    """The engine always proposes K and clips what it emits; the replay follows `proposed`."""
    from models.engine import OrthrusEngine

    model = make_model(seed=3)
    engine = OrthrusEngine(model, max_seq_len=64)
    sampling = SAMPLERS[0]
    results = [engine.generate(torch.tensor([p]), 19, block_size=4, sampling=sampling,
                               generator=torch.Generator().manual_seed(i)) for i, p in enumerate(PROMPTS)]
    assert all(r.proposed and set(r.proposed) == {4} for r in results)
    out = sampling_fidelity(model, results, sampling, progress=False)
    assert out["num_tokens"] == 3 * 19 and out["kl_max"] <= 1e-6


def test_replay_recovers_the_loop_distributions(make_model, monkeypatch):
    """The replayed (q, p) are the ones the loop used: record the loop's own and compare."""
    model = make_model(seed=4)
    sampling = SAMPLERS[0]
    seen = []

    def recording_accept(draft, q, p, generator=None):
        n_acc, nxt = orig(draft, q, p, generator)
        seen.append([_effective(p[i], q[i]) for i in range(min(n_acc + 1, draft.shape[0]))]
                    + ([p[-1].double() / p[-1].double().sum()] if n_acc == draft.shape[0] else []))
        return n_acc, nxt

    orig = gen.speculative_accept
    monkeypatch.setattr(gen, "speculative_accept", recording_accept)
    out = generate(model, torch.tensor([PROMPTS[1]]), 17, block_size=5, sampling=sampling,
                   generator=torch.Generator().manual_seed(1))
    replayed = effective_distributions(model, out, sampling)
    loop = torch.stack([row for block in seen for row in block])  # per emitted token after the prefill's
    torch.testing.assert_close(replayed[1 : 1 + len(loop)], loop, rtol=0, atol=1e-6)


def test_divergences_need_sampling(make_model):
    model = make_model()
    out = generate(model, torch.tensor([[1, 2]]), 5)
    with pytest.raises(ValueError, match="temperature"):
        sampling_divergences(model, out, SamplingParams())


def test_divergences_see_a_different_base(make_model):
    """Against another model's distributions the same check reports what differs; a top-k cut
    that excludes tokens the other model can draw gives KL = inf with a finite TV."""
    model, other = make_model(seed=5), make_model(seed=6)
    sampling = SamplingParams(temperature=1.0, top_k=5)
    out = generate(model, torch.tensor([PROMPTS[0]]), 9, block_size=4, sampling=sampling,
                   generator=torch.Generator().manual_seed(0))
    d = sampling_divergences(model, out, sampling, base_model=other)
    assert torch.isinf(d["kl"]).any() and d["tv"].mean() > 0.05 and (d["tv"] <= 1).all()


def small_vocab_model(make_model):
    return make_model(seed=11, vocab_size=12, mask_token_id=11, num_hidden_layers=1, initializer_range=0.1)


def test_two_sample_test_passes_for_orthrus(make_model):
    out = two_sample_test(small_vocab_model(make_model), [3, 1, 4, 1, 5], SAMPLERS[0], max_new_tokens=6,
                          num_samples=150, block_size=6, progress=False)
    assert len(out["pvalues"]) == 6 and out["bonferroni_pvalue"] > ALPHA


def test_two_sample_test_catches_a_broken_rule(make_model, monkeypatch):
    """Accepting every draft (no p/q test) draws from the drafter: the test must notice."""
    monkeypatch.setattr(gen, "speculative_accept",
                        lambda draft, q, p, generator=None: (draft.shape[0], int(torch.multinomial(p[-1], 1, generator=generator))))
    out = two_sample_test(small_vocab_model(make_model), [3, 1, 4, 1, 5], SAMPLERS[0], max_new_tokens=6,
                          num_samples=150, block_size=6, progress=False)
    assert out["bonferroni_pvalue"] < ALPHA
