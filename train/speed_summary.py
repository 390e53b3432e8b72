"""One summary over several runs of scripts/bench_train.py at the paper's density (the training-speed
results): every variant's tokens/s/GPU, peak memory and projected wall-clock per shape, the targets
of the fast default checked against the fastest measured points, and the per-phase profile of the
profiled variants side by side. Every figure is read from the runs' bench.json; nothing is typed.
Entry point: scripts/summarize_train_speed.py."""

from pathlib import Path

SHAPES = ("qwen3_8b", "qwen3_1.7b")
LABELS = {"qwen3_8b": "8B", "qwen3_1.7b": "1.7B"}
PHASE_ORDER = (
    "train.teacher_pass",
    "train.diffusion_forward",
    "train.attention",
    "train.loss",
    "train.backward",
    "train.optimizer_step",
)


def _num(x, fmt=",.0f") -> str:
    return "" if x is None else format(x, fmt)


def _points(runs: dict[str, dict]) -> list[dict]:
    """Every (run, variant, shape) result, tagged with its run folder's name."""
    return [{**r, "run": name} for name, bench in runs.items() for r in bench["results"]]


def _best(points: list[dict], shape: str) -> dict | None:
    ok = [p for p in points if p["shape"] == shape and p["status"] == "ok"]
    return max(ok, key=lambda p: p["tokens_per_s_per_gpu"]) if ok else None


def runs_table(runs: dict[str, dict]) -> list[str]:
    lines = [
        "| run | commit | dirty | sources sha256 | device | torch | budget (s) | complete |",
        "|---|---|---|---|---|---|---:|---|",
    ]
    for name, b in runs.items():
        prov, git = b["provenance"], b["provenance"]["git"]
        lines.append(
            f"| `{name}` | `{git['commit'][:7]}` | {git['dirty']} | `{prov['source_hash']['sha256'][:12]}` "
            f"| {prov['device']} | {prov['torch']} | {b['settings']['budget_s']:.0f} | {b['complete']} |"
        )
    return lines


def variants_table(runs: dict[str, dict], reference: tuple[str, str]) -> list[str]:
    """One row per (run, variant): per shape tokens/s/GPU, x the reference variant, peak GiB and the
    projected hours (a projection), or the status where the point did not run."""
    points = _points(runs)
    ref = {p["shape"]: p for p in points if (p["run"], p["variant"]) == reference and p["status"] == "ok"}
    head = "| variant | run | micro-batch | GC |"
    rule = "|---|---|---:|---|"
    for shape in SHAPES:
        s = LABELS[shape]
        head += f" {s} tok/s/GPU | {s} x {reference[1]} | {s} peak GiB | {s} projected h |"
        rule += "---:|---:|---:|---:|"
    lines, skipped = [head, rule], []
    for name, b in runs.items():
        for variant in b["settings"]["variants"]:
            row = [p for p in points if (p["run"], p["variant"]) == (name, variant)]
            by_shape = {p["shape"]: p for p in row}
            ok = [p for p in row if p["status"] == "ok"]
            if not ok:
                skipped.append(f"{variant} (`{name}`: {', '.join(sorted({p['status'] for p in row}))})")
                continue
            gc = "on" if ok[0]["gradient_checkpointing"] else "off"
            cells = f"| {variant} | `{name}` | {ok[0]['micro_batch_size']} | {gc} |"
            for shape in SHAPES:
                p = by_shape.get(shape)
                if p is None or p["status"] != "ok":
                    status = p["status"] if p else "not run"
                    peak = _num(p.get("max_memory_gib"), ".1f") if p else ""
                    cells += f" {status} | | {peak} | |"
                    continue
                tps = p["tokens_per_s_per_gpu"]
                x = _num(tps / ref[shape]["tokens_per_s_per_gpu"], ".2f") if shape in ref else ""
                peak, hours = _num(p["max_memory_gib"], ".1f"), _num(p["projected_hours"], ".1f")
                cells += f" {_num(tps)} | {x} | {peak} | {hours} |"
            lines.append(cells)
    if skipped:
        lines += ["", "Not measured at either shape: " + "; ".join(skipped) + "."]
    return lines


