"""train.fp8: which layers torchao's float8 replaces, and that training still reaches the same
trainable parameters. The FP8 numerics need FP8 tensor cores (H100/H200): here torchao's
`emulate` mode runs the same casts with high-precision matmuls."""

import pytest
import torch
from torch import nn

from tests.test_train_loop import compose_cfg
from tests.test_train_objective import blocks_for, packed_batch
from train.fp8 import FP8_MODES, convert_frozen_linears, frozen_linear_names
from train.loop import TrainConfig, Trainer
from train.objective import DistillationObjective, ObjectiveConfig


def test_fp8_mode_is_checked_and_needs_a_gpu(tmp_path):
    with pytest.raises(ValueError, match="train.fp8='fp16'"):
        TrainConfig(fp8="fp16")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="train.fp8=frozen needs a GPU"):
            Trainer(compose_cfg("train.fp8=frozen"), tmp_path)


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
    pytest.importorskip("torchao.float8")
    from torchao.float8.float8_linear import Float8Linear

    model = make_model(seed=1, block_size=8)
    model.freeze_base()
    params_before = {n: p for n, p in model.named_parameters()}
    frozen = set(frozen_linear_names(model))
    converted = convert_frozen_linears(model, mode, emulate=True)
    assert set(converted) == frozen
    swapped = {n for n, m in model.named_modules() if isinstance(m, Float8Linear)}
    assert swapped == frozen  # and nothing else: the trainable diffusion projections stay nn.Linear
    for name in ("q_proj_diff", "k_proj_diff", "v_proj_diff", "o_proj_diff"):
        assert type(getattr(model.model.layers[0].self_attn, name)) is nn.Linear
    assert {n: p for n, p in model.named_parameters()} == params_before  # the same Parameter objects
    batch = packed_batch(seed=1)
    objective = DistillationObjective(model, ObjectiveConfig(attention="sdpa", chunk_size=7))
    loss, _ = objective(batch, blocks_for(batch, 8, seed=1))
    loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(torch.isfinite(p.grad).all() for n, p in model.named_parameters() if p.grad is not None)


def test_frozen_float8_linear_matches_torchao_without_the_weight_gradient():
    """Forward and input gradient equal torchao's Float8Linear (same casts); no weight gradient;
    and they are float8 results (they differ from the plain matmul), so the comparison can fail."""
    pytest.importorskip("torchao.float8")
    from torchao.float8 import Float8LinearConfig
    from torchao.float8.float8_linear import Float8Linear

    from train.fp8 import frozen_float8_linear_class

    torch.manual_seed(0)
    plain = nn.Linear(64, 48, bias=False).requires_grad_(False)
    config = Float8LinearConfig(emulate=True)
    ours = frozen_float8_linear_class().from_float(plain, config=config)
    theirs = Float8Linear.from_float(plain, config=config)
    x = torch.randn(2, 5, 64)
    results = []
    for layer in (ours, theirs, plain):
        xi = x.clone().requires_grad_(True)
        y = layer(xi)
        y.backward(torch.randn_like(y, generator=torch.Generator().manual_seed(1)))
        results.append((y.detach(), xi.grad))
    for got, want in zip(results[0], results[1], strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(results[0][0], results[2][0], rtol=1e-4, atol=1e-5)
    assert plain.weight.grad is None
    saved = {}
    for name, layer in (("ours", ours), ("theirs", theirs), ("plain", plain)):
        saved[name] = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t, out=saved[name]: out.append(t.shape) or t, lambda t: t):
            layer(x.clone().requires_grad_(True))
    assert saved["ours"] == saved["plain"] == [(64, 48)]  # the weight only, as a frozen nn.Linear
    assert (2, 5, 64) in saved["theirs"]  # torchao's layer keeps the input for its weight gradient
    with pytest.raises(ValueError, match="for frozen layers"):
        frozen_float8_linear_class().from_float(nn.Linear(64, 48), config=config)


@pytest.mark.parametrize("knob", ["train.fp8=frozen", "objective.fused_loss=true"])
def test_zero3_is_refused_with_the_knobs_that_keep_frozen_weights(tmp_path, knob):
    pytest.importorskip("deepspeed")
    with pytest.raises(ValueError, match="deepspeed=zero3 partitions the frozen weights"):
        Trainer(compose_cfg("deepspeed=zero3", knob), tmp_path)
