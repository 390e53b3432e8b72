"""Where a training step's time goes: torch.profiler over a few real Trainer steps, after the
timed ones (train.throughput runs it; scripts/bench_train.py --profile-steps N asks for it).

The objective and the backends mark their phases with `torch.profiler.record_function`:

    train.teacher_pass        the frozen AR pass (no gradient) that fills the KV cache
    train.diffusion_forward   the diffusion view over all blocks of the micro-batch
      train.attention         its block-sparse attention calls (nested; also counted when
                              gradient checkpointing recomputes them inside train.backward)
    train.loss                lm_head + KL/CE over the targets, chunked (forward)
    train.backward            backward of the micro-batch (recomputation included)
    train.optimizer_step      clipping, optimizer and schedule (DeepSpeed: engine.step)

A phase's time is read from the Chrome trace. On CUDA a kernel belongs to a phase when the CPU
call that launched it (its `cudaLaunchKernel`-like runtime event, matched by correlation id) lies
inside the phase's CPU range, on any thread: the autograd engine launches the backward's kernels
from its own device thread while the main thread waits inside `train.backward`, so the trace's
per-thread "gpu_user_annotation" ranges would miss them. A phase's time is the GPU-side span of
its kernels per range (first kernel start to last kernel end; ranges of one name counted once
where they overlap), with its GPU busy time (union of the kernel intervals) and kernel count
beside it. On the CPU the range itself is the time. Per step, the trace also gives the GPU busy
time and the kernel count: a step whose GPU is idle for much of its wall time is launch- or
host-bound.
Outputs in the profile folder: trace.json.gz (open in chrome://tracing or Perfetto),
breakdown.json and breakdown.md (ms per phase and share of the step, the ops with the most time).
"""

import gzip
import json
import shutil
import time
from bisect import bisect_left, bisect_right
from pathlib import Path

import torch

TEACHER = "train.teacher_pass"
DIFFUSION = "train.diffusion_forward"
ATTENTION = "train.attention"
LOSS = "train.loss"
BACKWARD = "train.backward"
OPTIMIZER = "train.optimizer_step"
PHASES = (TEACHER, DIFFUSION, ATTENTION, LOSS, BACKWARD, OPTIMIZER)
LAUNCH_CATEGORIES = ("cuda_runtime", "cuda_driver")  # the CPU-side calls that launch kernels and copies
TOP_OPS = 25


class StepProfiler:
    """on_step(step) after every optimizer step (after a device synchronize): steps up to
    `start_after` run unprofiled; the next one is the profiler's warm-up; the `active` steps after
    it are recorded, then the outputs are written to `out_dir` and `result` holds the breakdown."""

    def __init__(self, out_dir: Path, *, start_after: int, active: int, device: torch.device):
        if active < 1:
            raise ValueError(f"profile: active={active} steps; profile at least one step")
        self.out_dir, self.start_after, self.active = Path(out_dir), start_after, active
        self.cuda = device.type == "cuda"
        self.prof, self.last, self.step_times, self.result = None, None, [], None

    @property
    def total_steps(self) -> int:
        """The step after which the profile is written."""
        return self.start_after + 1 + self.active

    def on_step(self, step: int) -> None:
        now = time.perf_counter()
        if step == self.start_after:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if self.cuda:
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.prof = torch.profiler.profile(
                activities=activities,
                schedule=torch.profiler.schedule(wait=0, warmup=1, active=self.active, repeat=1),
                on_trace_ready=self._write,
            )
            self.prof.start()
        elif self.prof is not None and self.start_after < step <= self.total_steps:
            if step > self.start_after + 1:  # the first profiled step is the profiler's warm-up
                self.step_times.append(now - self.last)
            self.prof.step()
            if step == self.total_steps:
                self.prof.stop()
                self.prof = None
        self.last = now

    def _write(self, prof) -> None:
        from data._io import atomic_write_text

        self.out_dir.mkdir(parents=True, exist_ok=True)
        raw = self.out_dir / "trace.json"
        prof.export_chrome_trace(str(raw))
        events = json.loads(raw.read_text())["traceEvents"]
        with raw.open("rb") as src, gzip.open(self.out_dir / "trace.json.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
        raw.unlink()
        self.result = breakdown(events, self.step_times, self.active, top_ops(prof, self.cuda, self.active))
        atomic_write_text(self.out_dir / "breakdown.json", json.dumps(self.result, indent=2) + "\n")
        atomic_write_text(self.out_dir / "breakdown.md", markdown(self.result))


def breakdown(events: list[dict], step_times_s: list[float], steps: int, ops: list[dict]) -> dict:
    """Per-step phase times (ms and share of the mean step) from Chrome-trace events."""
    ranges = {name: [] for name in PHASES}
    for e in events:
        if e.get("cat") == "user_annotation" and e.get("name") in ranges:
            ranges[e["name"]].append((float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0.0))))
    kernels = [e for e in events if is_kernel(e)]
    launched_at = {
        e["args"]["correlation"]: float(e["ts"])
        for e in events
        if e.get("cat") in LAUNCH_CATEGORIES and "correlation" in e.get("args", {})
    }
    by_launch = sorted((launched_at[c], c, interval(k)) for k in kernels if (c := correlation(k)) in launched_at)
    launch_times = [t for t, _, _ in by_launch]
    step_ms = 1e3 * sum(step_times_s) / len(step_times_s) if step_times_s else None
    phases = {}
    for name, windows in ranges.items():
        if kernels:
            spans, intervals = [], set()
            for start, end in windows:
                mine = [
                    (c, k) for _, c, k in by_launch[bisect_left(launch_times, start) : bisect_right(launch_times, end)]
                ]
                intervals.update(mine)
                if mine:
                    spans.append((min(k[0] for _, k in mine), max(k[1] for _, k in mine)))
            busy_us = union_length(sorted(k for _, k in intervals))
            us, count = union_length(sorted(spans)), len(intervals)
        else:
            us, busy_us, count = union_length(sorted(windows)), None, None
        ms = us / 1e3 / steps
        phases[name] = {
            "ms_per_step": ms,
            "share_of_step": ms / step_ms if step_ms else None,
            "gpu_busy_ms_per_step": busy_us / 1e3 / steps if busy_us is not None else None,
            "kernels_per_step": count / steps if count is not None else None,
        }
    all_kernels = sorted(interval(k) for k in kernels)
    return {
        "source": "cuda kernels, by the range their launch lies in" if kernels else "cpu ranges",
        "profiled_steps": steps,
        "step_ms": step_ms,
        "step_ms_each": [1e3 * t for t in step_times_s],
        "phases": phases,
        "gpu_busy_ms_per_step": union_length(all_kernels) / 1e3 / steps if kernels else None,
        "kernels_per_step": len(kernels) / steps if kernels else None,
        "top_ops": ops,
    }


