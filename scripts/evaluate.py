"""Evaluate one Orthrus checkpoint over prompt sets and block sizes (Hydra: conf/eval.yaml).

    python scripts/evaluate.py name=orthrus_qwen3_8b label=qwen3_8b model.base=chiennv/Orthrus-Qwen3-8B \\
        benchmarks=[humaneval,math500] limit=100
    python scripts/evaluate.py name=tiny model.base=/path/to/ckpt model.device=cpu model.dtype=float32 \\
        decode.max_new_tokens=64 decode.temperature=0.6 decode.top_k=20 decode.top_p=0.95

Writes ${out_dir}/${name}/metrics.json (every number, the resolved config, and provenance:
command, commit + dirty flag, device, versions, time) and metrics.md (tables).
"""

import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from data._io import atomic_write_text, check_writable
from data.tokenizer import load_tokenizer
from eval.fidelity import greedy_fidelity, sampling_fidelity, two_sample_test
from eval.metrics import kv_overhead
from eval.prompts import PromptSpec, encode_prompt, load_prompts, resolve_chat_template
from eval.provenance import provenance
from eval.report import run_markdown, write_json
from eval.runner import DecodeFn, DecodeRun, measure_block_sizes
from models.checkpoint import load_orthrus
from models.generate import _eos_ids, generate
from models.sampling import SamplingParams

log = logging.getLogger(__name__)
SILENT_TOKENS = 4  # mean new tokens per prompt below which a run is reported as (almost) silent


def torch_dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"model.dtype={name!r} is not a torch floating dtype (use float32, bfloat16 or float16)")
    return dtype


def check_config(cfg: DictConfig) -> Path:
    """Everything that can be checked before a model is loaded; returns the (writable) output folder."""
    for k in cfg.decode.block_sizes:
        if k is not None and (not isinstance(k, int) or k < 1):
            raise ValueError(f"decode.block_sizes has {k!r}: each entry is an integer >= 1 (1 = the AR baseline) "
                             "or null (the checkpoint's K)")
    if cfg.model.block_size is not None and cfg.model.block_size < 1:
        raise ValueError(f"model.block_size={cfg.model.block_size} must be >= 1 (null: the checkpoint's K)")
    unknown = [b for b in cfg.benchmarks if b not in cfg.prompt_sets]
    if unknown:
        raise KeyError(f"benchmarks {unknown} are not in prompt_sets (known: {sorted(cfg.prompt_sets)})")
    return check_writable(Path(cfg.out_dir) / cfg.name, "out_dir")


