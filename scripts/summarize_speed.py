"""One table and plot over several scripts/evaluate.py results (e.g. greedy and sampling, fp32 and bf16).

    python -m scripts.summarize_speed OUT/*/metrics.json --out OUT
    python -m scripts.summarize_speed A/metrics.json B/metrics.json --names plain,fast --reference plain --out OUT

Writes OUT/summary.md (speed, TTFT, fidelity, with --reference each run against the reference run, and each
run's provenance), OUT/summary.json (the rows the table shows, per run) and OUT/speedup_by_k.png.
"""

import argparse
from pathlib import Path

from data._io import atomic_write_text
from eval.figures import speedup_by_k
from eval.report import against_reference_rows, read_json, speed_summary_markdown, write_json

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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("metrics", nargs="+", help="metrics.json files written by scripts/evaluate.py")
    ap.add_argument("--out", required=True)
    ap.add_argument("--names", help="comma-separated run names, one per metrics file (default: each run's own)")
    ap.add_argument("--reference", help="a run name: each run's tokens per iteration against its")
    ap.add_argument("--tolerance", type=float, default=0.02, help="the ratio's allowed distance from 1 (0.02)")
    args = ap.parse_args(argv)
    names = args.names.split(",") if args.names else None
    if names is not None and len(names) != len(args.metrics):
        ap.error(f"--names gives {len(names)} names for {len(args.metrics)} metrics files: give one per file")
    reports = [read_json(p) for p in args.metrics]
    for rep, name in zip(reports, names or []):
        rep["name"] = name
    run_names = [rep["name"] for rep in reports]
    if len(set(run_names)) != len(run_names):
        ap.error(f"the runs' names {run_names} repeat (summary.json keys them by name): give each one with --names")
    against = None
    if args.reference:
        rows = against_reference_rows(reports, args.reference, args.tolerance)
        against = {"reference": args.reference, "tolerance": args.tolerance, "rows": rows}
    out = Path(args.out)
    atomic_write_text(out / "summary.md", speed_summary_markdown(reports, against))
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
                **(
                    {"against_reference": against | {"rows": [r for r in against["rows"] if r["run"] == rep["name"]]}}
                    if against
                    else {}
                ),
            }
            for rep in reports
        },
    )
    figure = speedup_by_k(reports, out / "speedup_by_k.png")
    print(f"wrote {out / 'summary.md'}, {out / 'summary.json'}" + (f", {figure}" if figure else ""))


if __name__ == "__main__":
    main()
