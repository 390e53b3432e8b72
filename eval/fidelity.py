"""Fidelity: does Orthrus produce what the base model produces?

Three checks, from strictest to statistical:
  * greedy exact match against `transformers`' own `generate` on the base model (token-level
    rate up to the first divergence, and whole-sequence rate);
  * sampling, analytically: for every emitted token, KL(p_base || p_eff) and the total
    variation distance, where p_base is a plain base forward at that prefix and p_eff is the
    distribution the acceptance rule actually draws from given the drafter's q and the verify
    pass's p:
        p_eff = min(p, q) + (1 - sum min(p, q)) * normalise(max(0, p - q))
    for a draft slot, and p itself for the token after a fully accepted block (or the
    prefill token). Rejection sampling makes p_eff = p exactly, so this is 0 up to float
    error; in bf16 it also exposes any numeric gap between the verify pass (cache + block)
    and a plain forward. q and p are recovered by replaying the decode from its recorded
    acceptances, so the decoding loop needs no extra outputs;
  * sampling, empirically: a chi-square homogeneity test between Orthrus samples and
    `transformers`' `do_sample` samples over many seeds, per output position.
Run once per dtype (fp32 and bf16 results are reported separately).
"""

import torch
from scipy.stats import chi2_contingency
from tqdm import tqdm
from transformers import DynamicCache, GenerationMixin

from eval.runner import DecodeFn
from models.compat import cache_kwargs
from models.generate import GenerationResult, generate
from models.orthrus import prefix_attend
from models.sampling import SamplingParams, logits_to_probs


def base_generate(
    base_model,
    input_ids: torch.LongTensor,
    max_new_tokens: int,
    *,
    sampling: SamplingParams = SamplingParams(),
    eos_token_id: int | list[int] | None = None,
    seed: int | None = None,
) -> list[int]:
    """New tokens from `transformers`' own generate (called as GenerationMixin.generate so a
    subclass override can never route the reference through Orthrus). attention_mask is
    passed as ones: otherwise HF masks prompt tokens that equal the pad id. When sampling, HF
    draws from the global RNG, which `seed` (default 0) reseeds."""
    kwargs = {"do_sample": False}
    if not sampling.greedy:
        kwargs = {"do_sample": True, "temperature": sampling.temperature, "top_k": sampling.top_k, "top_p": sampling.top_p}
        torch.manual_seed(seed if seed is not None else 0)
    eos = eos_token_id if eos_token_id is not None else base_model.generation_config.eos_token_id
    pad = base_model.generation_config.pad_token_id
    if pad is None:
        pad = (eos[0] if isinstance(eos, list) else eos) if eos is not None else 0
    out = GenerationMixin.generate(
        base_model, input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=max_new_tokens,
        eos_token_id=eos, pad_token_id=pad, **kwargs,
    )
    return out[0, input_ids.shape[1] :].tolist()


def exact_match(candidates: list[list[int]], references: list[list[int]]) -> dict:
    """token_rate: positions equal before the first divergence / all positions (the longer of
    the two sequences); sequence_rate: fraction of sequences identical in full."""
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates vs {len(references)} references")
    matched = total = identical = 0
    first_divergence = []
    for c, r in zip(candidates, references):
        n = 0
        while n < min(len(c), len(r)) and c[n] == r[n]:
            n += 1
        same = c == r
        matched, total, identical = matched + n, total + max(len(c), len(r)), identical + same
        first_divergence.append(None if same else n)
    return {
        "token_rate": matched / max(total, 1),
        "sequence_rate": identical / max(len(candidates), 1),
        "num_sequences": len(candidates),
        "first_divergence": first_divergence,
    }


