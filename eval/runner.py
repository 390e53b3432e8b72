"""Run a decode function over a prompt set at several block sizes and time it.

The decode function is pluggable so the fast engine can be measured with the same code:
    decode_fn(model, input_ids (1, L), max_new_tokens, *, block_size, sampling, eos_token_id,
              generator, streamer) -> GenerationResult
`models.generate.generate` is the default. The streamer is how time to first token is
measured without touching the loop: the first `put` after the prompt carries the first token.
Speedups are taken against block_size=1 *on the same decode function*, so the engine's
own optimisations do not inflate them.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm import tqdm

from eval.metrics import Timing, peak_memory, reset_peak_memory, speedup, summarize
from models.generate import GenerationResult, generate
from models.sampling import SamplingParams

DecodeFn = Callable[..., GenerationResult]


@dataclass
class DecodeRun:
    """Everything one block size produced over one prompt set."""

    block_size: int
    results: list[GenerationResult]
    timings: list[Timing]


class _FirstTokenClock:
    """A streamer that notes when the first new token arrives (the first put is the prompt)."""

    def __init__(self, start: float, device: torch.device):
        self.start, self.device, self.puts, self.first = start, device, 0, None

    def put(self, tokens):
        self.puts += 1
        if self.puts == 2:
            _sync(self.device)
            self.first = time.perf_counter() - self.start

    def end(self):
        pass


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def decode_prompts(
    model,
    prompts: list[list[int]],
    *,
    block_size: int,
    max_new_tokens: int,
    sampling: SamplingParams = SamplingParams(),
    eos_token_id: int | list[int] | None = None,
    seed: int = 0,
    decode_fn: DecodeFn = generate,
    progress: bool = True,
    desc: str = "decode",
) -> DecodeRun:
    """Decode every prompt once; prompt i samples with a generator seeded `seed + i`, so every
    block size sees the same seeds."""
    device = model.device
    run = DecodeRun(block_size=block_size, results=[], timings=[])
    for i, ids in enumerate(tqdm(prompts, desc=desc, disable=not progress, leave=False)):
        input_ids = torch.tensor([ids], dtype=torch.long, device=device)
        generator = torch.Generator(device=device).manual_seed(seed + i)
        _sync(device)
        start = time.perf_counter()
        clock = _FirstTokenClock(start, device)
        result = decode_fn(
            model, input_ids, max_new_tokens, block_size=block_size, sampling=sampling,
            eos_token_id=eos_token_id, generator=generator, streamer=clock,
        )
        _sync(device)
        seconds = time.perf_counter() - start
        if clock.first is None:
            raise RuntimeError(f"{decode_fn.__name__} never called streamer.put with the first token; TTFT needs it")
        run.results.append(result)
        run.timings.append(Timing(seconds=seconds, first_token_seconds=clock.first))
    return run


def measure_block_sizes(
    model,
    prompts: list[list[int]],
    block_sizes: list[int],
    *,
    max_new_tokens: int,
    sampling: SamplingParams = SamplingParams(),
    eos_token_id: int | list[int] | None = None,
    seed: int = 0,
    warmup: bool = True,
    decode_fn: DecodeFn = generate,
    progress: bool = True,
    desc: str = "",
) -> tuple[list[dict], dict[int, DecodeRun]]:
    """One summary row per block size (speedup filled when 1, the AR baseline, is measured too)
    and the raw runs keyed by block size (fidelity checks reuse their outputs)."""
    if not prompts:
        raise ValueError("no prompts to decode")
    device = model.device
    rows, runs = [], {}
    for K in sorted(set(block_sizes)):
        if warmup:  # first calls pay for allocator growth, kernel selection, graph capture
            decode_prompts(model, prompts[:1], block_size=K, max_new_tokens=min(max_new_tokens, 2 * K + 1),
                           sampling=sampling, eos_token_id=eos_token_id, decode_fn=decode_fn, progress=False)
        reset_peak_memory(device)
        run = decode_prompts(model, prompts, block_size=K, max_new_tokens=max_new_tokens, sampling=sampling,
                             eos_token_id=eos_token_id, seed=seed, decode_fn=decode_fn, progress=progress,
                             desc=f"{desc} K={K}".strip())
        memory = peak_memory(device)
        runs[K] = run
        rows.append({"block_size": K, **summarize(run.results, run.timings),
                     "peak_memory_bytes": memory["bytes"], "peak_memory_kind": memory["kind"]})
    base = next((r["tokens_per_second"] for r in rows if r["block_size"] == 1), None)
    for row in rows:
        row["speedup"] = speedup(row["tokens_per_second"], base) if base else None
    return rows, runs
