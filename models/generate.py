"""Orthrus decoding: draft a block with the diffusion view, verify it with the AR view.

One iteration at position `start` (the last emitted token is not yet in the cache):
  1. draft:  diffusion pass over [last, MASK x (k-1)] at positions start..start+k-1; its
             queries see the cache's first `start` entries and the whole block; nothing is
             written to the cache. Logits at block index i draft the token at start+i+1.
  2. verify: the ordinary AR pass over [last, draft_1..draft_{k-1}], appending to the cache.
  3. accept: the longest agreeing prefix of drafts plus one AR token (greedy), or rejection
             sampling (sampling); crop the cache to the accepted length.
Every emitted token is therefore an AR-view token, which is why the output is the base
model's. With block_size=1 the loop is plain AR decoding on the same code path, which is the
baseline that speedups are measured against.

This is the reference loop, written for clarity on `transformers`' DynamicCache; the fast
engine (static cache, CUDA graphs, Triton kernels) lives beside it and must match it token
for token.
"""

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from models.compat import cache_kwargs
from models.orthrus import OrthrusForCausalLM, prefix_attend
from models.sampling import SamplingParams, greedy_accept, logits_to_probs, sample, speculative_accept
from models.stopping import Stopper


@dataclass
class GenerationResult:
    """What `generate` produced and how; evaluation reads its metrics from here."""

    sequences: torch.LongTensor  # (1, prompt + new) token ids, prompt included
    prompt_len: int
    block_size: int
    accepted: list[int] = field(default_factory=list)  # drafts accepted per iteration
    emitted: list[int] = field(default_factory=list)  # tokens emitted per iteration (after EOS/max clipping)
    proposed: list[int] = field(default_factory=list)  # block length k per iteration (K, or less at the end)
    ar_forwards: int = 0  # prefill counts as one
    diffusion_forwards: int = 0
    finished_by_eos: bool = False
    finished_by_stop_string: bool = False

    @property
    def new_tokens(self) -> torch.LongTensor:
        return self.sequences[0, self.prompt_len :]

    @property
    def num_new_tokens(self) -> int:
        return self.sequences.shape[1] - self.prompt_len

    @property
    def forward_passes(self) -> int:
        """Every model pass of either view: prefill + verify passes + draft passes."""
        return self.ar_forwards + self.diffusion_forwards

    @property
    def tpf(self) -> float:
        """The paper's TPF (Table 1, Eq. 9): new tokens / all forward passes (draft + verify + prefill).
        Plain AR decoding scores 1; one Orthrus iteration is two passes."""
        return self.num_new_tokens / max(self.forward_passes, 1)

    @property
    def acceptance_length(self) -> float:
        """Tokens per verify pass (the paper's Fig. 4, DFlash's tau): accepted drafts + the AR token,
        before clipping at EOS or max_new_tokens. About 2 x TPF; compare peers' acceptance with this."""
        return sum(a + 1 for a in self.accepted) / max(len(self.accepted), 1)

    @property
    def tokens_per_iteration(self) -> float:
        """Diagnostic, not the paper's TPF: tokens emitted per draft+verify iteration (after clipping),
        the prefill token not counted."""
        return sum(self.emitted) / max(len(self.emitted), 1)


