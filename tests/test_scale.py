"""Scaling tools on the CPU: the FLOP breakdown, the throughput benchmark on the tiny shape, and
data-parallel parity with 2 gloo ranks (train/throughput.py via scripts/bench_train.py,
scripts/dp_parity.py; docs/scaling.md has the GPU commands)."""

import json

import pytest
import torch

from data.packing import PackedDataset
from eval.provenance import REPO_ROOT
from models.shapes import shape_config
from scripts import bench_train, dp_parity
from train import throughput
from train.blocks import sample_blocks
from train.data import batches, synthetic_documents
from train.flops import FLOP_PARTS, micro_batch_flops_breakdown
from train.model import load_preset


def packed_rows(seq_len, n_docs=256, min_len=256, seed=0, **kw):
    docs = synthetic_documents(n_docs, min_len, seq_len, seed, vocab_size=1000)
    return PackedDataset(docs, seq_len, seed=seed, **kw)


def test_flop_breakdown_sums_to_total_at_the_8b_shape():
    """At Qwen3-8B shape, one 4096-token row with 64 blocks of K=32 (the recipe): the parts add up
    to about 132 TFLOP per row (docs/scaling.md); the activation gradients cost
    about one diffusion forward (frozen weights get no weight gradient)."""
    config = shape_config("qwen3_8b", block_size=32)
    trainable = ["q_proj_diff", "k_proj_diff", "v_proj_diff", "o_proj_diff", "q_norm_diff", "k_norm_diff"]
    rows = iter(packed_rows(4096))
    for seed in range(3):
        batch = {k: v[None] for k, v in next(rows).items()}
        blocks = sample_blocks(
            batch, blocks_per_row=64, block_size=32, mask_token_id=999, num_denoise_steps=1, seed=seed
        )
        parts = micro_batch_flops_breakdown(config, batch["doc_ids"], blocks, trainable)
        total = sum(parts.values())
        assert tuple(parts) == FLOP_PARTS
        assert parts["diffusion_backward_activations"] == pytest.approx(parts["diffusion_forward"], rel=0.02)
        assert 1.29e14 < total < 1.35e14
        assert 0.44 < parts["ar_forward"] / total < 0.5  # the frozen teacher pass is nearly half the work


def test_rank_sharding_puts_the_same_rows_in_each_global_batch():
    """What dp_parity relies on: with one row per micro-batch, rank r's micro-batch j of step s
    under world size N is the row the one-process run feeds as micro-batch j*N + r of step s."""
    N, G = 2, 3  # world size, micro-batches per rank and step
    ref = batches(packed_rows(64, min_len=16, rank=0, world_size=1), 1)
    ranks = [batches(packed_rows(64, min_len=16, rank=r, world_size=N), 1) for r in range(N)]
    for _step in range(4):
        one = [next(ref)["input_ids"] for _ in range(G * N)]
        dp = [[next(ranks[r])["input_ids"] for _ in range(G)] for r in range(N)]
        for r in range(N):
            for j in range(G):
                assert torch.equal(dp[r][j], one[j * N + r])


def test_flex_eager_setting_drops_compilation_and_restores():
    import train.attention as attention

    original, calls = attention._flex, []
    attention._flex = lambda q, k, v, block_mask, scale, compiled: calls.append(compiled)
    try:
        with throughput.attention_setting("flex_eager"):
            attention._flex(None, None, None, None, 1.0, compiled=True)
        attention._flex(None, None, None, None, 1.0, compiled=True)
        assert calls == [False, True]
    finally:
        attention._flex = original


def run_bench(tmp_path, *extra):
    argv = [
        str(tmp_path / "bench"),
        "--shapes",
        "tiny",
        "--seq-lens",
        "64,128",
        "--deepspeed",
        "none",
        "--warmup",
        "1",
        "--steps",
        "2",
        *extra,
    ]
    report = bench_train.main(argv)
    on_disk = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    return report, tmp_path / "bench"


