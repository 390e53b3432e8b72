"""The whole orthrus-small pipeline in one command: corpus -> tokenizer -> base -> diffusion view
-> evaluation -> shipped artifacts.

Why one command: the GPU machine is lent for a single call of at most ten minutes, starts bare,
and sends back at most eight files; so everything runs back to back here and the results come
back as one tarball. Each stage is an ordinary Hydra entry point run with its preset, so every
step can also be run (and re-run) by hand with the command this script prints and records.

Stages (`--stages`, in this order; each one skips nothing and overwrites its outputs):
  pretrain   scripts/pretrain_base.py +pretrain=<preset>: builds the corpus and tokenizer when
             missing, pretrains the base, then installs tokenizer/, base/ and
             heldout_prompts.jsonl into the artifacts folder;
  diffusion  train.py +exp=<exp>: trains the diffusion view of the installed base, installs
             diffusion/ (safetensors + its json);
  eval       scripts/evaluate.py on HumanEval and the held-out prompts at K = 1 (the AR
             baseline) and each of --block-sizes: TPF, acceptance histogram, exact match vs the
             base, sampling KL, wall-clock speedup; results into results/<preset>/;
  card       the artifacts' README.md: how every file was made (commands, commit, device,
             tokens, times) and the measured numbers;
  pack       tars the artifacts and results into --out (for the GPU machine's $OUT).

    python scripts/run_small_pipeline.py                          # real run, one GPU
    python scripts/run_small_pipeline.py --preset toy --out /tmp/o  # CPU rehearsal, minutes
    python scripts/run_small_pipeline.py --stages eval,card        # re-evaluate shipped files
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a file: make the repo root importable
    sys.path.insert(0, str(REPO_ROOT))

STAGES = ("pretrain", "diffusion", "eval", "card", "pack")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")
BASE_FILES = ("config.json", "generation_config.json", "model.safetensors", "README.md", "pretrain_summary.json",
              "train_log.jsonl")
HELDOUT_PROMPTS = "heldout_prompts.jsonl"


@dataclass
class Preset:
    """Everything that differs between the real run and the CPU rehearsal."""

    pretrain: list[str]  # overrides of scripts/pretrain_base.py
    diffusion: list[str]  # overrides of train.py
    eval: list[str]  # overrides of scripts/evaluate.py
    artifacts: str  # where the shipped files go
    results: str  # where the measured results go
    heldout_prompts: int = 64  # held-out prompts written next to the artifacts
    heldout_lines: int = 20  # lines of each held-out file that form its prompt
    block_sizes: tuple[int, ...] = (8, 16, 32)
    work: str = ".cache/small"  # scratch: corpus, tokenizer, unshipped checkpoints
    extra: dict = field(default_factory=dict)


PRESETS = {
    # The shipped model: one H100, the whole pipeline inside one ten-minute call.
    "small": Preset(
        pretrain=["+pretrain=small"],
        diffusion=["+exp=small"],
        eval=["decode.max_new_tokens=256", "model.device=cuda", "model.dtype=float32"],
        artifacts="artifacts/orthrus-small",
        results="results/small",
    ),
    # A rehearsal of every stage on a CPU in minutes; nothing it makes is worth shipping.
    "toy": Preset(
        pretrain=["+pretrain=toy"],
        diffusion=["+exp=small", "+exp/small@_global_=toy"],
        eval=["decode.max_new_tokens=24", "model.device=cpu", "model.dtype=float32", "limit=2",
              "decode.warmup=false"],
        artifacts=".cache/toy/artifacts/orthrus-small",
        results=".cache/toy/results",
        heldout_prompts=4,
        block_sizes=(4, 8),
        work=".cache/toy",
    ),
}


# --- helpers ----------------------------------------------------------------------------------


def commit() -> str:
    """$ORTHRUS_COMMIT where the tree travelled without .git, else git's HEAD (+ -dirty)."""
    from scripts.pretrain_base import git_commit

    return git_commit()


def run_stage(name: str, argv: list[str], log: list[dict]) -> float:
    """Run one entry point, streaming its output; record command and wall time; fail loudly."""
    printable = shlex.join(argv)
    print(f"\n=== {name}: {printable}", flush=True)
    start = time.time()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "ORTHRUS_COMMIT": commit()}
    proc = subprocess.run(argv, cwd=REPO_ROOT, env=env)
    seconds = time.time() - start
    log.append({"stage": name, "command": printable, "seconds": round(seconds, 1), "returncode": proc.returncode})
    if proc.returncode != 0:
        raise SystemExit(f"stage {name} failed (exit {proc.returncode}) after {seconds:.0f} s: {printable}")
    print(f"=== {name} done in {seconds:.0f} s", flush=True)
    return seconds


