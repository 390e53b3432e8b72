"""The GPU's SM clock, power draw and throttle reasons while a timed run goes, sampled by `nvidia-smi`.

A compute-bound point can run below the GPU's maximum clock: at the Qwen3-8B shape, batch 16, K = 16, an H200
sits at its 700 W power limit and its SM clock falls from 1980 to 1485-1635 MHz, while batch 1 stays at 1980
(results/engine_batch_h200_2026-12-01, "Why the 8B B = 16, K = 16 point misses"). A time measured there is a
time at that clock, so each timed point records what the clock was (`ClockSampler.summary`).
"""

import shutil
import statistics
import subprocess

import torch

QUERY = "clocks.sm,clocks.max.sm,power.draw,power.limit,clocks_throttle_reasons.active"
# Bits of `clocks_throttle_reasons.active` (NVML's clocksThrottleReasons): the power caps, software and hardware.
SW_POWER_CAP, HW_POWER_BRAKE = 0x4, 0x80


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:  # "[N/A]", "[Not Supported]"
        return None


def parse(lines: list[str]) -> list[dict]:
    """Samples from `nvidia-smi --query-gpu=QUERY --format=csv,noheader,nounits` lines; others are skipped."""
    samples = []
    for line in lines:
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 5:
            continue
        clock, max_clock, power, limit = map(_number, fields[:4])
        try:
            reasons = int(fields[4], 16)
        except ValueError:
            reasons = None
        if clock is not None:
            samples.append(
                {"sm_mhz": clock, "max_sm_mhz": max_clock, "power_w": power, "limit_w": limit, "reasons": reasons}
            )
    return samples


def summarize(samples: list[dict]) -> dict:
    """Median / min SM clock against the maximum, median / max power against the limit, and the share of samples
    with a power cap engaged (`power_capped`: SW power cap or HW power brake). {} without samples."""
    if not samples:
        return {}

    def values(key):
        return [s[key] for s in samples if s[key] is not None]

    power, reasons = values("power_w"), values("reasons")
    return {
        "samples": len(samples),
        "sm_mhz_median": statistics.median(values("sm_mhz")),
        "sm_mhz_min": min(values("sm_mhz")),
        "max_sm_mhz": max(values("max_sm_mhz"), default=None),
        "power_w_median": statistics.median(power) if power else None,
        "power_w_max": max(power, default=None),
        "power_limit_w": max(values("limit_w"), default=None),
        "power_capped": (
            sum(bool(r & (SW_POWER_CAP | HW_POWER_BRAKE)) for r in reasons) / len(reasons) if reasons else None
        ),
    }


class ClockSampler:
    """`with ClockSampler(device) as gpu: <timed run>`, then `gpu.summary()` (`summarize`). Samples every
    `interval_ms` from an `nvidia-smi` process running beside the run (no work on the GPU, nothing in the
    timed process). Off CUDA or without `nvidia-smi` the summary is {}; if the sampler fails, {"error": ...};
    the run goes on either way: the clock is a record of the run, never a reason to lose it. `command` replaces
    the `nvidia-smi` command line (tests)."""

    def __init__(self, device: torch.device, interval_ms: int = 100, command: list[str] | None = None):
        self.command = command
        if command is None and device.type == "cuda" and shutil.which("nvidia-smi"):
            uuid = str(torch.cuda.get_device_properties(device).uuid)  # nvidia-smi names the GPU as NVML does
            uuid = uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"
            self.command = ["nvidia-smi", f"--id={uuid}", f"--query-gpu={QUERY}", "--format=csv,noheader,nounits"]
            self.command += ["-lms", str(interval_ms)]
        self.process, self.samples, self.error = None, [], None

    def __enter__(self):
        if self.command:
            try:
                self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            except OSError as e:
                self.error = f"{self.command[0]}: {e}"
        return self

    def __exit__(self, *exc):
        if self.process is not None:
            self.process.terminate()
            try:
                out, err = self.process.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                out, err = self.process.communicate()
            self.samples = parse(out.splitlines())
            if not self.samples and (err.strip() or out.strip()):
                self.error = (err.strip() or out.strip()).splitlines()[0]
        return False

    def summary(self) -> dict:
        """`summarize` of the samples; with none and a message from the sampler, {"error": its first line}."""
        return summarize(self.samples) or ({"error": self.error} if self.error else {})
