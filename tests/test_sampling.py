"""Sampling with Orthrus must draw every token from exactly the base model's distribution.

Method: on a 12-token vocabulary, decode many times from one prompt and compare the empirical
distribution of (a) the first emitted token and (b) the 4th emitted token, which sits deep in
the first drafted block (3 drafts before it must be accepted for it to be a draft), with the
exact base-model marginal computed by enumerating every path to it. Each comparison is a
chi-square goodness-of-fit test at ALPHA = 1e-4 (false-alarm rate 1e-4 per comparison, 4e-4
for this file's four comparisons); the seeds are fixed, so a run is reproducible.
A deliberately broken acceptance rule must fail the same test (power check).
"""

import itertools

import pytest
import torch
from scipy.stats import chisquare
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from models.generate import generate
from models.sampling import SamplingParams, logits_to_probs
from tests import acceptance_rules

ALPHA = 1e-4
VOCAB = 12
PROMPT = torch.tensor([[3, 1, 4, 1, 5]])
K = 6
DEEP = 3  # index of the emitted token under test: the third draft of the first block


def small_vocab_model(make_model):
    return make_model(seed=11, vocab_size=VOCAB, mask_token_id=VOCAB - 1, num_hidden_layers=1, initializer_range=0.1)


@torch.no_grad()
def exact_marginals(model, params: SamplingParams, depth: int) -> list[torch.Tensor]:
    """P(token t) for t = 0..depth under the base sampler, by enumerating all prefixes."""
    marginals, path_probs, paths = [], torch.ones(1), [[]]
    for _ in range(depth + 1):
        ids = torch.tensor([PROMPT[0].tolist() + p for p in paths])
        step = logits_to_probs(model(ids).logits[:, -1], params)  # (paths, V)
        joint = path_probs[:, None] * step
        marginals.append(joint.sum(0))
        paths = [p + [t] for p, t in itertools.product(paths, range(VOCAB))]
        path_probs = joint.flatten()
    return marginals


def draw(model, params, n, seed):
    g = torch.Generator().manual_seed(seed)
    samples, deep_was_draft = [], 0
    for _ in range(n):
        out = generate(model, PROMPT, K, block_size=K, sampling=params, generator=g)
        samples.append(out.new_tokens.tolist())
        deep_was_draft += out.accepted[0] >= DEEP
    return torch.tensor(samples), deep_was_draft / n


def chi2_pvalue(samples: torch.Tensor, probs: torch.Tensor) -> float:
    counts = torch.bincount(samples, minlength=VOCAB).double()
    support = probs > 0
    assert counts[~support].sum() == 0, "a token outside the sampler's support was emitted"
    expected = probs[support].double() / probs[support].double().sum() * len(samples)
    observed = counts[support]
    small = expected < 5  # pool sparse cells so the chi-square approximation holds
    if small.any():
        expected = torch.cat([expected[~small], expected[small].sum()[None]])
        observed = torch.cat([observed[~small], observed[small].sum()[None]])
    return chisquare(observed.numpy(), expected.numpy()).pvalue


@pytest.mark.parametrize(
    "params", [SamplingParams(temperature=1.0), SamplingParams(temperature=0.7, top_k=8, top_p=0.9)], ids=str
)
def test_emitted_tokens_follow_base_distribution(make_model, params):
    model = small_vocab_model(make_model)
    samples, deep_draft_rate = draw(model, params, n=1500, seed=0)
    exact = exact_marginals(model, params, DEEP)
    assert deep_draft_rate > 0.05, "the test must exercise tokens accepted deep inside a block"
    assert chi2_pvalue(samples[:, 0], exact[0]) > ALPHA
    assert chi2_pvalue(samples[:, DEEP], exact[DEEP]) > ALPHA


def test_broken_rule_fails_the_same_test(make_model, monkeypatch):
    """Accepting every draft (skipping the p/q test) must be detected."""
    acceptance_rules.install(monkeypatch, acceptance_rules.accept_all)
    model = small_vocab_model(make_model)
    params = SamplingParams(temperature=1.0)
    samples, _ = draw(model, params, n=400, seed=1)
    exact = exact_marginals(model, params, DEEP)
    assert chi2_pvalue(samples[:, DEEP], exact[DEEP]) < ALPHA


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.6, 5, 1.0), (1.3, 0, 0.8), (0.9, 7, 0.5)])
def test_transforms_match_transformers(temperature, top_k, top_p):
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0)) * 3
    ours = logits_to_probs(logits, SamplingParams(temperature, top_k, top_p))
    ref = TemperatureLogitsWarper(temperature)(None, logits.clone())
    if top_k:
        ref = TopKLogitsWarper(top_k)(None, ref)
    if top_p < 1:
        ref = TopPLogitsWarper(top_p)(None, ref)
    # Scores are logits times fl32(1 / T) (kernels.sample.scores) where transformers divides by T: the same
    # kept tokens, probabilities equal up to float32 rounding of the scores.
    assert torch.equal(ours > 0, ref.softmax(-1) > 0)
    torch.testing.assert_close(ours, ref.softmax(-1), rtol=0, atol=1e-6)


def test_invalid_sampling_params():
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(temperature=1, top_p=0)


@pytest.mark.parametrize("block_size", [1, 4])
def test_one_token_blocks_sample(make_model, block_size):
    """block_size=1 (the AR baseline) and a clipped last block of one token also sample."""
    model = small_vocab_model(make_model)
    g = torch.Generator().manual_seed(0)
    out = generate(model, PROMPT, 6, block_size=block_size, sampling=SamplingParams(temperature=1.0), generator=g)
    assert out.num_new_tokens == 6 and out.proposed[-1] <= block_size
