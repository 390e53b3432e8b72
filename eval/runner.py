"""Run a decode function over a prompt set at several block sizes, timed by eval/timing.py's protocol.

The decode function is pluggable so the fast engine and the reference loop are measured by the
same code:
    decode_fn(model, input_ids (1, L), max_new_tokens, *, block_size, sampling, eos_token_id,
              generator, streamer) -> GenerationResult
`models.generate.generate` is the reference loop; `EngineDecode` wraps the fast engine. The
streamer is how time to first token is measured without touching the loop: the first `put`
after the prompt carries the first token. An `EngineDecode` with batch_size > 1 decodes the whole
prompt set through one request queue (`serve_prompts`, models/serving.py), batch_size requests at
once, with the same outputs as one call per prompt; its throughput is then the set's total new
tokens over the wall-clock of the whole set. Speedups are taken against block_size=1 *on the same
decode function in the same warm state*, so neither the engine's optimisations nor first-call
compilation inflate them.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm import tqdm

from eval.metrics import Timing, peak_memory, reset_peak_memory, summarize
from eval.timing import FirstTokenClock, HostClock, add_speedups, speed, timed_call, warm_prompts
from models.generate import GenerationResult, generate
from models.sampling import SamplingParams
from models.serving import Server, request_seed, serve_all

DecodeFn = Callable[..., GenerationResult]


@dataclass
class DecodeRun:
    """Everything one block size produced over one prompt set."""

    block_size: int
    results: list[GenerationResult]
    timings: list[Timing]
    batch_size: int = 1  # requests decoded at once
    wall_seconds: float | None = None  # the whole set, when its requests overlap (batch_size > 1)
    serve_stats: dict | None = None  # the request queue's `ServeStats.summary()`, when served through one


class EngineDecode:
    """`decode_fn` for the fast engine (models/engine.py: static cache; on CUDA also CUDA graphs and
    the Triton kernels, on the CPU its PyTorch ops), one engine per model, built on first use with
    `max_seq_len` cache rows per slot (the longest prompt + max_new_tokens + the largest K) and
    `batch_size` slots: `decode_prompts` serves a prompt set batch_size requests at a time."""

    __name__ = "OrthrusEngine.generate"

    def __init__(self, max_seq_len: int, batch_size: int = 1, **engine_kwargs):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        self.max_seq_len, self.batch_size, self.engine_kwargs, self.engines = max_seq_len, batch_size, engine_kwargs, {}

    def engine(self, model):
        if id(model) not in self.engines:
            from models.engine import OrthrusEngine

            self.engines[id(model)] = OrthrusEngine(
                model, self.max_seq_len, max_batch_size=self.batch_size, **self.engine_kwargs
            )
        return self.engines[id(model)]

    def __call__(self, model, input_ids, max_new_tokens, **kwargs):
        return self.engine(model).generate(input_ids, max_new_tokens, **kwargs)


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
    clock=None,
) -> DecodeRun:
    """Decode every prompt once, timing each call; prompt i samples with a generator seeded
    `seed + i`, so every block size sees the same seeds. A batched `EngineDecode` serves the whole
    set at once instead (`serve_prompts`)."""
    device = model.device
    clock = clock or HostClock(device)
    if getattr(decode_fn, "batch_size", 1) > 1:
        engine, request = decode_fn.engine(model), dict(sampling=sampling, eos_token_id=eos_token_id)
        return serve_prompts(
            engine, prompts, block_size, max_new_tokens, seed=seed, progress=progress, clock=clock, desc=desc, **request
        )
    run = DecodeRun(block_size=block_size, results=[], timings=[])
    for i, ids in enumerate(tqdm(prompts, desc=desc, disable=not progress, leave=False)):
        input_ids = torch.tensor([ids], dtype=torch.long, device=device)
        generator = torch.Generator(device=device).manual_seed(seed + i)
        result, timing = timed_call(
            lambda streamer: decode_fn(
                model,
                input_ids,
                max_new_tokens,
                block_size=block_size,
                sampling=sampling,
                eos_token_id=eos_token_id,
                generator=generator,
                streamer=streamer,
            ),
            clock,
        )
        run.results.append(result)
        run.timings.append(timing)
    return run


def serve_prompts(
    engine, prompts: list[list[int]], block_size: int, max_new_tokens: int, *, batch_size: int | None = None,
    seed: int = 0, clock=None, progress: bool = True, desc: str = "serve", **request
) -> DecodeRun:  # fmt: skip
    """Every prompt through one request queue on `engine` (batch_size at once, default all its slots),
    all queued at the start; request: `Server.submit`'s sampling and eos_token_id, for every prompt.
    Prompt i samples with the seed `generate` draws from a generator seeded `seed + i`, so the outputs
    are those of one call per prompt. Each request's Timing runs from the start of the set to its last
    token (its latency, queueing included) and to its first token; `wall_seconds` is the whole set's."""
    device = engine.device
    clock = clock or HostClock(device)
    server = Server(engine, block_size, batch_size=batch_size)
    # Every batch-size bucket built (on CUDA: captured) before the clock starts, sampling steps included.
    engine.warm_up(server.K, request.get("sampling"), server.drafts)
    start = clock.now()
    seeds = [request_seed(torch.Generator(device=device).manual_seed(seed + i)) for i in range(len(prompts))]
    # No device sync per request: the read-back already waited for its tokens.
    firsts = [FirstTokenClock(clock, start, synced=False) for _ in prompts]
    timings = [None] * len(prompts)
    with tqdm(total=len(prompts), desc=desc, disable=not progress, leave=False) as bar:

        def finished(i, result):
            timings[i] = Timing(seconds=clock.host_now() - start, first_token_seconds=firsts[i].first)
            bar.update(1)

        results = serve_all(server, prompts, max_new_tokens, seeds, streamers=firsts, on_finish=finished, **request)
    wall = clock.now() - start
    return DecodeRun(
        block_size,
        results,
        timings,
        batch_size=len(server.slots),
        wall_seconds=wall,
        serve_stats=server.stats.summary(),
    )