@torch.inference_mode()
def generate(
    model: OrthrusForCausalLM,
    input_ids: torch.LongTensor,
    max_new_tokens: int,
    *,
    block_size: int | None = None,
    sampling: SamplingParams = SamplingParams(),
    eos_token_id: int | list[int] | None = None,
    generator: torch.Generator | None = None,
    streamer=None,
    denoise_steps: int = 1,
    stop_strings: list[str] | None = None,
    tokenizer=None,
) -> GenerationResult:
    """Decode up to `max_new_tokens` tokens after `input_ids` (shape (1, L)).

    block_size: K, defaults to the config's; 1 runs the plain AR baseline on the same loop.
    eos_token_id: defaults to the model's generation config; decoding stops after emitting it.
    streamer: anything with `put(tensor)` / `end()` (e.g. transformers' TextStreamer).
    denoise_steps: S diffusion passes per draft (see `_draft`); 1 is the paper's single step.
    stop_strings: decoding ends once the text contains one (read with `tokenizer`; models/stopping.py).
    """
    K = check_request(input_ids, max_new_tokens, block_size, model.config)
    if denoise_steps < 1:
        raise ValueError(f"denoise_steps={denoise_steps} must be >= 1")
    stopper = Stopper(_eos_ids(model, eos_token_id), stop_strings, tokenizer)
    mask_id = model.config.mask_token_id
    device = input_ids.device

    result = GenerationResult(sequences=input_ids, prompt_len=input_ids.shape[1], block_size=K)
    out = [input_ids[0]]
    if streamer is not None:
        streamer.put(input_ids.cpu())

    def emit(tokens: list[int]) -> bool:
        """Append tokens (clipped at max_new_tokens, then at EOS or a stop string); return True when decoding
        is finished."""
        tokens = tokens[: max_new_tokens - sum(len(o) for o in out[1:])]  # a last block may verify one past it
        tokens = stopper.clip(tokens)
        result.finished_by_eos, result.finished_by_stop_string = stopper.reason == "eos", stopper.reason == "stop"
        out.append(torch.tensor(tokens, dtype=torch.long, device=device))
        if streamer is not None:
            streamer.put(torch.tensor(tokens))
        return stopper.reason is not None or sum(len(o) for o in out[1:]) >= max_new_tokens

    # Prefill: the whole prompt through the AR view; its last logits give the first token.
    cache = DynamicCache(config=model.config)
    L = input_ids.shape[1]
    logits = model(input_ids=input_ids, **cache_kwargs(cache)).logits[0, -1:]
    result.ar_forwards += 1
    first = _pick(logits, sampling, generator)[0]
    done = emit([first])
    start, last = L, first

    scale = model.model.layers[0].self_attn.scaling
    while not done:
        k = block_length(K, max_new_tokens, start + 1 - L)
        positions = torch.arange(start, start + k, device=device)[None]
        block = torch.full((1, k), mask_id, dtype=torch.long, device=device)
        block[0, 0] = last

        if k > 1 and denoise_steps > 1:
            draft, q, passes = _draft(model, block, positions, cache, start, sampling, generator, denoise_steps)
            result.diffusion_forwards += passes
            block[0, 1:] = draft
        elif k > 1:
            d_logits = model.diffusion_forward(block, positions, prefix_attend(cache, start, scale))[0, :-1]
            result.diffusion_forwards += 1
            if sampling.greedy:
                draft, q = d_logits.argmax(-1), None
            else:
                q = logits_to_probs(d_logits, sampling)
                draft = sample(q, generator)
            block[0, 1:] = draft
        else:  # a one-token block (block_size=1): nothing to draft
            draft = block[0, 1:]
            q = torch.empty(0, model.config.vocab_size, device=device)

        ar_logits = model(input_ids=block, position_ids=positions, **cache_kwargs(cache)).logits[0]
        result.ar_forwards += 1
        if sampling.greedy:
            n_acc, nxt = greedy_accept(draft, ar_logits)
        else:
            n_acc, nxt = speculative_accept(draft, q, logits_to_probs(ar_logits, sampling), generator)

        _crop(cache, start + n_acc + 1)  # keep [last, accepted drafts]; the new token is not cached yet
        result.accepted.append(n_acc)
        tokens = draft[:n_acc].tolist() + [nxt]
        done = emit(tokens)
        result.emitted.append(len(out[-1]))
        result.proposed.append(k)
        start, last = start + n_acc + 1, nxt

    if streamer is not None:
        streamer.end()
    result.sequences = torch.cat(out)[None]
    return result


