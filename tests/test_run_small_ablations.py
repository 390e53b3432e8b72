"""scripts/run_small_ablations.py: the pack/unpack stages that carry trained arms from a GPU call back
to where they are evaluated (views as bf16, per-job records merged across calls, nothing unpacked
outside the work folder), and the --arms folders that keep calls from overwriting each other."""

import json
import shutil
import tarfile
import uuid
from argparse import Namespace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from scripts import run_small_ablations as abl


@pytest.fixture
def setup():
    work = f".cache/test_ablations_{uuid.uuid4().hex[:8]}"
    args = Namespace(steps=4, token_steps="2,8", eval_k=4, max_new_tokens=8, limit=1, distill_prompts=2,
                     distill_new_tokens=4, arms={"block_size": "16"})
    s = abl.setup("small", args)
    s.work = work
    yield s
    shutil.rmtree(abl.REPO_ROOT / work, ignore_errors=True)


def _fake_run(run: Path, value: float) -> None:
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("- model.block_size=16\n")
    (run / "metrics.jsonl").write_text(json.dumps({"step": 4, "loss": 1.0, "acc": [0.5]}) + "\n")
    (run / "diffusion_view").mkdir()
    (run / "diffusion_view" / "diffusion_view.json").write_text(json.dumps({"step": 4}))
    save_file({"w": torch.full((3, 2), value)}, str(run / "diffusion_view" / "diffusion_view.safetensors"))


def test_pack_unpack_roundtrip_merges_job_records(setup, tmp_path):
    work = abl.REPO_ROOT / setup.work
    _fake_run(work / "block_size-16" / "0", 1.5)
    (work / "self_distill").mkdir(parents=True)
    (work / "self_distill" / "manifest.json").write_text("{}")
    (work / "commands.json").write_text(json.dumps({"block_size-16": "train.py -m ..."}))
    (work / "train_provenance.json").write_text(json.dumps({"block_size-16": {"device": "gpu"}}))
    abl.stage_pack(setup, tmp_path)
    tars = sorted(tmp_path.glob("ablation_runs_*.tar"))
    assert tars and not list(tmp_path.glob(".*.tmp"))  # written atomically

    shutil.rmtree(work)  # the evaluating machine: an earlier call's records are already there
    work.mkdir(parents=True)
    (work / "commands.json").write_text(json.dumps({"baseline": "train.py ..."}))
    abl.stage_unpack(setup, tmp_path)
    view = load_file(str(work / "block_size-16" / "0" / "diffusion_view" / "diffusion_view.safetensors"))
    assert view["w"].dtype == torch.bfloat16 and torch.equal(view["w"].float(), torch.full((3, 2), 1.5))
    assert set(json.loads((work / "commands.json").read_text())) == {"baseline", "block_size-16"}
    assert (work / "self_distill" / "manifest.json").is_file()
    runs = abl.arm_runs(setup, "block_size")
    assert [r["arm"] for r in runs] == ["32 (baseline)", "16"] and runs[1]["view"] is not None


def test_unpack_refuses_members_outside_the_work_folder(setup, tmp_path):
    evil = tmp_path / "ablation_runs_0.tar"
    with tarfile.open(evil, "w") as tar:
        src = tmp_path / "x.txt"
        src.write_text("x")
        tar.add(src, arcname="scripts/evil.py")
    with pytest.raises(SystemExit, match="outside"):
        abl.stage_unpack(setup, tmp_path)
    assert not (abl.REPO_ROOT / "scripts" / "evil.py").exists()


def test_arms_get_their_own_sweep_folder(setup):
    assert abl.sweep_dir("block_size", setup).endswith("/block_size-16")
    assert abl.sweep_dir("loss", setup).endswith("/loss")
    command = abl.multirun_command("block_size", setup)
    assert "model.block_size=16" in command and f"hydra.sweep.dir={setup.work}/block_size-16" in command
