"""Fidelity: does Orthrus produce what the base model produces? Checks that fail when it does not.

  * greedy: exact match against `transformers`' own `generate` on the base model (token-level
    rate up to the first divergence, and whole-sequence rate);
  * sampling (`sampling_fidelity`, on by default in evaluation): every emitted token is tested
    against the base model's sampling distribution *given its own prefix*, computed by a plain
    forward of the base model. Under a lossless rule each token's randomised PIT is Uniform(0, 1)
    independently of the past, whatever the drafts were, so a chi-square test of the PIT values
    has a known false-alarm rate (alpha, also simulated at the run's sample size) and catches a
    rule that emits tokens from anything other than p (accepting every draft, sampling the
    drafter at a rejection, a residual of p instead of max(0, p - q): tests/test_fidelity_rules.py);
  * sampling, two-sample: a chi-square homogeneity test between Orthrus samples and
    `transformers`' `do_sample` samples over many seeds, per output position (optional).
Run once per dtype (fp32 and bf16 results are reported separately).
"""

import importlib
import json
import statistics
import warnings
from pathlib import Path

import numpy as np
import torch
from scipy.stats import chi2, chi2_contingency, chisquare
from tqdm import tqdm
from transformers import GenerationMixin

from eval.runner import DecodeFn, decode_prompts
from models.generate import GenerationResult, generate
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
        kwargs = {
            "do_sample": True,
            "temperature": sampling.temperature,
            "top_k": sampling.top_k,
            "top_p": sampling.top_p,
        }
        torch.manual_seed(seed if seed is not None else 0)
    eos = eos_token_id if eos_token_id is not None else base_model.generation_config.eos_token_id
    pad = base_model.generation_config.pad_token_id
    if pad is None:  # the first EOS id, else 0 (eos_token_id=[]: never stop early)
        first = eos[0] if isinstance(eos, list) and eos else eos
        pad = first if isinstance(first, int) else 0
    out = GenerationMixin.generate(
        base_model,
        input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=max_new_tokens,
        eos_token_id=eos,
        pad_token_id=pad,
        **kwargs,
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
    references: list[list[int]] | None = None,
    block_size: int | None = None,
    eos_token_id: int | list[int] | None = None,
    decode_fn: DecodeFn = generate,
    base_model=None,
    progress: bool = True,
) -> dict:
    """Exact match of greedy Orthrus decoding vs greedy HF generate on the base model.

    candidates: Orthrus outputs already decoded (new tokens per prompt); decoded here if None.
    references: HF outputs already decoded (one list serves every block size); decoded here if None.
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
        refs.append(
            references[i]
            if references is not None
            else base_generate(base_model, input_ids.to(base_model.device), max_new_tokens, eos_token_id=eos_token_id)
        )
    return exact_match(cands, refs)


def _normalised(p: torch.Tensor) -> torch.Tensor:
    """float64 and summing to 1: torch.multinomial draws from p / sum(p), not from p itself."""
    p = p.double()
    return p / p.sum(-1, keepdim=True)


FIDELITY_ALPHA = 1e-3
PIT_BINS = 16
FALSE_ALARM_REPS = 20000


@torch.inference_mode()
def token_pits(
    base_model, result: GenerationResult, sampling: SamplingParams, generator: torch.Generator
) -> tuple[torch.Tensor, int]:
    """Randomised probability integral transforms of one sampled result's new tokens under the base
    sampler, and how many tokens the base sampler could not have drawn (probability 0).

    For token x_t with base distribution p_t = p_base(. | x_<t) (one plain forward of the base model
    over the whole sequence) and the vocabulary ordered by p_t (descending, ties by id):
        u_t = P_t(tokens before x_t) + V * p_t(x_t),   V ~ Uniform(0, 1).
    If every x_t is drawn from p_t given its prefix -- the lossless promise, whatever the drafts were --
    each u_t is Uniform(0, 1) given everything before it, so all u_t are i.i.d. uniform.
    """
    seq = result.sequences.to(base_model.device)
    n = result.num_new_tokens
    logits = base_model(input_ids=seq[:, :-1], logits_to_keep=n).logits[0]  # rows predict positions L..L+n-1
    p = _normalised(logits_to_probs(logits, sampling)).cpu()
    tokens = result.new_tokens.cpu()
    order = torch.sort(-p, dim=-1, stable=True).indices
    sorted_p = p.gather(-1, order)
    rank = (order == tokens[:, None]).long().argmax(-1, keepdim=True)
    p_x = sorted_p.gather(-1, rank)[:, 0]
    below = sorted_p.cumsum(-1).gather(-1, rank)[:, 0] - p_x
    v = torch.rand(n, generator=generator, dtype=torch.float64)
    return (below + v * p_x).clamp(0, 1), int((p_x == 0).sum())


def pit_uniformity(u: torch.Tensor, alpha: float = FIDELITY_ALPHA, bins: int = PIT_BINS) -> dict:
    """Chi-square goodness of fit of PIT values to Uniform(0, 1) over `bins` equal bins, and the test's
    false-alarm rate at this sample size, simulated exactly (under the null the bin counts are one
    multinomial draw) rather than taken from the chi-square approximation."""
    n = u.numel()
    if n < 5 * bins:  # expected count < 5 per bin: the chi-square approximation does not hold
        return {
            "num_tokens": n,
            "bins": bins,
            "pvalue": None,
            "alpha": alpha,
            "passed": None,
            "not_run": f"{n} sampled tokens, fewer than the {5 * bins} a {bins}-bin test needs: sample more "
            "(more prompts or max_new_tokens)",
        }
    counts = torch.bincount((u * bins).long().clamp(max=bins - 1), minlength=bins).numpy()
    result = chisquare(counts)
    null = np.random.default_rng(0).multinomial(n, [1 / bins] * bins, size=FALSE_ALARM_REPS)
    null_pvalues = chi2.sf(((null - n / bins) ** 2 / (n / bins)).sum(1), bins - 1)
    return {
        "num_tokens": n,
        "bins": bins,
        "counts": counts.tolist(),
        "statistic": float(result.statistic),
        "pvalue": float(result.pvalue),
        "alpha": alpha,
        "passed": bool(result.pvalue >= alpha),
        "false_alarm_rate_simulated": float((null_pvalues < alpha).mean()),
        "false_alarm_simulations": FALSE_ALARM_REPS,
    }


def sampling_fidelity(
    model,
    results: list[GenerationResult],
    sampling: SamplingParams,
    *,
    base_model=None,
    alpha: float = FIDELITY_ALPHA,
    bins: int = PIT_BINS,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Do sampled Orthrus tokens follow the base model's sampler? A test that fails when they do not.

    Every emitted token of `results` is checked against the base distribution given its own prefix
    (`token_pits`), and the PIT values against Uniform(0, 1) (`pit_uniformity`): "passed" is False at
    significance `alpha` -- the false-alarm rate of a lossless decoder, stated with its simulation.
    base_model: defaults to `model`, whose forward *is* the frozen base model. Tokens the base sampler
    gives probability 0 (e.g. a top-p cut that falls differently in bf16) are counted apart."""
    if sampling.greedy:
        raise ValueError("sampling fidelity needs sampling parameters with temperature > 0 (greedy: exact match)")
    base_model = base_model if base_model is not None else model
    g = torch.Generator().manual_seed(seed)
    pits, off_support = [], 0
    for r in tqdm(results, desc="sampling fidelity", disable=not progress, leave=False):
        u, off = token_pits(base_model, r, sampling, g)
        pits.append(u)
        off_support += off
    return {
        "test": "randomised PIT of each token under p_base(. | its prefix), chi-square vs Uniform(0, 1)",
        **pit_uniformity(torch.cat(pits), alpha, bins),
        "zero_probability_tokens": off_support,
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
    run = decode_prompts(  # sample s draws with a generator seeded seed + s
        model,
        [prompt] * num_samples,
        block_size=block_size,
        max_new_tokens=max_new_tokens,
        sampling=sampling,
        eos_token_id=eos_token_id,
        seed=seed,
        decode_fn=decode_fn,
        progress=progress,
        desc="two-sample test",
    )
    ours = [out.new_tokens.tolist() for out in run.results]
    input_ids = torch.tensor([prompt], device=base_model.device)
    theirs = [
        base_generate(
            base_model, input_ids, max_new_tokens, sampling=sampling, eos_token_id=eos_token_id, seed=seed + s
        )
        for s in range(num_samples)
    ]
    pvalues = [
        _homogeneity_pvalue([o[t] if t < len(o) else -1 for o in ours], [h[t] if t < len(h) else -1 for h in theirs])
        for t in range(max_new_tokens)
    ]
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


# --- bf16 greedy divergence (scripts/bench_decode.py) --------------------------------------------


def first_diff(a: torch.Tensor, b: torch.Tensor) -> int | None:
    """Index of the first differing token of two new-token sequences (None: equal over the shorter)."""
    n = min(len(a), len(b))
    diff = (a[:n] != b[:n].to(a.device)).nonzero()
    return int(diff[0]) if len(diff) else None


@torch.inference_mode()
def greedy_divergence(
    model, engine, prompts: list[torch.Tensor], new_tokens: int, ks: list[int], n_hf: int, log=print
) -> dict:
    """Greedy, on one engine: Orthrus (each K in ks) vs AR (K = 1), and, on the first n_hf prompts, the engine's
    AR vs transformers' generate. First divergence = index of the first differing new token. Also the top-1 /
    top-2 logit gap along the AR output: small gaps are where rounding differences (bf16) flip the argmax.
    In fp32 any divergence is a bug; in bf16 it measures how far kernel rounding moves the output."""
    records, tpf, gaps = [], {K: [] for K in ks}, []
    for i, ids in enumerate(prompts):
        L = ids.shape[1]
        ar = engine.generate(ids, new_tokens, block_size=1, eos_token_id=[])
        rec = {}
        for K in ks:
            out = engine.generate(ids, new_tokens, block_size=K, eos_token_id=[])
            rec[f"orthrus_K{K}_vs_ar"] = first_diff(out.new_tokens, ar.new_tokens)
            tpf[K].append(out.tokens_per_iteration)
        if i < n_hf:
            hf = base_generate(model, ids, new_tokens, eos_token_id=[])
            rec["ar_vs_transformers"] = first_diff(ar.new_tokens, torch.tensor(hf))
        top2 = model(ar.sequences[:, :-1]).logits[0, L - 1 :].float().topk(2, dim=-1).values
        gaps.append(top2[:, 0] - top2[:, 1])
        records.append(rec)
        log(f"  prompt {i}: {rec}  tokens per iteration {out.tokens_per_iteration:.2f}")
    gaps = torch.cat(gaps)
    summary = {
        "prompts": len(prompts),
        "new_tokens": new_tokens,
        "block_size": max(ks),
        "per_prompt": records,
        "tpf_mean": {K: statistics.mean(v) for K, v in tpf.items()},
        "measured_tpf_mean": statistics.mean(tpf[ks[-1]]),
        "top1_top2_logit_gap": {
            "median": float(gaps.median()),
            "p10": float(gaps.quantile(0.1)),
            "fraction_below_0.0625": float((gaps < 0.0625).float().mean()),
        },
    }
    for key in sorted({k for r in records for k in r}):
        vals = [r[key] for r in records if key in r]
        firsts = [v for v in vals if v is not None]
        summary[key] = {"prompts": len(vals), "fraction_diverged": len(firsts) / len(vals), "first_divergence": firsts}
    log(f"divergence: {json.dumps({k: v for k, v in summary.items() if k != 'per_prompt'})}")
    return summary


SMALL_HELDOUT_MODULES = ("multiprocessing", "fileinput", "nntplib")  # packages orthrus-small never trained on


def heldout_prompts(tokenizer, n: int, length: int) -> list[list[int]]:
    """`length`-token windows from the start of held-out standard-library source files (real text for a
    trained model, unseen in its training)."""
    files = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for name in SMALL_HELDOUT_MODULES:
            path = Path(importlib.import_module(name).__file__)
            files += sorted(path.parent.glob("*.py")) if path.name == "__init__.py" else [path]
    prompts = []
    for f in files:
        ids = tokenizer.encode(f.read_text(errors="replace")).ids
        if len(ids) >= length:
            prompts.append(ids[:length])
        if len(prompts) == n:
            break
    return prompts


def small_model_divergence(
    folder, ks: list[int], n_prompts: int, n_hf: int, new_tokens: int, device, log=print
) -> dict:
    """`greedy_divergence` on the project's trained small Qwen3 (artifacts/orthrus-small) in fp32 (n_hf // 2
    prompts, all also decoded by transformers) and bf16 (n_prompts, n_hf of them by transformers). Real
    weights give real top-1/top-2 logit gaps, which random weights do not. Uses the trained diffusion view
    when `folder`/diffusion exists (otherwise the view starts as a copy of the AR view)."""
    from tokenizers import Tokenizer

    from models.checkpoint import load_orthrus
    from models.engine import OrthrusEngine

    folder = Path(folder)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer" / "tokenizer.json"))
    diffusion = folder / "diffusion"
    prompts = [torch.tensor([p], device=device) for p in heldout_prompts(tokenizer, n_prompts, 256)]
    out = {
        "model": str(folder),
        "trained_diffusion_view": diffusion.is_dir(),
        "prompts": len(prompts),
        "prompt_tokens": 256,
        "new_tokens": new_tokens,
        "prompt_source": SMALL_HELDOUT_MODULES,
    }
    for dtype, n, hf in ((torch.float32, n_hf // 2, n_hf // 2), (torch.bfloat16, len(prompts), n_hf)):
        model = load_orthrus(
            str(folder / "base"),
            str(diffusion) if diffusion.is_dir() else None,
            mask_token_id=tokenizer.token_to_id("<|mask|>"),
            dtype=dtype,
            device=device,
        )
        engine = OrthrusEngine(model, 256 + new_tokens + max(ks) + 64)
        out[str(dtype).removeprefix("torch.")] = greedy_divergence(
            model, engine, prompts[:n], new_tokens, ks, hf, log=lambda msg: None
        )
        log(
            f"[orthrus-small {dtype}] "
            + json.dumps({k: v for k, v in out[str(dtype).removeprefix("torch.")].items() if k != "per_prompt"})
        )
        del engine, model
    return out
