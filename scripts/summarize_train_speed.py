"""One summary table over several scripts/bench_train.py runs (train/speed_summary.py).

    python -m scripts.summarize_train_speed R/run2_05ff7ee/bench.json R/run3_701b651/bench.json \
        --reference run2_05ff7ee:baseline --profile run2_05ff7ee:baseline,fast,fast_fp8 --out R/summary.md

Writes the markdown summary: the runs' provenance, every variant per shape (tokens/s/GPU, x the
reference variant, peak GiB, projected hours of the paper's run), the throughput targets against the
fastest points, and the phase profile of the named variants.
"""

import argparse
from pathlib import Path

from data._io import atomic_write_text
from train.speed_summary import load_runs, summary_markdown


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("benches", nargs="+", help="bench.json files, one per run folder")
    ap.add_argument("--reference", required=True, help="RUN:VARIANT that the x columns divide by")
    ap.add_argument("--profile", required=True, help="RUN:VARIANT,VARIANT whose phase profiles are shown")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    runs = load_runs(args.benches)
    ref_run, _, ref_variant = args.reference.partition(":")
    prof_run, _, prof_variants = args.profile.partition(":")
    for run in (ref_run, prof_run):
        if run not in runs:
            ap.error(f"run {run!r} is none of the given folders {list(runs)}")
    text = summary_markdown(runs, (ref_run, ref_variant), prof_run, prof_variants.split(","))
    atomic_write_text(Path(args.out), text)
    return text


if __name__ == "__main__":
    main()
