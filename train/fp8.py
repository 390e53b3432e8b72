"""FP8 matmuls for the frozen base (train.fp8).

The frozen Linear layers (the AR view's q/k/v/o projections, used by the teacher pass, and the
MLPs, used by the teacher and the diffusion pass; any diffusion projection left out of
model.trainable too) run their matmuls in float8. Never converted: a layer with a trainable
weight (the diffusion view's trainable projections keep bf16 matmuls and exact gradients) and
lm_head (the KL's logits stay in the base's precision). The parameters are the same objects
before and after, so checkpoints, the optimizer and the saved view are unchanged; decoding and
verification never see this (they run the base in its own precision).

Modes:
  none     bf16 matmuls everywhere (default)
  frozen   FrozenFloat8Linear (this module, torch._scaled_mm): each frozen weight is quantized
           once, when the layer is converted, to e4m3 with one scale per output channel (for the
           forward) and again per input channel (its transpose, for the input gradient); each call
           quantizes only its activations (per row), and the backward forms only the input
           gradient. It keeps both float8 copies (2 bytes per frozen weight, the size of the bf16
           weight it keeps for checkpoints) and saves nothing of the input for backward.
  torchao  torchao's Float8Linear as is (dynamic tensorwise scaling): it recasts the weight on
           every call and its backward also forms the weight gradient, which a frozen weight
           discards; kept as the library reference for the benchmark

Each call's activation quantization is a row-amax reduction and a cast: separate kernels eager,
fused into their producers when the layer sits inside a compiled module (train.compile_frozen).
FP8 tensor cores need an H100/H200 (`check_fp8_device`); torch._scaled_mm also runs on the CPU (the tests
use it).
"""

import torch
from torch import nn

FP8_MODES = ("none", "torchao", "frozen")
KEEP = ("lm_head",)  # module names never converted
E4M3 = torch.float8_e4m3fn
E4M3_MAX = torch.finfo(E4M3).max
MIN_AMAX = 1e-12  # an all-zero row gets this amax: its scale stays finite and its values 0


def require_torchao():
    try:
        import torchao.float8  # noqa: F401
    except ImportError as e:
        raise ImportError(
            f"train.fp8 needs torchao (pip install torchao; 0.18 supports torch >= 2.11): {e}; or set train.fp8=none"
        ) from e


# The least CUDA compute capability each mode's float8 matmuls run on: rowwise-scaled torch._scaled_mm
# (frozen) needs Hopper's (9.0); torchao's tensorwise scaling runs from Ada's (8.9).
MIN_CAPABILITY = {"frozen": (9, 0), "torchao": (8, 9)}


def check_fp8_device(mode: str, device: torch.device) -> None:
    """Refuse `mode` before any model is built where its float8 matmuls cannot run: off CUDA, or on a
    GPU older than MIN_CAPABILITY[mode] (torch would fail at the first step with a kernel error)."""
    if mode == "none":
        return
    fix = "set train.fp8=none (speed=fast instead of speed=fast_fp8)"
    if device.type != "cuda":
        raise ValueError(f"train.fp8={mode} needs a GPU with FP8 tensor cores (H100, H200); {fix}")
    have, need = torch.cuda.get_device_capability(device), MIN_CAPABILITY[mode]
    if have < need:
        name = torch.cuda.get_device_name(device)
        raise ValueError(
            f"train.fp8={mode} needs CUDA compute capability {need[0]}.{need[1]} or newer for its float8 "
            f"matmuls; {name} has {have[0]}.{have[1]}: {fix}"
        )


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
    """Swap the frozen Linear layers of `model` for float8 ones (in place) per `mode`; returns the
    converted names. Call after the model is frozen, its weights loaded and on their device, and
    before the optimizer and any DDP/DeepSpeed wrapper are built. `emulate`: torchao mode only,
    high-precision matmuls (CPU tests)."""
    if mode not in FP8_MODES:
        raise ValueError(f"train.fp8={mode!r}: choose one of {FP8_MODES}")
    if mode == "none":
        return []
    names = sorted(frozen_linear_names(model))
    if not names:
        raise ValueError("train.fp8: the model has no frozen Linear layer to convert")
    if mode == "torchao":
        require_torchao()
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training

        config = Float8LinearConfig(emulate=emulate)
        convert_to_float8_training(model, config=config, module_filter_fn=lambda mod, fqn: fqn in set(names))
    else:
        for name in names:
            parent, _, child = name.rpartition(".")
            owner = model.get_submodule(parent) if parent else model
            setattr(owner, child, FrozenFloat8Linear(getattr(owner, child)))
    return names


