"""Orthrus configuration: a Qwen3 config plus the two numbers the diffusion view needs.

The released checkpoints (`chiennv/Orthrus-Qwen3-*`) store a Qwen3 config with
`model_type="orthrus"`, `block_size` and `mask_token_id` added; we use the same names so
their `config.json` loads as-is and ours loads in their code.
"""

from huggingface_hub.dataclasses import strict
from transformers import Qwen3Config

DEFAULT_BLOCK_SIZE = 32  # K in the paper


@strict(accept_kwargs=True)
class OrthrusConfig(Qwen3Config):
    model_type = "orthrus"

    block_size: int = DEFAULT_BLOCK_SIZE
    mask_token_id: int | None = None


def validate_orthrus_config(config: OrthrusConfig) -> None:
    """Raise a ValueError that names the bad field and how to fix it."""
    if config.block_size is None or config.block_size < 2:
        raise ValueError(
            f"block_size={config.block_size}: Orthrus drafts block_size - 1 tokens per step, "
            "so it must be at least 2 (the paper uses 32). Set e.g. block_size=32."
        )
    if config.mask_token_id is None:
        raise ValueError(
            "mask_token_id is not set: the diffusion view fills the block with a mask token. "
            "Pass mask_token_id=<an id inside the embedding table>, e.g. the tokenizer's "
            "mask/unused special token."
        )
    if not 0 <= config.mask_token_id < config.vocab_size:
        raise ValueError(
            f"mask_token_id={config.mask_token_id} is outside the vocabulary [0, {config.vocab_size}): "
            "choose an id that has a row in the embedding table."
        )
    if getattr(config, "use_sliding_window", False):
        raise ValueError(
            "use_sliding_window=True is not supported: the diffusion view attends to the whole "
            "shared KV cache. Use a full-attention Qwen3 config."
        )
