"""Evaluate one checkpoint over prompt sets and block sizes (the eval config, conf/eval.yaml), or a list
of checkpoints (its `reproduce` section), and write the paper-style tables and figures from metrics files.
Entry points: `python -m scripts.evaluate`, `python -m scripts.reproduce_tables`.

decode.engine picks the decoder: `fast` (models/engine.py) or `reference` (models/generate.py).
Timing follows eval/timing.py's protocol (every prompt-length bucket, K and mode warmed first).
Writes ${out_dir}/${name}/metrics.json (every number, the resolved config, the timing protocol, the
train.py overrides of a view trained by train.py, and provenance: the command as it ran, commit + dirty
flag, a hash of the sources that ran, device, versions, time) and metrics.md (tables).
"""

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from data._io import atomic_write_text, check_writable
from data.tokenizer import load_tokenizer
from eval import figures
from eval.accuracy import add_accuracy
from eval.fidelity import base_generate, greedy_fidelity, sampling_fidelity, two_sample_test
from eval.metrics import kv_overhead
from eval.paper_tables import (
    UNIT_NOTE,
    PaperNumbers,
    fidelity_table,
    memory_table,
    sources_markdown,
    speed_table,
    table1,
    to_csv,
)
from eval.prompts import PromptSpec, encode_prompt, load_prompts, resolve_chat_template
from eval.provenance import provenance, training_overrides
from eval.report import markdown_table, read_json, run_markdown, write_json
from eval.runner import DecodeFn, DecodeRun, EngineDecode, measure_block_sizes
from eval.timing import protocol
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


DECODERS = ("fast", "reference")


def decode_function(name: str, max_seq_len: int, batch_size: int = 1) -> DecodeFn:
    """decode.engine: the fast engine (batch_size requests at once), or the reference loop on
    transformers' cache (one prompt at a time)."""
    if name == "fast":
        return EngineDecode(max_seq_len, batch_size)
    if name == "reference":
        return generate
    raise ValueError(f"decode.engine={name!r}: use one of {DECODERS}")


def check_config(cfg: DictConfig) -> Path:
    """Everything that can be checked before a model is loaded; returns the (writable) output folder."""
    if cfg.decode.engine not in DECODERS:
        raise ValueError(f"decode.engine={cfg.decode.engine!r}: use one of {DECODERS}")
    for k in cfg.decode.block_sizes:
        if k is not None and (not isinstance(k, int) or k < 1):
            raise ValueError(
                f"decode.block_sizes has {k!r}: each entry is an integer >= 1 (1 = the AR baseline) "
                "or null (the checkpoint's K)"
            )
    if not isinstance(cfg.decode.batch_size, int) or cfg.decode.batch_size < 1:
        raise ValueError(f"decode.batch_size={cfg.decode.batch_size!r} must be an integer >= 1")
    if cfg.model.block_size is not None and cfg.model.block_size < 1:
        raise ValueError(f"model.block_size={cfg.model.block_size} must be >= 1 (null: the checkpoint's K)")
    unknown = [b for b in cfg.benchmarks if b not in cfg.prompt_sets]
    if unknown:
        raise KeyError(f"benchmarks {unknown} are not in prompt_sets (known: {sorted(cfg.prompt_sets)})")
    return check_writable(Path(cfg.out_dir) / cfg.name, "out_dir")


def warn_if_silent(bench: str, run: DecodeRun, chat_template: bool) -> None:
    """A run whose prompts end almost at once measures nothing (TPF of a one-token output): say so."""
    mean = sum(r.num_new_tokens for r in run.results) / len(run.results)
    if mean < SILENT_TOKENS:
        hint = (
            "prompt.chat_template=false if this is a base model (it reads the chat turn as text and stops)"
            if chat_template
            else "a different prompt set, or check the model's EOS token"
        )
        log.warning(
            "%s: the model emitted %.1f new tokens per prompt on average, too few for meaningful metrics; try %s",
            bench,
            mean,
            hint,
        )


