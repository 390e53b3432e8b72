"""The GPU benchmarks' library parts that hold logic (eval/decode_bench.py, eval/batch_bench.py), run on a tiny
model on the CPU: the kernel profile puts the engine back whatever happens and profiles the points asked for;
the state per request is computed in bytes against a smaller drafter per shape."""

import pytest
import torch

from eval.batch_bench import (
    BACK_TO_BACK,
    DEVICE_PEAKS,
    iteration_points,
    markdown,
    memory_per_request,
    parse_points,
    profile_points,
)
from eval.decode_bench import profile_replay, profile_verify, timeline
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
    assert [
        (r["shape"], r["context"], r["batch_size"], r["block_size"], r["kernels"], r["timeline"]) for r in rows
    ] == [
        ("tiny", 16, 1, 4, [], {}),
        ("tiny", 16, 2, 1, [], {}),
    ]
    assert [m.split(":")[0] for m in logged] == ["[tiny] profile 4x4", "[tiny] profile 1x8"]
    assert parse_points("") == [] and parse_points("16x16") == [(16, 16)]
    with pytest.raises(ValueError, match="'16-16': write it as BxK"):
        parse_points("1x4,16-16")


def test_timeline_splits_a_span_into_kernel_overlap_and_idle_time():
    """timeline: a replay's span = kernel time - overlap (kernels at once: PDL) + idle time (none running), the idle
    stretches named by the kernel that ended last before them (not the one that started last: a short kernel
    inside a long one ends first) and the kernel that ended them. Kernels given out of order."""
    kernels = [
        ("gemm", 0.0, 10.0),  # ends at 10
        ("norm", 8.0, 6.0),  # launched 2 us early (PDL): overlap 2, ends at 14
        ("gemm", 16.0, 4.0),  # idle 2 after norm, ends at 20
        ("tiny", 17.0, 1.0),  # inside the gemm: overlap 1, the gemm still ends last
        ("attention", 25.0, 5.0),  # idle 5 after the gemm (not after "tiny")
    ]
    t = timeline([kernels[i] for i in (3, 0, 4, 2, 1)])
    assert (t["kernels"], t["span_us"], t["kernel_us"], t["idle_us"], t["overlap_us"]) == (5, 30.0, 26.0, 7.0, 3.0)
    assert t["span_us"] == t["kernel_us"] - t["overlap_us"] + t["idle_us"]
    assert t["idle_by_pair"] == [
        {"before": "gemm", "after": "attention", "count": 1, "total_us": 5.0},
        {"before": "norm", "after": "gemm", "count": 1, "total_us": 2.0},
    ]
    assert t["by_kernel"][0] == {"kernel": "gemm", "calls": 2, "total_us": 14.0}
    assert timeline([])["span_us"] == 0.0


def test_profile_replay_needs_graphs(make_model):
    """Without CUDA graphs there is no replay to trace: profile_replay gives {} (profile_points then profiles an
    eager iteration)."""
    assert profile_replay(OrthrusEngine(make_model(seed=18), 48), 4, 16, 1, print) == {}


def test_bench_md_shows_a_replay_timeline():
    """bench.md's profile section: a graph replay's span split into kernels, overlap and idle time, and its idle
    time by neighbouring kernels; an eager profile (no timeline) says so and has neither."""
    t = timeline([("gemm", 0.0, 10.0), ("norm", 12.0, 3.0)])
    prof = {"shape": "tiny", "context": 8, "batch_size": 2, "block_size": 4, "kernels": t.pop("by_kernel")}
    text = markdown({"profiles": [prof | {"timeline": t}]})
    assert "(one replay of the captured graphs, torch.profiler)" in text
    assert "Span 0.015 ms = kernels 0.013 ms in 2 - overlap 0.000 ms" in text and "+ idle 0.002 ms" in text
    assert "| gemm | norm | 1 | 2.0 |" in text
    eager = markdown({"profiles": [prof | {"timeline": {}}]})
    assert "(one eager iteration, torch.profiler)" in eager and "Span" not in eager and "Idle time" not in eager


@pytest.mark.skipif(not torch.cuda.is_available(), reason="traces CUDA graph replays")
def test_profile_replay_traces_the_captured_graphs(make_model):
    """profile_replay on a GPU: one replayed iteration's kernels (CUPTI sees the kernels inside the graphs), its
    span made of them, and the engine's state put back (start at ctx)."""
    engine = OrthrusEngine(make_model(seed=18).cuda(), 48, max_batch_size=2)
    t = profile_replay(engine, 4, 16, 2, print)
    assert t["kernels"] > 10 and t["kernel_us"] > 0 and t["by_kernel"]
    assert t["span_us"] == pytest.approx(t["kernel_us"] - t["overlap_us"] + t["idle_us"])
    assert engine.start[:2].tolist() == [16, 16]


def test_iteration_points_time_iterations_back_to_back_at_one_context(make_model):
    """iteration_points times one iteration alone (`ms_one_from_idle`) and BACK_TO_BACK launched back to back
    (`ms`, per iteration), every one of them starting at the point's context: accept advances each slot's start,
    so the start is reset on the device before each iteration. A clock that runs the timed function once."""
    engine = OrthrusEngine(make_model(seed=19), 48, max_batch_size=2)
    starts, steps = [], engine.steps

    class Spy:
        def __init__(self, s, B):
            self.s, self.B = s, B

        def draft(self):
            starts.append(engine.start[: self.B].tolist())
            return self.s.draft()

        def verify(self):
            return self.s.verify()

        def accept(self):
            return self.s.accept()

    engine.steps = lambda K, B=1: Spy(steps(K, B), B)
    clock = lambda fn, reps, after: (fn(), after(), 2.0)[2]  # noqa: E731
    points = iteration_points(
        engine, "tiny", [12], [4], [2], clock, 1, DEVICE_PEAKS["nvidia-h200"], lambda: True, lambda m: None
    )
    iteration = next(p for p in points if p["block_size"] == 4)
    assert (iteration["ms_one_from_idle"], iteration["ms"]) == (2.0, 2.0 / BACK_TO_BACK)
    assert starts == [[12, 12]] * (1 + BACK_TO_BACK)


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
    assert "| tiny | 8 | 4 | 2 | 1.500 | – | – | – | – | – | – | – |" in text


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
