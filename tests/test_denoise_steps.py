"""Multi-step drafting (denoise_steps = S > 1) must keep decoding lossless."""

import pytest
import torch

from models.generate import generate
from models.sampling import SamplingParams
from tests.test_greedy import base_greedy, prompt
from tests.test_sampling import ALPHA, PROMPT, K, chi2_pvalue, exact_marginals, small_vocab_model


@pytest.mark.parametrize("steps", [2, 4])
@pytest.mark.parametrize("block_size", [3, 8])
def test_greedy_matches_base_and_counts_passes(make_model, steps, block_size):
    model = make_model(seed=steps + block_size)
    ids = prompt(7, seed=block_size)
    out = generate(model, ids, 23, block_size=block_size, denoise_steps=steps)
    assert torch.equal(out.sequences, base_greedy(model, ids, 23))
    # S passes per block, fewer only when a block has fewer than S slots to draft
    assert out.diffusion_forwards == sum(min(steps, k - 1) for k in out.proposed)
    assert out.ar_forwards == 1 + len(out.proposed)


def test_one_step_is_the_default_path(make_model):
    model = make_model(seed=1)
    ids = prompt(5)
    a, b = generate(model, ids, 20, block_size=8), generate(model, ids, 20, block_size=8, denoise_steps=1)
    assert torch.equal(a.sequences, b.sequences) and a.accepted == b.accepted
    with pytest.raises(ValueError, match="denoise_steps"):
        generate(model, ids, 4, denoise_steps=0)


def test_sampling_smoke(make_model):
    model = make_model(seed=2)
    g = torch.Generator().manual_seed(0)
    out = generate(
        model, prompt(5), 20, block_size=6, denoise_steps=2, sampling=SamplingParams(temperature=1.0), generator=g
    )
    assert out.num_new_tokens == 20 and sum(out.emitted) + 1 == 20
    assert out.diffusion_forwards == sum(min(2, k - 1) for k in out.proposed)


def test_sampling_drafted_token_follows_base_distribution(make_model):
    """The second emitted token (the first block's first draft, when accepted) against the exact
    base marginal: drafts are judged with a one-hot q (see models.generate._draft)."""
    model = small_vocab_model(make_model)
    params = SamplingParams(temperature=1.0)
    g = torch.Generator().manual_seed(0)
    outs = [generate(model, PROMPT, K, block_size=K, sampling=params, generator=g, denoise_steps=2) for _ in range(800)]
    samples = torch.tensor([o.new_tokens.tolist() for o in outs])
    assert sum(o.accepted[0] >= 1 for o in outs) / len(outs) > 0.05, "drafts must be accepted"
    assert chi2_pvalue(samples[:, 1], exact_marginals(model, params, 1)[1]) > ALPHA
