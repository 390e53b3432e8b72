"""A byte-level BPE tokenizer trained on the local Python corpus.

The real experiments use the frozen Qwen3 tokenizer; this small tokenizer
exists so that from-scratch toy models and CPU tests can run fully offline. It
mirrors the Qwen conventions the rest of the code relies on, so code written
against it also works with Qwen3:

* byte-level BPE with Qwen's pre-tokenizer split pattern (lossless on any text,
  including Python indentation);
* `<|endoftext|>` is the end-of-document token and doubles as padding;
* ChatML turns, `<|im_start|>role\\n...<|im_end|>\\n`;
* plus `<|mask|>`, the mask token the Orthrus diffusion view predicts under.
"""

from __future__ import annotations

import os
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from data._io import atomic_directory, looks_local
from data.corpus import TRAIN, load_manifest, read_corpus

EOS_TOKEN = "<|endoftext|>"
IM_START_TOKEN = "<|im_start|>"
IM_END_TOKEN = "<|im_end|>"
MASK_TOKEN = "<|mask|>"
SPECIAL_TOKENS = (EOS_TOKEN, IM_START_TOKEN, IM_END_TOKEN, MASK_TOKEN)

# Qwen2/Qwen3's pre-tokenizer pattern: words with a leading space or symbol,
# single digits, punctuation runs, and newline / whitespace runs kept apart.
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Qwen-style ChatML, without Qwen3's tool-calling and thinking branches.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)


def _byte_level_bpe() -> Tokenizer:
    """An untrained byte-level BPE pipeline with Qwen's pre-tokenization."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def train_tokenizer(
    corpus_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    vocab_size: int = 8192,
    min_frequency: int = 2,
    split: str = TRAIN,
) -> PreTrainedTokenizerFast:
    """Train on one split of a corpus built by `data.corpus.build_corpus`, save, and return it.

    Only the train split is used by default so that held-out perplexities are
    not flattered by merges learned from held-out code. The result is saved
    with `save_pretrained`, so `AutoTokenizer.from_pretrained(out_dir)` loads it
    offline; the special tokens get the ids 0..3 in SPECIAL_TOKENS order.
    """
    min_vocab = 256 + len(SPECIAL_TOKENS)  # every byte plus the special tokens
    if vocab_size < min_vocab:
        raise ValueError(f"vocab_size must be at least {min_vocab} (256 bytes + special tokens), got {vocab_size}")
    splits = load_manifest(corpus_dir)["splits"]
    if split not in splits:
        raise ValueError(f"corpus {corpus_dir} has no split {split!r}; its splits are {sorted(splits)}")
    files = splits[split]["files"]
    if files == 0:
        raise ValueError(f"split {split!r} of corpus {corpus_dir} is empty; rebuild it with a larger max_bytes")

    tokenizer = _byte_level_bpe()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = (record["text"] for record in read_corpus(corpus_dir, split))
    tokenizer.train_from_iterator(texts, trainer=trainer, length=files)

    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        mask_token=MASK_TOKEN,
        extra_special_tokens=[IM_START_TOKEN, IM_END_TOKEN],
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )
    with atomic_directory(out_dir) as tmp:
        wrapped.save_pretrained(tmp)
    return load_tokenizer(out_dir)


def load_tokenizer(name_or_path: str | os.PathLike) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a local folder or a hub name (e.g. "Qwen/Qwen3-0.6B").

    A value that looks like a path (data._io.looks_local) must
    exist; otherwise the hub lookup would fail later with a confusing message.
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    if looks_local(text) and not path.exists():
        raise FileNotFoundError(
            f"tokenizer folder {path} does not exist; train one with python -m scripts.train_tokenizer --out-dir {text}"
        )
    try:
        return AutoTokenizer.from_pretrained(str(path) if path.exists() else text)
    except OSError as err:
        raise OSError(
            f"tokenizer '{text}' is not a local folder (none under {Path.cwd()}) and could not be loaded "
            f"from the hub ({err}): pass a local tokenizer folder, e.g. artifacts/orthrus-small/tokenizer"
        ) from err
