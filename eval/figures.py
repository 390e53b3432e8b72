"""Figures of several evaluations (matplotlib, Agg: no display needed).

Each function takes the loaded metrics.json reports and a path, writes one PNG atomically and
returns the path, or returns None when the reports hold no data for that figure.
"""

import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

from eval.paper_tables import PaperNumbers, largest_k_rows, report_label, report_temperature  # noqa: E402


def save_figure(fig, path: Path, dpi: int = 120) -> Path:
    """Write `fig` to `path` as PNG atomically and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def tpf_by_benchmark(reports: list[dict], paper: PaperNumbers, path: Path) -> Path | None:
    """Grouped bars: the paper's TPF (tokens / all forward passes) at each model's largest K, per
    benchmark; the paper's values at the same temperature as markers."""
    per_model = {report_label(r): {row["benchmark"]: row["tpf"] for row in largest_k_rows(r)} for r in reports}
    temps = {report_label(r): report_temperature(r) for r in reports}
    benchmarks = sorted({b for tpf in per_model.values() for b in tpf})
    if not benchmarks:
        return None
    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(benchmarks) * max(1, len(per_model)) ** 0.5), 3.5))
    width = 0.8 / len(per_model)
    for i, (label, tpf) in enumerate(per_model.items()):
        xs = [j + (i - (len(per_model) - 1) / 2) * width for j in range(len(benchmarks))]
        ax.bar(xs, [tpf.get(b, 0) for b in benchmarks], width, label=label)
        for x, b in zip(xs, benchmarks):
            n = paper.lookup("tpf", label, b, temperature=temps[label])
            if n is not None and n["model"] == label:
                ax.plot(x, n["value"], "k*", markersize=9)
    ax.set_xticks(range(len(benchmarks)), benchmarks)
    ax.set_ylabel("TPF (tokens / all forward passes)")
    ax.set_title("TPF per benchmark and model (★ paper, Table 1)")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def acceptance_histograms(reports: list[dict], path: Path) -> Path | None:
    """One panel per model: distribution of acceptance length per benchmark at the largest K."""
    panels = [(r, largest_k_rows(r)) for r in reports]
    panels = [(r, rows) for r, rows in panels if any(row["block_size"] > 1 for row in rows)]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.2), squeeze=False)
    for ax, (rep, rows) in zip(axes[0], panels):
        for row in rows:
            counts = row["acceptance_histogram"]
            total = max(sum(counts), 1)
            ax.plot(range(1, len(counts) + 1), [c / total for c in counts], marker=".", label=row["benchmark"])
        ax.set_title(f"{report_label(rep)} (K={rows[0]['block_size']})")
        ax.set_xlabel("acceptance length (tokens per verify pass)")
        ax.set_ylabel("fraction of iterations")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def throughput_vs_context(reports: list[dict], path: Path) -> Path | None:
    """tokens/s against context length, one line per model and block size."""
    series = {}
    for rep in reports:
        for row in rep.get("context_sweep", []):
            series.setdefault((report_label(rep), row["block_size"]), []).append(
                (row["context_len"], row["tokens_per_second"])
            )
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for (label, K), points in sorted(series.items()):
        points.sort()
        ax.plot(
            [p[0] for p in points],
            [p[1] for p in points],
            marker="o",
            label=f"{label} K={K}" + (" (AR)" if K == 1 else ""),
        )
    ax.set_xscale("log")
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("tokens / s")
    ax.set_ylim(bottom=0)
    ax.set_title("Throughput vs context length")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def speedup_by_k(reports: list[dict], path: Path) -> Path | None:
    """Decode speedup over K=1 (left) and time to first token (right) against K, one line per
    (run, benchmark): the measurements of eval/timing.py's protocol."""
    series, styles = {}, {}
    benchmarks = sorted({row["benchmark"] for rep in reports for row in rep["runs"]})
    colors = plt.get_cmap("tab10").colors
    for i, rep in enumerate(reports):
        for row in rep["runs"]:
            if row.get("speedup") is not None:
                label = f"{report_label(rep)} / {row['benchmark']}"
                series.setdefault(label, []).append((row["block_size"], row["speedup"], row["ttft_ms"]))
                # one colour per run, one line style per prompt set: distinct for up to 10 runs x 4 sets
                styles[label] = dict(
                    color=colors[i % len(colors)], ls=["-", "--", ":", "-."][benchmarks.index(row["benchmark"]) % 4]
                )
    if not series:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for label, points in series.items():
        ks, speedups, ttfts = zip(*sorted(points))
        left.plot(ks, speedups, marker="o", label=label, **styles[label])
        right.plot(ks, ttfts, marker="o", label=label, **styles[label])
    left.axhline(1.0, color="k", lw=0.8, ls="--")
    for ax, ylabel in ((left, "decode speedup over K=1 (same decoder)"), (right, "time to first token (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("block size K")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    left.legend(fontsize=7)
    fig.suptitle("Measured (eval/timing.py protocol: every shape, K and mode warmed before timing)")
    fig.tight_layout()
    return save_figure(fig, path)


def bench_figure(results: dict, ks: list[int], path: Path) -> Path | None:
    """bench.png of scripts/bench_decode.py: per shape, step and iteration times against context, with rooflines."""
    K = max(ks)
    shapes = [res for res in results["shapes"] if res["engine"]]
    if not shapes:
        return None
    fig, axes = plt.subplots(1, len(shapes), figsize=(5.5 * len(shapes), 4.2), squeeze=False)
    for ax, res in zip(axes[0], shapes):
        ctxs = list(res["engine"])
        series = {
            "transformers step": [res.get("hf_step_ms", {}).get(c, float("nan")) for c in ctxs],
            "engine AR step": [res["engine"][c]["ar_step_ms"] for c in ctxs],
            f"draft K={K}": [res["engine"][c][f"draft_ms_K{K}"] for c in ctxs],
            f"verify K={K}": [res["engine"][c][f"verify_ms_K{K}"] for c in ctxs],
            f"iteration K={K}": [res["engine"][c][f"iteration_ms_K{K}"] for c in ctxs],
        }
        for variant, rows in list(res.get("engine_variants", {}).items())[1:]:
            series[f"iteration K={K} ({variant})"] = [
                rows.get(c, {}).get(f"iteration_ms_K{K}", float("nan")) for c in ctxs
            ]
        for label, ys in series.items():
            ax.plot(ctxs, ys, marker="o", label=label)
        ax.plot(ctxs, [res["roofline_ms"][c]["ar_step"] for c in ctxs], "k--", label="AR roofline")
        ax.plot(ctxs, [res["roofline_ms"][c][f"iteration_K{K}"] for c in ctxs], "k:", label=f"iteration roofline K={K}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context (tokens)")
        ax.set_ylabel("ms")
        ax.set_title(res["shape"])
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"Orthrus engine, bf16, batch 1 ({results['device']})")
    fig.tight_layout()
    return save_figure(fig, Path(path))


def batch_figure(results: dict, path: Path) -> Path | None:
    """bench.png of scripts/bench_batch.py: per shape and context, iteration time against batch size for
    each K (and the AR step) with the memory-bound roofline; and the served prompt set's tokens/s against
    batch size, Orthrus and AR."""
    points, serving = results.get("iterations", []), results.get("serving", [])
    panels = sorted({(p["shape"], p["context"]) for p in points})
    if not panels and not serving:
        return None
    n = len(panels) + bool(serving)
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 4), squeeze=False)
    for ax, (shape, ctx) in zip(axes[0], panels):
        rows = [p for p in points if p["shape"] == shape and p["context"] == ctx]
        for K in sorted({p["block_size"] for p in rows}):
            pts = sorted((p["batch_size"], p["ms"], p["memory_bound_ms"]) for p in rows if p["block_size"] == K)
            line = ax.plot(
                [b for b, _, _ in pts], [m for _, m, _ in pts], marker="o", label="AR" if K == 1 else f"K={K}"
            )
            ax.plot([b for b, _, _ in pts], [r for _, _, r in pts], ":", color=line[0].get_color())
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel("ms per iteration (dotted: roofline)")
        ax.set_title(f"{shape}, context {ctx}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    if serving:
        ax = axes[0][-1]
        bs = [r["batch_size"] for r in serving]
        ax.plot(
            bs,
            [r["orthrus_tokens_per_second"] for r in serving],
            marker="o",
            label=f"Orthrus K={serving[0]['block_size']}",
        )
        ax.plot(bs, [r["ar_tokens_per_second"] for r in serving], marker="s", label="AR (same engine)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel("total tokens/s")
        ax.set_title(f"served prompt set ({serving[0]['num_prompts']} prompts)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Batched Orthrus decoding, measured ({results.get('device', '?')})")
    fig.tight_layout()
    return save_figure(fig, Path(path))
