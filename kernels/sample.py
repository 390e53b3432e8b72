"""Speculative rejection sampling on the device: the sampling transform, drafts, acceptance, residual.

Everything here runs without a host sync, so the engine captures it in its CUDA graphs and reads
back one small tensor per iteration, as greedy decoding does.

The transform (temperature, then top-k, then top-p: `transformers`' order) is a per-row threshold
on the scores s = logits.float() / T: a token is kept iff s >= tau, and its probability is
exp(s - m - logZ) (m the row's max, Z the kept tokens' sum of exp(s - m)). `transform_stats`
computes (m, tau, logZ) per row from `torch.topk` over the row (top-k's k values, sorted; a full
sort only for top-p without top-k), so nothing of vocabulary size is sorted when top-k is on. Ties are
treated whole: every token tied with the k-th value is kept (as `transformers` does), and a group
of tied tokens at the top-p boundary is kept or dropped together (keep a token iff the tokens
strictly more likely than it hold less than top_p of the mass; `torch.sort`, which the reference
warper uses, orders ties arbitrarily, so there the reference's choice is arbitrary too).
`models.sampling.logits_to_probs` is defined through the same statistics.

Sampling from a row is a Gumbel-max over the kept tokens: argmax(s + G), G = -log(-log u), one
uniform per (row, token), split over programs by vocabulary chunk with a second, tiny reduction.
Random numbers come from Philox-4x32-10 (`tl.philox`, counter-based): key = a per-request seed,
counter = (token or draft index, row, iteration, purpose). The seed and the iteration live in a
device tensor `rng = [seed, iteration]` that the acceptance step advances, so a seed reproduces a
run and no host state is involved. `philox_ref` is the same generator in PyTorch, so the PyTorch
path (`backend="torch"`, CPU) draws the same numbers as the Triton kernels.

Acceptance (Leviathan et al. 2023, Chen et al. 2023): draft i is kept iff u_i * q_i(d_i) < p_i(d_i)
while all before it were kept; at the first rejection, row n, the next token is drawn from the
residual max(0, p_n - q_n) (normalisation is irrelevant to Gumbel-max); if all K - 1 drafts are
kept, from p_{K-1} (q = 0 there). Greedy drafts are the case q = one-hot(d). `rejection_rule()` names
the rule the kernels compile in; tests monkeypatch it to a broken rule to check that the fidelity
tests catch it (`BROKEN_RULES`).
"""

import torch
import triton
import triton.language as tl

from kernels.pdl import launch_options

DRAFT, ACCEPT, EMIT, FIRST = 0, 1, 2, 3  # Philox counter word 3: what a random number is for
RULES = ("exact", "accept_all", "reject_all_sample_q", "residual_p")
BROKEN_RULES = RULES[1:]  # accept every draft; reject every draft and emit a q sample; residual = p
BLOCK_V = 2048  # vocabulary entries per program in the sampling kernels
_U32 = 0xFFFFFFFF


def rejection_rule() -> str:
    """The acceptance rule the sampling kernels (and their PyTorch reference) use: "exact". Fidelity
    tests monkeypatch this to one of BROKEN_RULES, before the engine builds its steps."""
    return "exact"


def _rule_id() -> int:
    rule = rejection_rule()
    if rule not in RULES:
        raise ValueError(f"rejection_rule()={rule!r}: choose one of {RULES}")
    return RULES.index(rule)


# --- the transform ------------------------------------------------------------------------------


def inverse_temperature(temperature: float) -> float:
    """1 / temperature rounded to float32: scores are logits.float() times this, in PyTorch and in the
    kernels alike. A division would not do: PyTorch on CUDA divides by a scalar as a multiplication by
    its reciprocal while the kernels divide exactly, and a one-ulp difference can put the only kept
    token of a row (top-p keeping one) below the threshold the other computed, leaving nothing kept."""
    return torch.tensor(1.0 / temperature, dtype=torch.float32).item()


