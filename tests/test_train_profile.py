"""The step profile (train/profile.py) and the benchmark's variants (train/throughput.py) on the
tiny model, CPU: phase ranges present and adding up, outputs written, variants' batch shapes used."""

import gzip
import json

import pytest

from tests.test_scale import run_bench
from train import profile, throughput


def test_union_length_counts_overlaps_once():
    assert profile.union_length([]) == 0.0
    assert profile.union_length([(0, 2), (1, 3), (5, 6), (5.5, 5.7)]) == 4.0
    assert profile.union_length([(0, 10), (2, 3), (4, 5)]) == 10.0  # nested intervals


def cuda_like_trace(backward_launch_thread: int) -> list[dict]:
    """A CUDA trace's layout: CPU ranges on the main thread (tid 1), the kernels' launch calls
    (matched to the kernels by correlation id), the kernels later on the GPU stream, and the
    per-thread "gpu_user_annotation" ranges the profiler derives. The backward's launches come
    from `backward_launch_thread` (the autograd engine's device thread on CUDA), inside the
    main thread's backward range."""
    events = [
        {"name": profile.LOSS, "cat": "user_annotation", "ph": "X", "ts": 0, "dur": 100, "tid": 1},
        {"name": profile.BACKWARD, "cat": "user_annotation", "ph": "X", "ts": 100, "dur": 200, "tid": 1},
        {"name": profile.LOSS, "cat": "gpu_user_annotation", "ph": "X", "ts": 1000, "dur": 1000, "tid": 7},
        {"name": profile.BACKWARD, "cat": "gpu_user_annotation", "ph": "X", "ts": 2000, "dur": 10, "tid": 7},
    ]
    launches = [(1, 10, 1), (2, 50, 1), (3, 110, 1), (4, 150, backward_launch_thread), (5, 250, backward_launch_thread)]
    kernels = [(1, 1000, 600), (2, 1600, 400), (3, 2000, 10), (4, 2010, 3000), (5, 6000, 1000)]
    for corr, ts, tid in launches:
        events.append({"name": "cudaLaunchKernel", "cat": "cuda_runtime", "ph": "X", "ts": ts, "dur": 5,
                       "tid": tid, "args": {"correlation": corr}})  # fmt: skip
    for corr, ts, dur in kernels:
        events.append({"name": f"k{corr}", "cat": "kernel", "ph": "X", "ts": ts, "dur": dur, "tid": 7,
                       "args": {"correlation": corr}})  # fmt: skip
    return events


def test_breakdown_counts_kernels_launched_by_the_autograd_thread():
    """The backward's kernels belong to train.backward although another thread launched them (the
    per-thread GPU ranges give it 10 us here); its span is the first to the last of its kernels."""
    result = profile.breakdown(cuda_like_trace(backward_launch_thread=2), [0.005, 0.005], steps=2, ops=[])
    backward, loss = result["phases"][profile.BACKWARD], result["phases"][profile.LOSS]
    assert backward["ms_per_step"] == pytest.approx((7000 - 2000) / 1e3 / 2)
    assert backward["gpu_busy_ms_per_step"] == pytest.approx((10 + 3000 + 1000) / 1e3 / 2)
    assert backward["kernels_per_step"] == 1.5 and loss["kernels_per_step"] == 1.0
    assert loss["ms_per_step"] == 0.5 and loss["share_of_step"] == pytest.approx(0.1)
    assert result["gpu_busy_ms_per_step"] == pytest.approx(5010 / 1e3 / 2) and result["kernels_per_step"] == 2.5
    assert profile.breakdown(cuda_like_trace(backward_launch_thread=1), [0.005], 2, [])["phases"] == result["phases"]
    # the check can fail: kernels launched outside the range are not counted in it
    shifted = [dict(e, ts=400) if e.get("args", {}).get("correlation") in (4, 5) and e["cat"] == "cuda_runtime" else e
               for e in cuda_like_trace(2)]  # fmt: skip
    assert profile.breakdown(shifted, [0.005], 2, [])["phases"][profile.BACKWARD]["ms_per_step"] == 0.005


