"""The orthrus-small recipe (scripts/orthrus_small.sh) end to end at toy size on the CPU:
pinned prompts -> self-distillation -> train.py -> evaluation, and its refusal to start on
inputs that differ from the recorded hashes."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ART = REPO / "artifacts" / "orthrus-small"
ENV = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}


def recipe(out: Path, *ablations: str, **env) -> subprocess.CompletedProcess:
    """scripts/orthrus_small.sh OUT toy [ABLATION ...] with `env` on top of the tests' environment."""
    return subprocess.run(
        ["bash", "scripts/orthrus_small.sh", str(out), "toy", *ablations],
        cwd=REPO,
        env={**ENV, **env},
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.slow
def test_recipe_rebuilds_and_evaluates_a_view(tmp_path):
    proc = recipe(tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    manifest = json.loads((tmp_path / "self_distill" / "manifest.json").read_text())
    assert manifest["records"] == 2 and manifest["source"].endswith("distill_prompts.jsonl.gz")
    assert (tmp_path / "train" / "diffusion_view" / "diffusion_view.safetensors").is_file()
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert {(r["benchmark"], r["block_size"]) for r in report["runs"]} == {
        (b, k) for b in ("humaneval", "local_jsonl") for k in (1, 8)
    }
    assert all(f["exact_match"]["sequence_rate"] == 1.0 for f in report["fidelity"])  # lossless
    assert "+ python train.py +exp=small data=self_distill" in proc.stdout  # the commands are shown


def test_recipe_refuses_inputs_that_differ_from_the_pins(tmp_path):
    art = tmp_path / "art"
    shutil.copytree(ART, art, ignore=shutil.ignore_patterns("diffusion"))
    (art / "distill_prompts.jsonl.gz").write_bytes(b"not the pinned prompts")
    proc = recipe(tmp_path / "out", ART=str(art))
    assert proc.returncode == 1 and "differ from" in proc.stderr
    assert not (tmp_path / "out").exists()  # nothing started


@pytest.mark.parametrize(
    ("env", "args", "says"),
    [
        ({"ONLY_ABLATIONS": "1"}, [], "name an ablation"),
        ({"ONLY_ABLATIONS": "yes"}, ["ablate_speed"], "ONLY_ABLATIONS='yes'"),
        ({"ARM_JOBS": "two"}, ["ablate_speed"], "ARM_JOBS='two'"),
    ],
)
def test_recipe_refuses_bad_ablation_settings_before_any_work(tmp_path, env, args, says):
    proc = recipe(tmp_path / "out", *args, **env)
    assert proc.returncode == 2 and says in proc.stderr
    assert not (tmp_path / "out").exists()  # nothing started


@pytest.mark.parametrize(
    ("ablations", "says"),
    [
        (["ablate_speed"], "already holds an earlier sweep (arm_1 multirun.yaml)"),
        (["ablate_ce_loss", "ablate_ce_loss"], "ablate_ce_loss is named twice"),
    ],
)
def test_recipe_refuses_to_mix_a_sweep_with_an_earlier_one(tmp_path, ablations, says):
    """An ablation's folder holds one sweep: a second sweep into it would overwrite arm_0 and evaluate the
    earlier arm_1 as its own, so the recipe refuses before any work and names the folder and the fix. ART
    is an empty folder, so a recipe that missed this stops at the pin check (exit 1) instead of training."""
    earlier = tmp_path / "out" / "ablate_speed"
    (earlier / "arm_1").mkdir(parents=True)
    (earlier / "multirun.yaml").write_text("the earlier sweep\n")
    (tmp_path / "no_pins").mkdir()
    proc = recipe(tmp_path / "out", *ablations, ONLY_ABLATIONS="1", ART=str(tmp_path / "no_pins"))
    assert proc.returncode == 2 and says in proc.stderr, proc.stderr
    if ablations == ["ablate_speed"]:
        assert f"rm -r {earlier}" in proc.stderr and "fresh OUT_DIR" in proc.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ablate_speed"]  # nothing started
    assert sorted(p.name for p in earlier.iterdir()) == ["arm_1", "multirun.yaml"]


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "conf" / "exp").glob("ablate_*.yaml")))
def test_small_ablations_take_their_arms_from_the_shared_yaml(name):
    """The recipe's ablations run '+exp=[ablate_X,small]': the orthrus-small run with the arms
    conf/exp/ablate_X.yaml defines for every size."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import train.config  # noqa: F401  (registers ${floor_div:...})

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            "config",
            [
                f"+exp=[{name},small]",
                "data=self_distill",
                "~data.build_corpus",
                "~data.train_tokenizer",
                "data.load_tokenized_dataset.source=x",
            ],
            return_hydra_config=True,
        )
    own = OmegaConf.load(REPO / "conf" / "exp" / f"{name}.yaml").hydra.sweeper.params
    assert cfg.hydra.sweeper.params == own
    assert cfg.model.base == "artifacts/orthrus-small/base" and "build_corpus" not in cfg.data


@pytest.mark.slow
def test_ablation_arms_train_at_once_without_the_recipe_view(tmp_path):
    """ARM_JOBS=2 ONLY_ABLATIONS=1: the arms of an ablation train in parallel processes (Hydra's
    joblib launcher) and are each evaluated; the recipe's own view (steps 3-4) is not trained;
    TRAIN_ARGS picks two of the ablation's four arms."""
    proc = recipe(tmp_path, "ablate_block_size", ARM_JOBS="2", ONLY_ABLATIONS="1", TRAIN_ARGS="model.block_size=8,16")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "hydra/launcher=joblib hydra.launcher.n_jobs=2" in proc.stdout
    assert not (tmp_path / "train").exists() and not (tmp_path / "eval").exists()
    arms = sorted((tmp_path / "ablate_block_size").glob("arm_*"))
    assert len(arms) == 2
    for arm, K in zip(arms, (8, 16), strict=True):
        assert (arm / "diffusion_view" / "diffusion_view.safetensors").is_file()
        report = json.loads((arm / "eval" / "metrics.json").read_text())
        assert report["runs"] and f"model.block_size={K}" in report["model"]["trained_with"]
        assert f"model.block_size={K} " in (arm / "eval" / "metrics.md").read_text()  # which arm this is