def scores(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Temperature-scaled float32 scores s of (R, V) logits, exactly as the kernels compute them."""
    return logits.float() * inverse_temperature(temperature)


def transform_stats(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """(R, V) logits -> (R, 3) float32 [m, tau, logZ]: keep s >= tau, p = exp(s - m - logZ), where
    s = scores(logits, temperature). No host sync; graph-capturable."""
    s = scores(logits, temperature)
    V = s.shape[-1]
    if top_k == 0 and top_p >= 1:
        m = s.amax(-1, keepdim=True)
        logz = (s - m).exp().sum(-1, keepdim=True).log()
        return torch.cat([m, torch.full_like(m, float("-inf")), logz], -1)
    c = min(top_k, V) if top_k > 0 else V
    vals = s.topk(c, sorted=True).values  # descending
    m, kth = vals[:, :1], vals[:, -1:]
    e = (vals - m).exp()
    # tokens tied with the k-th value beyond the c that topk returned (top-k keeps every s >= kth)
    extra = ((s >= kth).sum(-1, keepdim=True) - c).float() if c < V else torch.zeros_like(m)
    total = e.sum(-1, keepdim=True) + extra * e[:, -1:]
    n_keep = torch.full_like(m, c, dtype=torch.long)
    if top_p < 1:
        # mass strictly above each value: the exclusive cumsum at the first index of its tie group
        idx = torch.arange(c, device=s.device).expand_as(vals)
        new_group = torch.ones_like(vals, dtype=torch.bool)
        new_group[:, 1:] = vals[:, 1:] != vals[:, :-1]
        first = torch.where(new_group, idx, 0).cummax(-1).values
        above = (e.cumsum(-1) - e).gather(-1, first)
        n_keep = (above < top_p * total).sum(-1, keepdim=True)
    tau = vals.gather(-1, n_keep - 1)
    z = torch.where(vals >= tau, e, 0).sum(-1, keepdim=True) + torch.where(tau == kth, extra * e[:, -1:], 0)
    return torch.cat([m, tau, z.log()], -1)


def log_probs_from_stats(logits: torch.Tensor, temperature: float, stats: torch.Tensor) -> torch.Tensor:
    """The full (R, V) log-distribution the statistics describe (-inf outside the kept set)."""
    s = scores(logits, temperature)
    return torch.where(s >= stats[:, 1:2], s - stats[:, :1] - stats[:, 2:], float("-inf"))


# --- random numbers -------------------------------------------------------------------------------


def _mulhilo(a: int, b: torch.Tensor):
    """(hi, lo) 32-bit words of a * b for a 32-bit constant a and int64 tensors b holding 32-bit values,
    from two products that fit in 48 bits."""
    x, y = a * (b >> 16), a * (b & 0xFFFF)
    return (x + (y >> 16)) >> 16, (((x & 0xFFFF) << 16) + y) & _U32


def philox_ref(seed: int | torch.Tensor, c0, c1, c2, c3) -> torch.Tensor:
    """First output word of Philox-4x32-10, as `tl.philox(seed, c0, c1, c2, c3)` computes it (int64
    tensors holding uint32 values; counters broadcast)."""
    devices = {x.device for x in (seed, c0, c1, c2, c3) if isinstance(x, torch.Tensor)}
    device = next((d for d in devices if d.type != "cpu"), None)  # counters may be CPU ints beside a GPU seed
    seed = torch.as_tensor(seed, dtype=torch.int64, device=device)
    k0, k1 = seed & _U32, (seed >> 32) & _U32
    c0, c1, c2, c3 = torch.broadcast_tensors(
        *(torch.as_tensor(c, dtype=torch.int64, device=device) & _U32 for c in (c0, c1, c2, c3))
    )
    for _ in range(10):
        hi_b, lo_b = _mulhilo(0xCD9E8D57, c2)
        hi_a, lo_a = _mulhilo(0xD2511F53, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + 0x9E3779B9) & _U32, (k1 + 0xBB67AE85) & _U32
    return c0


def uniform_ref(seed, c0, c1, c2, c3) -> torch.Tensor:
    """float32 uniforms in (0, 1), never 0 or 1: (23 random bits + 0.5) / 2^23, as `_uniform`."""
    return ((philox_ref(seed, c0, c1, c2, c3) >> 9).float() + 0.5) * 2.0**-23


def _gumbel_ref(u):
    return -(-u.log()).log()


@triton.jit
def _uniform(seed, c0, c1, c2, c3):
    x, _, _, _ = tl.philox(seed, c0, c1, c2, c3)
    return ((x >> 9).to(tl.float32) + 0.5) * 1.1920928955078125e-07


@triton.jit
def _log_prob(logits_ptr, stride, row, col, inv_temperature, stats_ptr, mask, row_mask):
    """log p of the logits at (row, col) under row `row`'s statistics [m, tau, logZ] (-inf outside the
    kept set or the mask)."""
    x = tl.load(logits_ptr + row.to(tl.int64) * stride + col, mask=mask, other=0.0)
    s = x.to(tl.float32) * inv_temperature
    m = tl.load(stats_ptr + row * 3, mask=row_mask, other=0.0)
    tau = tl.load(stats_ptr + row * 3 + 1, mask=row_mask, other=0.0)
    logz = tl.load(stats_ptr + row * 3 + 2, mask=row_mask, other=0.0)
    return tl.where(mask & (s >= tau), s - m - logz, float("-inf"))


# --- sampling rows --------------------------------------------------------------------------------


@triton.jit
def _sample_rows_kernel(
    logits_ptr,
    stride,
    stats_ptr,
    rng_ptr,
    key_ptr,
    idx_ptr,
    V,
    inv_temperature,
    PURPOSE: tl.constexpr,
    BLOCK: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    """Program (row, chunk): the best Gumbel key (s + G over kept tokens) of the chunk and its token."""
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()  # logits, statistics and the iteration come from earlier kernels
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    seed = tl.load(rng_ptr)
    it = tl.load(rng_ptr + 1).to(tl.int32)
    t = chunk * BLOCK + tl.arange(0, BLOCK)
    mask = t < V
    x = tl.load(logits_ptr + row.to(tl.int64) * stride + t, mask=mask, other=0.0)
    s = x.to(tl.float32) * inv_temperature
    keep = mask & (s >= tl.load(stats_ptr + row * 3 + 1))
    g = -tl.log(-tl.log(_uniform(seed, t, row, it, PURPOSE)))
    key = tl.where(keep, s + g, float("-inf"))
    best = tl.argmax(key, 0)
    tl.store(key_ptr + row * tl.num_programs(1) + chunk, tl.max(key, 0))
    tl.store(idx_ptr + row * tl.num_programs(1) + chunk, chunk * BLOCK + best)


def _pick(keys: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """(R, C) per-chunk best keys and tokens -> (R,) the row's winner (first chunk on ties)."""
    return idx.gather(-1, keys.argmax(-1, keepdim=True))[:, 0]