def measure_block_sizes(
    model,
    prompts: list[list[int]],
    block_sizes: list[int],
    *,
    max_new_tokens: int,
    sampling: SamplingParams = SamplingParams(),
    eos_token_id: int | list[int] | None = None,
    seed: int = 0,
    warmup: str = "buckets",
    decode_fn: DecodeFn = generate,
    progress: bool = True,
    desc: str = "",
    clock=None,
) -> tuple[list[dict], dict[int, DecodeRun]]:
    """One summary row per block size (speedup filled when 1, the AR baseline, is measured too)
    and the raw runs keyed by block size (fidelity checks reuse their outputs).

    The protocol of eval/timing.py: every block size is warmed on `warmup`'s prompts (one per
    prompt-length bucket by default) before any block size is timed."""
    if not prompts:
        raise ValueError("no prompts to decode")
    device = model.device
    Ks = sorted(set(block_sizes))
    common = dict(sampling=sampling, eos_token_id=eos_token_id, seed=seed, decode_fn=decode_fn, clock=clock)
    warm = warm_prompts(prompts, warmup)
    for K in tqdm(Ks if warm else [], desc=f"{desc} warm-up".strip(), disable=not progress, leave=False):
        new = max_new_tokens if warmup == "all" else min(max_new_tokens, 2 * K + 1)
        decode_prompts(model, warm, block_size=K, max_new_tokens=new, progress=False, **common)
    rows, runs = [], {}
    for K in Ks:
        reset_peak_memory(device)
        run = decode_prompts(
            model,
            prompts,
            block_size=K,
            max_new_tokens=max_new_tokens,
            progress=progress,
            desc=f"{desc} K={K}".strip(),
            **common,
        )
        memory = peak_memory(device)
        runs[K] = run
        rows.append(
            {
                "block_size": K,
                "batch_size": run.batch_size,
                **summarize(run.results, run.timings),
                **speed(run.results, run.timings, run.wall_seconds),
                "warmup_prompts": len(warm),
                "peak_memory_bytes": memory["bytes"],
                "peak_memory_kind": memory["kind"],
            }
        )
    add_speedups(rows)
    return rows, runs
