"""Greedy Orthrus decoding must be token-for-token the base model's greedy decoding."""

import pytest
import torch

import models.generate as gen
from eval.fidelity import base_generate
from models.engine import OrthrusEngine
from models.generate import generate
from tests.tiny import TINY


def base_greedy(model, ids, max_new_tokens, eos_token_id=None):
    """The reference, prompt included: transformers' own greedy generate on the same (frozen) weights
    (eval.fidelity.base_generate; eos_token_id None: the model's generation config's)."""
    new = base_generate(model, ids, max_new_tokens, eos_token_id=eos_token_id)
    return torch.cat([ids, torch.tensor([new], dtype=ids.dtype, device=ids.device)], dim=1)


def prompt(n, seed=1, vocab=TINY.mask_token_id):
    """n random token ids below the tiny model's mask token."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (1, n), generator=g)


@pytest.mark.parametrize("prompt_len", [1, 5, 33])
@pytest.mark.parametrize("block_size", [2, 3, 4, 8, 32])
def test_matches_base_greedy(make_model, prompt_len, block_size):
    model = make_model(seed=prompt_len + block_size)
    ids = prompt(prompt_len, seed=block_size)
    max_new = 23  # not a multiple of any block size tested
    out = generate(model, ids, max_new, block_size=block_size)
    assert torch.equal(out.sequences, base_greedy(model, ids, max_new))
    assert out.num_new_tokens == max_new
    assert sum(out.emitted) + 1 == max_new  # +1: the prefill token


def engine_generate(model, ids, max_new_tokens, **kwargs):
    return OrthrusEngine(model, 96).generate(ids, max_new_tokens, **kwargs)


# The checks that hold for every greedy decoder: the reference loop and the engine (PyTorch backend).
decoders = pytest.mark.parametrize("decode", [generate, engine_generate], ids=["loop", "engine"])


@decoders
def test_eos_inside_block_stops_like_base(make_model, decode):
    model = make_model(seed=3)
    ids = prompt(6, seed=3)
    free = base_greedy(model, ids, 30)[0, 6:]
    eos = int(free[9])  # a token the base emits mid-sequence; decoding must stop at its first use
    ref = base_greedy(model, ids, 30, eos_token_id=eos)
    out = decode(model, ids, 30, block_size=8, eos_token_id=eos)
    assert torch.equal(out.sequences, ref)
    assert out.finished_by_eos and out.sequences[0, -1] == eos


@decoders
def test_garbage_drafter_still_exact(make_model, decode):
    model = make_model(seed=4)
    with torch.no_grad():
        for _, p in model.diffusion_named_parameters():
            p.normal_(0, 1.0)
    ids = prompt(9, seed=4)
    out = decode(model, ids, 40, block_size=8)
    assert torch.equal(out.sequences, base_greedy(model, ids, 40))


def oracle_drafter(model, reference):
    """A diffusion pass that drafts the base model's own continuation (teacher-forced oracle)."""

    def diffusion_forward(block, positions, attend):
        logits = torch.full((1, block.shape[1], model.config.vocab_size), -1e4)
        for i, pos in enumerate(positions[0].tolist()):
            if pos + 1 < reference.shape[1]:
                logits[0, i, reference[0, pos + 1]] = 0.0
        return logits

    return diffusion_forward


@pytest.mark.parametrize("block_size", [4, 8])
def test_oracle_drafter_accepts_whole_blocks(make_model, monkeypatch, block_size):
    model = make_model(seed=5)
    ids = prompt(7, seed=5)
    max_new = 1 + 5 * block_size  # prefill token, then five full blocks
    ref = base_greedy(model, ids, max_new)
    monkeypatch.setattr(model, "diffusion_forward", oracle_drafter(model, ref))
    out = generate(model, ids, max_new, block_size=block_size)
    assert torch.equal(out.sequences, ref)
    assert out.accepted == [block_size - 1] * 5
    assert out.tokens_per_iteration == block_size


def test_ar_baseline_block_size_one(make_model):
    model = make_model(seed=6)
    ids = prompt(4, seed=6)
    out = generate(model, ids, 12, block_size=1)
    assert torch.equal(out.sequences, base_greedy(model, ids, 12))
    assert out.diffusion_forwards == 0 and out.tokens_per_iteration == 1


def test_broken_acceptance_rule_is_caught(make_model, monkeypatch):
    """The checks above have teeth: accepting one draft too many breaks exactness."""
    model = make_model(seed=7)
    ids = prompt(5, seed=7)
    ref = base_greedy(model, ids, 30)

    def sloppy(draft, target_logits):
        n_acc, _ = orig(draft, target_logits)
        n_acc = min(n_acc + 1, draft.shape[0])
        return n_acc, int(target_logits[n_acc].argmax())

    orig = gen.greedy_accept
    monkeypatch.setattr(gen, "greedy_accept", sloppy)
    out = generate(model, ids, 30, block_size=4)
    assert not torch.equal(out.sequences, ref)


class RecordingStreamer:
    """The streamer protocol of transformers' TextStreamer: put(tensor) per chunk, end() once."""

    def __init__(self):
        self.chunks, self.ended = [], False

    def put(self, t):
        self.chunks.append(t.flatten().tolist())

    def end(self):
        self.ended = True


def test_streamer_receives_every_token(make_model):
    model = make_model(seed=8)
    ids = prompt(3, seed=8)
    s = RecordingStreamer()
    out = generate(model, ids, 17, block_size=4, streamer=s)
    assert s.ended and s.chunks[0] == ids[0].tolist()
    assert sum(s.chunks[1:], []) == out.new_tokens.tolist()


def test_bad_inputs(make_model):
    model = make_model()
    with pytest.raises(ValueError, match="shape"):
        generate(model, torch.zeros(2, 3, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, torch.zeros(1, 3, dtype=torch.long), 0)
    with pytest.raises(ValueError, match="empty"):
        generate(model, torch.zeros(1, 0, dtype=torch.long), 3)