def is_kernel(event: dict) -> bool:
    return event.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and event.get("ph") == "X"


def correlation(event: dict) -> int | None:
    return event.get("args", {}).get("correlation")


def interval(event: dict) -> tuple[float, float]:
    return float(event["ts"]), float(event["ts"]) + float(event.get("dur", 0.0))


def union_length(intervals: list[tuple[float, float]]) -> float:
    """Total length covered by sorted (start, end) intervals (overlaps counted once)."""
    total, cur_start, cur_end = 0.0, None, None
    for start, end in intervals:
        if cur_end is None or start > cur_end:
            if cur_end is not None:
                total += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    return total + (cur_end - cur_start if cur_end is not None else 0.0)


def top_ops(prof, cuda: bool, steps: int) -> list[dict]:
    """The ops (and kernels) with the most self time per step: device time on CUDA, else CPU."""
    rows = []
    for evt in prof.key_averages():
        us = evt.self_device_time_total if cuda else evt.self_cpu_time_total
        if us > 0 and evt.key not in PHASES and not evt.key.startswith("ProfilerStep"):
            rows.append({"name": evt.key, "ms_per_step": us / 1e3 / steps, "calls_per_step": evt.count / steps})
    return sorted(rows, key=lambda r: -r["ms_per_step"])[:TOP_OPS]


def markdown(result: dict) -> str:
    step = result["step_ms"]
    lines = [
        f"Phases per optimizer step ({result['source']}; mean of {result['profiled_steps']} profiled steps, "
        f"step wall time {step:.1f} ms)."
        if step
        else f"Phases per optimizer step ({result['source']}).",
        "",
        "| phase | ms / step | share of step | GPU busy ms / step | kernels / step |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, p in result["phases"].items():
        nested = "&nbsp;&nbsp;" if name == ATTENTION else ""
        share = f"{p['share_of_step']:.1%}" if p["share_of_step"] is not None else ""
        busy = f"{p['gpu_busy_ms_per_step']:.1f}" if p.get("gpu_busy_ms_per_step") is not None else ""
        count = f"{p['kernels_per_step']:.0f}" if p.get("kernels_per_step") is not None else ""
        lines.append(f"| {nested}{name} | {p['ms_per_step']:.1f} | {share} | {busy} | {count} |")
    if result["gpu_busy_ms_per_step"] is not None:
        busy = result["gpu_busy_ms_per_step"]
        idle = f", idle {1 - busy / step:.1%} of the step" if step else ""
        lines += [
            "",
            f"GPU busy {busy:.1f} ms per step{idle}; {result['kernels_per_step']:.0f} kernels per step.",
        ]
    lines += ["", "| op (self time) | ms / step | calls / step |", "|---|---:|---:|"]
    for op in result["top_ops"]:
        name = op["name"].replace("|", "/")[:90]
        lines.append(f"| `{name}` | {op['ms_per_step']:.2f} | {op['calls_per_step']:.0f} |")
    return "\n".join(lines) + "\n"
