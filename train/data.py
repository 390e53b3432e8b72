"""Training data: packed rows from the data pipeline (`data/`), or synthetic documents.

`cfg.data` (conf/data/*.yaml, one section per function of `data/`) is used as the data
pipeline defines it: corpus and tokenizer are built when their folders are missing (rank 0,
the other ranks wait), then documents are loaded, tokenized and packed by
`data.packing.PackedDataset`.

`data=synthetic` (the CPU default, and GPU throughput runs on machines without data) gives
random documents of random lengths instead: no corpus, no tokenizer, but the same packing,
sharding and resumable position (conf/data/synthetic.yaml).
"""

from collections.abc import Iterator
from pathlib import Path

import torch
from omegaconf import DictConfig

from data._io import looks_local
from data.packing import PackedDataset
from train.distributed import Dist, barrier

DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".txt", ".csv")


def synthetic_documents(
    num_documents: int, min_length: int, max_length: int, seed: int, *, vocab_size: int, exclude: tuple[int, ...] = ()
) -> list[list[int]]:
    """`num_documents` uniform-random token documents with lengths in [min_length, max_length]."""
    if not 1 <= min_length <= max_length:
        raise ValueError(f"synthetic_data: need 1 <= min_length <= max_length, got {min_length} and {max_length}")
    excluded = set(exclude)
    allowed = torch.tensor([t for t in range(vocab_size) if t not in excluded])
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_length, max_length + 1, (num_documents,), generator=g)
    return [allowed[torch.randint(0, len(allowed), (int(n),), generator=g)].tolist() for n in lengths]


def synthetic_data(seq_len: int, rows: int, seed: int = 0) -> dict:
    """A data=synthetic section (conf node: train/config.py): documents of min(256, seq_len/4)..seq_len
    tokens, enough for about `rows` packed rows of seq_len (rows hold a few documents, like SFT data)."""
    min_len = max(1, min(256, seq_len // 4))
    docs = int(rows * seq_len / ((min_len + seq_len) / 2) * 1.25) + 8
    return {
        "synthetic_documents": {"num_documents": docs, "min_length": min_len, "max_length": seq_len, "seed": seed},
        "packed_dataset": {"seq_len": seq_len, "seed": seed, "shuffle": True, "infinite": True},
    }


def data_tokenizer(data_cfg: DictConfig) -> str | None:
    """The tokenizer (folder or hub name) the data is tokenized with, if any."""
    if "load_tokenized_dataset" not in data_cfg:
        return None
    return data_cfg.load_tokenized_dataset.tokenizer


def check_data_inputs(data_cfg: DictConfig) -> None:
    """Fail before any work when a local data file or tokenizer folder the config names is missing
    (and no section of the config builds it): without this the first error is a hub lookup of the
    path, or of the default tokenizer, which says nothing about the real problem."""
    section = data_cfg.get("load_tokenized_dataset")
    if section is None:
        return
    built = {str(data_cfg[k].out_dir) for k in ("build_corpus", "train_tokenizer") if k in data_cfg}
    source, tokenizer = str(section.source), str(section.tokenizer)
    if _local(source) and not Path(source).expanduser().exists() and source not in built:
        raise FileNotFoundError(
            f"data.load_tokenized_dataset.source={source}: no such file or folder. Pass an "
            "existing .jsonl/.json/.parquet/.txt file or folder (or a hub dataset name)"
        )
    if _local(tokenizer) and not Path(tokenizer).expanduser().exists() and tokenizer not in built:
        raise FileNotFoundError(
            f"data.load_tokenized_dataset.tokenizer={tokenizer}: no such folder. Pass the frozen "
            "model's tokenizer folder (or hub name)"
        )


def _local(name: str) -> bool:
    return looks_local(name) or name.endswith(DATA_SUFFIXES)


def _build_missing_inputs(data_cfg: DictConfig) -> None:
    """Build the corpus / train the tokenizer when the config has a section and the output is absent."""
    from data.corpus import MANIFEST, build_corpus
    from data.tokenizer import train_tokenizer

    if "build_corpus" in data_cfg and not (Path(data_cfg.build_corpus.out_dir) / MANIFEST).is_file():
        build_corpus(**data_cfg.build_corpus)
    if "train_tokenizer" in data_cfg and not (Path(data_cfg.train_tokenizer.out_dir) / "tokenizer.json").is_file():
        train_tokenizer(**data_cfg.train_tokenizer)


def build_dataset(data_cfg: DictConfig, *, vocab_size: int, mask_token_id: int, dist: Dist) -> PackedDataset:
    """The packed, rank-sharded, resumable dataset of this run."""
    if "synthetic_documents" in data_cfg:
        docs = synthetic_documents(**data_cfg.synthetic_documents, vocab_size=vocab_size, exclude=(mask_token_id,))
    else:
        from data.datasets import load_tokenized_dataset

        for turn in ("main", "others"):  # rank 0 builds and fills the datasets cache first
            if (turn == "main") == dist.is_main:
                _build_missing_inputs(data_cfg)
                docs = load_tokenized_dataset(**data_cfg.load_tokenized_dataset)
            barrier()
    dataset = PackedDataset(docs, **data_cfg.packed_dataset, rank=dist.rank, world_size=dist.world_size)
    top = int(dataset.rows.tokens.max())
    if top >= vocab_size:
        raise ValueError(
            f"the data has token id {top} but the model's vocabulary has {vocab_size} rows: use the model's "
            "tokenizer in data.load_tokenized_dataset.tokenizer, or (random weights) raise model.config.vocab_size"
        )
    return dataset


def batches(dataset: PackedDataset, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
    """CPU stacks of `batch_size` rows, pulled one row at a time so the dataset's state_dict is
    exactly the position after the last yielded batch (no prefetching)."""
    rows = iter(dataset)
    while True:
        items = [next(rows) for _ in range(batch_size)]
        yield {k: torch.stack([item[k] for item in items]) for k in items[0]}
