"""Packing: exact row length, per-document positions, lossless stream, resume, rank sharding."""

import itertools
import random

import datasets
import pytest
import torch
from torch.utils.data import DataLoader
from transformers.masking_utils import find_packed_sequence_indices

from data.packing import PackedDataset, PackedRows

SEQ_LEN = 16


def make_documents(n: int = 60, seed: int = 0) -> list[list[int]]:
    """Documents of 1..40 tokens (some longer than SEQ_LEN), each ending with eos=0."""
    rng = random.Random(seed)
    return [[rng.randrange(1, 1000) for _ in range(rng.randint(0, 39))] + [0] for _ in range(n)]


def expected_positions(documents: list[list[int]], seq_len: int) -> tuple[list[int], list[bool]]:
    """Reference positions of the token stream, written independently of the implementation."""
    positions, starts = [], []
    for doc in documents:
        for i in range(len(doc)):
            starts.append(i == 0)
            positions.append(i)
    # Positions restart at every row start too (documents split into chunks).
    position = 0
    for t in range(len(positions)):
        position = 0 if starts[t] or t % seq_len == 0 else position + 1
        positions[t] = position
    return positions, starts


def take(dataset, n):
    return [row["input_ids"].tolist() for row in itertools.islice(iter(dataset), n)]


def test_rows_are_exact_and_reproduce_the_stream():
    documents = make_documents()
    stream = list(itertools.chain.from_iterable(documents))
    positions, starts = expected_positions(documents, SEQ_LEN)
    rows = list(PackedDataset(documents, SEQ_LEN, shuffle=False, infinite=False))
    assert len(rows) == len(stream) // SEQ_LEN
    for row in rows:
        assert all(row[k].shape == (SEQ_LEN,) and row[k].dtype == torch.long for k in row)
    assert torch.cat([r["input_ids"] for r in rows]).tolist() == stream[: len(rows) * SEQ_LEN]
    assert torch.cat([r["position_ids"] for r in rows]).tolist() == positions[: len(rows) * SEQ_LEN]
    for i, row in enumerate(rows):
        row_starts = starts[i * SEQ_LEN : (i + 1) * SEQ_LEN]
        assert row["doc_ids"].tolist() == list(itertools.accumulate(int(s) for s in [False] + row_starts[1:]))
        # transformers (Qwen3) derives the same segmentation from position_ids alone.
        packed = find_packed_sequence_indices(row["position_ids"][None])  # None: a single segment
        segments = torch.zeros(SEQ_LEN, dtype=torch.long) if packed is None else packed[0]
        assert segments.tolist() == row["doc_ids"].tolist()


def test_long_document_is_split_into_chunks_starting_at_zero():
    rows = PackedRows([list(range(1, 41)), [7, 0]], seq_len=16)
    assert len(rows) == 2
    assert rows[0]["position_ids"].tolist() == list(range(16))
    assert rows[1]["position_ids"].tolist() == list(range(16))
    assert rows[1]["input_ids"].tolist() == list(range(17, 33))


def test_dataset_input_matches_list_input():
    documents = make_documents() + [[]]  # empty documents are ignored
    hf = datasets.Dataset.from_dict({"input_ids": documents}).select(range(len(documents) - 1, -1, -1))
    from_hf, from_list = PackedRows(hf, SEQ_LEN), PackedRows(documents[::-1], SEQ_LEN)
    assert len(from_hf) == len(from_list)
    for i in range(len(from_list)):
        assert all(torch.equal(from_hf[i][k], from_list[i][k]) for k in from_list[i])


def test_order_is_deterministic_given_seed():
    documents = make_documents()
    a, b = PackedDataset(documents, SEQ_LEN, seed=1), PackedDataset(documents, SEQ_LEN, seed=1)
    assert take(a, 100) == take(b, 100)
    assert take(PackedDataset(documents, SEQ_LEN, seed=2), 100) != take(PackedDataset(documents, SEQ_LEN, seed=1), 100)


@pytest.mark.parametrize("consumed", [0, 5, 80, 81, 82, 200])
def test_resume_yields_identical_rows(consumed):
    documents = make_documents()
    original = PackedDataset(documents, SEQ_LEN, seed=3)
    assert original.rows_per_rank == 81  # so `consumed` crosses epoch boundaries
    iterator = iter(original)
    for _ in range(consumed):
        next(iterator)
    state = original.state_dict()
    expected = [next(iterator)["input_ids"].tolist() for _ in range(70)]
    resumed = PackedDataset(documents, SEQ_LEN, seed=3)
    resumed.load_state_dict(state)
    assert take(resumed, 70) == expected


def test_resume_through_dataloader():
    documents = make_documents()
    original = PackedDataset(documents, SEQ_LEN, seed=4, world_size=2, rank=1)
    batches = iter(DataLoader(original, batch_size=4))
    for _ in range(3):
        next(batches)
    state = original.state_dict()
    expected = [next(batches)["input_ids"] for _ in range(10)]
    resumed = PackedDataset(documents, SEQ_LEN, seed=4, world_size=2, rank=1)
    resumed.load_state_dict(state)
    resumed_batches = iter(DataLoader(resumed, batch_size=4))
    assert all(torch.equal(next(resumed_batches)["input_ids"], batch) for batch in expected)


def test_finite_iteration_continues_with_next_epoch():
    dataset = PackedDataset(make_documents(), SEQ_LEN, seed=5, infinite=False)
    first, second = take(dataset, 10**6), take(dataset, 10**6)
    assert len(first) == len(second) == 81
    assert first != second and sorted(first) == sorted(second)


def test_load_state_dict_rejects_other_setup():
    documents = make_documents()
    state = PackedDataset(documents, SEQ_LEN, seed=0).state_dict()
    with pytest.raises(ValueError, match="seq_len: saved 16, now 8"):
        PackedDataset(documents, 8, seed=0).load_state_dict(state)
    with pytest.raises(ValueError, match="world_size"):
        PackedDataset(documents, SEQ_LEN, seed=0, world_size=2, rank=0).load_state_dict(state)


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("world_size", [1, 3, 4])
def test_rank_shards_are_disjoint_and_cover_the_data(world_size, shuffle):
    documents = make_documents()
    num_rows = len(PackedRows(documents, SEQ_LEN))
    for epoch in range(2):
        shards = []
        for rank in range(world_size):
            dataset = PackedDataset(documents, SEQ_LEN, seed=6, shuffle=shuffle, world_size=world_size, rank=rank)
            dataset.load_state_dict({**dataset.state_dict(), "epoch": epoch})
            shards.append([tuple(row) for row in take(dataset, dataset.rows_per_rank)])
        assert len({len(s) for s in shards}) == 1  # equal steps on every rank
        seen = [row for shard in shards for row in shard]
        assert len(seen) == len(set(seen)) == num_rows - num_rows % world_size


def test_errors():
    with pytest.raises(ValueError, match="fewer than seq_len"):
        PackedRows([[1, 2, 0]], seq_len=16)
    with pytest.raises(ValueError, match="cannot be shared by 8 ranks"):
        PackedDataset([[1] * 40], SEQ_LEN, world_size=8, rank=0)
    with pytest.raises(KeyError, match="input_ids"):
        PackedRows(datasets.Dataset.from_dict({"text": ["a"]}), SEQ_LEN)
    with pytest.raises(RuntimeError, match="num_workers=0"):
        next(iter(DataLoader(PackedDataset(make_documents(), SEQ_LEN), num_workers=1)))
