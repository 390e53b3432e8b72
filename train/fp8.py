"""FP8 matmuls for the frozen base (train.fp8), through torchao's float8 training.

The frozen Linear layers (the AR view's q/k/v/o projections, used by the teacher pass, and the
MLPs, used by the teacher and the diffusion pass; any diffusion projection left out of
model.trainable too) are swapped for torchao Float8Linear modules with dynamic tensorwise
scaling (e4m3 forward, e5m2 gradients). Never converted: a layer with a trainable weight
(the diffusion view's trainable projections keep bf16 matmuls and exact gradients) and lm_head
(the KL's logits stay in the base's precision). The parameters are the same objects before and
after, so checkpoints, the optimizer and the saved view are unchanged; decoding never sees this.

Modes:
  none     bf16 matmuls everywhere (default)
  torchao  torchao's Float8Linear as is: its backward also forms the weight gradient, which a
           frozen weight discards (one wasted fp8 matmul per frozen layer in the diffusion backward)
  frozen   FrozenFloat8Linear: torchao's casts and scaled matmul for the forward and the input
           gradient, no weight gradient; like a frozen nn.Linear it keeps only the weight for
           backward (torchao's Float8Linear also keeps the layer input: more activation memory)

FP8 numerics need a GPU with FP8 tensor cores (H100/H200); on the CPU torchao's `emulate` mode
runs the same casts with high-precision matmuls (the tests use it). torchao's casts are
separate kernels unless the model is compiled; the GPU benchmark measures what that costs.
"""

import torch
from torch import nn

FP8_MODES = ("none", "torchao", "frozen")
KEEP = ("lm_head",)  # module names never converted


def require_torchao():
    try:
        import torchao.float8  # noqa: F401
    except ImportError as e:
        raise ImportError(
            f"train.fp8 needs torchao (pip install torchao; 0.18 supports torch >= 2.11): {e}; or set train.fp8=none"
        ) from e


def frozen_linear_names(model: nn.Module) -> list[str]:
    """Names of the Linear layers with no trainable parameter, lm_head excepted: what is converted."""
    return [
        name
        for name, mod in model.named_modules()
        if isinstance(mod, nn.Linear)
        and name.rsplit(".", 1)[-1] not in KEEP
        and not any(p.requires_grad for p in mod.parameters())
    ]


def convert_frozen_linears(model: nn.Module, mode: str, *, emulate: bool = False) -> list[str]:
    """Swap the frozen Linear layers of `model` for torchao float8 ones (in place) per `mode`;
    returns the converted names. Call after the model is frozen and before the optimizer and
    any DDP/DeepSpeed wrapper are built. `emulate`: high-precision matmuls (CPU tests)."""
    if mode not in FP8_MODES:
        raise ValueError(f"train.fp8={mode!r}: choose one of {FP8_MODES}")
    if mode == "none":
        return []
    require_torchao()
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    names = set(frozen_linear_names(model))
    if not names:
        raise ValueError("train.fp8: the model has no frozen Linear layer to convert")
    config = Float8LinearConfig(emulate=emulate)
    if mode == "torchao":
        convert_to_float8_training(model, config=config, module_filter_fn=lambda mod, fqn: fqn in names)
    else:
        cls = frozen_float8_linear_class()
        for name in names:
            parent, _, child = name.rpartition(".")
            owner = model.get_submodule(parent) if parent else model
            setattr(owner, child, cls.from_float(getattr(owner, child), config=config))
    return sorted(names)


_FROZEN_CLASS = None


def frozen_float8_linear_class():
    """FrozenFloat8Linear, built on first use so that importing this module needs no torchao."""
    global _FROZEN_CLASS
    if _FROZEN_CLASS is not None:
        return _FROZEN_CLASS
    require_torchao()
    from torchao.float8.float8_linear import Float8Linear
    from torchao.float8.float8_scaling_utils import get_maybe_axiswise_dim, hp_tensor_to_float8_dynamic
    from torchao.float8.float8_training_tensor import GemmInputRole

    def cast(t, cast_config, config, mm_config, role, dim):
        return hp_tensor_to_float8_dynamic(
            t,
            cast_config.target_dtype,
            mm_config,
            gemm_input_role=role,
            scaling_granularity=cast_config.scaling_granularity,
            axiswise_dim=get_maybe_axiswise_dim(dim, cast_config.scaling_granularity),
            round_scales_to_power_of_2=config.round_scales_to_power_of_2,
        )

    @torch._dynamo.allow_in_graph
    class FrozenFloat8Matmul(torch.autograd.Function):
        """x @ w_t with float8 casts, gradient for x only (w_t is frozen): torchao's forward and
        input-gradient casts, without its weight gradient; saves w_t, not x."""

        @staticmethod
        def forward(ctx, x, w_t, mm_config, config):
            ctx.save_for_backward(w_t)
            ctx.mm_config, ctx.config = mm_config, config
            x8 = cast(x, config.cast_config_input, config, mm_config, GemmInputRole.INPUT, -1)
            w8 = cast(w_t, config.cast_config_weight, config, mm_config, GemmInputRole.WEIGHT, 0)
            out = torch.mm(x8.reshape(-1, x8.shape[-1]), w8)
            return out.reshape(*x.shape[:-1], out.shape[-1])

        @staticmethod
        def backward(ctx, grad_out):
            (w_t,) = ctx.saved_tensors
            config, mm_config = ctx.config, ctx.mm_config
            g = grad_out.reshape(-1, grad_out.shape[-1])
            g8 = cast(g, config.cast_config_grad_output, config, mm_config, GemmInputRole.GRAD_OUTPUT, -1)
            w8 = cast(w_t, config.cast_config_weight_for_grad_input, config, mm_config, GemmInputRole.WEIGHT, -1)
            grad_in = torch.mm(g8, w8.t())
            return grad_in.reshape(*grad_out.shape[:-1], grad_in.shape[-1]), None, None, None

    class FrozenFloat8Linear(Float8Linear):
        """torchao's Float8Linear for a frozen weight: no weight gradient, input not saved."""

        @classmethod
        def from_float(cls, mod, config=None):
            if any(p.requires_grad for p in mod.parameters()):
                raise ValueError("FrozenFloat8Linear is for frozen layers; this one has a trainable parameter")
            return super().from_float(mod, config=config)

        def forward(self, input: torch.Tensor) -> torch.Tensor:
            if torch.is_autocast_enabled(input.device.type):  # the output dtype nn.Linear has under autocast
                input = input.to(torch.get_autocast_dtype(input.device.type))
            out = FrozenFloat8Matmul.apply(input, self.weight.t(), self.linear_mm_config, self.config)
            return out if self.bias is None else out + self.bias.to(out.dtype)

    _FROZEN_CLASS = FrozenFloat8Linear
    return _FROZEN_CLASS
