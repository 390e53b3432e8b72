"""Greedy acceptance of a drafted block, on the device.

After the verify pass, the draft's tokens are compared with the AR model's argmax tokens at the same
positions. The accepted length is the longest agreeing prefix, and the AR token right after it is the
bonus token the step emits for free. Doing this in a kernel keeps the decode loop free of host syncs
(and capturable in a CUDA graph): both results stay on the device.
"""

import torch
import triton
import triton.language as tl

from kernels.pdl import launch_options


@triton.jit
def _greedy_accept_kernel(
    draft_ptr,
    ar_ptr,
    accept_len_ptr,
    bonus_ptr,
    stride_db,
    stride_dt,
    stride_ab,
    stride_at,
    BLOCK_LEN: tl.constexpr,
    BLOCK: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    """One program per sequence: the first mismatch among the K - 1 drafted positions (K - 1 if none)."""
    if USE_PDL:
        # A tiny kernel: let the next one launch at once (it still waits for this one to complete).
        # Both token rows come from earlier kernels.
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()
    batch = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    in_draft = offs < BLOCK_LEN - 1
    draft = tl.load(draft_ptr + batch * stride_db + offs * stride_dt, mask=in_draft)
    ar = tl.load(ar_ptr + batch * stride_ab + offs * stride_at, mask=in_draft)
    mismatch = in_draft & (draft != ar)
    accept_len = tl.min(tl.where(mismatch, offs, BLOCK_LEN - 1), 0)
    tl.store(accept_len_ptr + batch, accept_len)
    tl.store(bonus_ptr + batch, tl.load(ar_ptr + batch * stride_ab + accept_len * stride_at))


def greedy_accept(draft: torch.Tensor, ar: torch.Tensor, pdl: bool = False):
    """Greedy verification of a block of K tokens.

    draft: (B, K - 1) drafted tokens; ar: (B, K) the AR model's argmax tokens, where ar[:, i] is the
    AR prediction at the position of draft[:, i] (and ar[:, K - 1] follows the whole block).
    Returns (accept_len, bonus), both (B,) on the inputs' device without a host sync:
    accept_len (int64) is the longest i with draft[:, :i] == ar[:, :i], in [0, K - 1];
    bonus (ar's dtype) is ar[:, accept_len].
    pdl: launch with Programmatic Dependent Launch (kernels/pdl.py; CUDA sm_90+); same results.
    """
    if draft.dim() != 2 or ar.dim() != 2 or draft.shape != (ar.shape[0], ar.shape[1] - 1):
        raise ValueError(f"expected draft (B, K - 1) and ar (B, K), got {tuple(draft.shape)}, {tuple(ar.shape)}")
    if draft.device != ar.device:
        raise ValueError(f"draft is on {draft.device} but ar is on {ar.device}")
    if draft.dtype.is_floating_point or ar.dtype.is_floating_point:
        raise ValueError(f"token ids must be integers, got {draft.dtype} and {ar.dtype}")
    batch, block_len = ar.shape
    accept_len = torch.empty(batch, device=ar.device, dtype=torch.int64)
    bonus = torch.empty(batch, device=ar.device, dtype=ar.dtype)
    _greedy_accept_kernel[(batch,)](
        draft,
        ar,
        accept_len,
        bonus,
        *draft.stride(),
        *ar.stride(),
        BLOCK_LEN=block_len,
        BLOCK=triton.next_power_of_2(block_len),
        **launch_options(pdl, ar.device),
    )
    return accept_len, bonus
