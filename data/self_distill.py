"""Self-distillation data: the frozen base model answers a prompt set, written as a dataset.

The usual recipe for drafters: train the diffusion view on the base model's *own* responses,
so the view learns the distribution it will have to predict at decoding time rather than
the distribution of some other model that wrote the SFT data.

`generate_responses` reads prompts with `data.datasets.load_raw_dataset` (a local
.jsonl/.json/.parquet file or folder, or a hub dataset), has the base answer them, and writes JSONL
shards that `data.datasets.load_tokenized_dataset` reads back (conf/data/self_distill.yaml):

* chat_template=True:  {"messages": [...prompt turns, {"role": "assistant", "content": response}]}
* chat_template=False: {"text": prompt + response}

Two decoders answer (`decoder`):

* "fast" (default): the batched engine's request queue (`models.serving.Server` on a
  `models.engine.OrthrusEngine`), `batch_size` prompts decoding at once, each slot taking the next
  prompt as its answer finishes, at block size K = 1: plain autoregressive decoding by the base
  (fp32 greedy: its exact tokens; sampling: its exact distribution). K = 1 never runs the diffusion
  view, so the engine is built over the base with that view tied to the AR view's weights
  (`load_base`); its cache holds the rank's longest prompt plus max_new_tokens per slot. Prompt i
  (its index in the whole prompt set) samples with seed `prompt_seed(seed, i)`, so its answer does
  not depend on the batch, the shard or the rank that decodes it.
* "hf": `transformers`' batched `generate` with left padding and an explicit attention mask,
  prompts of similar length batched together; shard j samples from torch's generator seeded
  `seed + j`.

At the paper's scale (600K prompts of nvidia/Nemotron-Post-Training-Dataset-v2, chat : math :
code = 1 : 1 : 1: `split=[chat, math, code]` with `limit=200000` per split) the job runs as one
process per GPU over any number of nodes (torchrun or Slurm): shard i belongs to rank
i % world_size, so ranks share no state but the folder, and any number of ranks can resume any
earlier partial run.

Layout of `out_dir`: `train-00000.jsonl`, ... (each shard written atomically, with a hidden
`.train-00000.stats.json` beside it once complete), a hidden `.self_distill.json` holding the
run's parameters (so an interrupted run resumes shard by shard, and a rerun with different
parameters is refused), and `manifest.json`, written by whichever rank finishes the last shard:
its presence marks the folder complete, and a rerun into a complete folder is a no-op unless
`overwrite=True`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import GenerationMixin

from data._io import atomic_open, atomic_write_text
from data.datasets import load_raw_dataset
from models.checkpoint import load_ar_view
from models.engine import OrthrusEngine
from models.sampling import SamplingParams
from models.serving import Server, serve_all

MANIFEST = "manifest.json"
PARAMS = ".self_distill.json"  # hidden: data.datasets._split_files skips it
SHARD = "train-{:05d}.jsonl"
DECODERS = ("fast", "hf")

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", 0))))
        return torch.device("cpu")
    return torch.device(device)


def process_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world_size): as given, else torchrun's RANK/WORLD_SIZE, else Slurm's SLURM_PROCID/SLURM_NTASKS,
    else (0, 1)."""
    env = os.environ
    if rank is None:
        rank = int(env.get("RANK", env.get("SLURM_PROCID", 0)))
    if world_size is None:
        world_size = int(env.get("WORLD_SIZE", env.get("SLURM_NTASKS", 1)))
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    return rank, world_size


def _resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use auto or one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def _is_local(text: str) -> bool:
    return os.path.isabs(text) or text.startswith((".", "~"))


