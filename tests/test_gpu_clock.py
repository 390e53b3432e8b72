"""eval/gpu_clock.py: the SM clock / power record of a timed run, from nvidia-smi's CSV lines. Off a GPU the sampler
runs a stand-in command that prints such lines (or fails), so parsing, the summary and the failure paths run
in CI."""

import sys
import time

import pytest
import torch

from eval.gpu_clock import ClockSampler, parse, summarize

LINES = [
    "1980, 1980, 480.12, 700.00, 0x0000000000000000",
    "1620, 1980, 694.37, 700.00, 0x0000000000000004",  # the software power cap
    "1500, 1980, 699.50, 700.00, 0x0000000000000080",  # the hardware power brake
    "1590, 1980, [N/A], 700.00, 0x0000000000000001",  # idle reason only; power not reported
    "not, a, sample",
]


def test_summary_of_samples_counts_the_power_caps():
    """Four samples (the malformed line skipped); medians and extremes over the values reported ("[N/A]" left
    out); power-capped = share with the SW power cap (0x4) or HW power brake (0x80) bit, not other reasons."""
    samples = parse(LINES)
    assert len(samples) == 4 and samples[3]["power_w"] is None
    assert summarize(samples) == {
        "samples": 4,
        "sm_mhz_median": 1605.0,
        "sm_mhz_min": 1500.0,
        "max_sm_mhz": 1980.0,
        "power_w_median": 694.37,
        "power_w_max": 699.5,
        "power_limit_w": 700.0,
        "power_capped": 0.5,
    }
    assert summarize([]) == {}


def stand_in(*lines, exit_code=None, stderr=""):
    """A command that prints `lines` like `nvidia-smi -lms` and keeps running until stopped (or exits)."""
    code = f"import sys, time\nfor line in {list(lines)!r}:\n    print(line, flush=True)\n"
    code += f"sys.stderr.write({stderr!r})\n"
    code += f"sys.exit({exit_code})\n" if exit_code is not None else "time.sleep(60)\n"
    return [sys.executable, "-c", code]


def test_sampler_records_what_the_command_printed_while_the_run_went():
    with ClockSampler(torch.device("cpu"), command=stand_in(*LINES[:2])) as gpu:
        time.sleep(1.0)  # the timed run
    assert gpu.summary()["samples"] == 2 and gpu.summary()["power_capped"] == 0.5


@pytest.mark.parametrize(
    "command, error",
    [
        (stand_in(exit_code=9, stderr="No devices were found\n"), "No devices were found"),
        (["/nonexistent/nvidia-smi"], "/nonexistent/nvidia-smi: "),
    ],
)
def test_a_failing_sampler_is_recorded_not_raised(command, error):
    """A sampler that fails (an error message, a missing program) leaves the run alone and says why."""
    with ClockSampler(torch.device("cpu"), command=command) as gpu:
        time.sleep(1.0)  # the timed run
    assert gpu.summary()["error"].startswith(error)


def test_no_sampler_off_cuda():
    with ClockSampler(torch.device("cpu")) as gpu:
        pass
    assert gpu.command is None and gpu.summary() == {}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="samples a real GPU through nvidia-smi")
def test_sampler_reads_this_gpu():
    """On a GPU: nvidia-smi finds the device by its UUID and reports a clock while products run."""
    x = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    with ClockSampler(torch.device("cuda")) as gpu:
        for _ in range(2000):
            x = (x @ x).clamp_(-1, 1)
        torch.cuda.synchronize()
    summary = gpu.summary()
    assert "error" not in summary and summary["samples"] >= 1 and summary["sm_mhz_median"] > 0, summary
