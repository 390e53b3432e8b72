"""The one timing protocol of every benchmark and evaluation in this repository.

Decoders here compile kernels, tune matrix products and capture CUDA graphs on the first call of
each shape: the prompt's prefill bucket, the block size K and the sampling mode. A measurement that
pays those costs inside one configuration's timed pass and not inside another's reports a speedup
of the compiler, not of the decoder. So:

  1. warm-up: before anything is timed, every (prompt-length bucket, K, sampling mode) of the run is
     decoded once, untimed, on the same decoder (one prompt per bucket; or, with warmup="all", a
     whole untimed pass over every prompt at every K);
  2. the timed pass then runs every K, K = 1 included, over all prompts in that one warm state, so
     the AR baseline and Orthrus share the same engine, caches and compiled kernels;
  3. time to first token (TTFT: the call until the first new token reaches the streamer, i.e. the
     prefill and its sample) is reported apart from decode throughput:
        decode tokens/s = (new tokens - 1) / (seconds - TTFT), pooled over prompts;
     speedup = decode tokens/s at K / decode tokens/s at K = 1. End-to-end tokens/s (prefill
     included) is kept beside it.
`PROTOCOL` states this in every report. Kernel-level benchmarks (scripts/bench_decode.py) use
`median_ms`: warm-up calls, then the median of timed calls (CUDA events on a GPU).
"""

import statistics
import time
from collections.abc import Callable, Iterable

import torch

from eval.metrics import Timing
from models.engine import PREFILL_CHUNK, prefill_chunk_length

PROTOCOL = (
    "warm-up: every (prompt-length bucket, block size K, sampling mode) is decoded once untimed on the same "
    "decoder before anything is timed ({warmup}); timed pass: every K, the K=1 AR baseline included, over all "
    "prompts in that warm state; TTFT = call to first new token (prefill + first sample), reported apart; "
    "decode tokens/s = (new tokens - 1) / (seconds - TTFT) pooled over prompts; speedup = decode tokens/s at K "
    "over K=1 on the same decoder; end-to-end tokens/s (prefill included) kept beside it"
)
BATCHED = (
    "; batch {batch}: every prompt queued at once on {batch} slots, so TTFT = start of the set to the request's "
    "first token, queueing included, and decode and end-to-end tokens/s are both all new tokens over the set's "
    "wall-clock (prefills interleave with the others' decoding)"
)
WARMUPS = {
    "buckets": "one prompt per prompt-length bucket, {tokens} new tokens",
    "all": "an untimed pass over every prompt at every K",
    "none": "NO warm-up: first-call compilation is inside the timed pass",
}


def check_warmup(warmup: str) -> None:
    """A warm-up name of WARMUPS, or an error naming the setting and the choices."""
    if warmup not in WARMUPS:
        raise ValueError(f"decode.warmup={warmup!r}: use one of {sorted(WARMUPS)}")


def protocol(warmup: str, warm_tokens: str = "2K+1", batch_size: int = 1) -> str:
    """The protocol text one report states (which warm-up it used, filled in; how a batched run's
    TTFT and throughputs differ from one call per prompt)."""
    check_warmup(warmup)
    text = PROTOCOL.format(warmup=WARMUPS[warmup].format(tokens=warm_tokens))
    return text + (BATCHED.format(batch=batch_size) if batch_size > 1 else "")


def length_bucket(length: int) -> tuple[int, ...]:
    """The prefill shapes a prompt of `length` tokens runs at: chunks of PREFILL_CHUNK, the last padded
    by `models.engine.prefill_chunk_length` (in a slot with room for it). Prompts in one bucket compile
    and tune the same kernels, so warming one of them warms all."""
    full, rest = divmod(length, PREFILL_CHUNK)
    return (PREFILL_CHUNK,) * full + ((prefill_chunk_length(rest),) if rest else ())


def warm_prompts(prompts: list[list[int]], warmup: str) -> list[list[int]]:
    """The prompts the warm-up decodes: one per bucket, all of them, or none."""
    check_warmup(warmup)
    if warmup == "none":
        return []
    if warmup == "all":
        return list(prompts)
    firsts = {}
    for ids in prompts:
        firsts.setdefault(length_bucket(len(ids)), ids)
    return list(firsts.values())


