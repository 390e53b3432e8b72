"""What the GPU benchmarks (scripts/bench_batch.py, scripts/bench_sampling.py, eval/decode_bench.py)
share about running: a run is a sequence of phases, a phase that fails is recorded and the run goes
on (one GPU call must return what it can), and the results so far are written after every phase, so
a run cut short by its budget, or killed, still leaves them.
"""

import json
import time
import traceback
from pathlib import Path

from data._io import atomic_write_text


def save_results(out: Path, results: dict, markdown=None, figure=None) -> None:
    """bench.json under `out` (atomically; values JSON cannot hold as their str), then bench.md
    (`markdown(results)`) and bench.png (`figure(results, path)`) when given."""
    atomic_write_text(out / "bench.json", json.dumps(results, indent=1, default=str))
    if markdown is not None:
        atomic_write_text(out / "bench.md", markdown(results))
    if figure is not None:
        figure(results, out / "bench.png")


def run_phase(key: str, fn, *, results: dict, save, log=print, keep: bool = True, budget=None) -> None:
    """One phase: `fn()`, its value stored as results[key] (keep=False: fn records its own results);
    an exception is stored as its traceback under results["errors"][key] and logged, and the run goes
    on; then `save()`. With a spent `budget` (eval.decode_bench.Budget) the phase is skipped."""
    if budget is not None and not budget.left():
        log(f"budget spent: skipping {key}")
        return
    t0 = time.time()
    try:
        value = fn()
        if keep:
            results[key] = value
    except Exception:  # noqa: BLE001  keep the other phases' results
        results.setdefault("errors", {})[key] = traceback.format_exc()
        log(f"{key} FAILED:\n{results['errors'][key]}")
    log(f"{key}: {time.time() - t0:.0f}s")
    save()
