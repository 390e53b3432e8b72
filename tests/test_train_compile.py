"""train.compile_frozen (each layer's frozen MLP and norms compiled in place) and
train.compile_diffusion (the diffusion pass's per-layer math around attention): same loss and
gradients (the "eager" backend traces with dynamo without code generation: seconds on the CPU)."""

import pytest
import torch

from tests.test_train_objective import blocks_for, loss_and_grads, packed_batch
from train.compile import COMPILED, compile_diffusion_layers, compile_frozen_modules
from train.objective import DistillationObjective, ObjectiveConfig


def test_compiled_frozen_modules_give_the_same_loss_and_gradients(make_model):
    model = make_model(seed=0, block_size=8)
    model.freeze_base()
    batch = packed_batch(seed=1)
    blocks = blocks_for(batch, 8, seed=1)
    ref_loss, _, ref_grads = loss_and_grads(model, batch, blocks)
    names = compile_frozen_modules(model, backend="eager")
    assert len(names) == len(COMPILED) * model.config.num_hidden_layers
    assert all(model.get_submodule(n)._compiled_call_impl is not None for n in names)
    torch._dynamo.reset()
    loss, _, grads = loss_and_grads(model, batch, blocks)
    torch.testing.assert_close(loss, ref_loss, rtol=0, atol=0)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=0, atol=0)
    assert set(model.state_dict()) == set(make_model(seed=0, block_size=8).state_dict())  # checkpoints unchanged


def test_compile_refuses_trainable_modules(make_model):
    model = make_model(seed=0, block_size=8)
    model.freeze_base()
    model.model.layers[1].mlp.requires_grad_(True)  # as when pretraining the base
    with pytest.raises(ValueError, match="compiles frozen modules only"):
        compile_frozen_modules(model, backend="eager")


@pytest.mark.parametrize("gradient_checkpointing", [False, True])
def test_compiled_diffusion_layers_give_the_same_loss_and_gradients(
    make_model, counting_backend, gradient_checkpointing
):
    """Same loss and gradients, with and without recomputation; the graphs do not grow with the
    layers (a recompile per layer would hit dynamo's recompile limit at 28-36 layers)."""
    model = make_model(seed=0, block_size=8, num_hidden_layers=4)
    model.freeze_base()
    batch = packed_batch(seed=1)
    blocks = blocks_for(batch, 8, seed=1)
    ref_loss, _, ref_grads = loss_and_grads(model, batch, blocks)
    torch._dynamo.reset()
    compile_diffusion_layers(model, backend=counting_backend)
    objective = DistillationObjective(model, ObjectiveConfig(attention="sdpa"), gradient_checkpointing)
    loss, _ = objective(batch, blocks)
    loss.backward()
    grads = [p.grad.clone() for _, p in model.diffusion_named_parameters()]
    # diffusion_qkv and diffusion_out, each compiled twice: for the first layer (its input, the
    # frozen embedding, needs no gradient) and once for the three others
    assert len(counting_backend.graphs) == 4
    torch.testing.assert_close(loss.detach(), ref_loss, rtol=1e-6, atol=1e-6)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-7)
