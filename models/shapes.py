"""Architectures of the Qwen3 sizes the paper releases, so code can build them without weights
(meta-device parameter counts, random-weight benchmarks at real shapes).

Numbers are those of the public `Qwen/Qwen3-{1.7B,4B,8B}` config.json files.
"""

from models.config import OrthrusConfig

_COMMON = dict(
    vocab_size=151936,
    head_dim=128,
    num_key_value_heads=8,
    max_position_embeddings=40960,
    rms_norm_eps=1e-6,
    rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
    bos_token_id=151643,
    eos_token_id=151645,
    mask_token_id=151669,  # first embedding row past the tokenizer's 151669 tokens
)

QWEN3_SHAPES: dict[str, dict] = {
    "qwen3_1.7b": dict(
        _COMMON,
        hidden_size=2048,
        intermediate_size=6144,
        num_hidden_layers=28,
        num_attention_heads=16,
        tie_word_embeddings=True,
    ),
    "qwen3_4b": dict(
        _COMMON,
        hidden_size=2560,
        intermediate_size=9728,
        num_hidden_layers=36,
        num_attention_heads=32,
        tie_word_embeddings=True,
    ),
    "qwen3_8b": dict(
        _COMMON,
        hidden_size=4096,
        intermediate_size=12288,
        num_hidden_layers=36,
        num_attention_heads=32,
        tie_word_embeddings=False,
    ),
}


def shape_config(name: str, **overrides) -> OrthrusConfig:
    """An OrthrusConfig at a named real shape (no weights involved)."""
    if name not in QWEN3_SHAPES:
        raise ValueError(f"unknown shape '{name}'; known shapes: {sorted(QWEN3_SHAPES)}")
    return OrthrusConfig(**{**QWEN3_SHAPES[name], **overrides})
