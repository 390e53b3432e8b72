"""torch.compile of per-layer work: the frozen modules both passes run (train.compile_frozen) and
the diffusion pass's whole layer around its attention call (train.compile_diffusion).

Every decoder layer's MLP and its two RMSNorms run in the teacher pass and again, on four times
as many tokens at the paper's density, in the diffusion pass and its backward; the AR attention's
q/k RMSNorms run in the teacher pass. Eager, each is a
chain of elementwise kernels around the matmuls (RMSNorm: ~7; SiLU(gate) * up: 2), and with
train.fp8 each float8 input cast is a reduction plus a few elementwise kernels. Compiled,
inductor fuses those chains (and train.fp8's activation casts into their producers). The modules
are compiled in place (nn.Module.compile), so parameters, state dicts and checkpoints are
unchanged. compile_frozen leaves the diffusion view's own projections and the flex attention call
as they are (flex is compiled on its own in train/attention.py).

train.compile_diffusion compiles the diffusion pass's per-layer math on either side of its
attention call (`models.orthrus.diffusion_qkv`: input norm, q/k/v projections, q/k norms, RoPE;
`diffusion_out`: output projection, residuals, post-attention norm, MLP), trainable projections
included, forward and backward: eager, those are some forty kernels per layer each way around
the matmuls, and the step of a small model is bound by launching them. The graphs do not grow
with the layer count (the layers' parameters are graph inputs; the first layer, whose input
needs no gradient, gets its own); the attention call stays between the two parts.
"""

import torch
from torch import nn

COMPILED = ("mlp", "input_layernorm", "post_attention_layernorm", "self_attn.q_norm", "self_attn.k_norm")


def compile_frozen_modules(model: nn.Module, backend: str = "inductor") -> list[str]:
    """Compile the MLP and the frozen norms of every decoder layer of `model` in place; returns their
    names. Call after train.fp8's conversion (so its casts are compiled too). `backend`: the
    torch.compile backend ("eager" in the CPU tests: tracing without code generation)."""
    modules = {
        f"model.layers.{i}.{name}": layer.get_submodule(name)
        for i, layer in enumerate(model.model.layers)
        for name in COMPILED
    }
    trainable = [name for name, m in modules.items() if any(p.requires_grad for p in m.parameters())]
    if trainable:  # checked before anything is compiled
        raise ValueError(
            f"train.compile_frozen: {trainable[0]} has trainable parameters; it compiles frozen modules only "
            "(set train.compile_frozen=false)"
        )
    for module in modules.values():
        module.compile(backend=backend)
    return list(modules)


def compile_diffusion_layers(model: nn.Module, backend: str = "inductor") -> None:
    """Swap `model.diffusion_layer_parts` for compiled versions (the diffusion pass's per-layer
    math on either side of attention). `backend`: as compile_frozen_modules."""
    qkv, out = model.diffusion_layer_parts
    model.diffusion_layer_parts = (torch.compile(qkv, backend=backend), torch.compile(out, backend=backend))