def load_base(model_name_or_path: str | os.PathLike, *, dtype: str = "auto", device: str = "auto", decoder: str = "hf"):
    """The base model (eval mode, on `device`) and its tokenizer, set up for left-padded batches.

    decoder="hf": the checkpoint as `transformers` loads it. decoder="fast": an `OrthrusForCausalLM`
    (what the engine decodes) over the same weights, for K = 1 only: a plain Qwen3 checkpoint gets
    placeholder block_size / mask_token_id (K = 1 drafts nothing; the mask id only pads prefill
    chunks, after the real tokens), and every diffusion-view module is the AR view's own module
    (`models.checkpoint.load_ar_view`), so the view is never allocated (a merged Orthrus checkpoint's
    trained view is not read).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    text = str(model_name_or_path)
    path = Path(text).expanduser()
    if not path.exists() and _is_local(text):
        raise FileNotFoundError(
            f"base model folder {path} does not exist (model_name_or_path={text!r}); "
            "pass a local checkpoint folder or a hub name such as Qwen/Qwen3-8B"
        )
    name = str(path) if path.exists() else text
    dev = _resolve_device(device)
    tokenizer = AutoTokenizer.from_pretrained(name)
    tokenizer.padding_side = "left"  # generation appends on the right: prompts must end at the same column
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ValueError(f"tokenizer of {text!r} has neither a pad nor an eos token; cannot pad batches")
        tokenizer.pad_token = tokenizer.eos_token
    if decoder == "hf":
        model = AutoModelForCausalLM.from_pretrained(name, dtype=_resolve_dtype(dtype, dev)).to(dev).eval()
        return model, tokenizer
    model = load_ar_view(name, block_size=2, mask_token_id=0, dtype=_resolve_dtype(dtype, dev), device=dev)
    return model, tokenizer


def eos_token_ids(model, tokenizer) -> list[int]:
    """Generation stops at any of: the generation config's eos ids and the tokenizer's eos."""
    ids = model.generation_config.eos_token_id
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def _prompt_of(record: dict, prompt_field: str, messages_field: str | None) -> str | list[dict] | None:
    """A text prompt, or the chat turns before the first assistant turn; None if there is no prompt."""
    if messages_field is not None and record.get(messages_field) is not None:
        turns = []
        for message in record[messages_field]:
            if message["role"] == "assistant":
                break
            turns.append({"role": message["role"], "content": message["content"]})
        return turns if any(t["role"] == "user" for t in turns) else None
    prompt = record.get(prompt_field)
    return prompt if isinstance(prompt, str) and prompt.strip() else None


def _render(prompt, tokenizer, chat_template: bool, template_kwargs: dict) -> str:
    if not chat_template:
        if not isinstance(prompt, str):
            raise ValueError("chat records (messages) need chat_template=True")
        return prompt
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **template_kwargs)


def _record(prompt, response: str, chat_template: bool) -> dict:
    if not chat_template:
        return {"text": prompt + response}
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    return {"messages": messages + [{"role": "assistant", "content": response}]}


@torch.no_grad()
def generate_batch(
    model,
    tokenizer,
    texts: list[str],
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    top_k: int,
    eos_ids: list[int],
) -> list[list[int]]:
    """Generated token ids per prompt (left padding, explicit attention mask), cut after the first eos."""
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    sampling = (
        {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": top_k}
        if temperature > 0
        else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    )
    out = GenerationMixin.generate(  # the plain base's batched generate, also for a merged Orthrus model
        model,
        input_ids=enc["input_ids"],
        attention_mask=enc["attention_mask"],
        max_new_tokens=max_new_tokens,
        eos_token_id=eos_ids,
        pad_token_id=tokenizer.pad_token_id,
        **sampling,
    )
    responses = []
    for row in out[:, enc["input_ids"].shape[1] :].tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in eos_ids), len(row))
        responses.append(row[:cut])
    return responses


def prompt_seed(seed: int, index: int) -> int:
    """The sampler seed of prompt `index` in a run seeded `seed` (decoder="fast"): a hash of both, so
    no two prompts of a run, nor of runs with nearby seeds, share a seed, whatever decodes them."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{index}".encode()).digest()[:8], "little") >> 2


def serve_batch(
    engine: OrthrusEngine,
    prompts: list[list[int]],
    seeds: list[int | None],
    *,
    batch_size: int,
    max_new_tokens: int,
    sampling: SamplingParams,
    eos_ids: list[int],
    bar=None,
) -> list[list[int]]:
    """Generated token ids per prompt (the eos that ends one included), all prompts through one request
    queue at K = 1, `batch_size` decoding at once; prompt i samples with seeds[i]."""
    server = Server(engine, 1, batch_size=batch_size)
    results = serve_all(
        server,
        prompts,
        max_new_tokens,
        seeds,
        sampling=sampling,
        eos_token_id=eos_ids,
        on_finish=None if bar is None else lambda i, result: bar.update(1),
    )
    return [result.new_tokens.tolist() for result in results]


