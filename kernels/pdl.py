"""Programmatic Dependent Launch (PDL) for the engine's Triton kernels (CUDA, sm_90 and newer).

Why: at batch 1 a decode pass is ~290 short kernels replayed from a CUDA graph. Without PDL each
kernel starts only after the previous one has drained (its last programs finished, memory flushed),
and then pays its own launch and prologue; the GPU idles in between, and a 15 us matrix product
spends part of its time ramping up. With PDL a kernel launched with `launch_pdl=True` may start
while the previous kernel in the stream is still running: its programs do what depends on nothing
an earlier kernel writes (address arithmetic, loading weights), then `tl.extra.cuda.gdc_wait()`
blocks until the previous kernel has completed and its writes are visible.
`tl.extra.cuda.gdc_launch_dependents()` lets the next kernel be scheduled once every program of this
one has called it (or exited); it is only a scheduling hint, since the next kernel's gdc_wait still
waits for this one to complete.

Rules the kernels in `kernels/` follow (their comments say where):

* Every program of a PDL kernel calls gdc_wait() before it loads anything an earlier kernel wrote and
  before its first store (an earlier kernel may still be reading the buffer it overwrites). Only
  read-only inputs (the model's weights, RMSNorm weights) are read before the wait. Nothing in a
  decoding pass writes them, and a pass starts with PyTorch's embedding gather (launched without
  PDL), so even weights updated in place between passes are complete before such early reads.
* No program returns before its gdc_wait(). A kernel then completes only after its predecessor has,
  so waiting on the previous kernel transitively waits on every earlier one. After a PyTorch or
  cuBLAS kernel (launched without PDL) a PDL kernel likewise just waits for it.
* gdc_launch_dependents() goes where the rest of the kernel is short, or where the next kernel's
  weight reads would not compete with this kernel's memory traffic: after the main loop of the matrix
  products (before their stores; calling it before the loop made the next product's prefetch compete
  with this one's stream and was measured slower), at the very start of attention (latency-bound:
  the o product behind its combine kernel then streams weights into L2 meanwhile) and of the small
  elementwise and reduction kernels (even before their own wait: the next kernel still waits for
  them to complete, and until then it only reads weights).
* The gdc_* calls sit behind a `USE_PDL: tl.constexpr` flag, so the kernels compile without them
  when PDL is off: in Triton's interpreter (which has no gdc_* implementation) and below sm_90.
"""

import functools
import os

import torch
import triton
import triton.language as tl


def _interpreting() -> bool:
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


@functools.lru_cache(maxsize=None)
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def pdl_unsupported(device: torch.device) -> str | None:
    """Why kernels on `device` cannot use PDL, or None if they can."""
    device = torch.device(device)
    if _interpreting():
        return "Triton runs in its interpreter (TRITON_INTERPRET=1), which has no PDL"
    if device.type != "cuda":
        return f"the device is {device.type!r}; PDL needs a CUDA GPU of compute capability 9.0 or newer"
    major, minor = _capability(device.index if device.index is not None else torch.cuda.current_device())
    if major < 9:
        return f"the GPU has compute capability {major}.{minor}; PDL needs 9.0 or newer (Hopper)"
    return None


def launch_options(pdl: bool, device: torch.device) -> dict:
    """Keywords for one kernel launch: the kernel's `USE_PDL` constexpr (compiles the gdc_* calls in or
    out) and, only when on, `launch_pdl=True` (the launch attribute that lets the kernel start early).
    pdl=True where PDL cannot run is a ValueError rather than a failure inside the kernel."""
    if not pdl:
        return {"USE_PDL": False}
    reason = pdl_unsupported(device)
    if reason is not None:
        raise ValueError(f"pdl=True: {reason}; pass pdl=False")
    return {"USE_PDL": True, "launch_pdl": True}


@triton.jit
def prefetch_l2(ptrs):
    """Ask L2 for the lines at `ptrs` (PTX prefetch.global.L2): no registers, no result, no fault on
    the memory model; used before gdc_wait() on weights, which no earlier kernel writes."""
    tl.inline_asm_elementwise(
        "prefetch.global.L2 [$1];\n\tmov.u32 $0, 0;", "=r,l", [ptrs], dtype=tl.int32, is_pure=False, pack=1
    )