class HostClock:
    """Wall-clock seconds (time.perf_counter): `now` with the device synchronised first (kernels launched
    are kernels finished), `host_now` without (for marks right after a read-back that already waited for
    the work being timed). Tests pass a fake clock with the same methods."""

    def __init__(self, device: torch.device):
        self.device = device

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return self.host_now()

    def host_now(self) -> float:
        return time.perf_counter()


class FirstTokenClock:
    """A streamer that notes when the first new token arrives (the first put is the prompt), `now()` seconds
    after `start`. now(): clock.now(); with synced=False, clock.host_now() (no device sync): for marks taken
    right after a read-back that already waited for the work being timed (a served request's tokens)."""

    def __init__(self, clock, start: float, synced: bool = True):
        self.clock, self.start, self.synced, self.puts, self.first = clock, start, synced, 0, None

    def now(self) -> float:
        return self.clock.now() if self.synced else self.clock.host_now()

    def put(self, tokens):
        self.puts += 1
        if self.puts == 2:
            self.first = self.now() - self.start

    def end(self):
        pass


def timed_call(decode: Callable, clock) -> tuple[object, Timing]:
    """Run `decode(streamer)` once and time it: whole call and first token."""
    start = clock.now()
    streamer = FirstTokenClock(clock, start)
    result = decode(streamer)
    seconds = clock.now() - start
    if streamer.first is None:
        raise RuntimeError(
            "the decode function never called streamer.put with the first token; TTFT needs it "
            "(put the prompt, then each batch of new tokens, as transformers' streamers expect)"
        )
    return result, Timing(seconds=seconds, first_token_seconds=streamer.first)


def speed(results: Iterable, timings: list[Timing], wall_seconds: float | None = None) -> dict:
    """TTFT apart from decode throughput, pooled over calls (see the module docstring). With
    `wall_seconds` (a batched run, its requests overlapping) prefills interleave with the others'
    decoding and cannot be taken apart: both throughputs are all new tokens over the wall-clock."""
    new = [r.num_new_tokens for r in results]
    seconds = sum(t.seconds for t in timings)
    ttft = sum(t.first_token_seconds for t in timings)
    row = {"ttft_ms": 1e3 * ttft / max(len(timings), 1)}
    if wall_seconds is not None:
        tps = sum(new) / max(wall_seconds, 1e-12)
        return row | {"decode_tokens_per_second": tps, "end_to_end_tokens_per_second": tps}
    return row | {
        "decode_tokens_per_second": (sum(new) - len(new)) / max(seconds - ttft, 1e-12),
        "end_to_end_tokens_per_second": sum(new) / max(seconds, 1e-12),
    }


def add_speedups(rows: list[dict]) -> None:
    """speedup (decode) and speedup_end_to_end over the K = 1 row of the same list (None without one)."""
    base = next((r for r in rows if r["block_size"] == 1), None)
    for row in rows:
        row["speedup"] = row["decode_tokens_per_second"] / base["decode_tokens_per_second"] if base else None
        row["speedup_end_to_end"] = (
            row["end_to_end_tokens_per_second"] / base["end_to_end_tokens_per_second"] if base else None
        )


def median_ms(fn: Callable, reps: int, device: torch.device, warmup: int = 3, after: Callable | None = None) -> float:
    """Median milliseconds of `reps` calls after `warmup` untimed ones: CUDA events around each call on a
    GPU, the host clock elsewhere. `after` runs outside the timed region (e.g. to reset decoder state)."""
    cuda = device.type == "cuda"
    times = []
    for i in range(warmup + reps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            ms = start.elapsed_time(end)
        else:
            t0 = time.perf_counter()
            fn()
            ms = (time.perf_counter() - t0) * 1e3
        if after is not None:
            after()
        if i >= warmup:
            times.append(ms)
    return statistics.median(times)


def host_loop_ms(fn: Callable, reps: int, after: Callable, warmup: int = 3) -> float:
    """Median host wall time of `fn` (for a decode loop's iteration: replays plus its read-back, which
    synchronises), `after` outside the timed region."""
    times = []
    for i in range(warmup + reps):
        t0 = time.perf_counter()
        fn()
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
        after()
    return statistics.median(times)