def sample_rows(logits, stats, temperature: float, rng, purpose: int, *, use_triton: bool, pdl: bool = False):
    """One draw per row of (R, V) logits from the distributions `stats` describe -> (R,) int64.
    rng = [seed, iteration] (int64, device); the draw of row r uses Philox counters (token, r,
    iteration, purpose)."""
    R, V = logits.shape
    if not use_triton:
        t = torch.arange(V, device=logits.device)
        rows = torch.arange(R, device=logits.device)[:, None]
        g = _gumbel_ref(uniform_ref(rng[0], t, rows, rng[1], purpose))
        s = scores(logits, temperature)
        return torch.where(s >= stats[:, 1:2], s + g, float("-inf")).argmax(-1)
    if logits.stride(-1) != 1:
        raise ValueError("logits must be contiguous in the vocabulary dim")
    chunks = triton.cdiv(V, BLOCK_V)
    keys = torch.empty(R, chunks, dtype=torch.float32, device=logits.device)
    idx = torch.empty(R, chunks, dtype=torch.int64, device=logits.device)
    _sample_rows_kernel[(R, chunks)](
        logits,
        logits.stride(0),
        stats,
        rng,
        keys,
        idx,
        V,
        inverse_temperature(temperature),
        PURPOSE=purpose,
        BLOCK=BLOCK_V,
        **launch_options(pdl, logits.device),
    )
    return _pick(keys, idx)


