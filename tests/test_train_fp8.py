"""train.fp8: which layers run in float8, that training still reaches the same trainable
parameters, and FrozenFloat8Linear's math (weights quantized once, activations per call, input
gradient only) against an fp64 reference with the same e4m3 rounding. FrozenFloat8Linear's tests run
on the GPU where there is one (its real kernel), else on the CPU where torch._scaled_mm's CPU kernel
takes rowwise scales (not in every supported torch: those tests are then skipped, saying why);
torchao's mode uses its `emulate` casts here."""

import pytest
import torch
from torch import nn

from tests.test_train_loop import compose_cfg
from tests.test_train_objective import blocks_for, packed_batch
from train.fp8 import (
    E4M3,
    FP8_MODES,
    FrozenFloat8Linear,
    check_fp8_device,
    convert_frozen_linears,
    frozen_linear_names,
)
from train.loop import TrainConfig, Trainer
from train.objective import DistillationObjective, ObjectiveConfig

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def rowwise_scaled_mm_runs(device: torch.device) -> bool:
    """Whether torch._scaled_mm takes one scale per row on `device` (torch 2.11's CPU kernel takes
    per-tensor scales only)."""
    a = torch.ones(16, 16, device=device).to(E4M3)
    ones = torch.ones(16, 1, device=device)
    try:
        torch._scaled_mm(a, a.t(), scale_a=ones, scale_b=ones.t(), out_dtype=torch.bfloat16)
    except RuntimeError:
        return False
    return True


ROWWISE = rowwise_scaled_mm_runs(DEVICE)
needs_rowwise = pytest.mark.skipif(not ROWWISE, reason=f"torch._scaled_mm has no rowwise form on {DEVICE} here")


def test_fp8_mode_is_checked_and_needs_a_gpu(tmp_path):
    with pytest.raises(ValueError, match="train.fp8='fp16'"):
        TrainConfig(fp8="fp16")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="train.fp8=frozen needs a GPU"):
            Trainer(compose_cfg("train.fp8=frozen"), tmp_path)


@pytest.mark.parametrize(
    "mode,capability,refused",
    [("frozen", (8, 0), True), ("frozen", (8, 9), True), ("frozen", (9, 0), False), ("frozen", (10, 0), False)]
    + [("torchao", (8, 6), True), ("torchao", (8, 9), False), ("none", (7, 0), False)],
)
def test_fp8_is_refused_on_gpus_without_its_float8_matmuls(monkeypatch, mode, capability, refused):
    """Rowwise float8 (frozen) needs compute capability 9.0, torchao's tensorwise 8.9: an older GPU is
    refused with its name, its capability and the setting to use instead; a new enough one is not."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    if refused:
        with pytest.raises(
            ValueError,
            match=rf"train.fp8={mode} needs CUDA compute capability .*A100.* has "
            rf"{capability[0]}\.{capability[1]}: set train.fp8=none \(speed=fast instead",
        ):
            check_fp8_device(mode, torch.device("cuda"))
    else:
        check_fp8_device(mode, torch.device("cuda"))


def test_frozen_linears_are_the_base_projections_and_mlps(make_model):
    """AR q/k/v/o and the MLPs, plus any diffusion projection left frozen; never lm_head or a trainable layer."""
    model = make_model(seed=0, block_size=8)
    model.freeze_base(("q_proj_diff", "k_proj_diff", "q_norm_diff", "k_norm_diff"))  # v/o of the view frozen
    names = frozen_linear_names(model)
    layers = model.config.num_hidden_layers
    per_layer = {n.split(".", 3)[-1] for n in names}
    assert per_layer == {
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "self_attn.v_proj_diff",
        "self_attn.o_proj_diff",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    }
    assert len(names) == 9 * layers and "lm_head" not in names


@pytest.mark.parametrize("mode", [m for m in FP8_MODES if m != "none"])
def test_conversion_touches_only_frozen_layers_and_keeps_the_trainable_parameters(make_model, mode):
    if mode == "torchao":
        pytest.importorskip("torchao.float8")
        from torchao.float8.float8_linear import Float8Linear as converted_class
    else:
        if not rowwise_scaled_mm_runs(torch.device("cpu")):  # the tiny model's shapes are CPU-only
            pytest.skip("torch._scaled_mm has no rowwise form on the CPU here")
        converted_class = FrozenFloat8Linear

    model = make_model(seed=1, block_size=8)
    model.freeze_base()
    params_before = {n: p for n, p in model.named_parameters()}
    state_before = set(model.state_dict())
    frozen = set(frozen_linear_names(model))
    converted = convert_frozen_linears(model, mode, emulate=True)
    assert set(converted) == frozen
    swapped = {n for n, m in model.named_modules() if isinstance(m, converted_class)}
    assert swapped == frozen  # and nothing else: the trainable diffusion projections stay nn.Linear
    for name in ("q_proj_diff", "k_proj_diff", "v_proj_diff", "o_proj_diff"):
        assert type(getattr(model.model.layers[0].self_attn, name)) is nn.Linear
    assert {n: p for n, p in model.named_parameters()} == params_before  # the same Parameter objects
    assert set(model.state_dict()) == state_before  # checkpoints unchanged
    batch = packed_batch(seed=1)
    objective = DistillationObjective(model, ObjectiveConfig(attention="sdpa", chunk_size=7))
    loss, _ = objective(batch, blocks_for(batch, 8, seed=1))
    loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(torch.isfinite(p.grad).all() for n, p in model.named_parameters() if p.grad is not None)


def e4m3_rows(t: torch.Tensor) -> torch.Tensor:
    """The reference's rounding, written apart from train.fp8: each row scaled so that its amax is
    e4m3's largest value, rounded to e4m3, scaled back, in fp64."""
    scale = t.double().abs().amax(dim=-1, keepdim=True) / torch.finfo(E4M3).max
    return (t.double() / scale).to(E4M3).double() * scale


