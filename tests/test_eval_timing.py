"""The timing protocol (eval/timing.py) against a decoder whose first call per shape is slow."""

import pytest
import torch

from eval.runner import measure_block_sizes
from eval.timing import length_bucket, protocol, speed, warm_prompts
from models.generate import GenerationResult

PREFILL_S, TOKEN_S = 0.004, {1: 0.002, 4: 0.0008}  # steady state: decode speedup at K=4 is exactly 2.5
COMPILE_S = 0.5  # first call of a prefill bucket, and of a (bucket, K, mode)


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def now(self) -> float:
        return self.t


class SlowFirstCallDecoder:
    """A decode function that advances a fake clock. A new prompt-length bucket compiles twice, paid by
    whichever block size meets it first (a real engine's prefill kernels and tuned products are shared by
    every K): before the first token (prefill) and after it (the first decode passes at that context);
    a new (bucket, K, mode) compiles once more after the first token. Then prefill and per-token costs
    are fixed."""

    def __init__(self, clock):
        self.clock, self.seen = clock, set()

    def compile(self, key):
        if key not in self.seen:
            self.seen.add(key)
            self.clock.t += COMPILE_S

    def __call__(self, model, input_ids, max_new_tokens, *, block_size, sampling, streamer, **_):
        bucket = length_bucket(input_ids.shape[1])
        streamer.put(input_ids)
        self.compile(bucket)
        self.clock.t += PREFILL_S
        streamer.put(torch.tensor([1]))
        self.compile(("decode", bucket))
        self.compile((bucket, block_size, sampling))
        self.clock.t += TOKEN_S[block_size] * (max_new_tokens - 1)
        streamer.put(torch.ones(max_new_tokens - 1, dtype=torch.long))
        seq = torch.cat([input_ids[0], torch.ones(max_new_tokens, dtype=torch.long)])[None]
        return GenerationResult(
            sequences=seq,
            prompt_len=input_ids.shape[1],
            block_size=block_size,
            accepted=[0] * (max_new_tokens - 1),
            emitted=[1] * (max_new_tokens - 1),
            proposed=[block_size] * (max_new_tokens - 1),
        )


class FakeModel:
    device = torch.device("cpu")


PROMPTS = [[1] * n for n in (5, 20, 40, 70, 3, 130, 33)]  # buckets 16, 32, 64, 128, 16, 256, 64


def measure(warmup):
    clock = FakeClock()
    rows, _ = measure_block_sizes(
        FakeModel(),
        PROMPTS,
        [4, 1],
        max_new_tokens=9,
        warmup=warmup,
        decode_fn=SlowFirstCallDecoder(clock),
        progress=False,
        clock=clock,
    )
    return {r["block_size"]: r for r in rows}


@pytest.mark.parametrize("warmup", ["buckets", "all"])
def test_first_call_costs_do_not_change_the_speedup(warmup):
    rows = measure(warmup)
    assert rows[4]["speedup"] == pytest.approx(TOKEN_S[1] / TOKEN_S[4])
    assert rows[1]["speedup"] == 1.0
    for r in rows.values():  # TTFT is the prefill alone, the same at every K
        assert r["ttft_ms"] == pytest.approx(1e3 * PREFILL_S)
        assert r["decode_tokens_per_second"] == pytest.approx(1 / TOKEN_S[r["block_size"]])


def test_the_fake_decoder_inflates_an_unwarmed_measurement():
    """The check above can fail: timed without the protocol's warm-up (or warmed on the first prompt only,
    which leaves later buckets cold), K=1 runs first and pays every shared compilation."""
    rows = measure("none")
    assert rows[4]["speedup"] != pytest.approx(TOKEN_S[1] / TOKEN_S[4], rel=0.1)
    assert rows[1]["ttft_ms"] > 10 * rows[4]["ttft_ms"]


def test_buckets_follow_the_engine_prefill():
    assert length_bucket(1) == (16,) and length_bucket(17) == (32,) and length_bucket(1024) == (1024,)
    assert length_bucket(1030) == (1024, 16)
    assert [len(p) for p in warm_prompts(PROMPTS, "buckets")] == [5, 20, 40, 70, 130]
    with pytest.raises(ValueError, match="warmup="):
        warm_prompts(PROMPTS, "first")
    assert "untimed" in protocol("buckets") and "NO warm-up" in protocol("none")
    assert "queueing included" in protocol("buckets", batch_size=16) and "queueing" not in protocol("buckets")


def test_decode_throughput_leaves_out_the_first_token():
    from eval.metrics import Timing

    r = GenerationResult(sequences=torch.zeros(1, 13, dtype=torch.long), prompt_len=2, block_size=4)  # 11 new
    s = speed([r], [Timing(seconds=2.0, first_token_seconds=1.0)])
    assert s["decode_tokens_per_second"] == 10.0 and s["end_to_end_tokens_per_second"] == 5.5 and s["ttft_ms"] == 1e3