def block_length(K: int, max_new_tokens: int, emitted: int) -> int:
    """Length of the next block when `emitted` new tokens are out: min(K, max_new_tokens - emitted + 1),
    as the official decoder clips it. The block is [last token, k - 1 drafts], so its drafts cover every
    position still allowed; the AR token after them would be one past max_new_tokens and is dropped.
    (The engine always proposes K and clips what it emits; docs/engine.md says what that changes.)"""
    return min(K, max_new_tokens - emitted + 1)


def _draft(model, block, positions, cache, start, sampling, generator, steps):
    """Multi-step drafting: up to `steps` diffusion passes over the same block. Pass s predicts
    every still-masked slot and fixes the ceil(remaining / (steps - s)) most confident ones
    (greedy: max softmax prob; sampling: the sampled token's prob); the rest stay MASK. A block
    with fewer slots than steps is filled in fewer passes. Returns (draft, q or None, passes).

    Sampling: q is the one-hot of the draft, not the distribution of the pass that fixed it.
    That pass's q is not what the token is distributed as once the confidence selection, and
    slots to its left fixed later and conditioned on it, are taken into account, so using it in
    rejection sampling would bias the output. With a one-hot q the rule keeps draft i with
    probability p(draft i) and otherwise samples p with draft i removed: exactly p, whatever
    the drafts are, so the output stays the base sampler's (at a lower acceptance rate).
    """
    mask_id = model.config.mask_token_id
    attend = prefix_attend(cache, start, model.model.layers[0].self_attn.scaling)
    block = block.clone()
    masked = block[0, 1:] == mask_id
    passes = 0
    for s in range(steps):
        todo = masked.nonzero()[:, 0]
        if todo.numel() == 0:
            break
        logits = model.diffusion_forward(block, positions, attend)[0, :-1]
        passes += 1
        if sampling.greedy:
            probs = logits.float().softmax(-1)
            conf, pred = probs.max(-1)
        else:
            probs = logits_to_probs(logits, sampling)
            pred = sample(probs, generator)
            conf = probs.gather(-1, pred[:, None])[:, 0]
        fix = todo[conf[todo].topk(math.ceil(todo.numel() / (steps - s))).indices]
        block[0, 1 + fix] = pred[fix]
        masked[fix] = False
    draft = block[0, 1:]
    q = None if sampling.greedy else F.one_hot(draft, probs.shape[-1]).float()
    return draft, q, passes


def check_request(input_ids: torch.LongTensor, max_new_tokens: int, block_size: int | None, config) -> int:
    """Validate a decode request against the model's `config` (shared by this loop and the
    engine); returns K (None: the config's block size)."""
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(
            f"input_ids has shape {tuple(input_ids.shape)}; decoding takes one sequence: pass shape (1, prompt_len)."
        )
    if input_ids.shape[1] == 0:
        raise ValueError("input_ids is empty: give at least one prompt token (e.g. BOS).")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
    if block_size is None:
        block_size = config.block_size
    if block_size < 1:
        raise ValueError(
            f"block_size={block_size} must be >= 1 (1 = plain AR decoding; None = the checkpoint's "
            f"K={config.block_size})"
        )
    need, positions = input_ids.shape[1] + max_new_tokens, config.max_position_embeddings
    if need > positions:
        raise ValueError(
            f"prompt of {input_ids.shape[1]} tokens + max_new_tokens={max_new_tokens} = {need} positions, but the "
            f"model has max_position_embeddings={positions}: shorten the prompt or lower max_new_tokens."
        )
    return block_size


def _crop(cache: DynamicCache, length: int) -> None:
    """Drop cache entries past `length` (transformers >= 5.17 takes the count to remove)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


def _pick(logits: torch.Tensor, sampling: SamplingParams, generator) -> list[int]:
    if sampling.greedy:
        return logits.argmax(-1).tolist()
    return sample(logits_to_probs(logits, sampling), generator).tolist()


def _eos_ids(model, eos_token_id) -> set[int]:
    if eos_token_id is None:
        eos_token_id = getattr(model.generation_config, "eos_token_id", None)
        if eos_token_id is None:
            eos_token_id = model.config.eos_token_id
    if eos_token_id is None:
        return set()
    return {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id)