@needs_rowwise
def test_frozen_float8_linear_matches_an_emulated_reference():
    """Forward: x and W rounded to e4m3 per row (W per output channel); input gradient: grad_out
    per row and W^T per input channel; fp64 products, bf16 outputs. The outputs are float8 results
    (they differ from the plain matmul), so the comparison can fail."""
    torch.manual_seed(0)
    plain = nn.Linear(64, 48, bias=True, device=DEVICE).requires_grad_(False)
    layer = FrozenFloat8Linear(plain)
    x = (torch.randn(2, 5, 64, device=DEVICE) * torch.logspace(-2, 2, 64, device=DEVICE)).requires_grad_(
        True
    )  # rows of wide range
    grad_out = torch.randn(2, 5, 48, device=DEVICE)
    y = layer(x)
    y.backward(grad_out)
    w = plain.weight
    want_y = (e4m3_rows(x.detach().reshape(10, 64)) @ e4m3_rows(w).T).bfloat16().float().reshape(2, 5, 48)
    want_y = want_y + plain.bias
    want_grad = (e4m3_rows(grad_out.reshape(10, 48)) @ e4m3_rows(w.T).T).bfloat16().float().reshape(2, 5, 64)
    torch.testing.assert_close(y.detach(), want_y, rtol=8e-3, atol=1e-5)  # a bf16 rounding apart at most
    torch.testing.assert_close(x.grad, want_grad, rtol=8e-3, atol=1e-5)
    with pytest.raises(AssertionError):  # the plain matmul is far from it: the check above can fail
        torch.testing.assert_close(y.detach(), plain(x.detach()), rtol=8e-3, atol=1e-5)
    with pytest.raises(AssertionError):  # and so is the input gradient with W quantized per output channel
        wrong = (e4m3_rows(grad_out.reshape(10, 48)) @ e4m3_rows(w).double()).bfloat16().float().reshape(2, 5, 64)
        torch.testing.assert_close(x.grad, wrong, rtol=8e-3, atol=1e-5)
    assert plain.weight.grad is None and plain.bias.grad is None


def cuda_layout_scaled_mm(real):
    """torch._scaled_mm that first checks what its CUDA kernel demands of the rowwise form (the CPU
    kernel accepts any strides): a row-major, b column-major, float32 scales (M, 1) and (1, N)."""

    def scaled_mm(a, b, *, scale_a, scale_b, out_dtype):
        assert a.dtype == b.dtype == E4M3 and out_dtype == torch.bfloat16
        assert a.stride() == (a.shape[1], 1), f"a must be row-major: {a.stride()}"
        assert b.stride() == (1, b.shape[0]), f"b must be column-major: {b.stride()}"
        assert a.shape[1] % 16 == 0 and b.shape[0] % 16 == 0 and b.shape[1] % 16 == 0
        assert scale_a.shape == (a.shape[0], 1) and scale_b.shape == (1, b.shape[1])
        assert scale_a.dtype == scale_b.dtype == torch.float32 and scale_a.is_contiguous() and scale_b.is_contiguous()
        return real(a, b, scale_a=scale_a, scale_b=scale_b, out_dtype=out_dtype)

    return scaled_mm


