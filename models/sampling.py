"""Sampling transforms and the acceptance rules that make Orthrus lossless.

Both views go through the same `logits_to_probs`, so the draft distribution q and the target
distribution p live on the same support. Greedy acceptance keeps the longest prefix of drafts
that equal the AR argmax; sampling uses speculative rejection sampling (Leviathan et al.,
Chen et al.), under which every emitted token is distributed exactly as the base model's
sampler (temperature, then top-k, then top-p: the order `transformers` applies them).
These are the reference loop's rules; the engine runs the same transform and acceptance rule on
the device (`kernels/sample.py`).
"""

from dataclasses import dataclass

import torch

from kernels.sample import scores, transform_stats


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 means greedy
    top_k: int = 0  # 0 disables
    top_p: float = 1.0  # 1 disables

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0 (0 = greedy)")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k} must be >= 0 (0 = off)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1] (1 = off)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def logits_to_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Sampling distribution (float32) over the last dim, matching transformers' warpers.

    The transform is defined once, as per-row thresholds (`kernels.sample.transform_stats`), so the
    engine's device sampler and this reference keep the same tokens, ties included."""
    flat = logits.reshape(-1, logits.shape[-1])
    stats = transform_stats(flat, params.temperature, params.top_k, params.top_p)
    s = scores(flat, params.temperature)
    return s.masked_fill(s < stats[:, 1:2], float("-inf")).softmax(-1).view(logits.shape)


def greedy_accept(draft: torch.Tensor, target_logits: torch.Tensor) -> tuple[int, int]:
    """draft: (n,) drafted tokens; target_logits: (n + 1, V) AR logits at the same positions
    (row i predicts the token that draft[i] guessed). Returns (drafts accepted, next token)."""
    target = target_logits.argmax(-1)
    n_acc = int((draft == target[: draft.shape[0]]).long().cumprod(0).sum())
    return n_acc, int(target[n_acc])


def speculative_accept(
    draft: torch.Tensor, q: torch.Tensor, p: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[int, int]:
    """Rejection sampling over a block of drafts.

    draft: (n,) tokens, draft[i] ~ q[i]; q: (n, V) draft distributions; p: (n + 1, V) target
    distributions at the same positions. Draft i is kept with probability min(1, p/q) while all
    before it were kept; at the first rejection the next token is drawn from the normalised
    residual max(0, p - q); if all are kept it is drawn from p[n]. The result is an exact
    sample of the target sampler, whatever q is.
    """
    n = draft.shape[0]
    idx = torch.arange(n, device=draft.device)
    p_d, q_d = p[idx, draft], q[idx, draft]
    u = torch.rand(n, generator=generator, device=draft.device)
    keep = (u * q_d < p_d).long()  # u < p/q without dividing; q_d > 0 since draft ~ q
    n_acc = int(keep.cumprod(0).sum())
    if n_acc < n:
        residual = (p[n_acc] - q[n_acc]).clamp_min(0)
        # residual is all-zero only when p == q, where rejection has probability 0; guard anyway.
        dist = residual if residual.sum() > 0 else p[n_acc]
    else:
        dist = p[n]
    return n_acc, int(torch.multinomial(dist, 1, generator=generator))


def sample(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw per row of a (..., V) probability tensor."""
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])