def generate_responses(
    model_name_or_path: str | os.PathLike,
    prompts_source: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    split: str | list[str] = "train",
    subset: str | None = None,
    prompt_field: str = "prompt",
    messages_field: str | None = "messages",
    chat_template: bool = True,
    enable_thinking: bool | None = None,
    max_new_tokens: int = 1024,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    batch_size: int = 16,
    decoder: str = "fast",
    dtype: str = "auto",
    device: str = "auto",
    limit: int | None = None,
    seed: int = 0,
    shard_size: int = 1000,
    overwrite: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
) -> dict:
    """Have the base model answer every prompt of `prompts_source`; write the dataset to `out_dir`.

    Args:
        model_name_or_path: the frozen base (local folder or hub name); its tokenizer is used.
        prompts_source, split, subset: passed to `data.datasets.load_raw_dataset`. A list of splits is read
            split by split, `limit` records from each (equal limits: a 1:1:...:1 mix).
        prompt_field / messages_field: records hold a text prompt, or a chat list whose turns
            before the first assistant turn are the prompt (set messages_field=None to ignore it).
            Records with neither are skipped (counted in the manifest).
        chat_template: render prompts with the tokenizer's chat template (generation prompt
            added) and write chat records; False: raw text prompts, {"text": prompt + response}.
        enable_thinking: passed to the chat template when it uses it (Qwen3); None: its default.
        temperature: 0 is greedy; > 0 samples with top_p / top_k (top_k=0: off).
        batch_size: prompts decoded at once (fast: engine slots, refilled as answers finish; hf: one
            padded batch).
        decoder: "fast" (the batched engine at K = 1) or "hf" (`transformers`' generate); see the module
            docstring. Part of the run's parameters: a partial run resumes only with the same decoder.
        limit: only the first `limit` records (of each split). seed: the run's sampling seed (fast: per
            prompt, `prompt_seed(seed, index)`; hf: per shard, seed + shard).
        shard_size: records per JSONL shard (the unit of resumption and of work between ranks).
        overwrite: regenerate even if `out_dir` holds a complete run (one process only: clear the folder
            before starting several).
        rank, world_size: this process does shards rank, rank + world_size, ...; None: from the
            environment (`process_rank`).
    Returns the manifest, or, while other ranks' shards are missing, {"complete": False, ...}.
    """
    rank, world_size = process_rank(rank, world_size)
    if overwrite and world_size > 1:
        raise ValueError(
            "overwrite=True with several ranks would let them delete each other's shards; "
            "remove out_dir once, then start the ranks without overwrite"
        )
    out = Path(out_dir)
    if shard_size < 1 or batch_size < 1:
        raise ValueError("shard_size and batch_size must be >= 1")
    if decoder not in DECODERS:
        raise ValueError(f"decoder={decoder!r}: choose one of {DECODERS}")
    sampling = SamplingParams(temperature, top_k, top_p)  # checks them
    params = {
        "model": str(model_name_or_path),
        "source": str(prompts_source),
        "split": split,
        "subset": subset,
        "prompt_field": prompt_field,
        "messages_field": messages_field,
        "chat_template": chat_template,
        "enable_thinking": enable_thinking,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
        "decoder": decoder,
        "limit": limit,
        "seed": seed,
        "shard_size": shard_size,
    }
    if (out / MANIFEST).is_file() and not overwrite:
        return json.loads((out / MANIFEST).read_text())
    if overwrite and out.exists():
        shutil.rmtree(out)
    elif out.is_dir() and not (out / PARAMS).is_file() and any(not p.name.startswith(".") for p in out.iterdir()):
        raise FileExistsError(f"{out} exists and is not a self-distillation folder; pick another out_dir")
    if (out / PARAMS).is_file():
        previous = json.loads((out / PARAMS).read_text())
        if previous != params:
            changed = sorted(k for k in params if previous.get(k) != params[k])
            raise ValueError(f"{out} holds a partial run with different parameters {changed}; pass overwrite=True")

    model, tokenizer = load_base(model_name_or_path, dtype=dtype, device=device, decoder=decoder)
    template_kwargs = {}
    if chat_template:
        if tokenizer.chat_template is None:
            raise ValueError(f"tokenizer of {model_name_or_path!r} has no chat template; set chat_template=False")
        if enable_thinking is not None and "enable_thinking" in str(tokenizer.chat_template):
            template_kwargs["enable_thinking"] = enable_thinking
    eos_ids = eos_token_ids(model, tokenizer)

    prompts = []
    for name in [split] if isinstance(split, str) else list(split):
        raw = load_raw_dataset(prompts_source, split=name, subset=subset)
        if limit is not None:
            raw = raw.select(range(min(limit, len(raw))))
        prompts += [_prompt_of(r, prompt_field, messages_field) for r in raw]
    kept = [p for p in prompts if p is not None]
    if not kept:
        raise ValueError(
            f"no prompts in {prompts_source!r}: records need a {prompt_field!r} or {messages_field!r} field"
        )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / PARAMS, json.dumps(params, indent=2) + "\n")

    shards = [kept[i : i + shard_size] for i in range(0, len(kept), shard_size)]
    mine = [i for i in range(len(shards)) if i % world_size == rank]
    todo = [i for i in mine if not (_stats_path(out, i).is_file() and (out / SHARD.format(i)).is_file())]
    texts, ids = {}, {}  # per shard still to do: rendered prompts and their token ids
    for index in todo:
        texts[index] = [_render(p, tokenizer, chat_template, template_kwargs) for p in shards[index]]
        ids[index] = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts[index]]
    engine = None
    if decoder == "fast" and todo:  # cache rows for the longest prompt of this rank plus its answer
        longest = max(len(row) for index in todo for row in ids[index])
        engine = OrthrusEngine(model, longest + max_new_tokens, max_batch_size=batch_size, block_sizes=(1,))
    bar = tqdm(total=sum(len(shards[i]) for i in mine), desc=f"self-distill rank {rank}/{world_size}", unit="prompt")
    for index in mine:
        shard, path = shards[index], out / SHARD.format(index)
        if index not in texts:  # done by an earlier, interrupted run
            bar.update(len(shard))
            continue
        lengths = [len(row) for row in ids[index]]
        if engine is not None:
            first = index * shard_size
            seeds = [None if sampling.greedy else prompt_seed(seed, first + i) for i in range(len(shard))]
            responses = serve_batch(
                engine,
                ids[index],
                seeds,
                batch_size=batch_size,
                max_new_tokens=max_new_tokens,
                sampling=sampling,
                eos_ids=eos_ids,
                bar=bar,
            )
        else:
            torch.manual_seed(seed + index)
            order = sorted(range(len(shard)), key=lambda i: -lengths[i])  # similar lengths share a batch
            responses = [None] * len(shard)
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                rows = generate_batch(
                    model,
                    tokenizer,
                    [texts[index][i] for i in batch],
                    max_new_tokens=max_new_tokens,
                    temperature=temperature,
                    top_p=top_p,
                    top_k=top_k,
                    eos_ids=eos_ids,
                )
                for i, row in zip(batch, rows):
                    responses[i] = row
                bar.update(len(batch))
        with atomic_open(path) as f:
            for prompt, row in zip(shard, responses):
                text = tokenizer.decode(row, skip_special_tokens=True)
                f.write(json.dumps(_record(prompt, text, chat_template), ensure_ascii=False) + "\n")
        atomic_write_text(
            _stats_path(out, index),
            json.dumps(
                {
                    "records": len(shard),
                    "prompt_tokens": sum(lengths),
                    "generated_tokens": sum(len(r) for r in responses),
                    "stopped_at_eos": sum(bool(r) and r[-1] in eos_ids for r in responses),
                }
            )
            + "\n",
        )
    bar.close()

    done = [i for i in range(len(shards)) if _stats_path(out, i).is_file()]
    if len(done) < len(shards):  # other ranks' shards still running: the last rank to finish writes the manifest
        return {
            "complete": False,
            "rank": rank,
            "world_size": world_size,
            "shards_done": len(done),
            "shards": len(shards),
        }
    stats = [json.loads(_stats_path(out, i).read_text()) for i in range(len(shards))]
    totals = {key: sum(s[key] for s in stats) for key in stats[0]}
    manifest = {
        **params,
        "complete": True,
        "sampling": {
            "greedy": temperature == 0,
            "temperature": temperature,
            "top_p": top_p,
            "top_k": top_k,
            "max_new_tokens": max_new_tokens,
            "seed": seed,
        },
        "format": "messages" if chat_template else "text",
        "records_read": len(prompts),
        "skipped_without_prompt": len(prompts) - len(kept),
        "records": totals["records"],
        "prompt_tokens": totals["prompt_tokens"],
        "tokens_generated": totals["generated_tokens"],
        "stopped_at_eos": totals["stopped_at_eos"],
        "truncated_at_max_new_tokens": totals["records"] - totals["stopped_at_eos"],
        "shards": [SHARD.format(i) for i in range(len(shards))],
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "device": str(model.device),
    }
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest


def _stats_path(out: Path, index: int) -> Path:
    """Hidden (data.datasets skips it): written once shard `index` is complete."""
    return out / f".{Path(SHARD.format(index)).stem}.stats.json"
