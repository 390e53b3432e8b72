"""Greedy acceptance kernel vs. the PyTorch reference (Triton interpreter on CPU when there is no GPU)."""

import pytest
import torch

from kernels.accept import greedy_accept
from kernels.reference import greedy_accept_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32], ids=str)
@pytest.mark.parametrize("block_len", [1, 2, 7, 8, 16, 32])
def test_greedy_accept_matches_reference(block_len, dtype):
    """Drafts that agree with the AR tokens up to a random point (every accept length occurs)."""
    gen = torch.Generator(device=DEVICE).manual_seed(block_len)
    batch = 3 * block_len
    ar = torch.randint(0, 50_000, (batch, block_len), generator=gen, device=DEVICE, dtype=dtype)
    draft = ar[:, :-1].clone()
    first_wrong = torch.arange(batch, device=DEVICE) % block_len  # == block_len - 1: all accepted
    rows = torch.nonzero(first_wrong < block_len - 1).squeeze(1)
    draft[rows, first_wrong[rows]] += 1
    # Positions after the first mismatch agree with ar (they must not count); give some a second mismatch too.
    if block_len > 2:
        later = rows[first_wrong[rows] < block_len - 2]
        draft[later, -1] += 1

    accept_len, bonus = greedy_accept(draft, ar)
    ref_len, ref_bonus = greedy_accept_ref(draft, ar)
    assert accept_len.dtype == torch.int64 and bonus.dtype == dtype
    assert accept_len.device == ar.device and bonus.device == ar.device
    assert torch.equal(accept_len, ref_len)
    assert torch.equal(bonus, ref_bonus)


def test_greedy_accept_examples():
    ar = torch.tensor([[5, 6, 7, 8], [5, 6, 7, 8], [5, 6, 7, 8], [1, 2, 3, 4]], device=DEVICE)
    draft = torch.tensor([[5, 6, 7], [5, 9, 7], [0, 6, 7], [1, 2, 3]], device=DEVICE)
    accept_len, bonus = greedy_accept(draft, ar)
    assert accept_len.tolist() == [3, 1, 0, 3]
    assert bonus.tolist() == [8, 6, 5, 4]


def test_greedy_accept_non_contiguous_inputs():
    """Slices of larger buffers (e.g. a token history) are read through their strides."""
    ar = torch.tensor([[5, 6, 7, 8], [1, 2, 3, 4]], device=DEVICE).t().contiguous().t()
    history = torch.tensor([[0, 5, 6, 0, 0], [0, 1, 2, 3, 0]], device=DEVICE)
    accept_len, bonus = greedy_accept(history[:, 1:4], ar)
    assert accept_len.tolist() == [2, 3]
    assert bonus.tolist() == [7, 4]


@pytest.mark.parametrize(
    "draft_shape, ar_shape, message",
    [((2, 4), (2, 4), "K - 1"), ((3, 3), (2, 4), "K - 1"), ((2,), (2, 1), "K - 1")],
)
def test_greedy_accept_shape_errors(draft_shape, ar_shape, message):
    with pytest.raises(ValueError, match=message):
        greedy_accept(torch.zeros(draft_shape, dtype=torch.long), torch.zeros(ar_shape, dtype=torch.long))


def test_greedy_accept_rejects_float_tokens():
    with pytest.raises(ValueError, match="integers"):
        greedy_accept(torch.zeros(2, 3), torch.zeros(2, 4))


def test_greedy_accept_pdl_path(interpreted_pdl):
    """The kernel's PDL variant (gdc_* as no-ops in the interpreter) gives the same results."""
    ar = torch.tensor([[5, 6, 7, 8], [5, 6, 7, 8], [1, 2, 3, 4]], device=DEVICE)
    draft = torch.tensor([[5, 6, 7], [5, 9, 7], [1, 2, 3]], device=DEVICE)
    accept_len, bonus = greedy_accept(draft, ar, pdl=True)
    assert accept_len.tolist() == [3, 1, 3] and bonus.tolist() == [8, 6, 4]