@needs_rowwise
def test_frozen_float8_linear_meets_the_cuda_kernels_layout(monkeypatch):
    """Forward and input gradient with a non-contiguous input and an expanded output gradient
    (what `.sum().backward()` sends); the check itself fails on a transposed weight copy."""
    monkeypatch.setattr(torch, "_scaled_mm", cuda_layout_scaled_mm(torch._scaled_mm))
    torch.manual_seed(3)
    layer = FrozenFloat8Linear(nn.Linear(32, 48, bias=False, device=DEVICE).requires_grad_(False))
    x = torch.randn(32, 16, device=DEVICE).t().requires_grad_(True)  # (16, 32), column-major
    layer(x).sum().backward()
    assert x.grad.shape == (16, 32)
    with pytest.raises(AssertionError, match="column-major"):
        torch._scaled_mm(layer.w8, layer.wt8.t().contiguous(), scale_a=torch.ones(48, 1),
                         scale_b=torch.ones(1, 32), out_dtype=torch.bfloat16)  # fmt: skip


@needs_rowwise
def test_frozen_float8_linear_quantizes_its_weight_once_and_saves_no_input():
    torch.manual_seed(1)
    plain = nn.Linear(32, 16, bias=False, device=DEVICE).requires_grad_(False)
    layer = FrozenFloat8Linear(plain)
    x = torch.randn(3, 32, device=DEVICE)
    before = layer(x)
    with torch.no_grad():
        plain.weight.mul_(2)  # what the layer computes was fixed at conversion
    torch.testing.assert_close(layer(x), before, rtol=0, atol=0)
    assert layer.w8.dtype == layer.wt8.dtype == E4M3 and (layer.w8.shape, layer.wt8.shape) == ((16, 32), (32, 16))
    layer.to(torch.bfloat16)  # DeepSpeed's bf16 cast of the module leaves the float8 copies alone
    assert layer.w8.dtype == E4M3 and layer.w_scale.dtype == torch.float32
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        layer(torch.randn(4, 32, device=DEVICE, requires_grad=True))
    assert [t.dtype for t in saved] == [E4M3, torch.float32]  # the transposed float8 weight and its scales
    assert saved[0] is layer.wt8
    zero = layer(torch.zeros(2, 32, device=DEVICE))
    assert torch.equal(zero, torch.zeros_like(zero))  # an all-zero row: zeros, no NaN from its scale
    with pytest.raises(ValueError, match="for frozen layers"):
        FrozenFloat8Linear(nn.Linear(32, 16))


@needs_rowwise
def test_frozen_float8_linear_traces_inside_a_compiled_module():
    """train.compile_frozen compiles the MLPs around these layers: dynamo traces the autograd
    Function (forward and backward) and gives the same outputs and input gradients."""
    torch.manual_seed(2)
    mlp = nn.Sequential(nn.Linear(32, 64, bias=False), nn.SiLU(), nn.Linear(64, 32, bias=False)).to(DEVICE)
    mlp.requires_grad_(False)
    mlp[0], mlp[2] = FrozenFloat8Linear(mlp[0]), FrozenFloat8Linear(mlp[2])
    x = torch.randn(6, 32, device=DEVICE, requires_grad=True)
    mlp(x).square().sum().backward()
    eager_out, eager_grad = mlp(x).detach(), x.grad.clone()
    x.grad = None
    torch._dynamo.reset()
    compiled = torch.compile(mlp, backend="aot_eager", fullgraph=True)  # AOTAutograd, as under inductor
    out = compiled(x)
    out.square().sum().backward()
    torch.testing.assert_close(out.detach(), eager_out, rtol=0, atol=0)
    torch.testing.assert_close(x.grad, eager_grad, rtol=0, atol=0)


@pytest.mark.parametrize("knob", ["train.fp8=frozen", "objective.fused_loss=true"])
def test_zero3_is_refused_with_the_knobs_that_keep_frozen_weights(tmp_path, knob):
    pytest.importorskip("deepspeed")
    with pytest.raises(ValueError, match="deepspeed=zero3 partitions the frozen weights"):
        Trainer(compose_cfg("deepspeed=zero3", knob), tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is the CPU's")
def test_fp8_is_refused_on_the_cpu_before_the_model_is_built(tmp_path):
    with pytest.raises(ValueError, match=r"FP8 tensor cores .*speed=fast instead of speed=fast_fp8"):
        Trainer(compose_cfg("speed=fast_fp8"), tmp_path)