def copy_files(src: Path, dst: Path, names: tuple[str, ...], required: tuple[str, ...]) -> None:
    """Replace `dst` with the listed files of `src` (atomically: written aside, then renamed)."""
    from models.checkpoint import atomic_folder

    missing = [n for n in required if not (src / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{src} lacks {missing}; did the stage that makes it run?")

    def write(tmp: Path):
        for n in names:
            if (src / n).is_file():
                shutil.copy2(src / n, tmp / n)

    atomic_folder(dst, write)


def write_heldout_prompts(corpus_dir: Path, out_file: Path, count: int, num_lines: int, seed: int = 0) -> int:
    """Prompts from the held-out packages: the first `num_lines` lines of files drawn round-robin
    over packages (so one large package cannot fill the set), seeded. Files whose head is too
    short to say anything (under 200 characters) are passed over."""
    from data._io import atomic_write_text
    from data.corpus import HELDOUT, read_corpus

    by_package: dict[str, list[dict]] = {}
    for record in read_corpus(corpus_dir, HELDOUT):
        head = "".join(record["text"].splitlines(keepends=True)[:num_lines])
        if len(head) >= 200:
            by_package.setdefault(record["package"], []).append({"path": record["path"], "prompt": head})
    if not by_package:
        raise ValueError(f"no usable held-out files in {corpus_dir}; rebuild the corpus with more held-out data")
    rng = random.Random(seed)
    for files in by_package.values():
        rng.shuffle(files)
    chosen, packages = [], sorted(by_package)
    while len(chosen) < count and any(by_package.values()):
        for package in packages:
            if by_package[package] and len(chosen) < count:
                item = by_package[package].pop()
                chosen.append({"id": f"{package}/{item['path']}", "package": package, "prompt": item["prompt"]})
    atomic_write_text(out_file, "".join(json.dumps(c) + "\n" for c in chosen))
    return len(chosen)


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# --- stages -----------------------------------------------------------------------------------


def stage_pretrain(p: Preset, log: list[dict]) -> None:
    run_stage("pretrain", [sys.executable, "scripts/pretrain_base.py", *p.pretrain], log)
    from omegaconf import OmegaConf

    summary = json.loads((REPO_ROOT / p.work / "base" / "pretrain_summary.json").read_text())
    cfg = OmegaConf.create(summary["config"])
    base, artifacts = Path(cfg.out_dir), REPO_ROOT / p.artifacts
    copy_files(base, artifacts / "base", BASE_FILES + TOKENIZER_FILES, ("config.json", "model.safetensors"))
    copy_files(base, artifacts / "tokenizer", TOKENIZER_FILES, ("tokenizer.json", "tokenizer_config.json"))
    n = write_heldout_prompts(Path(cfg.data.build_corpus.out_dir), artifacts / HELDOUT_PROMPTS,
                              p.heldout_prompts, p.heldout_lines)
    print(f"installed base and tokenizer into {artifacts}; {n} held-out prompts", flush=True)


def stage_diffusion(p: Preset, log: list[dict]) -> None:
    raise NotImplementedError("diffusion stage: waiting for train.py")


def stage_eval(p: Preset, log: list[dict]) -> None:
    raise NotImplementedError("eval stage: waiting for scripts/evaluate.py")


def stage_card(p: Preset, log: list[dict]) -> None:
    pass


def stage_pack(p: Preset, log: list[dict], out: Path | None) -> None:
    """One tarball of the artifacts and results (the GPU machine returns few, flat files)."""
    if out is None:
        print("pack: no --out given, nothing to pack", flush=True)
        return
    out.mkdir(parents=True, exist_ok=True)
    target = out / "orthrus-small.tar.gz"
    with tarfile.open(target, "w:gz") as tar:
        for folder in (p.artifacts, p.results):
            if (REPO_ROOT / folder).exists():
                tar.add(REPO_ROOT / folder, arcname=folder)
        for extra in sorted((REPO_ROOT / p.work).glob("*/train_log.jsonl")):
            tar.add(extra, arcname=str(extra.relative_to(REPO_ROOT)))
    print(f"packed {target} ({target.stat().st_size / 1e6:.1f} MB)", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {STAGES}")
    parser.add_argument("--out", type=Path, default=None, help="folder for the tarball (the GPU machine's $OUT)")
    args = parser.parse_args(argv)
    stages = [s for s in args.stages.split(",") if s]
    unknown = set(stages) - set(STAGES)
    if unknown:
        parser.error(f"unknown stages {sorted(unknown)}; choose from {STAGES}")
    preset = PRESETS[args.preset]
    results = REPO_ROOT / preset.results
    results.mkdir(parents=True, exist_ok=True)
    log_path = results / "pipeline.json"
    log: list[dict] = []
    started = time.time()
    try:
        for stage in STAGES:
            if stage not in stages:
                continue
            if stage == "pack":
                stage_pack(preset, log, args.out)
            else:
                {"pretrain": stage_pretrain, "diffusion": stage_diffusion, "eval": stage_eval,
                 "card": stage_card}[stage](preset, log)
    finally:
        from data._io import atomic_write_text

        previous = json.loads(log_path.read_text()) if log_path.is_file() else {}
        record = {
            "preset": args.preset,
            "commit": commit(),
            "command": shlex.join(["python", "scripts/run_small_pipeline.py", *(argv if argv is not None else sys.argv[1:])]),
            "seconds": round(time.time() - started, 1),
            "stages": log,
        }
        atomic_write_text(log_path, json.dumps({"runs": previous.get("runs", []) + [record]}, indent=2) + "\n")
        if args.out is not None and "pack" in stages:
            args.out.mkdir(parents=True, exist_ok=True)
            shutil.copy2(log_path, args.out / "pipeline.json")


if __name__ == "__main__":
    main()
