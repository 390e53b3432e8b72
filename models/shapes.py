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

_SIZE_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "tie_word_embeddings")
_SIZES = {
    "qwen3_1.7b": (2048, 6144, 28, 16, True),
    "qwen3_4b": (2560, 9728, 36, 32, True),
    "qwen3_8b": (4096, 12288, 36, 32, False),
}
QWEN3_SHAPES: dict[str, dict] = {
    name: dict(_COMMON, **dict(zip(_SIZE_FIELDS, sizes))) for name, sizes in _SIZES.items()
}
# Smaller Qwen3s that appear only as the separate drafter a design without Orthrus would pair with a target
# (eval.batch_bench.memory_per_request); no Orthrus is released at these sizes, so they stay out of QWEN3_SHAPES.
# Numbers of the public `Qwen/Qwen3-0.6B` config.json.
DRAFTER_SHAPES: dict[str, dict] = {"qwen3_0.6b": dict(_COMMON, **dict(zip(_SIZE_FIELDS, (1024, 3072, 28, 16, True))))}


def shape_config(name: str, **overrides) -> OrthrusConfig:
    """An OrthrusConfig at a named real shape, or a drafter's shape (no weights involved)."""
    shapes = QWEN3_SHAPES | DRAFTER_SHAPES
    if name not in shapes:
        raise ValueError(f"unknown shape '{name}'; known shapes: {sorted(shapes)}")
    return OrthrusConfig(**{**shapes[name], **overrides})
