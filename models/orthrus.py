"""The Orthrus model: a frozen Qwen3 (the AR view) plus, per layer, a trainable diffusion view
of attention that reads the same KV cache.

`OrthrusForCausalLM` *is* a `Qwen3ForCausalLM`: its forward is the unchanged base model, so
the AR view is bit-for-bit the model users already trust. The diffusion view lives next to
the base projections inside each `self_attn` module (`q_proj_diff`, `k_proj_diff`,
`v_proj_diff`, `o_proj_diff`, `q_norm_diff`, `k_norm_diff`), which gives the parameter names
of the released checkpoints, so they load by name. Everything else (MLPs, layer norms,
embeddings, LM head) is shared between the views.

The diffusion pass (`diffusion_forward`) runs the decoder stack with the diffusion
projections. Which keys a query may see is decided by an `attend` function, so decoding
(context = the cache prefix, bidirectional inside the block) and training (many blocks at
once under a block mask) share every line of the layer math.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import AutoConfig, AutoModelForCausalLM, Qwen3ForCausalLM
from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm, apply_rotary_pos_emb

from models.config import OrthrusConfig, validate_orthrus_config
from models.masks import draft_mask

DIFFUSION_MODULES = ("q_proj_diff", "k_proj_diff", "v_proj_diff", "o_proj_diff", "q_norm_diff", "k_norm_diff")

# attend(layer_idx, q, k, v) -> attention output. q: (B, H, T, D); k, v: (B, Hkv, T, D) are the
# diffusion view's own keys/values for the T block positions (normed, RoPE'd). The function
# adds whatever context the caller's setting provides and returns (B, H, T, D).
AttendFn = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def add_diffusion_view(attn: nn.Module, config: OrthrusConfig) -> None:
    """Give one Qwen3 attention module its diffusion-view projections and norms (same shapes)."""
    h, d = config.hidden_size, attn.head_dim
    bias = config.attention_bias
    attn.q_proj_diff = nn.Linear(h, config.num_attention_heads * d, bias=bias)
    attn.k_proj_diff = nn.Linear(h, config.num_key_value_heads * d, bias=bias)
    attn.v_proj_diff = nn.Linear(h, config.num_key_value_heads * d, bias=bias)
    attn.o_proj_diff = nn.Linear(config.num_attention_heads * d, h, bias=bias)
    attn.q_norm_diff = Qwen3RMSNorm(d, eps=config.rms_norm_eps)
    attn.k_norm_diff = Qwen3RMSNorm(d, eps=config.rms_norm_eps)


class OrthrusForCausalLM(Qwen3ForCausalLM):
    config_class = OrthrusConfig

    def __init__(self, config: OrthrusConfig):
        validate_orthrus_config(config)
        super().__init__(config)
        for layer in self.model.layers:
            add_diffusion_view(layer.self_attn, config)
        # the per-layer math before and after `attend`: training may swap in compiled versions
        # (train.compile_diffusion); the functions are the same either way
        self.diffusion_layer_parts = (diffusion_qkv, diffusion_out)
        self.post_init()

    # --- parameters -------------------------------------------------------------------------

    def diffusion_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if is_diffusion_param(n)]

    def freeze_base(self, trainable: tuple[str, ...] = DIFFUSION_MODULES) -> None:
        """Only the named diffusion modules get gradients; every base weight is frozen.

        `trainable` is a subset of DIFFUSION_MODULES (the "which parameters are trained"
        ablation); the rest of the diffusion view keeps its value.
        """
        unknown = set(trainable) - set(DIFFUSION_MODULES)
        if unknown:
            raise ValueError(f"unknown diffusion modules {sorted(unknown)}; choose from {DIFFUSION_MODULES}")
        for name, p in self.named_parameters():
            p.requires_grad_(any(f".{m}." in name for m in trainable))

    @torch.no_grad()
    def init_diffusion_from_ar(self) -> None:
        """Start the diffusion view as a copy of the AR view's attention (the paper's init):
        step 0 then drafts like the base model does with masks in place of unknown tokens."""
        for layer in self.model.layers:
            attn = layer.self_attn
            for name in DIFFUSION_MODULES:
                getattr(attn, name).load_state_dict(getattr(attn, name.removesuffix("_diff")).state_dict())

    def share_ar_view(self) -> None:
        """Make every diffusion-view module the AR view's module of the same name (q_proj_diff *is*
        q_proj, ...): drafts then run the base's own attention and the view holds no weights of its
        own. For decoding at K = 1 (which never runs the view) without paying for it; see
        `models.checkpoint.load_ar_view`."""
        for layer in self.model.layers:
            attn = layer.self_attn
            for name in DIFFUSION_MODULES:
                setattr(attn, name, getattr(attn, name.removesuffix("_diff")))

    # --- diffusion pass ---------------------------------------------------------------------

    def diffusion_hidden_states(
        self,
        input_ids: torch.LongTensor,
        position_ids: torch.LongTensor,
        attend: AttendFn,
        gradient_checkpointing: bool = False,
    ) -> torch.Tensor:
        """Run the decoder stack on `input_ids` with the diffusion view's attention.

        Returns the final-normed hidden states (B, T, hidden). Nothing is written to any cache.
        """
        hidden = self.model.embed_tokens(input_ids)
        cos, sin = self.model.rotary_emb(hidden, position_ids)
        parts = self.diffusion_layer_parts
        for idx, layer in enumerate(self.model.layers):
            if gradient_checkpointing and torch.is_grad_enabled():
                hidden = checkpoint(_diffusion_layer, layer, idx, hidden, cos, sin, attend, parts, use_reentrant=False)
            else:
                hidden = _diffusion_layer(layer, idx, hidden, cos, sin, attend, parts)
        return self.model.norm(hidden)

    def diffusion_forward(self, *args, **kwargs) -> torch.Tensor:
        """Diffusion-view logits (B, T, vocab); arguments as `diffusion_hidden_states`."""
        return self.lm_head(self.diffusion_hidden_states(*args, **kwargs))

    # --- transformers' generate -------------------------------------------------------------

    def generate(self, inputs: torch.LongTensor | None = None, **kwargs):
        """transformers' `generate` arguments, decoded by Orthrus (models/hf_generate.py): the
        base model's output, faster. `GenerationMixin.generate(model, ...)` is the plain base."""
        from models.hf_generate import orthrus_generate  # it imports this module

        return orthrus_generate(self, inputs, **kwargs)


