"""The tests' Qwen3 architecture: a few thousand parameters with GQA, fast in fp32 on a CPU. It is smaller
than conf/model/tiny.yaml (the tiny model of runs); tests that compose model=tiny shrink it with TINY_OVERRIDES.
initializer_range is raised from 0.02 so logits are far from uniform: greedy ties and near-uniform
sampling would hide mistakes."""

TINY_QWEN3 = dict(
    vocab_size=96,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    initializer_range=0.15,
)
TINY_OVERRIDES = [
    f"model.config.{k}={TINY_QWEN3[k]}" for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "head_dim")
]
