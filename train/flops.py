"""Model FLOPs of one training micro-batch, for MFU.

Counted as the work the step needs (multiply-add = 2 FLOPs). Not counted: recomputation under
activation checkpointing (overhead, not model work: the MFU convention), norms, softmaxes and
other elementwise work. With P_layer one layer's projection weights (attention q/k/v/o + MLP;
the diffusion view's projections have the AR view's shapes) and n layers:

    stack   = 2 * P_layer * n             per token through the decoder stack
    head    = 2 * hidden * vocab          lm_head per position it is applied to (the targets only)
    attn(p) = 4 * heads * head_dim * n * p    QK^T and PV over p visible (query, key) pairs

    ar_forward          stack * L + attn(pairs_ar) + head * targets        the frozen teacher
    diffusion_forward   stack * T + attn(pairs_diff) + head * targets      the student
    diffusion_backward_activations                                         dX = dY W^T: ~1x forward
        matmuls: 2 * (P_layer * n - P_qkv) * T + head * targets      every projection (frozen ones
                 too) but layer 0's q/k/v, whose input (the embeddings) needs no gradient
        attention: attn(pairs_diff + pairs_own)                       dP, dQ over every visible pair;
                 dK, dV over the block's own keys only (the AR keys come from the frozen teacher)
    diffusion_backward_weights  2 * P_trainable * T                  dW = X^T dY of trainable matrices only

L: packed tokens, T: diffusion tokens (all blocks, padding blocks included: they run), targets:
valid (block, position) targets. pairs_ar counts causal pairs within each document; pairs_diff
counts each block query's visible keys (its AR context plus the K block keys); pairs_own = K*K
per block. These are the pairs the masks allow, not the dense L x L an SDPA executor computes.

`flop_terms` gives each part split into its "matmul" and "attention" FLOPs (tests/test_flops.py
checks the matmuls against torch.utils.flop_counter.FlopCounterMode on a real step and the pair
counts against the masks); `micro_batch_flops_breakdown` sums each part; `micro_batch_flops` is
the total.
"""

from collections.abc import Sequence

import torch

from train.blocks import DiffusionBlocks, segment_starts

FLOP_PARTS = ("ar_forward", "diffusion_forward", "diffusion_backward_activations", "diffusion_backward_weights")
QKV = ("q_proj_diff", "k_proj_diff", "v_proj_diff")


def projection_params(config) -> dict[str, int]:
    """Weights of one decoder layer's projections, by the diffusion view's module names (the
    MLP under "mlp"); the AR view's projections have the same shapes."""
    h, d = config.hidden_size, config.head_dim
    return {
        "q_proj_diff": h * d * config.num_attention_heads,
        "k_proj_diff": h * d * config.num_key_value_heads,
        "v_proj_diff": h * d * config.num_key_value_heads,
        "o_proj_diff": h * d * config.num_attention_heads,
        "mlp": 3 * h * config.intermediate_size,
    }


def layer_params(config) -> int:
    """Parameters of one decoder layer's projections (norms are negligible and not counted)."""
    return sum(projection_params(config).values())


def trainable_matrix_params(config, trainable: Sequence[str]) -> int:
    """Weights of the trainable projections over all layers (the norms in `trainable` are vectors:
    their gradients are elementwise work)."""
    per_layer = projection_params(config)
    return sum(per_layer[name] for name in trainable if name in per_layer) * config.num_hidden_layers


def causal_pairs(doc_ids: torch.Tensor) -> int:
    """Visible (query, key) pairs of causal attention within each document of a packed batch."""
    L = doc_ids.shape[1]
    within = torch.arange(L, device=doc_ids.device) - segment_starts(doc_ids)  # keys before each query
    return int((within + 1).sum())


def block_pairs(blocks: DiffusionBlocks) -> int:
    """Visible (query, key) pairs of the diffusion pass: K queries x (AR context + K) per block."""
    K = blocks.block_size
    return int((K * ((blocks.ctx_end - blocks.ctx_start) + K)).sum())


def own_block_pairs(blocks: DiffusionBlocks) -> int:
    """(query, key) pairs inside the blocks (K x K each): the keys whose gradients the backward needs."""
    return blocks.ctx_start.numel() * blocks.block_size**2


def flop_terms(config, doc_ids: torch.Tensor, blocks: DiffusionBlocks, trainable: Sequence[str]) -> dict[str, dict]:
    """Model FLOPs of one micro-batch: {part: {"matmul": ..., "attention": ...}} for each of FLOP_PARTS.

    `trainable`: the diffusion-view module names that learn (model.trainable).
    """
    n = config.num_hidden_layers
    stack = 2 * layer_params(config) * n
    learns_qkv = bool(set(QKV) & set(trainable))
    # layer 0's q/k/v read the embeddings (no gradient); its o_proj too when q/k/v are frozen
    no_input_grad = 2 * sum(projection_params(config)[name] for name in (QKV if learns_qkv else (*QKV, "o_proj_diff")))
    attn = 4 * config.num_attention_heads * config.head_dim
    head = 2 * config.hidden_size * config.vocab_size
    L, T, targets = doc_ids.numel(), blocks.input_ids.numel(), len(blocks.target_pos)
    pairs_diff = block_pairs(blocks)
    backward_layers = n if learns_qkv else n - 1  # else layer 0's attention needs no gradient
    return {
        "ar_forward": {"matmul": stack * L + head * targets, "attention": attn * n * causal_pairs(doc_ids)},
        "diffusion_forward": {"matmul": stack * T + head * targets, "attention": attn * n * pairs_diff},
        "diffusion_backward_activations": {
            "matmul": (stack - no_input_grad) * T + head * targets,
            "attention": attn * backward_layers * (pairs_diff + own_block_pairs(blocks)),
        },
        "diffusion_backward_weights": {"matmul": 2 * trainable_matrix_params(config, trainable) * T, "attention": 0},
    }


def next_token_flops(config, doc_ids: torch.Tensor) -> float:
    """Model FLOPs of one pretraining (next-token) micro-batch: a forward (stack and causal
    attention over every token, lm_head at the predicted ones) and a backward of twice that
    (activation and weight gradients of every matrix)."""
    n = config.num_hidden_layers
    targets = int((doc_ids[:, 1:] == doc_ids[:, :-1]).sum())
    forward = (
        2 * layer_params(config) * n * doc_ids.numel()
        + 2 * config.hidden_size * config.vocab_size * targets
        + 4 * config.num_attention_heads * config.head_dim * n * causal_pairs(doc_ids)
    )
    return float(3 * forward)


def micro_batch_flops_breakdown(
    config, doc_ids: torch.Tensor, blocks: DiffusionBlocks, trainable: Sequence[str]
) -> dict[str, float]:
    """Model FLOPs of one micro-batch by part (keys: FLOP_PARTS):

    ar_forward                      the frozen AR (teacher) pass, incl. the teacher lm_head at the targets
    diffusion_forward               the diffusion pass, incl. the student lm_head at the targets
    diffusion_backward_activations  activation gradients back through every layer (frozen MLPs too)
    diffusion_backward_weights      weight gradients of the trainable matrices only
    """
    return {part: float(sum(t.values())) for part, t in flop_terms(config, doc_ids, blocks, trainable).items()}
