"""Stop strings end both decoders where the base model's output first contains them, and bad
decode requests fail before any forward pass."""

import pytest

from models.engine import OrthrusEngine
from models.generate import generate
from models.stopping import Stopper
from tests.test_greedy import base_greedy, prompt


class CharTokenizer:
    """One character per token id: the text of a continuation is easy to reason about."""

    def decode(self, ids):
        return "".join(chr(ord("a") + int(t) % 26) for t in ids)


def engine_decode(model, ids, max_new, **kw):
    return OrthrusEngine(model, 96).generate(ids, max_new, **kw)


def expected_stop(new_tokens: list[int], stop: str) -> list[int]:
    """The shortest prefix whose text contains `stop` (what transformers' generate keeps)."""
    tok = CharTokenizer()
    return next(new_tokens[: i + 1] for i in range(len(new_tokens)) if stop in tok.decode(new_tokens[: i + 1]))


@pytest.mark.parametrize("decode", [generate, engine_decode], ids=["reference", "engine"])
@pytest.mark.parametrize("block_size", [1, 4])
def test_stop_string_ends_at_base_prefix(make_model, decode, block_size):
    model = make_model(seed=5)
    ids = prompt(5, seed=5)
    free = base_greedy(model, ids, 30)[0, 5:].tolist()
    stop = CharTokenizer().decode(free[12:15])  # three tokens the base emits mid-sequence
    want = expected_stop(free, stop)
    assert len(want) < len(free)  # the check below could fail: stopping changes the output
    out = decode(model, ids, 30, block_size=block_size, stop_strings=[stop], tokenizer=CharTokenizer())
    assert out.new_tokens.tolist() == want
    assert out.finished_by_stop_string and not out.finished_by_eos


def test_stop_string_window_sees_multi_token_strings():
    """A stop string split over several iterations is still found (the look-back window works)."""
    stopper = Stopper(set(), ["cde"], CharTokenizer())
    assert stopper.clip([0, 1]) == [0, 1] and stopper.reason is None
    assert stopper.clip([2]) == [2] and stopper.reason is None
    assert stopper.clip([3, 4, 5]) == [3, 4] and stopper.reason == "stop"


def test_stop_strings_need_a_tokenizer():
    with pytest.raises(ValueError, match="tokenizer="):
        Stopper(set(), ["\n\n"])


@pytest.mark.parametrize("decode", [generate, engine_decode], ids=["reference", "engine"])
def test_block_size_zero_is_an_error_not_the_checkpoint_k(make_model, decode):
    with pytest.raises(ValueError, match=r"block_size=0 must be >= 1"):
        decode(make_model(), prompt(3), 8, block_size=0)


@pytest.mark.parametrize("decode", [generate, engine_decode], ids=["reference", "engine"])
def test_prompt_longer_than_positions(make_model, decode):
    model = make_model(max_position_embeddings=32)
    with pytest.raises(ValueError, match=r"max_position_embeddings=32: shorten the prompt"):
        decode(model, prompt(40), 8)
