"""Load text or chat datasets (hub or local files) and tokenize them into documents.

One entry point, `load_tokenized_dataset`, turns a dataset into a
`datasets.Dataset` with a single `input_ids` column: one row per document,
ending with the tokenizer's eos token so that packed documents stay separated
(see `data.packing`). Two record shapes are understood:

* plain text: a string field (`text` by default), e.g. the local Python corpus;
* chat: a list of {"role", "content"} messages (`messages` by default), rendered
  with the tokenizer's chat template, e.g. an SFT dataset from the hub.

The module is named after the library it wraps; inside this package,
`import datasets` still resolves to the Hugging Face library because the
package uses absolute imports and the repo root, not `data/`, is on sys.path.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import datasets
from transformers import PreTrainedTokenizerBase

from data.tokenizer import load_tokenizer

# File extension -> `datasets` packaged builder. `.txt` files give one record per line.
BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".txt": "text"}


def data_suffix(path: Path) -> str:
    """The data extension of a file name; gzip-compressed text files count as their inner type
    (`prompts.jsonl.gz` is ".jsonl": `datasets` decompresses them itself)."""
    if path.suffix == ".gz" and len(path.suffixes) > 1 and path.suffixes[-2] != ".parquet":
        return path.suffixes[-2]
    return path.suffix


def _looks_like_path(source: str) -> bool:
    """Hub names look like "owner/name"; paths are absolute, relative-with-dot, or end in a data extension."""
    return os.path.isabs(source) or source.startswith((".", "~")) or data_suffix(Path(source)) in BUILDERS


def _split_files(folder: Path, split: str) -> list[Path]:
    """The data files of `split` in a folder: `split.*` / `split-*` / `split_*` files, else all of them for train.

    This matches the corpus layout (`train-00000.jsonl`, `heldout-00000.jsonl`)
    and common exports (`train.jsonl`, `test.parquet`).
    """
    visible = (p for p in folder.rglob("*") if not any(part.startswith(".") for part in p.relative_to(folder).parts))
    files = sorted(p for p in visible if p.is_file() and data_suffix(p) in BUILDERS)
    if not files:
        raise FileNotFoundError(f"no {'/'.join(BUILDERS)} files in folder {folder}")
    named = [p for p in files if p.stem == split or p.stem.startswith((f"{split}-", f"{split}_"))]
    if named:
        return named
    if split != "train":
        raise FileNotFoundError(
            f"no files for split {split!r} in folder {folder} "
            f"(expected names like {split}.jsonl or {split}-00000.jsonl)"
        )
    return files


def load_raw_dataset(
    source: str | os.PathLike, *, split: str = "train", subset: str | None = None, cache_dir: str | None = None
) -> datasets.Dataset:
    """Load one split of a dataset from a local file/folder or from the hub.

    Args:
        source: a local .jsonl/.json/.parquet/.txt file, a folder of them, or a
            hub dataset name such as "HuggingFaceTB/smoltalk".
        split: the split to load. For a local folder it selects files by name
            (see `_split_files`); for a single local file it must be "train".
        subset: the hub dataset's configuration name (ignored for local data).
        cache_dir: where `datasets` keeps its Arrow cache (default: its own).
    """
    text = str(source)
    path = Path(text).expanduser()
    if path.exists():
        if path.is_dir():
            files = _split_files(path, split)
        elif split != "train":
            raise ValueError(f"{path} is a single file, which only has a 'train' split; got split={split!r}")
        else:
            files = [path]
        unknown = sorted({p.suffix or p.name for p in files if data_suffix(p) not in BUILDERS})
        if unknown:
            raise ValueError(f"unknown data format {unknown} for {path}; supported extensions: {', '.join(BUILDERS)}")
        builders = {BUILDERS[data_suffix(p)] for p in files}
        if len(builders) > 1:
            raise ValueError(f"{path} mixes data formats {sorted(builders)}; keep one format per folder")
        return datasets.load_dataset(
            builders.pop(), data_files=[str(p) for p in files], split="train", cache_dir=cache_dir
        )
    if _looks_like_path(text):
        raise FileNotFoundError(f"dataset path {path.resolve()} does not exist (from source={text!r})")
    try:
        return datasets.load_dataset(text, subset, split=split, cache_dir=cache_dir)
    except Exception as err:
        raise RuntimeError(
            f"could not load {text!r} from the dataset hub (cause above), and no local path {path.resolve()} "
            "exists. Check the name and subset; on an offline machine, download the dataset elsewhere and "
            "pass its local folder."
        ) from err


def _tokenize_batch(
    batch: dict, tokenizer: PreTrainedTokenizerBase, field: str, chat: bool, template_kwargs: dict
) -> dict:
    """Render (for chat) and tokenize a batch of records; append eos to each document."""
    if chat:
        texts = [tokenizer.apply_chat_template(m, tokenize=False, **template_kwargs) for m in batch[field]]
    else:
        texts = batch[field]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return {"input_ids": [doc + [tokenizer.eos_token_id] for doc in ids]}


def tokenize_dataset(
    dataset: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    *,
    text_field: str = "text",
    messages_field: str | None = "messages",
    enable_thinking: bool | None = None,
    num_proc: int | None = None,
) -> datasets.Dataset:
    """Map records to `input_ids` documents (eos appended), dropping all other columns.

    Records are chat if the dataset has `messages_field` (set it to None to
    force plain text), else plain text from `text_field`. `enable_thinking` is
    passed to `apply_chat_template` only when the chat template uses it (Qwen3's
    does; a plain ChatML template would silently ignore it, so we warn).
    """
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no eos token; documents could not be separated")
    columns = dataset.column_names
    chat = messages_field is not None and messages_field in columns
    field = messages_field if chat else text_field
    if field not in columns:
        raise KeyError(
            f"dataset has neither a {messages_field!r} (chat) nor a {text_field!r} (text) column; "
            f"its columns are {columns}: set text_field or messages_field"
        )
    template_kwargs = {}
    if chat:
        if tokenizer.chat_template is None:
            raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no chat template, needed for chat records")
        if enable_thinking is not None:
            if "enable_thinking" in str(tokenizer.chat_template):
                template_kwargs["enable_thinking"] = enable_thinking
            else:
                warnings.warn(f"enable_thinking={enable_thinking} ignored: the chat template does not use it")
    return dataset.map(
        _tokenize_batch,
        batched=True,
        remove_columns=columns,
        fn_kwargs={"tokenizer": tokenizer, "field": field, "chat": chat, "template_kwargs": template_kwargs},
        num_proc=num_proc,
        desc="tokenizing",
    )


def load_tokenized_dataset(
    source: str | os.PathLike,
    tokenizer: str | os.PathLike | PreTrainedTokenizerBase,
    *,
    split: str = "train",
    subset: str | None = None,
    text_field: str = "text",
    messages_field: str | None = "messages",
    enable_thinking: bool | None = None,
    num_proc: int | None = None,
    cache_dir: str | None = None,
) -> datasets.Dataset:
    """`load_raw_dataset` then `tokenize_dataset`; `tokenizer` may be a folder or hub name."""
    if not isinstance(tokenizer, PreTrainedTokenizerBase):
        tokenizer = load_tokenizer(tokenizer)
    raw = load_raw_dataset(source, split=split, subset=subset, cache_dir=cache_dir)
    return tokenize_dataset(
        raw,
        tokenizer,
        text_field=text_field,
        messages_field=messages_field,
        enable_thinking=enable_thinking,
        num_proc=num_proc,
    )
