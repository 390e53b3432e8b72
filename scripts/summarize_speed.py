"""One table and plot over several scripts/evaluate.py results (e.g. greedy and sampling, fp32 and bf16).

    python -m scripts.summarize_speed OUT/*/metrics.json --out OUT

Writes OUT/summary.md (speed, TTFT, fidelity and each run's provenance), OUT/summary.json (the rows
the table shows, per run) and OUT/speedup_by_k.png.
"""

import argparse
from pathlib import Path

from data._io import atomic_write_text
from eval.figures import speedup_by_k
from eval.report import read_json, speed_summary_markdown, write_json

KEYS = (
    "benchmark",
    "block_size",
    "num_prompts",
    "tokens_per_iteration",
    "decode_tokens_per_second",
    "speedup",
    "speedup_end_to_end",
    "ttft_ms",
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("metrics", nargs="+", help="metrics.json files written by scripts/evaluate.py")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    reports = [read_json(p) for p in args.metrics]
    out = Path(args.out)
    atomic_write_text(out / "summary.md", speed_summary_markdown(reports))
    write_json(
        out / "summary.json",
        {
            rep["name"]: {
                "protocol": rep["timing_protocol"],
                "provenance": rep["provenance"],
                "dtype": rep["model"]["dtype"],
                "sampling": rep["decode"]["sampling"],
                "runs": [{k: r[k] for k in KEYS} for r in rep["runs"]],
                "fidelity": rep["fidelity"],
            }
            for rep in reports
        },
    )
    figure = speedup_by_k(reports, out / "speedup_by_k.png")
    print(f"wrote {out / 'summary.md'}, {out / 'summary.json'}" + (f", {figure}" if figure else ""))


if __name__ == "__main__":
    main()
