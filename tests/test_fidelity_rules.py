"""The sampling fidelity test of evaluation (eval/fidelity.py) fails when losslessness breaks.

The reference loop and the engine sample with the real acceptance rule (the test passes) and with each
deliberately broken rule of tests/acceptance_rules.py (the test must fail). Seeds are fixed, so a run is
reproducible; with the real rule the test fails with probability alpha = 1e-3 over seeds. The engine's
Triton path draws exactly the tokens of its PyTorch path under every rule, real and broken
(tests/test_kernels_sample.py, tests/test_engine_sampling.py), so the verdicts on the PyTorch path are its
verdicts on the Triton path.
"""

import pytest
import torch

from eval.fidelity import sampling_fidelity
from models.generate import generate
from models.sampling import SamplingParams
from tests import acceptance_rules

SAMPLING = SamplingParams(temperature=1.0)
NUM_PROMPTS, NEW_TOKENS, K = 150, 16, 4

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def decoder(name, model):
    if name == "reference":
        return lambda ids, g: generate(model, ids, NEW_TOKENS, block_size=K, sampling=SAMPLING, generator=g)
    from models.engine import OrthrusEngine

    engine = OrthrusEngine(model, 64, backend=name, cuda_graphs=False)
    return lambda ids, g: engine.generate(ids, NEW_TOKENS, block_size=K, sampling=SAMPLING, generator=g)


def sample(decode):
    return [decode(torch.tensor([[1 + i % 7, 2, 3]]), torch.Generator().manual_seed(i)) for i in range(NUM_PROMPTS)]


@pytest.mark.parametrize("rule", [None, *acceptance_rules.BROKEN])
@pytest.mark.parametrize("name", ["reference", "torch"])
def test_sampling_test_passes_the_rule_and_fails_broken_rules(make_model, monkeypatch, name, rule):
    model = make_model(seed=0)
    if rule is not None:
        if name == "reference":
            assert "models.generate.speculative_accept" in acceptance_rules.install(
                monkeypatch, acceptance_rules.BROKEN[rule]
            )
        else:
            acceptance_rules.install_engine(monkeypatch, rule)
    results = sample(decoder(name, model))
    if rule is None:
        assert sum(sum(r.accepted) for r in results) > NUM_PROMPTS, "drafts must be accepted for the test to mean much"
    out = sampling_fidelity(model, results, SAMPLING, progress=False)
    assert out["num_tokens"] == NUM_PROMPTS * NEW_TOKENS and out["zero_probability_tokens"] == 0
    assert out["passed"] == (rule is None), out
