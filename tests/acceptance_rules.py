"""Deliberately broken speculative-sampling acceptance rules, and how to put one in place of the real one.

Each has the contract of `models.sampling.speculative_accept` (draft (n,), q (n, V), p (n + 1, V),
generator) -> (drafts accepted, next token) and breaks losslessness in one way:
  * accept_all: every draft kept (the p/q test skipped), so drafts are emitted as drawn from q;
  * reject_all_sample_draft: every draft rejected and the replacement drawn from q, not the residual;
  * residual_p: the replacement after a rejection drawn from p instead of max(0, p - q).
`install(monkeypatch, rule)` rebinds every loaded reference to the real rule inside models/ and kernels/
(the reference loop imports it by name), so any decoder that calls it runs the broken one. The engine
samples on the device (kernels/sample.py); `install_engine(monkeypatch, name)` switches its kernels and
their PyTorch twins to the same broken rule (ENGINE_RULES maps the names).
"""

import sys

import torch

from kernels import sample as device_sampling
from models import sampling


def accept_all(draft, q, p, generator=None):
    return draft.shape[0], int(torch.multinomial(p[draft.shape[0]], 1, generator=generator))


def reject_all_sample_draft(draft, q, p, generator=None):
    dist = q[0] if draft.shape[0] else p[0]
    return 0, int(torch.multinomial(dist, 1, generator=generator))


def residual_p(draft, q, p, generator=None):
    n = draft.shape[0]
    idx = torch.arange(n, device=draft.device)
    u = torch.rand(n, generator=generator, device=draft.device)
    n_acc = int((u * q[idx, draft] < p[idx, draft]).long().cumprod(0).sum())
    return n_acc, int(torch.multinomial(p[n_acc], 1, generator=generator))


BROKEN = {"accept_all": accept_all, "reject_all_sample_draft": reject_all_sample_draft, "residual_p": residual_p}


def install(monkeypatch, rule) -> list[str]:
    """Put `rule` wherever models/ and kernels/ hold `models.sampling.speculative_accept`; returns where."""
    real = sampling.speculative_accept
    patched = []
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] not in ("models", "kernels") or module is None:
            continue
        for attr, value in list(vars(module).items()):
            if value is real:
                monkeypatch.setattr(module, attr, rule)
                patched.append(f"{name}.{attr}")
    assert patched, "found no reference to models.sampling.speculative_accept to replace"
    return patched


ENGINE_RULES = {
    "accept_all": "accept_all",
    "reject_all_sample_draft": "reject_all_sample_q",
    "residual_p": "residual_p",
}


def install_engine(monkeypatch, name: str) -> None:
    """The engine's device rule (kernels.sample.rejection_rule) set to the broken rule `name` of BROKEN; the
    engine reads it when it builds a sampler, so call this before its first sampling generate."""
    monkeypatch.setattr(device_sampling, "rejection_rule", lambda: ENGINE_RULES[name])
