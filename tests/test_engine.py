"""The engine must decode exactly like the base model and the reference loop (PyTorch backend, CPU, fp32).

The Triton backend and CUDA graphs are tested in tests/test_engine_triton.py, sampling in
tests/test_engine_sampling.py.
"""

import pytest
import torch
from transformers import DynamicCache

import models.engine as engine_module
from models.compat import cache_kwargs
from models.engine import OrthrusEngine
from models.engine_ops import TorchOps
from models.generate import block_length, generate
from models.orthrus import prefix_attend
from tests.test_greedy import RecordingStreamer, base_greedy, prompt

MAX_NEW = 23  # not a multiple of any block size tested


def full_block_iterations(ref, K: int, max_new: int) -> int:
    """How many of the reference loop's first iterations proposed a whole block of K (it shortens the
    last blocks to what max_new_tokens still allows; the engine always proposes K and clips)."""
    emitted = 1
    for n, e in enumerate(ref.emitted):
        if block_length(K, max_new, emitted) < K:
            return n
        emitted += e
    return len(ref.emitted)


@pytest.mark.parametrize("prompt_len", [1, 5, 33])
@pytest.mark.parametrize("block_size", [1, 2, 3, 8, 32])
def test_matches_base_and_reference(make_model, prompt_len, block_size):
    model = make_model(seed=prompt_len + block_size)
    ids = prompt(prompt_len, seed=block_size)
    out = OrthrusEngine(model, 96).generate(ids, MAX_NEW, block_size=block_size)
    assert torch.equal(out.sequences, base_greedy(model, ids, MAX_NEW))
    assert out.num_new_tokens == MAX_NEW and sum(out.emitted) + 1 == MAX_NEW
    assert out.ar_forwards == len(out.accepted) + 1
    assert out.diffusion_forwards == (len(out.accepted) if block_size > 1 else 0)
    assert out.proposed == [block_size] * len(out.accepted)
    # Same drafts as the reference loop while it proposes whole blocks (the block length changes drafts).
    ref = generate(model, ids, MAX_NEW, block_size=block_size)
    n = full_block_iterations(ref, block_size, MAX_NEW)
    assert out.accepted[:n] == ref.accepted[:n]


def test_chunked_padded_prefill(make_model, monkeypatch):
    """Prompts longer than a prefill chunk, with padded chunks, and a cache just large enough."""
    monkeypatch.setattr(engine_module, "PREFILL_CHUNK", 16)
    model = make_model(seed=14)
    ids = prompt(41, seed=14)
    out = OrthrusEngine(model, 41 + 12 + 4 - 2).generate(ids, 12, block_size=4)
    assert torch.equal(out.sequences, base_greedy(model, ids, 12))


def test_drafts_are_accepted(make_model):
    """The drafted path is exercised: with the diffusion view initialised from the AR view, some drafts pass."""
    model = make_model(seed=13)
    out = OrthrusEngine(model, 96).generate(prompt(5, seed=3), 40, block_size=4)
    assert sum(out.accepted) > 0


@pytest.mark.parametrize("block_size", [4, 8])
def test_oracle_drafter_accepts_whole_blocks(make_model, monkeypatch, block_size):
    """A draft pass that proposes the base model's own continuation: every block is accepted whole."""
    model = make_model(seed=5)
    ids = prompt(7, seed=5)
    max_new = 1 + 5 * block_size
    ref = base_greedy(model, ids, max_new)
    engine = OrthrusEngine(model, 96)
    real_logits = engine._logits

    def oracle(block, mode, rows, slots):
        if mode != "draft":
            return real_logits(block, mode, rows, slots)
        start = int(engine.start)
        logits = torch.full((block_size - 1, model.config.vocab_size), -1e4)
        for i in range(block_size - 1):
            if start + i + 1 < ref.shape[1]:
                logits[i, ref[0, start + i + 1]] = 0.0
        return logits

    monkeypatch.setattr(engine, "_logits", oracle)
    out = engine.generate(ids, max_new, block_size=block_size)
    assert torch.equal(out.sequences, ref)
    assert out.accepted == [block_size - 1] * 5 and out.tokens_per_iteration == block_size


