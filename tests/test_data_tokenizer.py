"""The byte-level BPE tokenizer: lossless, special tokens, chat template, offline reload."""

import pytest
from transformers import AutoTokenizer

from data.corpus import build_corpus
from data.tokenizer import (
    EOS_TOKEN,
    IM_END_TOKEN,
    IM_START_TOKEN,
    MASK_TOKEN,
    SPECIAL_TOKENS,
    load_tokenizer,
    train_tokenizer,
)

VOCAB_SIZE = 512


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    build_corpus(out, max_bytes=200_000)
    return out


@pytest.fixture(scope="module")
def tokenizer_dir(corpus_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    train_tokenizer(corpus_dir, out, vocab_size=VOCAB_SIZE)
    return out


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.mark.parametrize(
    "text",
    [
        "def f(x):\n    return x  + 1\n\n\nclass A:\n\tpass\r\n",
        "unicode: héllo wörld — 世界 🐍 \x00\x7f",
        "   leading and trailing spaces   ",
        "",
    ],
)
def test_round_trip(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text


def test_special_tokens_are_single_ids(tokenizer):
    assert len(tokenizer) == VOCAB_SIZE
    ids = [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    assert ids == [0, 1, 2, 3]
    for token, token_id in zip(SPECIAL_TOKENS, ids):
        assert tokenizer.encode(token, add_special_tokens=False) == [token_id]
    assert tokenizer.mask_token == MASK_TOKEN and tokenizer.mask_token_id == ids[3]
    assert tokenizer.eos_token == EOS_TOKEN and tokenizer.pad_token_id == tokenizer.eos_token_id == ids[0]
    # No BOS/EOS is added implicitly: documents get eos explicitly when tokenized.
    assert tokenizer.encode("x = 1") == tokenizer.encode("x = 1", add_special_tokens=False)
    masked = tokenizer.encode(f"x = {MASK_TOKEN}{MASK_TOKEN}", add_special_tokens=False)
    assert masked[-2:] == [tokenizer.mask_token_id] * 2


def test_chat_template(tokenizer):
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    assert rendered == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
    prompt = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    assert ids.count(tokenizer.convert_tokens_to_ids(IM_START_TOKEN)) == 2
    assert ids.count(tokenizer.convert_tokens_to_ids(IM_END_TOKEN)) == 1


def test_load_tokenizer_and_missing_folder(tokenizer_dir, tokenizer, tmp_path):
    loaded = load_tokenizer(tokenizer_dir)
    assert loaded.encode("import os") == tokenizer.encode("import os")
    with pytest.raises(FileNotFoundError, match="python -m scripts.train_tokenizer"):
        load_tokenizer(tmp_path / "missing")


def test_bad_vocab_size(corpus_dir, tmp_path):
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(corpus_dir, tmp_path / "tok", vocab_size=100)


def test_cli_retrains_in_place(corpus_dir, tmp_path, capsys):
    from scripts.train_tokenizer import main

    out = tmp_path / "tok"
    out.mkdir()
    (out / "stale.txt").write_text("from an older tokenizer")
    main(["--corpus-dir", str(corpus_dir), "--out-dir", str(out), "--vocab-size", "300"])
    assert "mask_token_id=3" in capsys.readouterr().out
    assert not (out / "stale.txt").exists()  # the folder was replaced as a whole
    assert len(AutoTokenizer.from_pretrained(out)) == 300
