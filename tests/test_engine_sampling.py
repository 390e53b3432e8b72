"""The engine's device sampler draws every token from exactly the base model's sampling distribution.

Same method as tests/test_sampling.py (exact marginals by enumeration on a 12-token model, the first
token and the 4th, deep inside the first drafted block; chi-square at ALPHA), on the engine. Off the
GPU the statistics run on the PyTorch path of the sampler: the Triton kernels' interpreter costs
seconds per call, and the Triton path is shown to draw the same tokens as the PyTorch path, seed for
seed (here, end to end; kernel by kernel, every rule, in tests/test_kernels_sample.py). On CUDA they
run on the Triton path with CUDA graphs. Each broken acceptance rule of `kernels.sample` must fail.
"""

import functools
import os

import pytest
import torch

import kernels.sample as ks
from models.engine import OrthrusEngine
from models.sampling import SamplingParams
from tests.test_sampling import (
    ALPHA,
    DEEP,
    PROMPT,
    chi2_pvalue,
    exact_marginals,
    small_vocab_model,
)

K = 6
CUDA = torch.cuda.is_available()
FAST_BACKEND = "triton" if CUDA else "torch"
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
interpreted = pytest.mark.skipif(
    CUDA or not INTERPRETED,
    reason="off the GPU only (TRITON_INTERPRET=1): on CUDA the statistical tests above run on the Triton path itself",
)


def _engine(make_model):
    model = small_vocab_model(make_model)
    return OrthrusEngine(model.cuda() if CUDA else model, 32, backend=FAST_BACKEND)


def draw(engine, params, n, seed, drafts="sampled", block_size=K):
    """n runs of DEEP + 1 tokens; also the share of runs whose DEEP-th token was an accepted draft."""
    g = torch.Generator().manual_seed(seed)
    samples, deep_was_draft = [], 0
    for _ in range(n):
        out = engine.generate(PROMPT, DEEP + 1, block_size=block_size, sampling=params, generator=g, drafts=drafts)
        samples.append(out.new_tokens.tolist())
        deep_was_draft += out.accepted[0] >= DEEP
    return torch.tensor(samples), deep_was_draft / n


def greedy_chain_drafter(engine, monkeypatch):
    """Replace the draft pass by the AR view's own distributions along its greedy continuation (K - 1
    one-token AR passes; their cache rows are overwritten by the verify pass). The tiny model's
    diffusion view rarely has its argmax accepted twice in a row; this drafter's argmax often is, so
    greedy drafts get tested deep inside a block. Losslessness must hold for any drafter."""
    real = engine._logits

    def chain(block, mode, rows, slots):
        if mode != "draft":
            return real(block, mode, rows, slots)
        start, token, out = engine.start.clone(), engine.last.clone(), []
        for _ in range(block.shape[0] - 1):
            logits = real(token, "verify", slice(None), slots)
            token = logits.argmax(-1)
            out.append(logits[0])
            engine.start.add_(1)
        engine.start.copy_(start)
        return torch.stack(out)

    monkeypatch.setattr(engine, "_logits", chain)


@pytest.mark.parametrize(
    "params,drafts,block_size,n",
    [
        (SamplingParams(1.0), "sampled", K, 600),
        (SamplingParams(0.4, 8, 0.95), "greedy", K, 600),
        (SamplingParams(0.8, 9), "sampled", 1, 300),  # the K = 1 baseline: plain sampling on the same engine
    ],
    ids=str,
)
def test_emitted_tokens_follow_base_distribution(make_model, one_thread, monkeypatch, params, drafts, block_size, n):
    engine = _engine(make_model)
    if drafts == "greedy":
        greedy_chain_drafter(engine, monkeypatch)
    samples, deep_draft_rate = draw(engine, params, n, seed=0, drafts=drafts, block_size=block_size)
    exact = exact_marginals(small_vocab_model(make_model), params, DEEP)  # a CPU twin
    if block_size > 1:
        assert deep_draft_rate > 0.05, "the test must exercise tokens accepted deep inside a block"
    assert chi2_pvalue(samples[:, 0], exact[0]) > ALPHA
    assert chi2_pvalue(samples[:, DEEP], exact[DEEP]) > ALPHA


