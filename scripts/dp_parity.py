"""Data-parallel parity: a world-size-N run follows the loss curve of a one-process run with the
same global batch.

    python -m scripts.dp_parity OUT_DIR --nproc 2 [--backends none,zero2,zero3] [--shape tiny|qwen3_8b]
        [--seq-len 64] [--steps 8] [--global-batch 4] [--micro-batch-size 1] [--precision auto|fp32|bf16]
        [--loss-tol X] [--grad-norm-tol X] [--work-dir DIR] [-- extra hydra overrides]

For each backend (`none` = plain PyTorch / DDP, `zero2`, `zero3` = DeepSpeed), the real training
(`train.loop.run` on the composed Hydra config, synthetic data, fixed seeds) runs twice under
torchrun: world size 1 with grad_accum = B / m, then world size N with grad_accum = B / (m N)
(B = --global-batch, m = --micro-batch-size). Both metrics.jsonl curves are judged step by step by
`eval.parity.judge_parity`: the loss difference against how far the loss moved, and the gradient
norms (a run that skips its optimizer step or scales its gradients wrongly fails). OUT_DIR gets
parity.json (per-step losses and grad norms of both runs, the judgement and its reasons per
backend) and parity.png. Exit status 1 if a backend fails.

Why the two runs see the same samples. `data.packing.PackedDataset` draws one permutation of
the rows per epoch from (seed, epoch), independent of the world size, and rank r takes its
every N-th row from r. Rank r's j-th micro-batch of step s (m = 1) is therefore row
(s G + j) N + r of that permutation: global position j N + r in step s, exactly the row that
the one-process run feeds as micro-batch j N + r. The loss of a micro-batch is normalised by
its own targets and both backends average gradients over micro-batches and ranks, so the
updates agree up to float rounding. Two things the trainer does not give by itself:

  * block sampling follows by construction: `train.loop.block_seed` seeds each micro-batch's
    anchors by its position in the global batch (micro * N + rank), so the same row gets the same
    blocks under any world size;
  * m > 1: a micro-batch of the N-rank run holds rows N apart (j m + i) N + r, the one-process
    run's holds consecutive rows, so per-micro-batch normalisation and block draws differ;
    the global batch still holds the same rows, but the curves agree only statistically.
    Use m = 1 (the default) for an exact comparison; parity.json says which case ran.

Each worker also records the SHA-1 of every row it trained on and the block seed it used;
parity.json reports whether every step's set of (rows, block seed) micro-batches is the same in
both runs, from what the runs actually consumed. The data must not wrap into a second epoch
(epochs drop num_rows % N rows, which differ between world sizes): the script sizes the
synthetic corpus for that and checks it.

Checkpoints: the workers skip checkpoint and final diffusion-view writes (at 8B they are
~20 GB of optimizer state and take minutes); `--save` keeps them.
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from eval.parity import TOLERANCES, judge_parity
from eval.provenance import provenance
from train.config import compose, shape_overrides, synthetic_data_overrides
from train.distributed import skip_deepspeed_cpu_comm_op

REPO = Path(__file__).resolve().parent.parent
BACKENDS = {"none": "deepspeed=none", "zero2": "deepspeed=zero2", "zero3": "deepspeed=zero3"}
TRACE_FILE = "trace_rank{rank}.json"


# --------------------------------------------------------------------------- worker (one rank)


def row_sha(row) -> str:
    return hashlib.sha1(row.numpy().astype("int64").tobytes()).hexdigest()[:16]


def worker(run_dir: Path, overrides: list[str], save: bool) -> None:
    """One rank of one run: the real trainer, with a trace of the rows and block seeds it used."""
    import torch.distributed as dist

    import train.loop as loop

    skip_deepspeed_cpu_comm_op()

    trace: list[dict] = []
    orig_batches, orig_seed = loop.batches, loop.block_seed

    def traced_batches(dataset, batch_size):
        for batch in orig_batches(dataset, batch_size):
            trace.append({"rows": [row_sha(r) for r in batch["input_ids"]]})
            yield batch

    def traced_block_seed(seed, step, position):
        value = orig_seed(seed, step, position)
        trace[-1].update(step=step, position=position, block_seed=value)
        return value

    loop.batches, loop.block_seed = traced_batches, traced_block_seed
    if not save:
        loop.save_checkpoint = lambda *a, **k: None
        loop.save_diffusion_view = lambda *a, **k: None
    cfg = compose(overrides)
    loop.run(cfg, run_dir)
    rank = dist.get_rank() if dist.is_initialized() else 0
    (run_dir / TRACE_FILE.format(rank=rank)).write_text(json.dumps(trace))


# --------------------------------------------------------------------------- driver


def launch(nproc: int, run_dir: Path, overrides: list[str], flags: list[str], log) -> float:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "scripts.dp_parity",
        "--worker",
        str(run_dir),
        *flags,
        "--",
        *overrides,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.setdefault("OMP_NUM_THREADS", "1")
    print("+", " ".join(cmd), file=log, flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(
            f"world size {nproc} run failed (exit {proc.returncode}); see {getattr(log, 'name', 'the log')}"
        )
    return time.perf_counter() - start


def read_records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def read_trace(run_dir: Path, nproc: int) -> dict[int, list[tuple]]:
    """step -> sorted (rows, block_seed) of every micro-batch of that step, over all ranks."""
    steps: dict[int, list[tuple]] = {}
    for rank in range(nproc):
        for item in json.loads((run_dir / TRACE_FILE.format(rank=rank)).read_text()):
            steps.setdefault(item["step"], []).append((tuple(item["rows"]), item["block_seed"]))
    return {s: sorted(v) for s, v in steps.items()}


def plot(results: dict, path: Path, title: str) -> None:
    import matplotlib.pyplot as plt

    from eval.figures import save_figure  # selects the Agg backend

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    for backend, res in results.items():
        if "steps" not in res:
            continue
        steps = [r["step"] for r in res["steps"]]
        (line,) = a.plot(steps, [r["loss_ref"] for r in res["steps"]], label=f"{backend}: world 1")
        a.plot(
            steps, [r["loss_dp"] for r in res["steps"]], "o", ms=3, color=line.get_color(), label=f"{backend}: world N"
        )
        b.semilogy(steps, [max(r["abs_diff"], 1e-12) for r in res["steps"]], "o-", ms=3, label=backend)
    a.set(xlabel="step", ylabel="loss", title=title)
    b.set(xlabel="step", ylabel="|loss(world N) - loss(world 1)|", title="difference (1e-12 floor)")
    for ax in (a, b):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = ["-m", "scripts.dp_parity", *argv]
    extra = []
    if "--" in argv:
        argv, extra = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    if argv and argv[0] == "--worker":  # launched by `launch`: --worker RUN_DIR [--save] -- overrides
        worker(Path(argv[1]), extra, save="--save" in argv[2:])
        return 0

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--nproc", type=int, default=2, help="world size N of the data-parallel run")
    ap.add_argument("--backends", default="none,zero2", help="comma list of none | zero2 | zero3")
    ap.add_argument("--shape", default="tiny", help="tiny | qwen3_1.7b | qwen3_4b | qwen3_8b (random weights)")
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--blocks-per-row", type=int, default=None, help="default: seq_len / (2 K), the recipe's ratio")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--global-batch", type=int, default=4, help="rows per optimizer step, all ranks together")
    ap.add_argument("--micro-batch-size", type=int, default=1)
    ap.add_argument("--precision", default="auto", help="auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16")
    ap.add_argument("--lr", type=float, default=None, help="default: the config's")
    ap.add_argument(
        "--loss-tol",
        type=float,
        default=None,
        help="max loss difference over how far the loss moved; default eval.parity.TOLERANCES",
    )
    ap.add_argument(
        "--grad-norm-tol",
        type=float,
        default=None,
        help="max relative grad-norm difference; default eval.parity.TOLERANCES",
    )
    ap.add_argument("--work-dir", type=Path, default=None, help="run folders (default OUT_DIR/runs)")
    ap.add_argument("--save", action="store_true", help="let the runs write checkpoints (skipped by default)")
    args = ap.parse_args(argv)

    import torch

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        ap.error(f"--backends: unknown {unknown}; choose from {list(BACKENDS)}")
    B, m, N = args.global_batch, args.micro_batch_size, args.nproc
    if N < 2 or B % (m * N):
        ap.error(f"need --nproc >= 2 and global batch {B} divisible by micro-batch {m} x world size {N}")
    accum_ref, accum_dp = B // m, B // (m * N)
    gpu = torch.cuda.is_available()
    if gpu and torch.cuda.device_count() < N:
        ap.error(f"--nproc {N} but only {torch.cuda.device_count()} GPUs are visible")
    precision = args.precision if args.precision != "auto" else ("bf16" if gpu else "fp32")
    tol = dict(TOLERANCES[precision])
    if args.loss_tol is not None:
        tol["loss_tol"] = args.loss_tol
    if args.grad_norm_tol is not None:
        tol["grad_norm_tol"] = args.grad_norm_tol

    # blocks per row: the recipe's diffusion tokens = seq_len / 2, unless given
    block_size = compose(shape_overrides(args.shape)).model.block_size or 32
    blocks_per_row = args.blocks_per_row or max(1, args.seq_len // (2 * block_size))
    rows_needed = args.steps * B
    common = [
        *shape_overrides(args.shape),
        *synthetic_data_overrides(args.seq_len, 2 * rows_needed),
        f"objective.blocks_per_row={blocks_per_row}",
        f"train.steps={args.steps}",
        f"train.micro_batch_size={m}",
        f"train.precision={precision}",
        f"train.checkpoint_every={args.steps}",
        "train.keep_last=1",
        "train.seed=0",
        "logging.log_every=1",
        "logging.wandb.mode=disabled",
        "logging.progress_bar=false",
        *([f"optim.lr={args.lr}"] if args.lr is not None else []),
        *extra,
    ]
    # the rows the runs consume must lie in the first epoch of both world sizes
    from models.shapes import QWEN3_SHAPES
    from train.data import build_dataset
    from train.distributed import Dist

    cfg = compose(common)
    fields = {**QWEN3_SHAPES.get(cfg.model.shape, {}), **cfg.model.config}
    vocab = fields["vocab_size"]
    mask = cfg.model.mask_token_id if cfg.model.mask_token_id is not None else vocab - 1
    one = build_dataset(cfg.data, vocab_size=vocab, mask_token_id=mask, dist=Dist(0, 1, 0, torch.device("cpu")))
    first_epoch = (len(one.rows) // N) * N
    if rows_needed > first_epoch:
        raise SystemExit(
            f"{rows_needed} rows needed but the first epoch of world size {N} has {first_epoch}: "
            "raise data.synthetic_documents.num_documents"
        )

    args.out_dir.mkdir(parents=True, exist_ok=True)
    work = args.work_dir or args.out_dir / "runs"
    work.mkdir(parents=True, exist_ok=True)
    log_path = work / "parity.log"
    report = {
        "provenance": provenance(command=command),
        "world_size": N,
        "shape": args.shape,
        "seq_len": args.seq_len,
        "blocks_per_row": blocks_per_row,
        "steps": args.steps,
        "global_batch": B,
        "micro_batch_size": m,
        "grad_accum": {"world_1": accum_ref, f"world_{N}": accum_dp},
        "precision": precision,
        "exact_setup": m == 1,
        "overrides": common,
        "backends": {},
    }
    from data._io import atomic_write_text

    flags = ["--save"] if args.save else []
    with log_path.open("w") as log:
        for backend in backends:
            runs = {1: work / backend / "world_1", N: work / backend / f"world_{N}"}
            res: dict = {}
            try:
                wall = {}
                for n, accum in ((1, accum_ref), (N, accum_dp)):
                    wall[f"world_{n}"] = launch(
                        n, runs[n], [*common, BACKENDS[backend], f"train.grad_accum={accum}"], flags, log
                    )
                res = judge_parity(read_records(runs[1]), read_records(runs[N]), **tol)
                t_ref, t_dp = read_trace(runs[1], 1), read_trace(runs[N], N)
                res["same_micro_batches_per_step"] = t_ref == t_dp  # rows and block seeds, as consumed
                res["same_rows_per_step"] = {s: sorted(r for mb, _ in v for r in mb) for s, v in t_ref.items()} == {
                    s: sorted(r for mb, _ in v for r in mb) for s, v in t_dp.items()
                }
                if report["exact_setup"] and not res["same_micro_batches_per_step"]:
                    res["pass"] = False
                    res["reasons"].append("the runs trained on different micro-batches (rows or block seeds)")
                res["wall_s"] = wall
            except Exception as e:  # noqa: BLE001  (recorded; the other backends still run)
                log.flush()
                res = {"pass": False, "error": f"{type(e).__name__}: {e}", "log_tail": log_path.read_text()[-4000:]}
            report["backends"][backend] = res
            report["pass"] = all(r.get("pass") for r in report["backends"].values())
            atomic_write_text(args.out_dir / "parity.json", json.dumps(report, indent=2) + "\n")
            print(
                f"{backend}: "
                + (
                    f"pass={res['pass']} max |dloss|={res['max_abs_loss_diff']:.3g} "
                    f"= {res['max_loss_diff_over_moved']:.3g} of the loss movement, grad norms "
                    f"{res['max_rel_grad_norm_diff']:.3g} (tolerances {tol}) {'; '.join(res['reasons'])}"
                    if "steps" in res
                    else res["error"]
                ),
                flush=True,
            )
    plot(report["backends"], args.out_dir / "parity.png", f"{args.shape}, {precision}, B={B}: world 1 vs {N}")
    return 0 if report["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