# --- acceptance and the residual ------------------------------------------------------------------


@triton.jit
def _accept_kernel(
    p_ptr,
    p_stride,
    p_stats_ptr,
    q_ptr,
    q_stride,
    q_stats_ptr,
    draft_ptr,
    n_drafts,
    rng_ptr,
    n_acc_ptr,
    key_ptr,
    idx_ptr,
    pkey_ptr,
    pidx_ptr,
    V,
    inv_temperature,
    ONE_HOT: tl.constexpr,
    RULE: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    """Program `chunk`: every program decides the accepted length n (K - 1 scalar gathers; cheaper than
    another launch), then over its vocabulary chunk the best Gumbel key of the residual
    max(0, p_n - q_n) (q = 0 when n = n_drafts) and, as a fallback for an all-zero residual, of p_n."""
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()
    chunk = tl.program_id(0)
    seed = tl.load(rng_ptr)
    it = tl.load(rng_ptr + 1).to(tl.int32)

    i = tl.arange(0, BLOCK_D)
    in_d = i < n_drafts
    d = tl.load(draft_ptr + i, mask=in_d, other=0)
    p_d = tl.exp(_log_prob(p_ptr, p_stride, i, d, inv_temperature, p_stats_ptr, in_d, in_d))
    if ONE_HOT:
        q_d = tl.full((BLOCK_D,), 1.0, tl.float32)
    else:
        q_d = tl.exp(_log_prob(q_ptr, q_stride, i, d, inv_temperature, q_stats_ptr, in_d, in_d))
    keep = _uniform(seed, i, 0, it, 1) * q_d < p_d
    if RULE == 1:  # broken: accept every draft
        keep = in_d
    if RULE == 2:  # broken: reject every draft
        keep = i < 0
    n = tl.min(tl.where(in_d & ~keep, i, n_drafts), 0)
    if chunk == 0:
        tl.store(n_acc_ptr, n.to(tl.int64))

    has_q = n < n_drafts
    t = chunk * BLOCK + tl.arange(0, BLOCK)
    mask = t < V
    lp = _log_prob(p_ptr, p_stride, n, t, inv_temperature, p_stats_ptr, mask, n >= 0)
    p = tl.exp(lp)
    q_mask = mask & (tl.zeros_like(t) + n < n_drafts)  # a block-shaped mask (the interpreter rejects scalar & block)
    if ONE_HOT:
        q = tl.where(q_mask & (t == tl.load(draft_ptr + n, mask=has_q, other=-1)), 1.0, 0.0)
    else:
        q = tl.exp(_log_prob(q_ptr, q_stride, n, t, inv_temperature, q_stats_ptr, q_mask, has_q))
    r = tl.maximum(p - q, 0.0)
    if RULE == 2:  # broken: emit a sample of q (p after the last draft)
        r = tl.where(has_q, q, p)
    if RULE == 3:  # broken: sample p itself at a rejection
        r = p
    g = -tl.log(-tl.log(_uniform(seed, t, 0, it, 2)))
    key = tl.where(r > 0, tl.log(r) + g, float("-inf"))
    pkey = lp + g
    tl.store(key_ptr + chunk, tl.max(key, 0))
    tl.store(idx_ptr + chunk, chunk * BLOCK + tl.argmax(key, 0))
    tl.store(pkey_ptr + chunk, tl.max(pkey, 0))
    tl.store(pidx_ptr + chunk, chunk * BLOCK + tl.argmax(pkey, 0))


def _accept_ref(p_logits, p_stats, q_logits, q_stats, draft, temperature, rng, one_hot, rule):
    """PyTorch twin of `_accept_kernel` over the whole vocabulary: (n, residual keys, p keys)."""
    n_drafts, V = draft.shape[0], p_logits.shape[1]
    i = torch.arange(n_drafts, device=draft.device)
    lp_all = log_probs_from_stats(p_logits, temperature, p_stats)
    p_d = lp_all[i, draft].exp()
    q_all = None if one_hot else log_probs_from_stats(q_logits, temperature, q_stats).exp()
    q_d = torch.ones_like(p_d) if one_hot else q_all[i, draft]
    keep = uniform_ref(rng[0], i, 0, rng[1], ACCEPT) * q_d < p_d
    if rule == 1:
        keep = torch.ones_like(keep)
    if rule == 2:
        keep = torch.zeros_like(keep)
    n = (
        torch.where(~keep, i, n_drafts).amin(0, keepdim=True)
        if n_drafts
        else torch.zeros(1, dtype=torch.long, device=draft.device)  # made on the device: no copy in a graph
    )
    has_q = n < n_drafts
    row = n.clamp_max(p_logits.shape[0] - 1)
    lp = lp_all[row][0]
    p = lp.exp()
    if n_drafts == 0:
        q = torch.zeros_like(p)
    elif one_hot:
        q = torch.nn.functional.one_hot(draft[row.clamp_max(n_drafts - 1)], V)[0].float()
    else:
        q = q_all[row.clamp_max(n_drafts - 1)][0]
    q = torch.where(has_q, q, 0)
    r = (p - q).clamp_min(0)
    if rule == 2:
        r = torch.where(has_q, q, p)
    if rule == 3:
        r = p
    g = _gumbel_ref(uniform_ref(rng[0], torch.arange(V, device=p.device), 0, rng[1], EMIT))
    key = torch.where(r > 0, r.log() + g, float("-inf"))
    return n, key[None], (lp + g)[None]


def accept(
    p_logits, p_stats, q_logits, q_stats, draft, temperature: float, rng, *, use_triton: bool, pdl: bool = False
):
    """Speculative rejection sampling of one block, on the device.

    p_logits (K, V) and p_stats: the AR view's rows; draft (K - 1,) tokens; q_logits (K - 1, V) and
    q_stats: the draft distributions, or None for greedy drafts (q = one-hot(draft)). Returns
    (n (1,) int64 drafts accepted, token (1,) int64 the next token: from the residual at row n, or
    from p_{K-1} when every draft is kept). No host sync.
    """
    one_hot = q_logits is None
    rule = _rule_id()
    n_drafts, V = draft.shape[0], p_logits.shape[1]
    if not use_triton:
        n, keys, pkeys = _accept_ref(p_logits, p_stats, q_logits, q_stats, draft, temperature, rng, one_hot, rule)
        idx = torch.arange(V, device=keys.device)[None]
        cidx = idx
    else:
        if p_logits.stride(-1) != 1 or (q_logits is not None and q_logits.stride(-1) != 1):
            raise ValueError("logits must be contiguous in the vocabulary dim")
        chunks = triton.cdiv(V, BLOCK_V)
        dev = p_logits.device
        n = torch.empty(1, dtype=torch.int64, device=dev)
        keys, pkeys = (torch.empty(1, chunks, dtype=torch.float32, device=dev) for _ in range(2))
        idx, cidx = (torch.empty(1, chunks, dtype=torch.int64, device=dev) for _ in range(2))
        q, qs = (p_logits, p_stats) if one_hot else (q_logits, q_stats)
        _accept_kernel[(chunks,)](
            p_logits,
            p_logits.stride(0),
            p_stats,
            q,
            q.stride(0),
            qs,
            draft,
            n_drafts,
            rng,
            n,
            keys,
            idx,
            pkeys,
            cidx,
            V,
            inverse_temperature(temperature),
            ONE_HOT=one_hot,
            RULE=rule,
            BLOCK_D=triton.next_power_of_2(max(n_drafts, 1)),
            BLOCK=BLOCK_V,
            **launch_options(pdl, dev),
        )
    # the residual is all zero only when p_n == q_n to the last bit, where a rejection cannot happen
    token = torch.where(keys.amax(-1) > float("-inf"), _pick(keys, idx), _pick(pkeys, cidx))
    return n, token
