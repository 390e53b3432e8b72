"""The training-speed summary (train/speed_summary.py, scripts/summarize_train_speed.py): the committed
results/train_speed_h200_2026-12-01/summary.md is what the script writes from the runs' bench.json,
the README's tables quote it, and a target the runs miss reads "no". Likewise the quality check's
summary (scripts/summarize_speed.py --reference) in quality_8fa2a42/."""

import json
import re

import pytest

from eval.provenance import REPO_ROOT
from scripts import summarize_speed, summarize_train_speed
from train.speed_summary import load_runs, targets

RESULTS = REPO_ROOT / "results" / "train_speed_h200_2026-12-01"
BENCHES = [RESULTS / "run2_05ff7ee" / "bench.json", RESULTS / "run3_701b651" / "bench.json"]
ARGS = ["--reference", "run2_05ff7ee:baseline", "--profile", "run2_05ff7ee:baseline,fast,fast_fp8"]


def test_committed_summary_is_the_scripts_output(tmp_path):
    text = summarize_train_speed.main([*map(str, BENCHES), *ARGS, "--out", str(tmp_path / "summary.md")])
    assert (tmp_path / "summary.md").read_text() == text == (RESULTS / "summary.md").read_text()
    assert "| 8B >= 3,400 tokens/s/GPU | 3,504 | fast_fp8_mb2 (`run3_701b651`) | yes |" in text


def test_readme_tables_quote_the_summary():
    summary = (RESULTS / "summary.md").read_text()
    rows = [line for line in (RESULTS / "README.md").read_text().splitlines() if line.startswith("| ")]
    numbers = {n for line in rows for n in re.findall(r"\d[\d,]*\.\d+|\d{1,3}(?:,\d{3})+", line)}
    assert numbers and not [n for n in numbers if n not in summary]


def test_a_missed_target_reads_no():
    runs = load_runs(BENCHES)
    assert targets(runs, 3400.0, 2.5)[2].endswith("| yes |")
    missed = targets(runs, 4000.0, 3.5)
    assert missed[2].endswith("| no |") and missed[3].endswith("| no |")


QUALITY = RESULTS / "quality_8fa2a42"
ARMS = ("plain", "fast", "fast_fp8")


def test_committed_quality_summary_is_the_scripts_output(tmp_path):
    """summary.md and summary.json of quality_8fa2a42/ are what summarize_speed writes from the arms'
    metrics.json; every arm is within 2% of plain's tokens per iteration; the README's table quotes the
    summary; runs sharing a name (evaluate's default "eval") are refused, since summary.json keys by name."""
    metrics = [str(QUALITY / arm / "eval" / "metrics.json") for arm in ARMS]
    summarize_speed.main([*metrics, "--names", ",".join(ARMS), "--reference", "plain", "--out", str(tmp_path)])
    for name in ("summary.md", "summary.json"):
        assert (tmp_path / name).read_text() == (QUALITY / name).read_text(), name
    rows = [r for arm in json.loads((QUALITY / "summary.json").read_text()).values() for r in
            arm["against_reference"]["rows"]]  # fmt: skip
    assert len(rows) == 6 and all(r["within 2%"] for r in rows)
    summary = (QUALITY / "summary.md").read_text()
    table = [line for line in (QUALITY / "README.md").read_text().splitlines() if line.startswith("| `speed=")]
    numbers = {n for line in table for n in re.findall(r"\d+\.\d+", line)}
    assert len(table) == 3 and numbers and not [n for n in numbers if n not in summary]
    with pytest.raises(SystemExit):
        summarize_speed.main([*metrics, "--reference", "plain", "--out", str(tmp_path / "refused")])
    assert not (tmp_path / "refused").exists()
