"""Decoding metrics computed from `GenerationResult`s (and, for speed, their timings).

Two "tokens per ..." numbers, kept apart because they answer different questions:
  * `tokens_per_iteration` (TPF, the paper's metric): tokens emitted per draft+verify
    iteration. The prefill and its token are left out, so plain AR decoding scores exactly 1.
  * `tokens_per_forward`: new tokens per model forward of *either* view, prefill included.
    It charges the diffusion pass as a forward, so it is the stricter, compute-oriented ratio.
Acceptance length is the number of tokens an iteration would emit before EOS/max-length
clipping: accepted drafts + 1 (the AR token after them).

Every function pools over all results (total tokens / total iterations), so a long answer
counts in proportion to its length; this is how throughput-style numbers add up.
"""

import gc
import resource
import sys
from dataclasses import dataclass

import torch

from models.generate import GenerationResult


def tokens_per_iteration(results: list[GenerationResult]) -> float:
    """TPF as the paper reports it: emitted tokens / draft+verify iterations."""
    iterations = sum(len(r.emitted) for r in results)
    return sum(sum(r.emitted) for r in results) / max(iterations, 1)


def tokens_per_forward(results: list[GenerationResult]) -> float:
    """New tokens (prefill token included) / forwards of either view (prefill included)."""
    forwards = sum(r.ar_forwards + r.diffusion_forwards for r in results)
    return sum(r.num_new_tokens for r in results) / max(forwards, 1)


def acceptance_lengths(results: list[GenerationResult]) -> list[int]:
    """Accepted drafts + 1 per iteration, over all results."""
    return [a + 1 for r in results for a in r.accepted]


def mean_acceptance_length(results: list[GenerationResult]) -> float:
    lengths = acceptance_lengths(results)
    return sum(lengths) / max(len(lengths), 1)


def acceptance_histogram(results: list[GenerationResult]) -> list[int]:
    """counts[n - 1] = iterations with acceptance length n, for n = 1..K."""
    counts = [0] * _block_size(results)
    for n in acceptance_lengths(results):
        counts[n - 1] += 1
    return counts


def per_position_acceptance(results: list[GenerationResult]) -> list[float | None]:
    """rate[i - 1] = P(draft i accepted | draft i proposed and drafts 1..i-1 accepted), i = 1..K-1.

    A block proposes `result.proposed[j]` tokens (the reference loop shortens the last blocks to
    what max_new_tokens allows; the engine always proposes K), so drafts past it were never
    reached. None where no iteration reached position i.
    """
    K = _block_size(results)
    reached, kept = [0] * (K - 1), [0] * (K - 1)
    for r in results:
        for a, k in zip(r.accepted, r.proposed):
            for i in range(min(a + 1, k - 1)):  # drafts 1..a were accepted, draft a+1 rejected
                reached[i] += 1
                kept[i] += i < a
    return [k / n if n else None for k, n in zip(kept, reached)]


def _block_size(results: list[GenerationResult]) -> int:
    sizes = {r.block_size for r in results}
    if len(sizes) != 1:
        raise ValueError(f"results mix block sizes {sorted(sizes)}: compute acceptance metrics per block size")
    return sizes.pop()


# --- speed and memory ------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    """Wall-clock of one decode call, measured by the runner (device synchronised)."""

    seconds: float  # whole call, prefill included
    first_token_seconds: float  # until the first new token was handed to the streamer (TTFT)


def tokens_per_second(results: list[GenerationResult], timings: list[Timing]) -> float:
    """New tokens / wall-clock seconds, pooled over all calls."""
    return sum(r.num_new_tokens for r in results) / max(sum(t.seconds for t in timings), 1e-12)


def free_memory() -> None:
    """Give back what finished models, engines or training steps held before the next is measured.
    Garbage is collected first: tensors kept by reference cycles (an engine's captured CUDA graphs, a
    caught exception's traceback) would otherwise go at an arbitrary later point, in the middle of
    the next measurement."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict:
    """Peak memory and what it measures: CUDA allocator peak since the last reset on a GPU,
    otherwise the process's peak resident set size (not resettable: a lifetime maximum)."""
    if device.type == "cuda":
        return {"bytes": torch.cuda.max_memory_allocated(device), "kind": "cuda_max_memory_allocated"}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"bytes": rss if sys.platform == "darwin" else rss * 1024, "kind": "process_peak_rss"}


def kv_bytes_per_token(config, dtype: torch.dtype) -> int:
    """Bytes of AR KV cache one token costs: K and V, every layer, every KV head."""
    elem = torch.empty((), dtype=dtype).element_size()
    return 2 * config.num_hidden_layers * config.num_key_value_heads * _head_dim(config) * elem


def kv_overhead(config, block_size: int, dtype: torch.dtype, context_len: int | None = None) -> dict:
    """What Orthrus adds to the base model's KV memory.

    Nothing persistent: the diffusion pass's keys/values of its K block positions live only for
    that pass (the cache is shared and never written by the diffusion view). The transient peak
    is one block's K/V per layer = K tokens' worth of cache, O(1) in context length (about
    4.5 MiB for Qwen3-8B at K=32 in bf16). The verify pass appends K tokens that are cropped
    back to the accepted ones, the same bounded overshoot as any speculative decoder.
    """
    per_token = kv_bytes_per_token(config, dtype)
    out = {
        "persistent_bytes": 0,
        "diffusion_block_bytes": block_size * per_token,
        "kv_bytes_per_token": per_token,
    }
    if context_len:
        out["context_len"] = context_len
        out["base_kv_bytes"] = context_len * per_token
        out["relative_overhead"] = block_size / context_len
    return out


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def summarize(results: list[GenerationResult], timings: list[Timing]) -> dict:
    """Every per-run metric above, for one block size over one prompt set."""
    tps = tokens_per_second(results, timings)
    return {
        "num_sequences": len(results),
        "new_tokens": sum(r.num_new_tokens for r in results),
        "iterations": sum(len(r.emitted) for r in results),
        "tokens_per_iteration": tokens_per_iteration(results),
        "tokens_per_forward": tokens_per_forward(results),
        "mean_acceptance_length": mean_acceptance_length(results),
        "acceptance_histogram": acceptance_histogram(results),
        "per_position_acceptance": per_position_acceptance(results),
        "seconds": sum(t.seconds for t in timings),
        "tokens_per_second": tps,
        "mean_ttft_seconds": sum(t.first_token_seconds for t in timings) / max(len(timings), 1),
        "finished_by_eos": sum(r.finished_by_eos for r in results),
    }
