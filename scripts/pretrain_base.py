"""Pretrain a small Qwen3 (`Qwen3ForCausalLM`) from scratch on the offline Python corpus.

Why this exists: Orthrus needs a frozen AR model to draft for, and the whole pipeline should run
offline, without downloading a Qwen3 checkpoint. So the project trains its own small model with the *real* Qwen3
architecture (same config class, same modeling code, GQA, QK-norm, RoPE, tied embeddings) and
runs the whole pipeline on it: diffusion-view training, decoding, evaluation, CI.

What it does (config: conf/pretrain.yaml; presets in conf/pretrain/):
  1. builds the corpus and trains the tokenizer if their folders are missing (data/);
  2. tokenizes the train and held-out splits and packs them into rows (data/packing.py): rows
     are full, documents restart at position 0 and attend only within themselves;
  3. trains with AdamW, linear warmup + cosine decay, bf16 autocast on CUDA, optional
     torch.compile, until a token budget or a wall-clock budget is spent;
  4. evaluates held-out loss periodically (on packages never trained on);
  5. saves the checkpoint atomically: bf16 safetensors, tokenizer, generation config, the JSONL
     log and a README.md card (exact command, commit, device, tokens seen, time, losses).

    python -m scripts.pretrain_base                                 # real run (one GPU)
    python -m scripts.pretrain_base train.time_budget_s=200         # stop (and decay) by 200 s
    python -m scripts.pretrain_base +pretrain=toy out_dir=/tmp/base # CPU smoke test, seconds
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import subprocess
import time
import warnings
from pathlib import Path

import hydra
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm
from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

from data._io import atomic_write_text
from data.corpus import MANIFEST, build_corpus
from data.datasets import load_tokenized_dataset
from data.packing import PackedDataset, PackedRows
from data.tokenizer import MASK_TOKEN, load_tokenizer, train_tokenizer
from eval import provenance
from models.checkpoint import atomic_folder

REPO_ROOT = Path(__file__).resolve().parent.parent
CARD_FORMAT = "orthrus-small-base/1"


# --- provenance -------------------------------------------------------------------------------


def git_commit() -> str:
    """The commit the code came from: $ORTHRUS_COMMIT (set by the pipeline when the tree was
    copied without .git, e.g. to a GPU machine), else `git rev-parse`, else "unknown"."""
    if os.environ.get("ORTHRUS_COMMIT"):
        return os.environ["ORTHRUS_COMMIT"]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT, capture_output=True, text=True
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    return f"CPU {platform.machine()}, {os.cpu_count()} cores (torch {torch.__version__})"


def command_line() -> str:
    return shlex.join(["python", *provenance.command_line()])


# --- data -------------------------------------------------------------------------------------


def prepare_data(cfg: DictConfig) -> None:
    """Build the corpus and the tokenizer when missing (or refuse, if build_data is false)."""
    corpus_dir = Path(cfg.data.build_corpus.out_dir)
    tokenizer_dir = Path(cfg.data.train_tokenizer.out_dir)
    if not (corpus_dir / MANIFEST).is_file():
        if not cfg.build_data:
            raise FileNotFoundError(f"no corpus at {corpus_dir} and build_data=false; build it or set build_data=true")
        print(f"building the corpus into {corpus_dir}", flush=True)
        with tqdm(unit="B", unit_scale=True, desc="corpus") as bar:
            build_corpus(**cfg.data.build_corpus, progress=bar.update)
    if not (tokenizer_dir / "tokenizer.json").is_file():
        if not cfg.build_data:
            raise FileNotFoundError(
                f"no tokenizer at {tokenizer_dir} and build_data=false; train it or set build_data=true"
            )
        print(f"training the tokenizer into {tokenizer_dir}", flush=True)
        train_tokenizer(**cfg.data.train_tokenizer)


def gather_rows(rows: PackedRows, indices: torch.Tensor) -> dict[str, torch.Tensor]:
    """Rows `indices` of a PackedRows, batched: the same tensors as stacking `rows[i]`, in one
    vectorised lookup. Fetching row by row costs about a millisecond of CPU each (one small
    searchsorted per row), which at 64 rows a step would leave the GPU waiting."""
    starts = indices.long()[:, None] * rows.seq_len
    offsets = starts + torch.arange(rows.seq_len)
    doc = torch.searchsorted(rows.doc_starts, offsets, right=True) - 1
    segment_start = torch.maximum(rows.doc_starts[doc], starts)  # chunks restart at the row start
    return {"input_ids": rows.tokens[offsets].long(), "position_ids": offsets - segment_start}


def train_batches(data: PackedDataset, batch_size: int):
    """Endless batches of training rows: every epoch a seeded permutation of all rows (stream
    order if data.shuffle is false), cut into batches; the partial batch at an epoch's end is
    dropped so every step sees the same number of tokens."""
    rows, epoch = data.rows, 0
    while True:
        if data.shuffle:
            generator = torch.Generator().manual_seed(data.seed * 1_000_003 + epoch)
            order = torch.randperm(len(rows), generator=generator)
        else:
            order = torch.arange(len(rows))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield gather_rows(rows, order[start : start + batch_size])
        epoch += 1


def heldout_eval_rows(rows: PackedRows, count: int) -> torch.Tensor:
    """`count` row indices spread evenly over the held-out stream, so every held-out package
    weighs in (the first rows alone would all come from one package)."""
    count = min(count, len(rows))
    return torch.linspace(0, len(rows) - 1, count).round().long().unique()


def batch_labels(input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """Next-token targets, ignoring every token that starts a document (or a row): it cannot be
    predicted from the document before it, which the model does not even attend to."""
    labels = input_ids.clone()
    labels[position_ids == 0] = -100
    return labels


# --- model and optimisation -------------------------------------------------------------------


def build_model(cfg: DictConfig, tokenizer) -> Qwen3ForCausalLM:
    fields = OmegaConf.to_container(cfg.qwen3, resolve=True)
    if fields["vocab_size"] < len(tokenizer):
        raise ValueError(
            f"qwen3.vocab_size={fields['vocab_size']} is smaller than the tokenizer ({len(tokenizer)} tokens); "
            "set qwen3.vocab_size to at least the tokenizer size"
        )
    eos = tokenizer.eos_token_id
    config = Qwen3Config(**fields, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id, bos_token_id=eos)
    # sdpa everywhere: with packed position_ids and no attention mask, transformers builds the
    # block-diagonal causal mask itself, so packed documents do not see each other.
    return Qwen3ForCausalLM._from_config(config, attn_implementation="sdpa", dtype=torch.float32)


def build_optimizer(model: torch.nn.Module, cfg: DictConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (embeddings included) and none on norm gains."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.optim.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps, fused=device.type == "cuda"
    )


def lr_factor(step: int, progress: float, warmup_steps: int, min_ratio: float) -> float:
    """Linear warmup over steps, then cosine from 1 to min_ratio over `progress` in [0, 1]."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(max(progress, 0.0), 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lm_loss(model, batch: dict, device: torch.device, autocast: torch.autocast) -> torch.Tensor:
    input_ids = batch["input_ids"].to(device, non_blocking=True)
    position_ids = batch["position_ids"].to(device, non_blocking=True)
    labels = batch_labels(input_ids, position_ids)
    with autocast:
        logits = model(input_ids=input_ids, position_ids=position_ids).logits
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)