def test_broken_acceptance_rule_is_caught(make_model, monkeypatch):
    """The checks above have teeth: accepting one draft too many breaks exactness."""
    model = make_model(seed=7)
    ids = prompt(5, seed=7)
    orig = TorchOps.greedy_accept
    monkeypatch.setattr(
        TorchOps,
        "greedy_accept",
        staticmethod(lambda draft, ar, pdl=False: (orig(draft, ar) + 1).clamp(max=draft.shape[1])),
    )
    out = OrthrusEngine(model, 64).generate(ids, 30, block_size=4)
    assert not torch.equal(out.sequences, base_greedy(model, ids, 30))


@torch.no_grad()
def test_pass_logits_match_model(make_model):
    """Draft logits = the model's diffusion_forward on a DynamicCache; verify logits = its AR forward."""
    model = make_model(seed=9)
    K, ids = 6, prompt(11, seed=9)
    L = ids.shape[1]
    engine = OrthrusEngine(model, 64)
    engine.prefill(ids[0])
    engine.last.fill_(17)
    steps = engine.steps(K)
    draft_logits = steps.draft().clone()
    verify_logits = steps.verify()

    cache = DynamicCache(config=model.config)
    model(input_ids=ids, **cache_kwargs(cache))
    block = torch.full((1, K), model.config.mask_token_id)
    block[0, 0] = 17
    positions = torch.arange(L, L + K)[None]
    scale = model.model.layers[0].self_attn.scaling
    ref_draft = model.diffusion_forward(block, positions, prefix_attend(cache, L, scale))[0, :-1]
    torch.testing.assert_close(draft_logits, ref_draft, rtol=1e-5, atol=1e-5)
    block[0, 1:] = steps.block[0, 1:]
    ref_verify = model(input_ids=block, position_ids=positions, **cache_kwargs(cache)).logits[0]
    torch.testing.assert_close(verify_logits, ref_verify, rtol=1e-5, atol=1e-5)


def test_fused_qkv_same_output(make_model):
    model = make_model(seed=10)
    ids = prompt(8, seed=10)
    engine = OrthrusEngine(model, 64, fuse_qkv=True)
    assert engine.fused_weight_bytes == 2 * model.config.num_hidden_layers * 4 * (
        (model.config.num_attention_heads + 2 * model.config.num_key_value_heads) * 16 * 64
    )
    out = engine.generate(ids, 20, block_size=4)
    assert torch.equal(out.sequences, base_greedy(model, ids, 20))


def test_engine_reused_across_calls(make_model):
    """One engine, several prompts and block sizes in a row: no state leaks from one call to the next."""
    model = make_model(seed=12)
    engine = OrthrusEngine(model, 96)
    for n, (L, K) in enumerate([(20, 8), (3, 4), (20, 1), (9, 8)]):
        ids = prompt(L, seed=n)
        assert torch.equal(engine.generate(ids, 17, block_size=K).sequences, base_greedy(model, ids, 17))


def test_streamer_receives_every_token(make_model):
    model = make_model(seed=8)
    ids, s = prompt(3, seed=8), RecordingStreamer()
    out = OrthrusEngine(model, 64).generate(ids, 17, block_size=4, streamer=s)
    assert s.ended and s.chunks[0] == ids[0].tolist()
    assert sum(s.chunks[1:], []) == out.new_tokens.tolist()


def test_bad_inputs_and_capacity(make_model):
    model = make_model()
    engine = OrthrusEngine(model, 32)
    with pytest.raises(ValueError, match="shape"):
        engine.generate(torch.zeros(2, 3, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="empty"):
        engine.generate(torch.zeros(1, 0, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="max_new_tokens"):
        engine.generate(torch.zeros(1, 3, dtype=torch.long), 0)
    with pytest.raises(ValueError, match="max_seq_len=32"):
        engine.generate(torch.zeros(1, 10, dtype=torch.long), 20, block_size=8)
    with pytest.raises(ValueError, match="block_size"):
        engine.steps(0)
    with pytest.raises(ValueError, match="backend"):
        OrthrusEngine(model, 32, backend="cuda")
    with pytest.raises(ValueError, match="CUDA"):
        OrthrusEngine(model, 32, cuda_graphs=True)


def test_unsupported_configs_are_named(make_model):
    with pytest.raises(ValueError, match="attention_bias"):
        OrthrusEngine(make_model(attention_bias=True), 32)
    model = make_model()
    model.model.norm.weight.data = model.model.norm.weight.data.double()
    with pytest.raises(ValueError, match="mixed parameter dtypes"):
        OrthrusEngine(model, 32)
