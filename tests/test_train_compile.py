"""train.compile_frozen: each layer's frozen MLP and norms compiled in place, same loss and
gradients (the "eager" backend traces with dynamo without code generation: seconds on the CPU)."""

import pytest
import torch

from tests.test_train_objective import blocks_for, loss_and_grads, packed_batch
from train.compile import COMPILED, compile_frozen_modules


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