@torch.no_grad()
def evaluate(model, rows: PackedRows, indices: torch.Tensor, batch_size: int, device, autocast) -> tuple[float, int]:
    """(mean token loss, number of target tokens) over the chosen held-out rows."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for chunk in indices.split(batch_size):
        batch = gather_rows(rows, chunk)
        n = int((batch_labels(batch["input_ids"], batch["position_ids"])[:, 1:] != -100).sum())
        total += float(lm_loss(model, batch, device, autocast)) * n
        count += n
    model.train(was_training)
    return total / max(count, 1), count


# --- checkpoint -------------------------------------------------------------------------------


def write_card(folder: Path, summary: dict) -> None:
    s = summary
    cfg_q = s["config"]["qwen3"]
    lines = [
        "# orthrus-small base model",
        "",
        "A small `Qwen3ForCausalLM` pretrained from scratch by this project on the offline Python corpus",
        "(standard library and installed packages, deduplicated, split by package), so that the Orthrus",
        "pipeline runs without downloading Qwen3 weights. It is the frozen AR view of `orthrus-small`.",
        "",
        "| | |",
        "| --- | --- |",
        f"| command | `{s['command']}` |",
        f"| commit | `{s['commit']}` |",
        f"| device | {s['device']} |",
        f"| parameters | {s['parameters']:,} ({cfg_q['num_hidden_layers']} layers, hidden {cfg_q['hidden_size']}, "
        f"{cfg_q['num_attention_heads']} heads / {cfg_q['num_key_value_heads']} KV heads, vocab {cfg_q['vocab_size']}) |",
        f"| tokens seen | {s['tokens_seen']:,} ({s['steps']} steps x {s['tokens_per_step']:,} tokens) |",
        f"| training time | {s['train_seconds']:.0f} s ({s['tokens_per_second']:,.0f} tokens/s; compile: {s['compiled']}) |",
        f"| stopped by | {s['stopped_by']} |",
        f"| final train loss | {s['final_train_loss']:.4f} (mean of the last {s['train_loss_window']} steps) |",
        f"| held-out loss | {s['heldout_loss']:.4f} (perplexity {math.exp(s['heldout_loss']):.2f}) on "
        f"{s['heldout_tokens_evaluated']:,} tokens of packages never trained on |",
        f"| corpus | {s['corpus']['train_bytes'] / 1e6:.1f} MB train ({s['corpus']['train_packages']} packages), "
        f"{s['corpus']['heldout_bytes'] / 1e6:.1f} MB held-out ({s['corpus']['heldout_packages']} packages); "
        f"{s['corpus']['train_tokens']:,} train tokens |",
        f"| weights | {s['save_dtype']} safetensors |",
        f"| finished | {s['finished_at']} |",
        "",
        "Full configuration and metrics: `pretrain_summary.json`; per-step log: `train_log.jsonl`.",
        "",
    ]
    atomic_write_text(folder / "README.md", "\n".join(lines))


def save_checkpoint(model, tokenizer, out_dir: Path, summary: dict, log_path: Path, save_dtype: torch.dtype) -> None:
    def write(tmp: Path):
        model.to(save_dtype).save_pretrained(tmp)
        GenerationConfig(
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=False
        ).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "pretrain_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if log_path.is_file():
            (tmp / "train_log.jsonl").write_bytes(log_path.read_bytes())
        write_card(tmp, summary)

    atomic_folder(out_dir, write)


# --- main -------------------------------------------------------------------------------------


def pretrain(cfg: DictConfig) -> dict:
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    autocast = torch.autocast(
        device.type, dtype=getattr(torch, cfg.train.dtype), enabled=device.type == "cuda" and cfg.train.dtype != "float32"
    )
    out_dir, log_dir = Path(cfg.out_dir), Path(cfg.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "train_log.jsonl"
    log_path.unlink(missing_ok=True)

    prepare_data(cfg)
    tokenizer = load_tokenizer(cfg.data.train_tokenizer.out_dir)
    if tokenizer.convert_tokens_to_ids(MASK_TOKEN) is None or tokenizer.mask_token_id is None:
        raise ValueError(f"tokenizer {cfg.data.train_tokenizer.out_dir} has no {MASK_TOKEN}; retrain it")
    seq_len = cfg.data.packed_dataset.seq_len
    if seq_len > cfg.qwen3.max_position_embeddings:
        raise ValueError(f"seq_len={seq_len} exceeds qwen3.max_position_embeddings={cfg.qwen3.max_position_embeddings}")

    t0 = time.time()
    load_args = OmegaConf.to_container(cfg.data.load_tokenized_dataset, resolve=True)
    if load_args.get("num_proc") is None and (os.cpu_count() or 1) > 2:
        load_args["num_proc"] = min(16, os.cpu_count())
    train_docs = load_tokenized_dataset(**{**load_args, "split": "train"})
    heldout_docs = load_tokenized_dataset(**{**load_args, "split": "heldout"})
    data = PackedDataset(train_docs, **cfg.data.packed_dataset)
    heldout = PackedRows(heldout_docs, seq_len)
    eval_indices = heldout_eval_rows(heldout, cfg.train.eval_rows)
    manifest = json.loads((Path(cfg.data.build_corpus.out_dir) / MANIFEST).read_text())
    corpus = {
        "train_bytes": manifest["splits"]["train"]["bytes"],
        "heldout_bytes": manifest["splits"]["heldout"]["bytes"],
        "train_packages": len(manifest["splits"]["train"]["packages"]),
        "heldout_packages": len(manifest["splits"]["heldout"]["packages"]),
        "train_tokens": int(data.rows.tokens.numel()),
        "heldout_tokens": int(heldout.tokens.numel()),
        "heldout_package_names": manifest["splits"]["heldout"]["packages"],
    }
    data_seconds = time.time() - t0
    print(f"data ready in {data_seconds:.0f} s: {corpus['train_tokens']:,} train tokens, "
          f"{corpus['heldout_tokens']:,} held-out tokens, {len(data.rows):,} rows of {seq_len}", flush=True)

    model = build_model(cfg, tokenizer).to(device)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    optimizer = build_optimizer(model, cfg, device)
    forward_model = torch.compile(model) if cfg.train.compile else model
    compiled = bool(cfg.train.compile)

    mb, accum = cfg.train.micro_batch_size, cfg.train.grad_accum
    tokens_per_step = mb * accum * seq_len
    max_tokens = int(cfg.train.max_tokens)
    max_steps = max(1, max_tokens // tokens_per_step)
    budget = cfg.train.time_budget_s
    if len(data.rows) < mb:
        raise ValueError(f"{len(data.rows)} packed rows are fewer than train.micro_batch_size={mb}; use more data")
    loader = train_batches(data, mb)
    print(f"model: {n_params:,} parameters; {max_steps:,} steps of {tokens_per_step:,} tokens"
          + (f", or {budget} s" if budget else ""), flush=True)

    step, tokens_seen, recent, last_log = 0, 0, [], (0.0, 0)
    heldout_loss = float("nan")
    stopped_by = "max_tokens"
    t_start = time.time()
    bar = tqdm(total=max_steps, desc="pretrain", unit="step", dynamic_ncols=True)
    with open(log_path, "a", encoding="utf-8") as log:
        while step < max_steps:
            elapsed = time.time() - t_start
            progress = max(step / max_steps, elapsed / budget if budget else 0.0)
            if progress >= 1.0:
                stopped_by = "time_budget_s"
                break
            lr = cfg.optim.lr * lr_factor(step, progress, cfg.optim.warmup_steps, cfg.optim.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batches = [next(loader) for _ in range(accum)]
            try:
                loss_sum = 0.0
                for batch in batches:
                    loss = lm_loss(forward_model, batch, device, autocast) / accum
                    loss.backward()
                    loss_sum += loss.detach()
            except Exception as err:  # a compile failure shows up at the first step
                if not (compiled and step == 0):
                    raise
                warnings.warn(f"torch.compile failed ({type(err).__name__}: {err}); continuing in eager mode")
                optimizer.zero_grad(set_to_none=True)
                forward_model, compiled = model, False
                continue
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_seen += tokens_per_step
            bar.update(1)

            if step % cfg.train.log_every == 0 or step == 1 or step == max_steps:
                loss_value = float(loss_sum)  # syncs the device, so only at log steps
                recent = (recent + [loss_value])[-10:]
                elapsed = time.time() - t_start
                record = {
                    "step": step, "tokens": tokens_seen, "loss": loss_value, "lr": lr,
                    "grad_norm": float(grad_norm), "elapsed_s": round(elapsed, 2),
                    # since the previous log line: the cumulative rate hides compilation time
                    "tokens_per_s": round((tokens_seen - last_log[1]) / max(elapsed - last_log[0], 1e-9)),
                }
                last_log = (elapsed, tokens_seen)
                if step % cfg.train.eval_every == 0:
                    heldout_loss, _ = evaluate(model, heldout, eval_indices, mb, device, autocast)
                    record["heldout_loss"] = heldout_loss
                log.write(json.dumps(record) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.1e}", tok_s=f"{record['tokens_per_s']:,}")
        bar.close()
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_seconds = time.time() - t_start
        heldout_loss, heldout_tokens = evaluate(model, heldout, eval_indices, mb, device, autocast)
        log.write(json.dumps({"step": step, "tokens": tokens_seen, "heldout_loss": heldout_loss, "final": True}) + "\n")
    if step == 0:
        raise RuntimeError("no training step ran: raise train.time_budget_s or train.max_tokens")
    if not recent:
        recent = [float(loss_sum)]
    summary = {
        "format": CARD_FORMAT,
        "command": command_line(),
        "commit": git_commit(),
        "device": device_name(device),
        "parameters": n_params,
        "steps": step,
        "tokens_per_step": tokens_per_step,
        "tokens_seen": tokens_seen,
        "train_seconds": round(train_seconds, 1),
        "data_seconds": round(data_seconds, 1),
        "tokens_per_second": tokens_seen / max(train_seconds, 1e-9),
        "compiled": compiled,
        "stopped_by": stopped_by,
        "final_train_loss": sum(recent) / len(recent),
        "train_loss_window": len(recent),
        "heldout_loss": heldout_loss,
        "heldout_tokens_evaluated": heldout_tokens,
        "corpus": corpus,
        "save_dtype": cfg.train.save_dtype,
        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    save_checkpoint(model, tokenizer, out_dir, summary, log_path, getattr(torch, cfg.train.save_dtype))
    print(f"saved {out_dir}: {tokens_seen:,} tokens in {train_seconds:.0f} s, train loss {summary['final_train_loss']:.3f}, "
          f"held-out loss {heldout_loss:.3f}", flush=True)
    return summary


@hydra.main(version_base="1.3", config_path="../conf", config_name="pretrain")
def main(cfg: DictConfig) -> None:
    pretrain(cfg)


if __name__ == "__main__":
    main()
