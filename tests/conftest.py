"""Shared fixtures: tiny random Qwen3/Orthrus models, fp32 on the CPU."""

import os

import pytest
import torch

# Triton reads TRITON_INTERPRET when it is first imported, and transformers imports it (through
# torch._dynamo) as soon as models/ is imported below: switch the interpreter on before that.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton.language as tl  # noqa: E402
from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

from models.config import OrthrusConfig  # noqa: E402
from models.orthrus import OrthrusForCausalLM  # noqa: E402
from tests.tiny import TINY_QWEN3  # noqa: E402
from train.model import preset_config  # noqa: E402

if not torch.cuda.is_available() and not isinstance(tl.zeros, InterpretedFunction):
    raise RuntimeError(
        "triton was imported before TRITON_INTERPRET=1 took effect, so its kernels cannot run "
        "on the CPU: set TRITON_INTERPRET=1 in the environment before running pytest."
    )


def tiny_config(**overrides) -> OrthrusConfig:
    """The tests' Orthrus model: conf/model/tiny.yaml (K = 4, the last vocabulary row as the mask token)."""
    return preset_config("tiny", **overrides)


def tiny_model(seed: int = 0, **overrides) -> OrthrusForCausalLM:
    torch.manual_seed(seed)
    model = OrthrusForCausalLM(tiny_config(**overrides)).eval()
    model.init_diffusion_from_ar()
    model.requires_grad_(False)
    return model


@pytest.fixture
def make_model():
    """Factory: make_model(seed=0, **config_overrides) -> a fresh tiny OrthrusForCausalLM."""
    return tiny_model


@pytest.fixture
def make_config():
    return tiny_config


@pytest.fixture
def qwen3_dir(tmp_path):
    """A plain Qwen3 checkpoint of the tiny model's shape (random weights, seed 0)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    Qwen3ForCausalLM(Qwen3Config(**TINY_QWEN3)).save_pretrained(tmp_path / "qwen3")
    return tmp_path / "qwen3"


@pytest.fixture
def counting_backend():
    """A torch.compile backend that appends each graph dynamo captures to `counting_backend.graphs`
    and runs it through AOTAutograd as inductor does, without code generation (seconds on the CPU)."""
    from torch._dynamo.backends.registry import lookup_backend

    def backend(gm, example_inputs):
        backend.graphs.append(gm)
        return lookup_backend("aot_eager")(gm, example_inputs)

    backend.graphs = []
    return backend


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models are dispatch-bound: a second thread only contends with other test runs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def interpreted_pdl(monkeypatch):
    """Run the kernels' PDL variants (USE_PDL=True) in Triton's interpreter, where the gdc_* calls become
        no-ops: they only order kernels on a GPU, and the interpreter runs one kernel at a time anyway. What
        this checks is everything else the PDL path changes (the matrix product's prefetch addressing, the
        order of the other kernels' loads; the L2 prefetch itself is inline PTX and becomes a no-op too). Only off the
    GPU: on CUDA the real PDL tests run instead."""
    if torch.cuda.is_available():
        pytest.skip("interpreter-only check; on CUDA the PDL tests run on the GPU")
    import kernels.matmul
    import kernels.pdl

    monkeypatch.setattr(tl.extra.cuda, "gdc_wait", lambda: None)
    monkeypatch.setattr(tl.extra.cuda, "gdc_launch_dependents", lambda: None)
    monkeypatch.setattr(kernels.pdl, "pdl_unsupported", lambda device: None)
    monkeypatch.setattr(kernels.matmul, "prefetch_l2", lambda ptrs: None)  # inline PTX: GPU only