def _diffusion_layer(layer: nn.Module, idx: int, hidden, cos, sin, attend: AttendFn, parts) -> torch.Tensor:
    """One decoder layer with the diffusion view's attention; MLP and norms are the base's.
    `parts`: (diffusion_qkv, diffusion_out) or compiled versions of them."""
    qkv, out = parts
    return out(layer, hidden, attend(idx, *qkv(layer, hidden, cos, sin)))


def diffusion_qkv(layer: nn.Module, hidden, cos, sin) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The layer's input norm, then the diffusion view's q/k/v projections, q/k norms and RoPE:
    q (B, H, T, D), k and v (B, Hkv, T, D)."""
    attn = layer.self_attn
    x = layer.input_layernorm(hidden)
    shape = (*x.shape[:-1], -1, attn.head_dim)
    q = attn.q_norm_diff(attn.q_proj_diff(x).view(shape)).transpose(1, 2)
    k = attn.k_norm_diff(attn.k_proj_diff(x).view(shape)).transpose(1, 2)
    v = attn.v_proj_diff(x).view(shape).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    return q, k, v


def diffusion_out(layer: nn.Module, residual, attended) -> torch.Tensor:
    """The diffusion view's output projection of the attention output (B, H, T, D), the residual,
    then the base's post-attention norm and MLP with their residual."""
    attn = layer.self_attn
    hidden = residual + attn.o_proj_diff(attended.transpose(1, 2).reshape(*residual.shape[:-1], -1))
    return hidden + layer.mlp(layer.post_attention_layernorm(hidden))


def is_diffusion_param(name: str) -> bool:
    return any(f".{m}." in name for m in DIFFUSION_MODULES)


def prefix_attend(cache, ctx_len: int, scale: float) -> AttendFn:
    """Decoding attention: the block's queries see the first `ctx_len` cached AR keys/values
    and all of the block's own diffusion keys/values (`models.masks.draft_mask`)."""

    def attend(idx: int, q, k, v):
        layer = cache.layers[idx]
        k_all = torch.cat([layer.keys, k], dim=2)
        v_all = torch.cat([layer.values, v], dim=2)
        mask = draft_mask(ctx_len, layer.keys.shape[2], k.shape[2], q.device)
        return F.scaled_dot_product_attention(
            q, k_all, v_all, attn_mask=mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
        )

    return attend


AutoConfig.register("orthrus", OrthrusConfig)
AutoModelForCausalLM.register(OrthrusConfig, OrthrusForCausalLM)