def test_breakdown_on_the_cpu_reads_the_ranges():
    events = [
        {"name": profile.BACKWARD, "cat": "user_annotation", "ph": "X", "ts": 0, "dur": 3000},
        {"name": profile.ATTENTION, "cat": "user_annotation", "ph": "X", "ts": 0, "dur": 1000},
        {"name": profile.ATTENTION, "cat": "user_annotation", "ph": "X", "ts": 500, "dur": 1000},  # nested: once
    ]
    result = profile.breakdown(events, [0.010], steps=1, ops=[])
    assert result["phases"][profile.BACKWARD]["ms_per_step"] == 3.0
    assert result["phases"][profile.ATTENTION]["ms_per_step"] == 1.5
    assert result["gpu_busy_ms_per_step"] is None and result["source"] == "cpu ranges"


def test_bench_variants_and_profile(tmp_path):
    report, out = run_bench(
        tmp_path,
        "--seq-lens",
        "64",
        "--checkpointing",
        "off",
        "--attention",
        "sdpa",
        "--variant",
        "baseline:",
        "--variant",
        "fused_mb2:objective.fused_loss=true train.micro_batch_size=2",
        "--profile",
        "baseline",
        "--project-row-tokens",
        "1e6",
        "--project-gpus",
        "2",
    )
    base, fused = report["results"]
    assert (base["variant"], fused["variant"]) == ("baseline", "fused_mb2")
    assert base["status"] == fused["status"] == "ok"
    assert (base["micro_batch_size"], fused["micro_batch_size"]) == (1, 2)
    assert fused["tokens_per_step_per_gpu"] == 2 * 64
    assert base["projected_hours"] == pytest.approx(1e6 / (base["tokens_per_s_per_gpu"] * 2) / 3600)
    assert len(base["step_times_s_rank0"]) == 2  # the profiled steps are not timed
    phases = base["profile"]["phases"]
    assert set(phases) == set(profile.PHASES) and all(p["ms_per_step"] > 0 for p in phases.values())
    outer = sum(p["ms_per_step"] for name, p in phases.items() if name != profile.ATTENTION)
    assert 0.5 < outer / base["profile"]["step_ms"] <= 1.0  # the phases cover most of the step, never more
    assert "profile" not in fused
    folder = out / base["profile"]["dir"]
    assert json.loads((folder / "breakdown.json").read_text())["phases"] == phases
    with gzip.open(folder / "trace.json.gz") as f:
        assert any(e.get("name") == profile.TEACHER for e in json.load(f)["traceEvents"])
    table = (out / "bench.md").read_text()
    assert "### Profile: baseline, tiny, seq 64" in table and "projected h" in table
    fastest = max((base, fused), key=lambda r: r["tokens_per_s_per_gpu"])
    assert f"| tiny | 64 | {base['tokens_per_s_per_gpu']:,.0f} | {fastest['variant']} |" in table
    assert not (folder / "trace.json").exists()  # only the compressed trace is kept
    assert throughput.projected_hours(1000.0, 7.2e6, 2) == 1.0


def test_rows_that_did_not_run_name_the_variants_batch_shape(tmp_path, monkeypatch):
    """Out-of-memory, unsupported and skipped settings record (in bench.json and bench.md) the
    micro-batch and checkpointing of their variant, not those of the command line."""
    import torch

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(throughput, "run_setting", out_of_memory)
    variants = ("--variant", "baseline:", "--variant", "mb2:train.micro_batch_size=2 train.gradient_checkpointing=true")
    runs = {
        "oom": run_bench(tmp_path / "oom", "--seq-lens", "64", "--checkpointing", "off", "--attention", "sdpa,flex",
                         *variants),
        "skipped": run_bench(tmp_path / "skipped", "--seq-lens", "64", "--checkpointing", "off", "--attention", "sdpa",
                             "--budget-s", "0", *variants),
    }  # fmt: skip
    for status, (report, out) in runs.items():
        rows = {(r["variant"], r["attention"]): r for r in report["results"]}
        assert {r["status"] for r in rows.values()} == {status} | ({"unsupported"} if status == "oom" else set())
        for (variant, attention), r in rows.items():
            mb, gc_ = (2, True) if variant == "mb2" else (1, False)
            assert (r["micro_batch_size"], r["grad_accum"], r["gradient_checkpointing"]) == (mb, 1, gc_)
            row = f"\n| {variant} | tiny | 64 | {'on' if gc_ else 'off'} | {mb} | {attention} | {r['status']} |"
            assert row in (out / "bench.md").read_text()