def targets(runs: dict[str, dict], tokens_8b: float, ratio_small: float) -> list[str]:
    """The throughput targets against the fastest measured point of each shape."""
    points = _points(runs)
    big, small = _best(points, "qwen3_8b"), _best(points, "qwen3_1.7b")
    lines = ["| target | measured | variant (run) | met |", "|---|---:|---|---|"]
    if big is not None:
        met = big["tokens_per_s_per_gpu"] >= tokens_8b
        lines.append(
            f"| 8B >= {tokens_8b:,.0f} tokens/s/GPU | {_num(big['tokens_per_s_per_gpu'])} | "
            f"{big['variant']} (`{big['run']}`) | {'yes' if met else 'no'} |"
        )
    if big is not None and small is not None:
        ratio = small["tokens_per_s_per_gpu"] / big["tokens_per_s_per_gpu"]
        lines.append(
            f"| 1.7B >= {ratio_small:g} x the 8B figure | {_num(small['tokens_per_s_per_gpu'])} = {ratio:.2f} x | "
            f"{small['variant']} (`{small['run']}`) | {'yes' if ratio >= ratio_small else 'no'} |"
        )
    return lines


def phase_tables(bench: dict, variants: list[str]) -> list[str]:
    """Per shape: each phase's GPU span per optimizer step (ms) for the profiled `variants`, then the
    step's wall time, GPU busy time, idle share and kernel count."""
    lines = []
    for shape in SHAPES:
        prof = {
            r["variant"]: r["profile"]
            for r in bench["results"]
            if r["shape"] == shape and r["variant"] in variants and r.get("profile")
        }
        if not prof:
            continue
        names = [v for v in variants if v in prof]
        lines += [f"{LABELS[shape]} shape, ms per optimizer step: each phase's GPU span (its GPU busy time):", ""]
        lines += ["| phase | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        for phase in PHASE_ORDER:
            cells = []
            for v in names:
                p = prof[v]["phases"].get(phase, {})
                cells.append(f"{_num(p.get('ms_per_step'), '.1f')} ({_num(p.get('gpu_busy_ms_per_step'), '.1f')})")
            label = f"&nbsp;&nbsp;{phase} (inside the diffusion forward)" if phase == "train.attention" else phase
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("| step (wall) | " + " | ".join(_num(prof[v]["step_ms"], ".1f") for v in names) + " |")
        lines.append("| GPU busy | " + " | ".join(_num(prof[v]["gpu_busy_ms_per_step"], ".1f") for v in names) + " |")
        idle = [1 - prof[v]["gpu_busy_ms_per_step"] / prof[v]["step_ms"] for v in names]
        lines.append("| GPU idle share | " + " | ".join(f"{x:.0%}" for x in idle) + " |")
        lines.append("| kernels | " + " | ".join(_num(prof[v]["kernels_per_step"]) for v in names) + " |")
        lines.append("")
    return lines


def summary_markdown(
    runs: dict[str, dict],
    reference: tuple[str, str],
    profile_run: str,
    profile_variants: list[str],
    tokens_8b: float = 3400.0,
    ratio_small: float = 2.5,
) -> str:
    """`runs`: run folder name -> its bench.json. `reference`: the (run, variant) the "x" columns
    divide by. `profile_run`, `profile_variants`: whose phase profiles are shown."""
    legend = []
    for name, b in runs.items():
        for variant, overrides in b["settings"]["variants"].items():
            legend.append(f"- `{variant}` (`{name}`): " + (" ".join(f"`{o}`" for o in overrides) or "(none)"))
    projection = next(iter(runs.values()))["settings"]["projection"]
    parts = [
        "# Training speed at the paper's density: summary",
        "",
        "Written by `python -m scripts.summarize_train_speed` from the bench.json of each run below; "
        "each run's bench.md has its command.",
        "",
        *runs_table(runs),
        "",
        "## Variants",
        "",
        *variants_table(runs, reference),
        "",
        f"projected h: a projection, not a measurement: {projection['formula']}, "
        f"{projection['row_tokens']:.3g} row tokens on {projection['gpus']} GPUs.",
        "",
        "Overrides of each variant (on the +exp=qwen3_* recipe as it was at the run's commit):",
        "",
        *legend,
        "",
        "## Targets",
        "",
        *targets(runs, tokens_8b, ratio_small),
        "",
        f"## Phase profile (`{profile_run}`)",
        "",
        *phase_tables(runs[profile_run], profile_variants),
    ]
    return "\n".join(parts).rstrip() + "\n"


def load_runs(paths: list[Path]) -> dict[str, dict]:
    """bench.json paths -> {their folder's name: the report}, in the order given."""
    import json

    return {Path(p).parent.name: json.loads(Path(p).read_text()) for p in paths}
