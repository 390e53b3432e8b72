"""Decoding metrics computed from `GenerationResult`s (and, for speed, their timings).

The "tokens per ..." numbers answer different questions and are named so they cannot be confused
(UNITS holds the unit every table and plot prints beside them):
  * `tpf`: the paper's TPF (Table 1, Eq. 9) = generated tokens / ALL forward passes (draft +
    verify + prefill), computed per question and then averaged over questions, as the paper
    averages. Plain AR decoding scores 1. `tpf_token_weighted` pools instead (total tokens /
    total passes), so a long answer counts in proportion to its length.
  * `acceptance_length`: tokens per verify pass = accepted drafts + 1, before EOS/max clipping
    (the paper's Fig. 4; DFlash's tau and EAGLE-3's acceptance length are this number). About
    2 x TPF, since each iteration costs a draft pass and a verify pass.
  * `tokens_per_iteration`: a diagnostic only: emitted tokens per draft+verify iteration, the
    prefill token left out. Never compare it with a published TPF.
"""

import gc
import resource
import sys
from dataclasses import dataclass

import torch

from models.generate import GenerationResult

UNITS = {
    "tpf": "TPF (paper, Eq. 9): generated tokens / all forward passes (draft + verify + prefill), mean over questions",
    "tpf_token_weighted": "TPF pooled: total generated tokens / total forward passes",
    "acceptance_length": "tokens per verify pass (accepted drafts + 1), mean over questions",
    "tokens_per_iteration": "diagnostic: emitted tokens per draft+verify iteration (~2 x TPF), not the paper's TPF",
    "speedup": "wall-clock tokens/s over K=1 (AR) on the same decode function",
}


def tpf(results: list[GenerationResult]) -> float:
    """The paper's TPF: per question, new tokens / all forward passes; then the mean over questions."""
    return mean([r.tpf for r in results])


def tpf_token_weighted(results: list[GenerationResult]) -> float:
    """Total new tokens / total forward passes (draft + verify + prefill) over all questions."""
    return sum(r.num_new_tokens for r in results) / max(sum(r.forward_passes for r in results), 1)


def acceptance_length(results: list[GenerationResult]) -> float:
    """Tokens per verify pass (accepted drafts + 1), per question, then the mean over questions."""
    return mean([r.acceptance_length for r in results if r.accepted])


def tokens_per_iteration(results: list[GenerationResult]) -> float:
    """Diagnostic (not the paper's TPF): emitted tokens / draft+verify iterations, pooled."""
    iterations = sum(len(r.emitted) for r in results)
    return sum(sum(r.emitted) for r in results) / max(iterations, 1)


def acceptance_lengths(results: list[GenerationResult]) -> list[int]:
    """Accepted drafts + 1 per verify pass, over all results."""
    return [a + 1 for r in results for a in r.accepted]


def sampling_target(tokens_per_iteration: float, greedy_tokens_per_iteration: float, greedy_speedup: float) -> float:
    """The speedup sampling reaches if a sampled iteration costs what a greedy one does: the greedy
    speedup scaled by the acceptance sampling keeps (tokens per iteration sampled / greedy)."""
    return tokens_per_iteration / greedy_tokens_per_iteration * greedy_speedup


def mean(values: list[float]) -> float:
    return sum(values) / max(len(values), 1)


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
    """Every per-run metric above, for one block size over one prompt set (units: UNITS)."""
    tps = tokens_per_second(results, timings)
    return {
        "num_sequences": len(results),
        "new_tokens": sum(r.num_new_tokens for r in results),
        "forward_passes": sum(r.forward_passes for r in results),
        "verify_passes": sum(len(r.accepted) for r in results),
        "draft_passes": sum(r.diffusion_forwards for r in results),
        "iterations": sum(len(r.emitted) for r in results),
        "tpf": tpf(results),
        "tpf_token_weighted": tpf_token_weighted(results),
        "acceptance_length": acceptance_length(results),
        "tokens_per_iteration": tokens_per_iteration(results),
        "acceptance_histogram": acceptance_histogram(results),
        "per_position_acceptance": per_position_acceptance(results),
        "seconds": sum(t.seconds for t in timings),
        "tokens_per_second": tps,
        "mean_ttft_seconds": sum(t.first_token_seconds for t in timings) / max(len(timings), 1),
        "finished_by_eos": sum(r.finished_by_eos for r in results),
    }
