"""Tail blocks are clipped as the official decoder clips them: block length min(K, remaining + 1),
i.e. the drafts cover every position max_new_tokens still allows (K=32, 64 new tokens pinned)."""

import pytest
import torch

import models.generate as gen
from models.generate import block_length, generate
from tests.test_greedy import base_greedy, oracle_drafter, prompt

K, MAX_NEW = 32, 64
ZERO_ACCEPT = [32] * 33 + list(range(31, 1, -1))  # one token per iteration: 63 iterations after the prefill
FULL_ACCEPT = [32, 32]  # 1 + 32 tokens, then a block whose drafts reach token 64 (its AR token is dropped)


def proposed_lengths(tokens_per_iteration: int, rule=block_length) -> list[int]:
    emitted, out = 1, []
    while emitted < MAX_NEW:
        k = rule(K, MAX_NEW, emitted)
        out.append(k)
        emitted += min(k if tokens_per_iteration == K else tokens_per_iteration, MAX_NEW - emitted)
    return out


def test_block_lengths_hand_computed():
    assert proposed_lengths(1) == ZERO_ACCEPT
    assert proposed_lengths(K) == FULL_ACCEPT
    old = lambda K, max_new, emitted: min(K, max_new - emitted)  # noqa: E731  (one shorter: not the official)
    assert proposed_lengths(1, old) != ZERO_ACCEPT and proposed_lengths(K, old) != FULL_ACCEPT


def wrong_drafter(model, reference):
    """Drafts a token the base never emits next: every draft is rejected."""
    oracle = oracle_drafter(model, reference)

    def diffusion_forward(block, positions, attend):
        return oracle(block, positions, attend).roll(1, dims=-1)

    return diffusion_forward


@pytest.mark.parametrize("drafter,expected", [(oracle_drafter, FULL_ACCEPT), (wrong_drafter, ZERO_ACCEPT)])
def test_reference_loop_proposes_official_lengths(make_model, monkeypatch, drafter, expected):
    model = make_model(seed=11, block_size=K)
    ids = prompt(5, seed=11)
    ref = base_greedy(model, ids, MAX_NEW + K)
    monkeypatch.setattr(model, "diffusion_forward", drafter(model, ref))
    out = generate(model, ids, MAX_NEW, block_size=K)
    assert torch.equal(out.sequences, ref[:, : 5 + MAX_NEW])  # clipping never changes the tokens
    assert out.proposed == expected and sum(out.emitted) + 1 == MAX_NEW
    # The test has teeth: the one-shorter rule proposes other lengths on the same run.
    monkeypatch.setattr(gen, "block_length", lambda K, m, e: min(K, m - e) or 1)
    assert generate(model, ids, MAX_NEW, block_size=K).proposed != expected
