"""Turn a training run's metrics.jsonl into a results folder: summary JSON, markdown table, plot.

    python -m scripts.summarize_train_run RUN_METRICS.jsonl OUT_DIR --device "NVIDIA H100 80GB HBM3" \
        --command "python train.py ..." --commit <sha> [--skip-steps 20]

Throughput is averaged over the records after --skip-steps (the first steps hold compilation
and warm-up). Everything written comes from the log; nothing is typed in.
"""

import argparse
import json
from pathlib import Path

import matplotlib.pyplot as plt

from data._io import atomic_write_text
from eval.figures import save_figure  # also selects the Agg backend


def summarize(records: list[dict], skip_steps: int) -> dict:
    steady = [r for r in records if r["step"] > skip_steps] or records
    mean = lambda key: sum(r[key] for r in steady) / len(steady)  # noqa: E731
    return {
        "steps": records[-1]["step"],
        "tokens_seen": records[-1]["tokens"],  # the log keeps a running total
        "tokens_per_s_per_gpu": mean("tokens_per_s_per_gpu"),
        "mfu": mean("mfu") if all(r["mfu"] is not None for r in steady) else None,  # None: not on CUDA
        "averaged_over_steps": [steady[0]["step"], steady[-1]["step"]],
        "loss_first": records[0]["loss"],
        "loss_last": records[-1]["loss"],
        "max_memory_gib": max(r.get("max_memory_gib", 0.0) for r in records),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("metrics", type=Path)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--device", required=True)
    ap.add_argument("--command", required=True)
    ap.add_argument("--commit", required=True)
    ap.add_argument("--skip-steps", type=int, default=20)
    args = ap.parse_args()

    records = [json.loads(line) for line in args.metrics.read_text().splitlines() if line.strip()]
    if not records:
        raise SystemExit(f"{args.metrics} has no records: did the run log anything (logging.log_every)?")
    summary = {
        **summarize(records, args.skip_steps),
        "device": args.device,
        "command": args.command,
        "commit": args.commit,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")

    mfu = "n/a" if summary["mfu"] is None else f"{summary['mfu']:.3f}"
    rows = [
        ("steps", summary["steps"]),
        ("tokens seen", summary["tokens_seen"]),
        ("tokens/s/GPU", f"{summary['tokens_per_s_per_gpu']:.0f}"),
        ("MFU", mfu),
        ("loss first → last", f"{summary['loss_first']:.4f} → {summary['loss_last']:.4f}"),
        ("peak memory (GiB)", f"{summary['max_memory_gib']:.1f}"),
    ]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    atomic_write_text(
        args.out_dir / "summary.md",
        (
            f"# Training run\n\n| metric | value |\n|---|---|\n{table}\n\n"
            f"Throughput averaged over steps {summary['averaged_over_steps'][0]}–"
            f"{summary['averaged_over_steps'][1]}.\n\n"
            f"- device: {args.device}\n- commit: {args.commit}\n- command: `{args.command}`\n\n![curves](curves.png)\n"
        ),
    )

    steps = [r["step"] for r in records]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    a.plot(steps, [r["loss"] for r in records])
    a.set(xlabel="step", ylabel="loss", title="distillation loss")
    b.plot(steps, [r["tokens_per_s_per_gpu"] for r in records])
    b.set(xlabel="step", ylabel="tokens/s/GPU", title=f"throughput (MFU {mfu})")
    fig.tight_layout()
    save_figure(fig, args.out_dir / "curves.png", dpi=110)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