def run(cfg: DictConfig, decode_fn: DecodeFn = generate, command: list[str] | None = None) -> Path:
    """Evaluate per `cfg` and write the results; returns the metrics.json path."""
    out = check_config(cfg)
    model_args = OmegaConf.to_container(cfg.model, resolve=True)
    model = load_orthrus(**{**model_args, "dtype": torch_dtype(model_args["dtype"])})
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.model.base)
    chat_template = resolve_chat_template(cfg.prompt.chat_template, tokenizer, _eos_ids(model, None))
    sampling = SamplingParams(cfg.decode.temperature, cfg.decode.top_k, cfg.decode.top_p)
    block_sizes = sorted({model.config.block_size if k is None else k for k in cfg.decode.block_sizes})
    max_new = cfg.decode.max_new_tokens
    decode = dict(max_new_tokens=max_new, sampling=sampling, seed=cfg.decode.seed, warmup=cfg.decode.warmup,
                  decode_fn=decode_fn, progress=cfg.progress)

    report = {
        "name": cfg.name,
        "label": cfg.label,
        "provenance": provenance(model.device, command),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "model": {
            "base": cfg.model.base,
            "diffusion": cfg.model.diffusion,
            "dtype": cfg.model.dtype,
            "block_size": model.config.block_size,
            "num_parameters": sum(p.numel() for p in model.parameters()),
            "kv_overhead": kv_overhead(model.config, model.config.block_size, model.dtype),
        },
        "decode": {"max_new_tokens": max_new, "sampling": str(sampling), "block_sizes": block_sizes},
        "runs": [],
        "fidelity": [],
        "context_sweep": [],
    }
    encoded = {}
    for bench in tqdm(cfg.benchmarks, desc="benchmarks", disable=not cfg.progress):
        spec = PromptSpec(**OmegaConf.to_container(cfg.prompt_sets[bench], resolve=True))
        ids = [encode_prompt(tokenizer, p.text, chat_template=chat_template,
                             enable_thinking=cfg.prompt.enable_thinking) for p in load_prompts(spec, cfg.limit)]
        encoded[bench] = ids
        rows, runs = measure_block_sizes(model, ids, block_sizes, desc=bench, **decode)
        warn_if_silent(bench, runs[max(block_sizes)], chat_template)
        report["runs"] += [{"benchmark": bench, "num_prompts": len(ids), **row} for row in rows]
        report["fidelity"].append(fidelity(cfg, model, ids, runs[max(block_sizes)], sampling, decode_fn) | {"benchmark": bench})

    if cfg.context_sweep.lengths:
        source = [t for prompts in encoded.values() for ids in prompts for t in ids]
        for length in tqdm(cfg.context_sweep.lengths, desc="context sweep", disable=not cfg.progress):
            prompt = (source * (length // len(source) + 1))[:length]
            rows, _ = measure_block_sizes(model, [prompt], block_sizes, desc=f"ctx {length}",
                                          **{**decode, "max_new_tokens": cfg.context_sweep.max_new_tokens})
            report["context_sweep"] += [{"context_len": length, **row} for row in rows]

    path = write_json(out / "metrics.json", report)
    atomic_write_text(out / "metrics.md", run_markdown(report))
    return path


def warn_if_silent(bench: str, run: DecodeRun, chat_template: bool) -> None:
    """A run whose prompts end almost at once measures nothing (TPF of a one-token output): say so."""
    mean = sum(r.num_new_tokens for r in run.results) / len(run.results)
    if mean < SILENT_TOKENS:
        hint = ("prompt.chat_template=false if this is a base model (it reads the chat turn as text and stops)"
                if chat_template else "a different prompt set, or check the model's EOS token")
        log.warning("%s: the model emitted %.1f new tokens per prompt on average, too few for meaningful metrics; "
                    "try %s", bench, mean, hint)


def fidelity(cfg: DictConfig, model, prompts: list[list[int]], run: DecodeRun, sampling: SamplingParams,
             decode_fn: DecodeFn) -> dict:
    """Exact match (greedy), analytic KL and the two-sample test (sampling), as configured."""
    f, n, K = cfg.fidelity, cfg.fidelity.num_prompts, run.block_size
    row = {"dtype": cfg.model.dtype, "block_size": K, "exact_match": None, "sampling_kl": None, "two_sample": None}
    if f.exact_match:
        candidates = [r.new_tokens.tolist() for r in run.results[:n]] if sampling.greedy else None
        row["exact_match"] = greedy_fidelity(model, prompts[:n], cfg.decode.max_new_tokens, candidates=candidates,
                                             block_size=K, decode_fn=decode_fn, progress=cfg.progress)
    if not sampling.greedy and f.sampling_kl:
        row["sampling_kl"] = sampling_fidelity(model, run.results[:n], sampling, progress=cfg.progress)
    if not sampling.greedy and f.two_sample_samples:
        row["two_sample"] = two_sample_test(model, prompts[0], sampling, max_new_tokens=f.two_sample_tokens,
                                            num_samples=f.two_sample_samples, block_size=K, decode_fn=decode_fn,
                                            seed=cfg.decode.seed, progress=cfg.progress)
    return row


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    path = run(cfg)
    print(f"wrote {path} and {path.with_name('metrics.md')}")


if __name__ == "__main__":
    main()