def test_bench_tiny_writes_json_markdown_and_plot(tmp_path):
    report, out = run_bench(tmp_path, "--checkpointing", "on,off", "--attention", "sdpa,flex")
    assert report["complete"] and report["world_size"] == 1
    prov = report["provenance"]
    assert prov["device"].startswith("cpu") and prov["torch"] == torch.__version__ and prov["source_hash"]["files"]
    assert report["command"] == prov["command"] and report["command"].startswith("python -m scripts.bench_train ")
    results = report["results"]
    assert [(r["seq_len"], r["gradient_checkpointing"], r["attention"]) for r in results] == [
        (s, c, a) for s in (64, 128) for c in (True, False) for a in ("sdpa", "flex")
    ]
    assert {r["status"] for r in results if r["attention"] == "flex"} == {"unsupported"}  # no flex backward on the CPU
    ok = [r for r in results if r["attention"] == "sdpa"]
    assert all(r["status"] == "ok" for r in ok)
    peak = report["settings"]["peak_flops_per_gpu"]
    for r in ok:
        f = r["flops_per_step_per_gpu"]
        assert f["total"] == pytest.approx(
            f["ar_forward"] + f["diffusion_forward"] + f["diffusion_backward"], rel=1e-12
        )
        assert f["diffusion_backward"] == pytest.approx(
            f["diffusion_backward_activations"] + f["diffusion_backward_weights"], rel=1e-12
        )
        assert sum(r["mfu_by_part"].values()) == pytest.approx(r["mfu"], rel=1e-9)
        assert r["mfu"] == pytest.approx(f["total"] / r["step_time_s"] / peak, rel=1e-9)
        assert r["tokens_per_step_per_gpu"] == r["seq_len"]
        assert r["tokens_per_s_per_gpu"] == pytest.approx(r["seq_len"] / r["step_time_s"])
        K = load_preset("tiny").block_size  # blocks cover half the row
        assert len(r["step_times_s_rank0"]) == 2 and r["blocks_per_row"] == r["seq_len"] // (2 * K)
        assert r["max_memory_gib"] is None  # CPU
    table = (out / "bench.md").read_text()
    assert table.count("\n| baseline | tiny | ") == len(results) and table.count("\n| tiny | ") == 1  # + parameters
    assert f"`{prov['git']['commit']}`" in table and (out / "bench.png").stat().st_size > 0
    assert sorted(p.name for p in out.iterdir()) == ["bench.json", "bench.md", "bench.png"]  # no temporary files left


def test_bench_budget_records_skipped_settings(tmp_path):
    report, out = run_bench(tmp_path, "--attention", "sdpa", "--checkpointing", "off", "--budget-s", "0")
    assert not report["complete"] and [r["status"] for r in report["results"]] == ["skipped", "skipped"]
    assert "skipped" in (out / "bench.md").read_text()


def run_parity(tmp_path, backend):
    argv = [
        str(tmp_path / "parity"),
        "--nproc",
        "2",
        "--backends",
        backend,
        "--steps",
        "5",
        "--global-batch",
        "4",
        "--lr",
        "3e-3",
        "--",
        "optim.warmup_steps=2",
    ]
    assert dp_parity.main(argv) == 0, (tmp_path / "parity" / "runs" / "parity.log").read_text()[-3000:]
    report = json.loads((tmp_path / "parity" / "parity.json").read_text())
    assert report["pass"] and report["exact_setup"] and report["grad_accum"] == {"world_1": 4, "world_2": 2}
    res = report["backends"][backend]
    assert res["same_micro_batches_per_step"] and res["same_rows_per_step"]
    assert len(res["steps"]) == 5 and res["max_loss_diff_over_moved"] < 1e-4 and res["max_rel_grad_norm_diff"] < 1e-4
    assert res["steps"][0]["loss_ref"] != res["steps"][-1]["loss_ref"]  # the curve moves
    assert (tmp_path / "parity" / "parity.png").stat().st_size > 0
    return report


def test_dp_parity_ddp_two_gloo_ranks(tmp_path):
    run_parity(tmp_path, "none")


@pytest.mark.parametrize("backend", ["zero2", pytest.param("zero3", marks=pytest.mark.slow)])
def test_dp_parity_deepspeed_two_gloo_ranks(tmp_path, backend):
    pytest.importorskip("deepspeed")
    run_parity(tmp_path, backend)


@pytest.mark.slow
def test_bench_under_torchrun_with_zero2(tmp_path):
    """The multi-rank path (collective decisions, gathered timings) with DeepSpeed, 2 gloo ranks."""
    import os
    import subprocess
    import sys

    pytest.importorskip("deepspeed")
    out = tmp_path / "bench"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "scripts.bench_train",
        str(out),
        "--shapes",
        "tiny",
        "--seq-lens",
        "64",
        "--checkpointing",
        "on",
        "--attention",
        "sdpa",
        "--deepspeed",
        "zero2",
        "--warmup",
        "1",
        "--steps",
        "2",
    ]
    proc = subprocess.run(
        cmd, cwd=REPO_ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads((out / "bench.json").read_text())
    (r,) = report["results"]
    assert report["world_size"] == 2 and report["settings"]["deepspeed"] == "zero2" and r["status"] == "ok"
    assert len(r["step_time_s_per_rank"]) == 2 and r["step_time_s"] == max(r["step_time_s_per_rank"])


def test_bench_records_out_of_memory_and_goes_on(tmp_path, monkeypatch):
    """An OOM in one setting is recorded as such; the next settings still run."""
    from train.backend import TorchBackend

    micro_step = TorchBackend.micro_step

    def oom_on_long_rows(self, batch, blocks, last):
        if batch["input_ids"].shape[1] == 128:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (simulated)")
        return micro_step(self, batch, blocks, last)

    monkeypatch.setattr(TorchBackend, "micro_step", oom_on_long_rows)
    report, out = run_bench(tmp_path, "--seq-lens", "128,64", "--checkpointing", "off", "--attention", "sdpa")
    assert [(r["seq_len"], r["status"]) for r in report["results"]] == [(128, "oom"), (64, "ok")]
    assert "simulated" in report["results"][0]["errors"]["0"]
    assert list(report["models"]) == ["tiny"] and "| oom |" in (out / "bench.md").read_text()
