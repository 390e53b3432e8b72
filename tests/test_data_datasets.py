"""Loading local jsonl/json/parquet/txt data (text and chat) and tokenizing it into documents."""

import json
import re

import datasets
import pytest

from data.corpus import build_corpus
from data.datasets import load_raw_dataset, load_tokenized_dataset
from data.tokenizer import train_tokenizer

TEXTS = ["def f(x):\n    return x\n", "import os", "print('hello')"]
CHATS = [
    [{"role": "user", "content": "Add 1 and 2."}, {"role": "assistant", "content": "3"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    corpus = tmp_path_factory.mktemp("corpus")
    build_corpus(corpus, max_bytes=100_000)
    return train_tokenizer(corpus, tmp_path_factory.mktemp("tok") / "tokenizer", vocab_size=400)


@pytest.fixture
def cache_dir(tmp_path):
    return str(tmp_path / "hf_cache")  # keep the datasets cache out of the user's home


def write_jsonl(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def decode_all(dataset, tokenizer):
    return [tokenizer.decode(ids) for ids in dataset["input_ids"]]


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet", "txt"])
def test_local_text_formats(tmp_path, tokenizer, cache_dir, fmt):
    texts = [t.replace("\n", " ") for t in TEXTS] if fmt == "txt" else TEXTS  # .txt: one record per line
    path = tmp_path / f"docs.{fmt}"
    if fmt == "parquet":
        datasets.Dataset.from_dict({"text": texts}).to_parquet(str(path))
    elif fmt == "txt":
        path.write_text("\n".join(texts) + "\n")
    else:
        write_jsonl(path, [{"text": t, "id": i} for i, t in enumerate(texts)])
    dataset = load_tokenized_dataset(path, tokenizer, cache_dir=cache_dir)
    assert dataset.column_names == ["input_ids"]
    assert decode_all(dataset, tokenizer) == [t + tokenizer.eos_token for t in texts]


def test_custom_text_field(tmp_path, tokenizer, cache_dir):
    path = write_jsonl(tmp_path / "code.jsonl", [{"content": t} for t in TEXTS])
    dataset = load_tokenized_dataset(path, tokenizer, text_field="content", cache_dir=cache_dir)
    assert decode_all(dataset, tokenizer)[0] == TEXTS[0] + tokenizer.eos_token
    with pytest.raises(KeyError, match="'content'"):
        load_tokenized_dataset(path, tokenizer, cache_dir=cache_dir)  # default text_field="text"


def test_chat_records_use_the_template(tmp_path, tokenizer, cache_dir):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": m} for m in CHATS])
    with pytest.warns(UserWarning, match="enable_thinking"):
        dataset = load_tokenized_dataset(path, tokenizer, enable_thinking=False, num_proc=2, cache_dir=cache_dir)
    expected = [tokenizer.apply_chat_template(m, tokenize=False) + tokenizer.eos_token for m in CHATS]
    assert decode_all(dataset, tokenizer) == expected
    assert expected[0].startswith("<|im_start|>user\nAdd 1 and 2.<|im_end|>\n<|im_start|>assistant\n3")


def test_folder_selects_split_files(tmp_path, tokenizer, cache_dir):
    build_corpus(tmp_path / "corpus", max_bytes=20_000, shard_bytes=5_000)
    heldout = load_raw_dataset(tmp_path / "corpus", split="heldout", cache_dir=cache_dir)
    train = load_raw_dataset(tmp_path / "corpus", split="train", cache_dir=cache_dir)
    assert not set(heldout["package"]) & set(train["package"])
    folder = tmp_path / "plain"
    write_jsonl(folder / "a.jsonl", [{"text": "a"}])
    write_jsonl(folder / "sub" / "b.jsonl", [{"text": "b"}])
    assert sorted(load_raw_dataset(folder, cache_dir=cache_dir)["text"]) == ["a", "b"]
    with pytest.raises(FileNotFoundError, match="split 'test'"):
        load_raw_dataset(folder, split="test", cache_dir=cache_dir)


def test_missing_path_names_the_path(tmp_path, tokenizer):
    missing = tmp_path / "nope" / "data.jsonl"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        load_tokenized_dataset(missing, tokenizer)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_raw_dataset("./no/such/folder")


def test_unknown_and_mixed_formats(tmp_path):
    csv = tmp_path / "data.csv"
    csv.write_text("text\nhello\n")
    with pytest.raises(ValueError, match=r"unknown data format \['.csv'\]"):
        load_raw_dataset(csv)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no .jsonl/.json/.parquet/.txt files"):
        load_raw_dataset(empty)
    mixed = tmp_path / "mixed"
    write_jsonl(mixed / "a.jsonl", [{"text": "a"}])
    (mixed / "b.txt").write_text("b\n")
    with pytest.raises(ValueError, match="mixes data formats"):
        load_raw_dataset(mixed)
