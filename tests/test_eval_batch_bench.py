"""The GPU benchmarks' library parts that hold logic (eval/decode_bench.py, eval/batch_bench.py), run on a tiny
model on the CPU: the kernel profile puts the engine back whatever happens."""

import pytest
import torch

from eval.decode_bench import profile_verify
from models.engine import OrthrusEngine
from tests.test_greedy import base_greedy, prompt

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_failed_profile_leaves_the_engine_usable(make_model, monkeypatch):
    """profile_verify runs a step's eager function in place of its graph and puts the graphs' static outputs
    back, also when a step fails (the graphs' later steps read them: left eager, a replayed accept would read a
    stale verify output). A CPU engine passed as if on CUDA, its accept step failing before any CUDA call."""
    model = make_model(seed=16)
    engine = OrthrusEngine(model, 48)
    steps = engine.steps(4)
    engine.prefill(prompt(5, seed=1)[0])
    steps.draft(), steps.verify()
    outputs = dict(steps._outputs)

    def fails():
        raise RuntimeError("a failing step")

    monkeypatch.setitem(steps._fns, "accept", fails)
    with pytest.raises(RuntimeError, match="a failing step"):
        profile_verify(engine, 4, 5, torch.device("cuda"), print, names=("draft", "verify", "accept"))
    monkeypatch.undo()
    assert all(steps._outputs[name] is out for name, out in outputs.items()), "the graphs' outputs were not put back"
    ids = prompt(6, seed=2)
    assert torch.equal(engine.generate(ids, 9, block_size=4).sequences, base_greedy(model, ids, 9))
