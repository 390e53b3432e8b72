"""The commands the README gives a new user run as written, on the shipped small model, offline:
the quick evaluation, the generation command and lm-eval's CLI with the `orthrus` model."""

import json
import shlex

import pytest

from scripts.generate import main as generate_main
from tests.tiny import REPO, run_python


def readme_command(prefix: str) -> str:
    lines = [line for line in (REPO / "README.md").read_text().splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, f"README should give exactly one command starting {prefix!r}"
    return lines[0]


@pytest.mark.slow
def test_readme_evaluation_command(tmp_path):
    """Exactly the README's command; only out_dir is redirected (Hydra: the last value wins)."""
    command = readme_command("python -m scripts.evaluate name=quickstart ")
    args = shlex.split(command)
    done = run_python(*args[1:], f"out_dir={tmp_path}", f"hydra.run.dir={tmp_path / 'hydra'}", timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "quickstart" / "metrics.json").read_text())
    runs = {r["block_size"]: r for r in report["runs"]}
    assert set(runs) == {1, report["model"]["block_size"]}  # the K=1 baseline and the checkpoint's K
    assert all(r["new_tokens"] == 32 for r in runs.values())  # not stopped at once by a chat template
    assert runs[report["model"]["block_size"]]["tokens_per_iteration"] > 1
    assert report["fidelity"][0]["exact_match"]["sequence_rate"] == 1.0
    assert "emitted" not in done.stderr  # no near-silence warning


def test_generate_command_streams_and_reports(capsys):
    readme_command("python -m scripts.generate --prompt ")
    result = generate_main(["--prompt", "def fibonacci(n):", "--max-new-tokens", "12", "--stop", "\n\n\n"])
    out, err = capsys.readouterr()
    assert result.num_new_tokens >= 1 and "def fibonacci(n):" in out  # the prompt, then the streamed text
    assert "TPF" in err and "tokens/s" in err and f"{result.num_new_tokens} tokens, K=32" in err


@pytest.mark.slow
def test_lm_eval_cli_runs_the_offline_task(tmp_path):
    command = readme_command(
        "python -m eval.lm_eval_cli --model orthrus --model_args pretrained=artifacts/orthrus-small"
    )
    args = shlex.split(command)[1:] + ["--limit", "2", "--output_path", str(tmp_path)]
    done = run_python(*args, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(next(tmp_path.rglob("results_*.json")).read_text())
    assert "exact_match,none" in results["results"]["orthrus_python_local"]
    assert results["config"]["model"] == "orthrus"