def run(cfg: DictConfig, command: list[str] | None = None) -> Path:
    """Evaluate per `cfg` and write the results; returns the metrics.json path. `command`: the argv to
    record (default sys.argv); it must reproduce the run as written."""
    out = check_config(cfg)
    model_args = OmegaConf.to_container(cfg.model, resolve=True)
    model = load_orthrus(**{**model_args, "dtype": torch_dtype(model_args["dtype"])})
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.model.base)
    chat_template = resolve_chat_template(cfg.prompt.chat_template, tokenizer, _eos_ids(model, None))
    sampling = SamplingParams(cfg.decode.temperature, cfg.decode.top_k, cfg.decode.top_p)
    block_sizes = sorted({model.config.block_size if k is None else k for k in cfg.decode.block_sizes})
    max_new = cfg.decode.max_new_tokens
    prompts = {
        bench: load_prompts(PromptSpec(**OmegaConf.to_container(cfg.prompt_sets[bench], resolve=True)), cfg.limit)
        for bench in cfg.benchmarks
    }
    encoded = {
        bench: [
            encode_prompt(tokenizer, p.text, chat_template=chat_template, enable_thinking=cfg.prompt.enable_thinking)
            for p in ps
        ]
        for bench, ps in prompts.items()
    }
    longest = max([len(ids) for prompts in encoded.values() for ids in prompts] + list(cfg.context_sweep.lengths))
    decode_fn = decode_function(
        cfg.decode.engine,
        longest + max(max_new, cfg.context_sweep.max_new_tokens) + max(block_sizes),
        cfg.decode.batch_size,
    )
    decode = dict(
        max_new_tokens=max_new,
        sampling=sampling,
        seed=cfg.decode.seed,
        warmup=cfg.decode.warmup,
        decode_fn=decode_fn,
        progress=cfg.progress,
    )

    report = {
        "name": cfg.name,
        "label": cfg.label,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "model": {
            "base": cfg.model.base,
            "diffusion": cfg.model.diffusion,
            "trained_with": training_overrides(cfg.model.diffusion),
            "dtype": cfg.model.dtype,
            "block_size": model.config.block_size,
            "num_parameters": sum(p.numel() for p in model.parameters()),
            "kv_overhead": kv_overhead(model.config, model.config.block_size, model.dtype),
        },
        "decode": {
            "engine": cfg.decode.engine,
            "decode_fn": getattr(decode_fn, "__name__", str(decode_fn)),
            "batch_size": getattr(decode_fn, "batch_size", 1),
            "max_new_tokens": max_new,
            "sampling": str(sampling),
            "block_sizes": block_sizes,
        },
        "timing_protocol": protocol(cfg.decode.warmup, batch_size=getattr(decode_fn, "batch_size", 1)),
        "runs": [],
        "fidelity": [],
        "context_sweep": [],
    }
    for bench, ids in tqdm(encoded.items(), desc="benchmarks", disable=not cfg.progress):
        rows, runs = measure_block_sizes(model, ids, block_sizes, desc=bench, **decode)
        add_accuracy(rows, runs, cfg.suite.get(bench), prompts[bench], tokenizer, cfg.suite.timeout_s)
        warn_if_silent(bench, runs[max(block_sizes)], chat_template)
        report["runs"] += [{"benchmark": bench, "num_prompts": len(ids), **row} for row in rows]
        references = greedy_references(cfg, model, ids, sampling)
        report["fidelity"] += [
            fidelity(cfg, model, ids, runs[K], sampling, decode_fn, references) | {"benchmark": bench}
            for K in block_sizes
            if K > 1 or len(block_sizes) == 1
        ]

    if cfg.context_sweep.lengths:
        source = [t for prompts in encoded.values() for ids in prompts for t in ids]
        for length in tqdm(cfg.context_sweep.lengths, desc="context sweep", disable=not cfg.progress):
            prompt = (source * (length // len(source) + 1))[:length]
            rows, _ = measure_block_sizes(
                model,
                [prompt],
                block_sizes,
                desc=f"ctx {length}",
                **{**decode, "max_new_tokens": cfg.context_sweep.max_new_tokens},
            )
            report["context_sweep"] += [{"context_len": length, **row} for row in rows]

    report = {
        "name": report.pop("name"),
        "label": report.pop("label"),
        "provenance": provenance(model.device, command),
        **report,
    }  # last: hashes every source that ran
    path = write_json(out / "metrics.json", report)
    atomic_write_text(out / "metrics.md", run_markdown(report))
    return path


def greedy_references(cfg: DictConfig, model, prompts: list[list[int]], sampling: SamplingParams) -> list | None:
    """transformers' greedy output on the first fidelity.num_prompts prompts, once for every K."""
    if not (cfg.fidelity.exact_match and sampling.greedy):
        return None
    return [
        base_generate(model, torch.tensor([ids], device=model.device), cfg.decode.max_new_tokens)
        for ids in tqdm(
            prompts[: cfg.fidelity.num_prompts], desc="transformers generate", disable=not cfg.progress, leave=False
        )
    ]


def fidelity(
    cfg: DictConfig,
    model,
    prompts: list[list[int]],
    run: DecodeRun,
    sampling: SamplingParams,
    decode_fn: DecodeFn,
    references: list | None,
) -> dict:
    """Exact match (greedy), the per-token sampling test and the two-sample test (sampling), as configured."""
    f, n, K = cfg.fidelity, cfg.fidelity.num_prompts, run.block_size
    row = {"dtype": cfg.model.dtype, "block_size": K, "exact_match": None, "sampling": None, "two_sample": None}
    if f.exact_match:
        candidates = [r.new_tokens.tolist() for r in run.results[:n]] if sampling.greedy else None
        row["exact_match"] = greedy_fidelity(
            model,
            prompts[:n],
            cfg.decode.max_new_tokens,
            candidates=candidates,
            references=references,
            block_size=K,
            decode_fn=decode_fn,
            progress=cfg.progress,
        )
    if not sampling.greedy and f.sampling_test:
        row["sampling"] = sampling_fidelity(
            model, run.results, sampling, alpha=f.alpha, seed=cfg.decode.seed, progress=cfg.progress
        )
    if not sampling.greedy and f.two_sample_samples:
        row["two_sample"] = two_sample_test(
            model,
            prompts[0],
            sampling,
            max_new_tokens=f.two_sample_tokens,
            num_samples=f.two_sample_samples,
            block_size=K,
            decode_fn=decode_fn,
            seed=cfg.decode.seed,
            progress=cfg.progress,
        )
    return row


def evaluate_checkpoints(cfg: DictConfig) -> list[Path]:
    """metrics.json of every configured checkpoint, evaluating those not already done."""
    paths = []
    for name in cfg.reproduce.run:
        if name not in cfg.reproduce.checkpoints:
            raise KeyError(
                f"reproduce.run names {name!r}, which is not in reproduce.checkpoints "
                f"(known: {sorted(cfg.reproduce.checkpoints)})"
            )
        # the paper's speedups are per request (batch 1); a checkpoint's own overrides may still set it
        batch = {"decode": {"batch_size": cfg.reproduce.batch_size}}
        run_cfg = OmegaConf.merge(cfg, batch, cfg.reproduce.checkpoints[name], {"name": name})
        path = Path(run_cfg.out_dir) / name / "metrics.json"
        if not (cfg.reproduce.skip_existing and path.is_file()):
            path = (evaluate_suite if cfg.reproduce.suite_lengths else run)(run_cfg)
        paths.append(path)
    return paths


def evaluate_suite(cfg: DictConfig) -> Path:
    """One evaluate call per benchmark at its suite max_new_tokens (conf/eval/suite.yaml), merged into
    ${out_dir}/<name>/metrics.json (each benchmark's own file stays under <name>/<benchmark>/)."""
    merged = None
    for bench in cfg.benchmarks:
        length = cfg.suite[bench].max_new_tokens if bench in cfg.suite else cfg.decode.max_new_tokens
        part = read_json(
            run(
                OmegaConf.merge(
                    cfg, {"name": f"{cfg.name}/{bench}", "benchmarks": [bench], "decode": {"max_new_tokens": length}}
                )
            )
        )
        if merged is None:
            merged = {**part, "name": cfg.name, "runs": [], "fidelity": [], "context_sweep": []}
            merged["config"]["benchmarks"] = list(cfg.benchmarks)
        for key in ("runs", "fidelity", "context_sweep"):
            merged[key] += part[key]
        merged.setdefault("max_new_tokens_by_benchmark", {})[bench] = length
    out = Path(cfg.out_dir) / cfg.name
    atomic_write_text(out / "metrics.md", run_markdown(merged))
    return write_json(out / "metrics.json", merged)


def write_tables(metrics_paths: list[Path], paper_numbers: Path, out_dir: Path) -> list[Path]:
    """Tables (markdown + CSV) and figures from metrics files; returns the files written."""
    if not metrics_paths:
        raise ValueError("no metrics files: set reproduce.run and/or reproduce.metrics")
    reports = [read_json(p) for p in metrics_paths]
    paper = PaperNumbers.load(paper_numbers)
    sources: list[dict] = []
    tables = {
        "table1": (
            "Table 1 layout: TPF (tokens / all forward passes), speedup and accuracy vs the base (largest K per model)",
            table1(reports, paper, sources),
        ),
        "speed": (
            "TPF, acceptance length and speedup in their units (largest K per model)",
            speed_table(reports, paper, sources),
        ),
        "fidelity": (
            "Fidelity (greedy exact match vs transformers.generate; sampling: per-token test vs the base "
            "sampler, and the two-sample test)",
            fidelity_table(reports),
        ),
        "memory": ("KV-cache overhead and peak memory", memory_table(reports, paper, sources)),
    }
    written = []
    md = [
        "# Orthrus: reproduced tables\n",
        "Runs: "
        + ", ".join(
            f"{r['name']} ({r['provenance']['git']['commit'] or 'no git'}"
            f"{', dirty' if r['provenance']['git']['dirty'] else ''};"
            f" {r['provenance']['device']})"
            for r in reports
        )
        + "\n",
    ]
    for key, (title, (headers, rows)) in tables.items():
        units = [UNIT_NOTE + "\n"] if key in ("table1", "speed") else []
        md += [f"## {title}\n", *units, markdown_table(headers, rows)]
        path = out_dir / f"{key}.csv"
        atomic_write_text(path, to_csv(headers, rows))
        written.append(path)
    if sources:
        md.append(sources_markdown(paper, sources))
        rows = [
            [
                i,
                n["metric"],
                n["method"],
                n["model"],
                n["benchmark"],
                n["temperature"],
                n["value"],
                n["unit"],
                n["qualifier"],
                paper.source_text(n),
            ]
            for i, n in enumerate(sources, 1)
        ]
        path = out_dir / "paper_sources.csv"
        headers = ["ref", "metric", "method", "model", "benchmark", "T", "value", "unit", "qualifier", "source"]
        atomic_write_text(path, to_csv(headers, rows))
        written.append(path)
    for fig in (
        figures.tpf_by_benchmark(reports, paper, out_dir / "tpf_by_benchmark.png"),
        figures.acceptance_histograms(reports, out_dir / "acceptance_histograms.png"),
        figures.throughput_vs_context(reports, out_dir / "throughput_vs_context.png"),
    ):
        if fig is not None:
            md.append(f"![{fig.stem}]({fig.name})\n")
            written.append(fig)
    atomic_write_text(out_dir / "tables.md", "\n".join(md))
    return [out_dir / "tables.md", *written]
