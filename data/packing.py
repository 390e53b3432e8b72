"""Pack tokenized documents into fixed-length rows with per-document positions.

Packing: the documents are concatenated into one token stream (each already
ends with eos, see `data.datasets`) and the stream is cut into rows of exactly
`seq_len` tokens. Nothing is padded, so no compute is wasted; the final partial
row is dropped. A document that crosses a row boundary (or is longer than
`seq_len`) is split into chunks, and every chunk starts again at position 0.

Each row carries
  * `input_ids`    (seq_len,) the tokens;
  * `position_ids` (seq_len,) restarting at 0 at every document (or chunk)
    start. With no attention mask, transformers' Qwen3 reads these restarts as
    packed-sequence boundaries and attends block-diagonally (causal within each
    document), so documents in one row do not see each other;
  * `doc_ids`      (seq_len,) 0, 0, ..., 1, 1, ... the document index within
    the row, for losses or masks that need the segmentation explicitly.

Design: the stream is packed once into a flat tensor (`PackedRows`, map-style,
O(1) access to any row), and `PackedDataset` is an `IterableDataset` that only
decides the *order* of rows. Because any row can be fetched directly, the
iteration state is just (epoch, index) and resuming is exact and instant: no
replaying of skipped batches, no buffers to checkpoint. The cost is holding the
token stream in memory (4 bytes per token), which is fine for the fine-tuning
scale this project trains at.
"""

from __future__ import annotations

import hashlib
import itertools
from typing import Iterator, Sequence

import datasets
import pyarrow.compute as pc
import torch
import torch.distributed as dist
from torch.utils.data import IterableDataset, get_worker_info

Documents = datasets.Dataset | Sequence[Sequence[int]]


def _flatten(documents: Documents) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate documents into (tokens int32, lengths int64), skipping empty ones."""
    if isinstance(documents, datasets.Dataset):
        if "input_ids" not in documents.column_names:
            raise KeyError(
                f"dataset has no 'input_ids' column (columns: {documents.column_names}); "
                "tokenize it first with data.datasets.tokenize_dataset"
            )
        # Read the Arrow column directly: converting millions of lists to Python is slow.
        column = documents.with_format("arrow")[:].column("input_ids").combine_chunks()
        tokens = torch.from_numpy(column.flatten().to_numpy().astype("int64"))
        lengths = torch.from_numpy(pc.list_value_length(column).to_numpy().astype("int64"))
    else:
        lengths = torch.tensor([len(doc) for doc in documents], dtype=torch.int64)
        tokens = torch.tensor(list(itertools.chain.from_iterable(documents)), dtype=torch.int64)
    if tokens.numel() and not 0 <= int(tokens.min()) <= int(tokens.max()) < 2**31:
        raise ValueError("token ids must lie in [0, 2**31)")
    return tokens.to(torch.int32), lengths[lengths > 0]


class PackedRows(torch.utils.data.Dataset):
    """All documents as one token stream, cut into `len(self)` rows of `seq_len` tokens."""

    def __init__(self, documents: Documents, seq_len: int):
        if seq_len < 1:
            raise ValueError(f"seq_len must be positive, got {seq_len}")
        self.seq_len = seq_len
        self.tokens, lengths = _flatten(documents)
        # Stream offset at which each document starts, for position/doc lookups.
        self.doc_starts = torch.cumsum(lengths, 0) - lengths
        self.num_rows = self.tokens.numel() // seq_len
        if self.num_rows == 0:
            raise ValueError(
                f"the documents hold {self.tokens.numel()} tokens, fewer than seq_len={seq_len}: no full row; "
                "use more data or a shorter seq_len"
            )

    def __len__(self) -> int:
        return self.num_rows

    def __getitem__(self, row: int) -> dict[str, torch.Tensor]:
        if not 0 <= row < self.num_rows:
            raise IndexError(f"row {row} out of range for {self.num_rows} rows")
        start = row * self.seq_len
        offsets = torch.arange(start, start + self.seq_len)
        doc = torch.searchsorted(self.doc_starts, offsets, right=True) - 1
        # A document that began in an earlier row restarts at the row start.
        segment_start = self.doc_starts[doc].clamp(min=start)
        return {
            "input_ids": self.tokens[start : start + self.seq_len].long(),
            "position_ids": offsets - segment_start,
            "doc_ids": doc - doc[0],
        }


def _epoch_seed(seed: int, epoch: int) -> int:
    """A generator seed for one epoch, so any epoch's order can be drawn directly on resume."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{epoch}".encode()).digest()[:8], "big") >> 1


