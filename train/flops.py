"""Model FLOPs of one training micro-batch, for MFU.

Counted (multiply-add = 2 FLOPs; no recomputation from activation checkpointing, which is the
MFU convention: recompute is overhead, not model work):

    stack   = 2 * P_layer * n_layers                     FLOPs per token through the decoder stack
              (P_layer: one layer's attention projections + MLP; the diffusion view's
               projections have the AR view's shapes, so both passes cost the same)
    attn(p) = 4 * n_heads * head_dim * p * n_layers       QK^T and PV over p visible (query, key) pairs
    head    = 2 * hidden * vocab                          lm_head per position it is applied to

    AR forward        = stack * L_tokens + attn(pairs_ar) + head * n_targets
    diffusion forward = stack * T_tokens + attn(pairs_diff) + head * n_targets
    backward          = 2 * diffusion forward              activation gradients through every
                                                           (frozen) layer, attention and lm_head
                      + 2 * P_trainable * T_tokens         weight gradients of trainable params only

`micro_batch_flops_breakdown` returns these terms by name (the backward split into its
activation and weight-gradient parts); `micro_batch_flops` is their sum.

pairs_ar counts causal pairs within each document; pairs_diff counts each block query's visible
keys (its AR context plus the K block keys), i.e. what the mask allows, not a dense L x L.
The teacher's lm_head runs only at the n_targets positions (the loss never needs the rest).
"""

import torch

from train.blocks import DiffusionBlocks, segment_starts


def layer_params(config) -> int:
    """Parameters of one decoder layer's projections (norms are negligible and not counted)."""
    h, d = config.hidden_size, config.head_dim
    attn = h * d * (2 * config.num_attention_heads + 2 * config.num_key_value_heads)
    return attn + 3 * h * config.intermediate_size


def causal_pairs(doc_ids: torch.Tensor) -> int:
    """Visible (query, key) pairs of causal attention within each document of a packed batch."""
    B, L = doc_ids.shape
    within = torch.arange(L, device=doc_ids.device) - segment_starts(doc_ids)  # keys before each query
    return int((within + 1).sum())


def block_pairs(blocks: DiffusionBlocks) -> int:
    """Visible (query, key) pairs of the diffusion pass: K queries x (AR context + K) per block."""
    K = blocks.block_size
    return int((K * ((blocks.ctx_end - blocks.ctx_start) + K)).sum())


FLOP_PARTS = ("ar_forward", "diffusion_forward", "diffusion_backward_activations", "diffusion_backward_weights")


def micro_batch_flops_breakdown(config, doc_ids: torch.Tensor, blocks: DiffusionBlocks, trainable_params: int) -> dict[str, float]:
    """Model FLOPs of one micro-batch by part (keys: FLOP_PARTS):

    ar_forward                      the frozen AR (teacher) pass, incl. the teacher lm_head at the targets
    diffusion_forward               the diffusion pass, incl. the student lm_head at the targets
    diffusion_backward_activations  activation gradients back through every layer (frozen MLPs too)
    diffusion_backward_weights      weight gradients of the trainable parameters only
    """
    stack = 2 * layer_params(config) * config.num_hidden_layers
    attn_per_pair = 4 * config.num_attention_heads * config.head_dim * config.num_hidden_layers
    head = 2 * config.hidden_size * config.vocab_size
    n_targets = len(blocks.target_pos)
    ar = stack * doc_ids.numel() + attn_per_pair * causal_pairs(doc_ids) + head * n_targets
    diffusion = stack * blocks.input_ids.numel() + attn_per_pair * block_pairs(blocks) + head * n_targets
    return {
        "ar_forward": float(ar),
        "diffusion_forward": float(diffusion),
        "diffusion_backward_activations": float(2 * diffusion),
        "diffusion_backward_weights": float(2 * trainable_params * blocks.input_ids.numel()),
    }


def micro_batch_flops(config, doc_ids: torch.Tensor, blocks: DiffusionBlocks, trainable_params: int) -> float:
    """Model FLOPs of one micro-batch: AR forward + diffusion forward + diffusion backward."""
    return float(sum(micro_batch_flops_breakdown(config, doc_ids, blocks, trainable_params).values()))