def quantize_rows(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A 2-D tensor in e4m3 with one float32 scale per row (shape rows x 1): the row's amax maps to
    e4m3's largest value, and t ~= t8.float() * scale. t8 is row-major whatever t's strides (a
    transposed weight, an expanded gradient): torch._scaled_mm on CUDA takes nothing else."""
    amax = torch.linalg.vector_norm(t, ord=float("inf"), dim=-1, keepdim=True, dtype=torch.float32)
    scale = amax.clamp(min=MIN_AMAX) / E4M3_MAX
    t8 = (t.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)
    return t8.contiguous(), scale


def scaled_matmul(a8: torch.Tensor, a_scale: torch.Tensor, w8: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
    """(a8 * a_scale) @ (w8 * w_scale).T in bf16, fp32 accumulation: a8 (M, K) and w8 (N, K) row-major
    e4m3, a_scale (M, 1), w_scale (1, N), one scale per row of each (torch._scaled_mm's rowwise form;
    it takes its second operand column-major, which w8.t() is)."""
    return torch._scaled_mm(a8, w8.t(), scale_a=a_scale, scale_b=w_scale, out_dtype=torch.bfloat16)


class FrozenFloat8Matmul(torch.autograd.Function):
    """x @ w.T with x quantized per call and w given already quantized, both ways: the gradient
    flows to x only (w is frozen: no weight gradient is formed) and nothing of x is saved."""

    @staticmethod
    def forward(ctx, x, w8, w_scale, wt8, wt_scale):
        ctx.save_for_backward(wt8, wt_scale)
        x8, x_scale = quantize_rows(x.reshape(-1, x.shape[-1]))
        out = scaled_matmul(x8, x_scale, w8, w_scale)
        return out.to(x.dtype).reshape(*x.shape[:-1], w8.shape[0])

    @staticmethod
    def backward(ctx, grad_out):
        wt8, wt_scale = ctx.saved_tensors
        g8, g_scale = quantize_rows(grad_out.reshape(-1, grad_out.shape[-1]))
        grad_in = scaled_matmul(g8, g_scale, wt8, wt_scale).to(grad_out.dtype)
        return grad_in.reshape(*grad_out.shape[:-1], wt8.shape[0]), None, None, None, None


class FrozenFloat8Linear(nn.Module):
    """A frozen nn.Linear whose matmuls run in float8 (train.fp8=frozen). The weight is quantized
    once, here: `w8` (out x in, a scale per output channel) for the forward and `wt8` (its
    transpose, a scale per input channel) for the input gradient. Those are plain attributes, not
    buffers: state dicts, checkpoints and a dtype cast of the module (DeepSpeed's bf16) leave them
    alone. `weight` and `bias` are the original Parameters, for checkpoints and nothing else."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        if any(p.requires_grad for p in linear.parameters()):
            raise ValueError("FrozenFloat8Linear is for frozen layers; this one has a trainable parameter")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        if linear.weight.is_cuda and (self.in_features % 16 or self.out_features % 16):
            raise ValueError(
                f"train.fp8=frozen: a {self.out_features}x{self.in_features} Linear; float8 matmuls need both "
                "dimensions divisible by 16 (set train.fp8=none)"
            )
        self.weight, self.bias = linear.weight, linear.bias
        with torch.no_grad():
            self.w8, w_scale = quantize_rows(linear.weight)
            self.wt8, wt_scale = quantize_rows(linear.weight.t())
        self.w_scale, self.wt_scale = w_scale.t().contiguous(), wt_scale.t().contiguous()

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled(input.device.type):  # the output dtype nn.Linear has under autocast
            input = input.to(torch.get_autocast_dtype(input.device.type))
        out = FrozenFloat8Matmul.apply(input, self.w8, self.w_scale, self.wt8, self.wt_scale)
        return out if self.bias is None else out + self.bias.to(out.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
