"""Fidelity checks: exact match (greedy), the per-token sampling test, and the two-sample test."""

import pytest
import torch

from eval.fidelity import exact_match, greedy_fidelity, pit_uniformity, sampling_fidelity, two_sample_test
from models.generate import generate
from models.sampling import SamplingParams
from tests import acceptance_rules

ALPHA = 1e-3  # significance level of the two-sample checks (fixed seeds: reproducible)
PROMPTS = [[5, 6, 7], [1, 2, 3, 4, 8, 9, 10], [42]]
SAMPLERS = [SamplingParams(temperature=1.0), SamplingParams(temperature=0.7, top_k=8, top_p=0.9)]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_exact_match_rates_by_hand():
    out = exact_match(
        candidates=[[1, 2, 3, 4], [1, 2, 9, 4], [7, 7]], references=[[1, 2, 3, 4], [1, 2, 3, 4], [7, 7, 7]]
    )
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


def sampled(model, sampling, new_tokens, n):
    """n Orthrus samples (K = 4) over the three prompts, seeded by index."""
    return [
        generate(
            model,
            torch.tensor([PROMPTS[i % 3]]),
            new_tokens,
            block_size=4,
            sampling=sampling,
            generator=torch.Generator().manual_seed(i),
        )
        for i in range(n)
    ]


@pytest.mark.parametrize("sampling", SAMPLERS, ids=str)
def test_sampling_test_passes_for_orthrus(make_model, sampling):
    """The real rule passes; tests/test_fidelity_rules.py shows broken rules fail on every decoder."""
    model = make_model(seed=3)
    results = sampled(model, sampling, new_tokens=19, n=12)
    assert sum(sum(r.accepted) for r in results) > 0, "some drafts must be accepted for the check to mean anything"
    out = sampling_fidelity(model, results, sampling, progress=False)
    assert out["num_tokens"] == 12 * 19 and out["passed"] and out["zero_probability_tokens"] == 0


def test_sampling_test_needs_sampling_and_enough_tokens(make_model):
    model = make_model()
    out = generate(model, torch.tensor([[1, 2]]), 5, sampling=SAMPLERS[0], generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="temperature"):
        sampling_fidelity(model, [out], SamplingParams())
    few = sampling_fidelity(model, [out], SAMPLERS[0], progress=False)
    assert few["passed"] is None and "sample more" in few["not_run"]


def test_sampling_test_sees_a_different_base(make_model):
    """Against another model's distributions the same tokens fail; a top-k cut of the other model that
    excludes emitted tokens is counted as zero-probability tokens."""
    model, other = make_model(seed=5), make_model(seed=6)
    sampling = SamplingParams(temperature=1.0, top_k=5)
    results = sampled(model, sampling, new_tokens=20, n=8)
    out = sampling_fidelity(model, results, sampling, base_model=other, progress=False)
    assert not out["passed"] and out["zero_probability_tokens"] > 0


def test_pit_false_alarm_rate_is_alpha():
    """Uniform PIT values (what a lossless decoder gives) pass, and the simulated false-alarm rate of the
    chi-square test at this size is alpha; a tilted sample fails."""
    g = torch.Generator().manual_seed(0)
    ok = pit_uniformity(torch.rand(5000, generator=g, dtype=torch.float64))
    assert ok["passed"] and ok["false_alarm_rate_simulated"] == pytest.approx(ok["alpha"], abs=1e-3)
    assert not pit_uniformity(torch.rand(5000, generator=g, dtype=torch.float64) ** 1.2)["passed"]


def small_vocab_two_sample_test(make_model) -> dict:
    """The two-sample test of 150 samples of 6 tokens from a 12-token model, one block of K = 6."""
    model = make_model(seed=11, vocab_size=12, mask_token_id=11, num_hidden_layers=1, initializer_range=0.1)
    return two_sample_test(
        model, [3, 1, 4, 1, 5], SAMPLERS[0], max_new_tokens=6, num_samples=150, block_size=6, progress=False
    )


def test_two_sample_test_passes_for_orthrus(make_model):
    out = small_vocab_two_sample_test(make_model)
    assert len(out["pvalues"]) == 6 and out["bonferroni_pvalue"] > ALPHA


def test_two_sample_test_catches_a_broken_rule(make_model, monkeypatch):
    """Accepting every draft (no p/q test) draws from the drafter: the test must notice."""
    acceptance_rules.install(monkeypatch, acceptance_rules.accept_all)
    assert small_vocab_two_sample_test(make_model)["bonferroni_pvalue"] < ALPHA