def greedy_fidelity(
    model,
    prompts: list[list[int]],
    max_new_tokens: int,
    *,
    candidates: list[list[int]] | None = None,
    block_size: int | None = None,
    eos_token_id: int | list[int] | None = None,
    decode_fn: DecodeFn = generate,
    base_model=None,
    progress: bool = True,
) -> dict:
    """Exact match of greedy Orthrus decoding vs greedy HF generate on the base model.

    candidates: Orthrus outputs already decoded (new tokens per prompt); decoded here if None.
    base_model: defaults to `model` itself, whose forward *is* the frozen base model.
    """
    base_model = base_model if base_model is not None else model
    cands, refs = [], []
    for i, ids in enumerate(tqdm(prompts, desc="greedy fidelity", disable=not progress, leave=False)):
        input_ids = torch.tensor([ids], device=model.device)
        if candidates is None:
            out = decode_fn(model, input_ids, max_new_tokens, block_size=block_size, eos_token_id=eos_token_id)
            cands.append(out.new_tokens.tolist())
        else:
            cands.append(candidates[i])
        refs.append(base_generate(base_model, input_ids.to(base_model.device), max_new_tokens, eos_token_id=eos_token_id))
    return exact_match(cands, refs)


def _normalised(p: torch.Tensor) -> torch.Tensor:
    """float64 and summing to 1: torch.multinomial draws from p / sum(p), not from p itself, and
    float32 rows sum to 1 only within ~1e-7, an error the KL would otherwise report."""
    p = p.double()
    return p / p.sum(-1, keepdim=True)


def _kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row in float64; inf where q misses mass that p has."""
    p, q = _normalised(p), _normalised(q)
    terms = torch.where(p > 0, p * (p.log() - q.log()), torch.zeros_like(p))
    return terms.sum(-1)


def _effective(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Distribution of the token emitted at one draft slot, given it was reached: the draft
    x ~ q kept with probability min(1, p/q), else a draw from the normalised residual
    max(0, p - q) (p itself if the residual is empty), as in models.sampling.speculative_accept."""
    p, q = _normalised(p), _normalised(q)
    kept = torch.minimum(p, q)
    residual = (p - q).clamp_min(0)
    dist = residual / residual.sum() if residual.sum() > 0 else p
    return kept + (1 - kept.sum()) * dist


@torch.inference_mode()
def effective_distributions(model, result: GenerationResult, sampling: SamplingParams) -> torch.Tensor:
    """(num_new_tokens, V) distributions each emitted token was drawn from, recovered by
    replaying the decode (same blocks, same cache growth) from its recorded acceptances.

    The rejected drafts are not recorded; they are replaced by mask tokens, which changes no
    row the emitted tokens depend on (the verify pass is causal, and later rows are cropped).
    """
    seq, L, K = result.sequences.to(model.device), result.prompt_len, result.block_size
    mask_id, scale = model.config.mask_token_id, model.model.layers[0].self_attn.scaling
    cache = DynamicCache(config=model.config)
    logits = model(input_ids=seq[:, :L], **cache_kwargs(cache)).logits[0, -1]
    rows = [_normalised(logits_to_probs(logits, sampling))]  # the prefill token is drawn from p
    start = L
    for n_acc, n_emit, k in zip(result.accepted, result.emitted, result.proposed):
        positions = torch.arange(start, start + k, device=seq.device)[None]
        block = torch.full((1, k), mask_id, dtype=torch.long, device=seq.device)
        block[0, 0] = seq[0, start]
        q = None
        if k > 1:
            d_logits = model.diffusion_forward(block, positions, prefix_attend(cache, start, scale))[0, :-1]
            q = logits_to_probs(d_logits, sampling)
        m = min(n_acc, n_emit)  # a clipped last iteration emitted fewer drafts than it accepted
        block[0, 1 : m + 1] = seq[0, start + 1 : start + 1 + m]
        p = logits_to_probs(model(input_ids=block, position_ids=positions, **cache_kwargs(cache)).logits[0], sampling)
        for i in range(n_emit):  # emitted token i + 1 of this block sits at position start + i + 1
            rows.append(_effective(p[i], q[i]) if i < k - 1 else _normalised(p[i]))
        extra = cache.get_seq_length() - (start + n_acc + 1)
        if extra > 0:
            cache.crop(-extra)
        start += n_acc + 1
    return torch.stack(rows)