def test_profile_train_script_parses_and_every_variant_composes(tmp_path):
    """scripts/profile_train.sh's bench_train arguments (as bash expands them: a stand-in `python`
    records them) parse, and each variant's overrides compose into valid config sections (at the
    first shape: the shapes differ only in +exp): a typo fails here, not on the GPU."""
    import os
    import subprocess

    from eval.provenance import REPO_ROOT
    from scripts import bench_train
    from train.backend import DeepSpeedConfig
    from train.config import compose
    from train.loop import TrainConfig, _section
    from train.objective import ObjectiveConfig
    from train.optim import OptimConfig

    stub = tmp_path / "bin" / "python"
    stub.parent.mkdir()
    stub.write_text('#!/bin/sh\nprintf "%s\\0" "$@" > "$ARGS_FILE"\n')
    stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{stub.parent}:{os.environ['PATH']}", "ARGS_FILE": str(tmp_path / "args")}
    subprocess.run(["bash", str(REPO_ROOT / "scripts" / "profile_train.sh"), "OUT"], env=env, check=True)
    argv = (tmp_path / "args").read_text().split("\0")[:-1]
    assert argv[:2] == ["-m", "scripts.bench_train"]
    args = bench_train.parse_args(argv[2:])
    assert args.shapes == ["qwen3_8b", "qwen3_1.7b"] and args.blocks_per_row == 256 and args.seq_lens == [2048]
    assert list(args.variants)[0] == "baseline" and set(args.profile) <= set(args.variants)
    assert args.budget_s == 340
    composed = {}
    for name, variant in args.variants.items():
        point = throughput.point_config(args.shapes[0], False, args, variant)
        overrides, blocks_per_row, K = throughput.setting_overrides(
            point, args.shapes[0], 2048, "flex", args, 1, variant
        )
        cfg = composed[name] = compose(overrides)
        _section(cfg, "objective", ObjectiveConfig)
        _section(cfg, "train", TrainConfig)
        _section(cfg, "optim", OptimConfig)
        _section(cfg, "deepspeed", DeepSpeedConfig)
        assert (blocks_per_row, K, cfg.data.packed_dataset.seq_len) == (256, 32, 2048)
    # every variant names its settings group (the recipe's default is fast), and each group exists
    assert list(args.variants)[:5] == ["baseline", "fast", "fast_fp8", "fast_fp8_mb2", "fast_mb4"]
    groups = {o.split("=", 1)[1] for v in args.variants.values() for o in v if o.startswith("speed=")}
    assert all(any(o.startswith("speed=") for o in v) for v in args.variants.values())
    assert groups <= {p.stem for p in (REPO_ROOT / "conf" / "speed").glob("*.yaml")}
    assert args.variants["baseline"] == ["speed=plain"] and args.variants["fast"] == ["speed=fast"]

    # through the bench's composition the group wins over the recipe's own (fast), each way
    def knobs(c):
        return c.train.compile_diffusion, c.objective.fused_loss, c.optim.fused, c.train.fp8

    assert knobs(composed["baseline"]) == (False, False, False, "none")
    assert knobs(composed["fast"]) == (True, True, True, "none")
    assert knobs(composed["fast_fp8_mb2"]) == (True, True, True, "frozen")
    assert composed["fast_fp8_mb2"].train.micro_batch_size == 2 and composed["baseline"].train.micro_batch_size == 1


@pytest.mark.parametrize("broken", [False, True])
def test_a_setting_is_its_point_plus_its_own_overrides(monkeypatch, broken):
    """A setting's overrides end with its point's (train/throughput.point_overrides: shape, DeepSpeed, batch,
    checkpointing, --override, variant), so composed they agree on everything the point fixes and --override
    and the variant win over the setting's own (train.precision here). Broken: the point's list without
    --override, which the setting's precision then beats."""
    from scripts import bench_train
    from train.config import compose

    if broken:
        full = throughput.point_overrides
        monkeypatch.setattr(
            throughput, "point_overrides", lambda s, c, a, v: [o for o in full(s, c, a, v) if o not in a.override]
        )
    argv = "OUT --shapes tiny --deepspeed none --micro-batch-size 3 --override train.precision=fp32".split()
    args = bench_train.parse_args([*argv, "--variant", "v:train.grad_accum=2 train.gradient_checkpointing=true"])
    variant = args.variants["v"]
    point = throughput.point_config("tiny", False, args, variant)
    cfg = compose(throughput.setting_overrides(point, "tiny", 64, "sdpa", args, 1, variant)[0])

    def fixed(c):
        return c.model, c.deepspeed, c.train.micro_batch_size, c.train.grad_accum, c.train.gradient_checkpointing

    assert fixed(cfg) == fixed(point) and fixed(cfg)[2:] == (3, 2, True)
    assert (cfg.train.precision == "fp32") != broken
