"""OrthrusForCausalLM.generate takes transformers' generation arguments and decodes with Orthrus."""

import logging

import pytest
import torch
from transformers import GenerationMixin

from models.generate import generate
from models.sampling import SamplingParams
from tests.test_greedy import RecordingStreamer, base_greedy, prompt
from tests.test_stopping import CharTokenizer, expected_stop


def test_greedy_is_the_base_output_and_says_so(make_model, caplog):
    model = make_model(seed=7)
    ids = prompt(6, seed=7)
    with caplog.at_level(logging.INFO, logger="models.hf_generate"):
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=21, do_sample=False)
        model.generate(ids, max_new_tokens=3)
    assert torch.equal(out, base_greedy(model, ids, 21))
    assert sum("Orthrus decoding" in r.getMessage() for r in caplog.records) == 1  # once per model


def test_return_dict_carries_orthrus_statistics(make_model):
    model = make_model(seed=8)
    ids = prompt(5, seed=8)
    out = model.generate(ids, max_new_tokens=17, block_size=4, return_dict_in_generate=True)
    ref = generate(model, ids, 17, block_size=4)
    assert torch.equal(out.sequences, ref.sequences)
    assert out.accepted == ref.accepted and out.tokens_per_iteration == ref.tokens_per_iteration
    assert out.tpf == ref.tpf and out.acceptance_length == ref.acceptance_length
    assert sum(out.accepted) > 0  # drafts were accepted: Orthrus decoding ran, not plain AR


def test_sampling_follows_transformers_defaults(make_model):
    """do_sample=True with only a temperature: transformers' default top_k=50 and top_p=1 apply."""
    model = make_model(seed=9)
    ids = prompt(4, seed=9)
    out = model.generate(
        ids, max_new_tokens=12, do_sample=True, temperature=0.7, generator=torch.Generator().manual_seed(3)
    )
    ref = generate(model, ids, 12, sampling=SamplingParams(0.7, 50, 1.0), generator=torch.Generator().manual_seed(3))
    assert torch.equal(out, ref.sequences)
    other = generate(model, ids, 12, sampling=SamplingParams(0.7, 2, 1.0), generator=torch.Generator().manual_seed(3))
    assert not torch.equal(other.sequences, ref.sequences)  # the check above can tell top_k apart


def test_eos_stop_strings_and_streamer(make_model):
    model = make_model(seed=5)
    ids = prompt(5, seed=5)
    free = base_greedy(model, ids, 30)[0, 5:].tolist()
    stop = CharTokenizer().decode(free[12:15])
    streamer = RecordingStreamer()
    out = model.generate(ids, max_new_tokens=30, stop_strings=[stop], tokenizer=CharTokenizer(), streamer=streamer)
    assert out[0, 5:].tolist() == expected_stop(free, stop)
    eos = free[6]
    assert torch.equal(model.generate(ids, max_new_tokens=30, eos_token_id=eos), base_greedy(model, ids, 30, eos))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"num_beams": 2}, "num_beams=2"),
        ({"repetition_penalty": 1.3}, "repetition_penalty=1.3"),
        ({"output_scores": True}, "output_scores"),
        ({"logits_processor": []}, "logits_processor"),
    ],
)
def test_unsupported_arguments_raise(make_model, kwargs, name):
    model = make_model()
    with pytest.raises(ValueError, match=name):
        model.generate(prompt(3), max_new_tokens=4, **kwargs)


def test_padded_batch_raises(make_model):
    ids = torch.cat([prompt(4), prompt(4, seed=2)])
    with pytest.raises(ValueError, match="one unpadded sequence"):
        make_model().generate(ids, max_new_tokens=4)


def test_plain_base_generate_still_reachable(make_model):
    """eval/fidelity.py's reference: GenerationMixin.generate on the same object is the plain base."""
    model = make_model(seed=2)
    ids = prompt(4, seed=2)
    out = GenerationMixin.generate(
        model, ids, attention_mask=torch.ones_like(ids), max_new_tokens=9, do_sample=False, num_beams=1, pad_token_id=0
    )
    assert torch.equal(out, model.generate(ids, max_new_tokens=9))