@torch.inference_mode()
def sampling_divergences(model, result: GenerationResult, sampling: SamplingParams, base_model=None) -> dict[str, torch.Tensor]:
    """Per emitted token of one sampled result: KL(p_base || p_eff) and the total variation
    distance between them. Both are 0 up to float error in fp32. KL is inf where p_eff misses
    a token p_base can draw (in bf16, a top-k/top-p cut that falls differently in the verify
    pass than in a plain forward); TV stays finite and says how much probability moved."""
    if sampling.greedy:
        raise ValueError("sampling divergences need sampling parameters with temperature > 0")
    base_model = base_model if base_model is not None else model
    seq = result.sequences.to(base_model.device)
    n = result.num_new_tokens
    base_logits = base_model(input_ids=seq[:, :-1], logits_to_keep=n).logits[0]  # rows predict positions L..L+n-1
    p_base = _normalised(logits_to_probs(base_logits, sampling))
    p_eff = effective_distributions(model, result, sampling).to(p_base.device)
    return {"kl": _kl(p_base, p_eff), "tv": 0.5 * (p_base - p_eff).abs().sum(-1)}


def sampling_fidelity(model, results: list[GenerationResult], sampling: SamplingParams,
                      base_model=None, progress: bool = True) -> dict:
    """KL and TV statistics over every token of many sampled results (kl_mean is inf as soon as
    one token's KL is; kl_mean_finite and kl_infinite_tokens split that case)."""
    per = [sampling_divergences(model, r, sampling, base_model)
           for r in tqdm(results, desc="sampling KL", disable=not progress, leave=False)]
    kl, tv = torch.cat([d["kl"] for d in per]), torch.cat([d["tv"] for d in per])
    finite = kl.isfinite()
    return {
        "kl_mean": kl.mean().item(),
        "kl_max": kl.max().item(),
        "kl_mean_finite": kl[finite].mean().item() if finite.any() else None,
        "kl_infinite_tokens": int((~finite).sum()),
        "tv_mean": tv.mean().item(),
        "tv_max": tv.max().item(),
        "num_tokens": kl.numel(),
    }


def two_sample_test(
    model,
    prompt: list[int],
    sampling: SamplingParams,
    *,
    max_new_tokens: int,
    num_samples: int,
    block_size: int | None = None,
    eos_token_id: int | list[int] | None = None,
    decode_fn: DecodeFn = generate,
    base_model=None,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Chi-square homogeneity test, per output position, between `num_samples` Orthrus samples
    and as many HF `do_sample` samples of the base model from one prompt.

    Positions are tested separately because tokens within one sequence are dependent; the
    per-position p-values are combined by Bonferroni (min p times the number of positions).
    A sequence that ended (EOS) counts as its own outcome at later positions. Cells are pooled
    into one "other" column when a token's total count is below 10 (expected count below 5).
    """
    if sampling.greedy:
        raise ValueError("two_sample_test needs sampling parameters with temperature > 0")
    base_model = base_model if base_model is not None else model
    input_ids = torch.tensor([prompt], device=model.device)
    ours, theirs = [], []
    for s in tqdm(range(num_samples), desc="two-sample test", disable=not progress, leave=False):
        g = torch.Generator(device=model.device).manual_seed(seed + s)
        out = decode_fn(model, input_ids, max_new_tokens, block_size=block_size, sampling=sampling,
                        eos_token_id=eos_token_id, generator=g)
        ours.append(out.new_tokens.tolist())
        theirs.append(base_generate(base_model, input_ids.to(base_model.device), max_new_tokens, sampling=sampling,
                                    eos_token_id=eos_token_id, seed=seed + s))
    pvalues = [_homogeneity_pvalue([o[t] if t < len(o) else -1 for o in ours], [h[t] if t < len(h) else -1 for h in theirs])
               for t in range(max_new_tokens)]
    return {
        "num_samples": num_samples,
        "pvalues": pvalues,
        "min_pvalue": min(pvalues),
        "bonferroni_pvalue": min(1.0, min(pvalues) * len(pvalues)),
    }


def _homogeneity_pvalue(a: list[int], b: list[int]) -> float:
    tokens = sorted(set(a) | set(b))
    table = torch.tensor([[a.count(t) for t in tokens], [b.count(t) for t in tokens]], dtype=torch.float64)
    sparse = table.sum(0) < 10
    if sparse.any():
        table = torch.cat([table[:, ~sparse], table[:, sparse].sum(1, keepdim=True)], dim=1)
    table = table[:, table.sum(0) > 0]
    if table.shape[1] < 2:
        return 1.0  # a single outcome on both sides: nothing to tell apart
    return float(chi2_contingency(table.numpy(), correction=False).pvalue)