class PackedDataset(IterableDataset):
    """Packed rows in a seeded order, sharded across data-parallel ranks, resumable.

    Every epoch draws a permutation of all rows from (seed, epoch) (or keeps
    stream order when `shuffle` is False); rank r takes every world_size-th row
    of it, starting at r, so ranks are disjoint and together cover the epoch.
    The last `num_rows % world_size` rows of each permutation are dropped so
    that all ranks take the same number of steps (a rank running out early
    would hang the others in a collective); with shuffling, different rows are
    dropped each epoch.

    `state_dict()` is the position after the rows already yielded; loading it
    into a dataset built from the same documents and arguments continues with
    exactly the rows that would have come next. Ranks advance in lockstep, so
    one rank's state is valid on all ranks.

    Use it with `DataLoader(num_workers=0)`: the position lives in this object,
    which a worker process would only copy. Rows are tensor slices, so workers
    would not speed anything up anyway.
    """

    def __init__(
        self,
        documents: Documents,
        seq_len: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        infinite: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        """`rank`/`world_size` default to torch.distributed's when it is initialized, else 0/1.

        With `infinite`, iteration runs through epoch after epoch; otherwise each
        `iter()` runs to the end of the current epoch and the next `iter()`
        starts the following one.
        """
        distributed = dist.is_available() and dist.is_initialized()
        self.rank = rank if rank is not None else (dist.get_rank() if distributed else 0)
        self.world_size = world_size if world_size is not None else (dist.get_world_size() if distributed else 1)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={self.rank}, world_size={self.world_size}")
        self.rows = PackedRows(documents, seq_len)
        self.rows_per_rank = len(self.rows) // self.world_size
        if self.rows_per_rank == 0:
            raise ValueError(f"{len(self.rows)} packed rows cannot be shared by {self.world_size} ranks; use more data")
        self.seq_len, self.seed, self.shuffle, self.infinite = seq_len, seed, shuffle, infinite
        self._epoch = 0
        self._index = 0  # rows of the current epoch already yielded by this rank

    def _rank_order(self, epoch: int) -> torch.Tensor:
        """The row indices this rank visits in `epoch`."""
        num_rows = len(self.rows)
        if self.shuffle:
            order = torch.randperm(num_rows, generator=torch.Generator().manual_seed(_epoch_seed(self.seed, epoch)))
        else:
            order = torch.arange(num_rows)
        return order[self.rank : self.rows_per_rank * self.world_size : self.world_size]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        worker = get_worker_info()
        if worker is not None:
            raise RuntimeError(
                "PackedDataset keeps its resume position in the main process; "
                f"use DataLoader(num_workers=0) instead of num_workers={worker.num_workers}"
            )
        while True:
            if self._index >= self.rows_per_rank:  # the current epoch is used up
                self._epoch, self._index = self._epoch + 1, 0
            order = self._rank_order(self._epoch)
            for position in range(self._index, self.rows_per_rank):
                # Advance before yielding: a state_dict() taken after receiving
                # this row must not yield it again.
                self._index = position + 1
                yield self.rows[int(order[position])]
            if not self.infinite:
                return

    def state_dict(self) -> dict:
        """The iteration position, plus what must match for it to mean the same rows."""
        return {
            "epoch": self._epoch,
            "index": self._index,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "shuffle": self.shuffle,
            "num_rows": len(self.rows),
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume from `state_dict()`; refuses a state saved under a different data setup."""
        mine = self.state_dict()
        keys = ("seed", "seq_len", "shuffle", "num_rows", "world_size")
        mismatched = [f"{k}: saved {state.get(k)!r}, now {mine[k]!r}" for k in keys if state.get(k) != mine[k]]
        if mismatched:
            details = "; ".join(mismatched)
            raise ValueError(f"cannot resume data position: {details}; rebuild the dataset with the saved settings")
        if not 0 <= state["index"] <= self.rows_per_rank:
            raise ValueError(f"saved index {state['index']} is outside an epoch of {self.rows_per_rank} rows")
        self._epoch, self._index = state["epoch"], state["index"]
