"""The GPU benchmarks' library parts that hold logic (eval/decode_bench.py, eval/batch_bench.py), run on a tiny
model on the CPU: the kernel profile puts the engine back whatever happens and profiles the points asked for;
the state per request is computed in bytes against a smaller drafter per shape."""

import pytest
import torch

from eval.batch_bench import markdown, memory_per_request, parse_points, profile_points
from eval.decode_bench import profile_verify
from models.engine import OrthrusEngine
from models.shapes import shape_config
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


def test_profile_points_profile_the_measured_points_only(make_model):
    """bench_batch --profile: each BxK point that iteration_points measured gets a profile row (no kernels off
    CUDA), another is logged and skipped, and a malformed point is a clear error before any profiling."""
    engine = OrthrusEngine(make_model(seed=17), 48, max_batch_size=2)
    logged = []
    rows = profile_points(
        engine, "tiny", parse_points("1x4,2x1,4x4,1x8"), [1, 2], [4], 16, engine.device, logged.append
    )
    assert [(r["shape"], r["context"], r["batch_size"], r["block_size"], r["kernels"]) for r in rows] == [
        ("tiny", 16, 1, 4, []),
        ("tiny", 16, 2, 1, []),
    ]
    assert [m.split(":")[0] for m in logged] == ["[tiny] profile 4x4", "[tiny] profile 1x8"]
    assert parse_points("") == [] and parse_points("16x16") == [(16, 16)]
    with pytest.raises(ValueError, match="'16-16': write it as BxK"):
        parse_points("1x4,16-16")


def test_memory_per_request_in_bytes_with_a_smaller_drafter_per_shape():
    """memory_per_request keeps bytes only (bench.md shows MB) and pairs each target with a smaller Qwen3 as the
    separate drafter, named in the table: the 1.7B shape with the 0.6B one (a KV row of 28 layers x 2 x 8 heads
    x 128 x 2 bytes, as the 1.7B's), the 8B shape (36 layers) with the 1.7B one."""
    row = 28 * 2 * 8 * 128 * 2
    small, large = memory_per_request("qwen3_1.7b", 1000, 16), memory_per_request("qwen3_8b", 1000, 16)
    assert (small["drafter"], large["drafter"]) == ("qwen3_0.6b", "qwen3_1.7b")
    assert not any(k.endswith("_MB") or k.endswith("_mb") for k in small)
    assert small["ar_bytes"] == small["orthrus_bytes"] == 1000 * row and small["separate_drafter_bytes"] == 2000 * row
    assert large["separate_drafter_bytes"] == 1000 * (36 * 2 * 8 * 128 * 2 + row)
    assert "| qwen3_1.7b | 1000 | 114.7 | 114.7 | 1.84 | 229.4 | qwen3_0.6b |" in markdown(
        {"memory_per_request": [small]}
    )
    assert shape_config("qwen3_0.6b").hidden_size == 1024


def test_batch_bench_tables_show_a_missing_value():
    """bench_batch's bench.md: a value a run could not measure (no decode iteration: no slot occupancy)
    is printed as "–", the way every other table here prints it, instead of failing the whole write."""
    text = markdown({"iterations": [{"shape": "tiny", "context": 8, "block_size": 4, "batch_size": 2, "ms": 1.5}]})
    assert "| tiny | 8 | 4 | 2 | 1.500 | – | – | – |" in text


@pytest.mark.skipif(
    torch.cuda.is_available(),
    reason="runs the Triton kernel on CPU tensors: Triton's interpreter, on where CUDA is absent",
)
def test_batch_bench_lists_the_gate_up_tunings(monkeypatch):
    """bench_batch's bench.md lists the gate/up products of Matmul.report() (its `gate_up` field) with their
    fastest candidates, at a skinny row count and, given a fused weight, above it; not the linear product of
    the same shape, which the report also holds."""
    from kernels.elementwise import silu_mul
    from kernels.matmul import MAX_SKINNY_ROWS, Matmul, candidate_configs

    monkeypatch.setattr(Matmul, "_timed", {})
    mm = Matmul("auto", silu_mul)
    x, w = torch.randn(5, 64), torch.randn(48, 64)
    mm.linear(x, w)
    mm.gate_up(x, w, w)
    mm.gate_up(torch.randn(MAX_SKINNY_ROWS + 1, 64), w, w, torch.cat([w, w]))
    report = Matmul.report()
    assert [r["gate_up"] for r in report] == [False, True, True]
    lines = [line for line in markdown({"matmul_tuning": report}).splitlines() if line.startswith("- ")]
    config = candidate_configs(16, 48, 64, 1, gate_up=True)[0]
    assert lines == [f"- 16, 48 x 64, fused=False: {config} 0.0", "- 64, 48 x 64, fused=True: cublas_fused 0.0"]