@pytest.mark.parametrize("rule,n", [("accept_all", 150), ("reject_all_sample_q", 150), ("residual_p", 300)])
def test_broken_rules_fail_the_same_test(make_model, one_thread, monkeypatch, rule, n):
    """Accepting every draft, rejecting every draft and emitting a q sample, and sampling p instead of
    the residual at a rejection (the injection point `kernels.sample.rejection_rule`) are caught."""
    monkeypatch.setattr(ks, "rejection_rule", lambda: rule)
    engine = _engine(make_model)
    params = SamplingParams(1.0)
    samples, _ = draw(engine, params, n=n, seed=1)
    exact = exact_marginals(small_vocab_model(make_model), params, DEEP)  # a CPU twin
    assert min(chi2_pvalue(samples[:, i], exact[i]) for i in range(1, DEEP + 1)) < ALPHA


@interpreted
@pytest.mark.parametrize("drafts", ["sampled", "greedy"])
def test_triton_path_draws_like_torch_path(make_model, drafts):
    """Seed for seed, the Triton sampler (interpreted off the GPU) emits the PyTorch path's tokens."""
    model = small_vocab_model(make_model)
    params = SamplingParams(0.7, 8, 0.9)
    runs = {}
    for backend in ("triton", "torch"):
        engine = OrthrusEngine(model, 32, backend=backend, cuda_graphs=False)
        out = engine.generate(
            PROMPT, 8, block_size=4, sampling=params, drafts=drafts, generator=torch.Generator().manual_seed(3)
        )
        runs[backend] = out.sequences.tolist(), out.accepted
    assert runs["triton"] == runs["torch"]
    assert sum(runs["torch"][1]) > 0, "no draft accepted: acceptance would go untested"


@pytest.mark.parametrize("generator_device", ["engine", "cpu"])
def test_seed_reproduces_a_run(make_model, generator_device):
    """A seeded generator on the engine's device (as eval.runner passes) or on the CPU reproduces a run."""
    engine = _engine(make_model)
    params = SamplingParams(0.9, 0, 0.95)
    device = engine.device if generator_device == "engine" else "cpu"

    def run(seed, drafts="sampled"):
        g = torch.Generator(device=device).manual_seed(seed)
        out = engine.generate(PROMPT, 12, block_size=K, sampling=params, drafts=drafts, generator=g)
        return out.sequences.tolist(), out.accepted

    assert run(5) == run(5) and run(5, "greedy") == run(5, "greedy")
    assert len({str(run(s)) for s in range(4)}) > 1


def test_bad_draft_mode(make_model):
    engine = _engine(make_model)
    with pytest.raises(ValueError, match="drafts"):
        engine.generate(PROMPT, 4, sampling=SamplingParams(1.0), drafts="beam")


def test_iteration_benchmark_runs_each_mode(make_model):
    """eval.sampling_bench.time_iterations (scripts/bench_sampling.py's GPU benchmark) drives the engine's
    steps and samplers directly: it runs here at tiny size, so a call that the engine no longer accepts fails
    in CI rather than on the GPU machine."""
    from eval.sampling_bench import time_iterations
    from eval.timing import median_ms

    engine = _engine(make_model)
    clock = functools.partial(median_ms, device=engine.device, warmup=1)
    out = time_iterations(engine, [1, 4], 5, clock, reps=2, new_tokens=8, log=lambda *a: None)
    for key in ("iteration_ms", "sampling_iteration_ms", "sampling_greedy_drafts_iteration_ms", "e2e_iteration_ms"):
        assert out[f"{key}_K4"] > 0 and out[f"{key}_K1"] > 0


def test_sampler_params_one_per_slot(make_model):
    steps = _engine(make_model).steps(4)
    with pytest.raises(ValueError, match="tuple of 1 SamplingParams"):
        steps.sampler(SamplingParams(1.0), "sampled")
