"""Paper-style tables from several metrics.json files, with a "paper" column.

Rows are matched to results/paper_numbers.json by (metric, model label, benchmark); a
published number whose model size is not stated (model null) is shown for every model and
marked so. Each table is returned as headers + rows, written as markdown and CSV by
scripts/reproduce_tables.py; sources of every paper number are listed under the tables.
"""

import csv
import io

QUALIFIER_MARK = {"=": "", "up to": "≤", "about": "≈"}


class PaperNumbers:
    def __init__(self, data: dict):
        self.numbers = data["numbers"]

    def lookup(self, metric: str, model: str | None, benchmark: str | None, method: str = "orthrus") -> dict | None:
        """The published entry for this row: same model preferred, else one with model unstated."""
        candidates = [n for n in self.numbers
                      if n["metric"] == metric and n["method"] == method and n["benchmark"] == benchmark]
        exact = [n for n in candidates if n["model"] is not None and n["model"] == model]
        unstated = [n for n in candidates if n["model"] is None]
        return (exact or unstated or [None])[0]

    def cell(self, metric: str, model: str | None, benchmark: str | None, sources: list[dict]) -> str | None:
        """Display text of the paper number (with its source appended to `sources` as a footnote)."""
        n = self.lookup(metric, model, benchmark)
        if n is None:
            return None
        if n not in sources:
            sources.append(n)
        note = "" if n["model"] is not None else " (size not stated)"
        return f"{QUALIFIER_MARK[n['qualifier']]}{n['value']:g} [{sources.index(n) + 1}]{note}"


def largest_k_rows(report: dict) -> list[dict]:
    """Per benchmark, the run at the largest block size (the model's operating point)."""
    best = {}
    for r in report["runs"]:
        if r["benchmark"] not in best or r["block_size"] > best[r["benchmark"]]["block_size"]:
            best[r["benchmark"]] = r
    return list(best.values())


def _baseline_tps(report: dict, benchmark: str) -> float | None:
    return next((r["tokens_per_second"] for r in report["runs"] if r["benchmark"] == benchmark and r["block_size"] == 1), None)


def speed_table(reports: list[dict], paper: PaperNumbers, sources: list[dict]) -> tuple[list[str], list[list]]:
    """TPF, acceptance and speedup per model and benchmark, plus each model's average row."""
    headers = ["model", "benchmark", "K", "TPF", "paper TPF", "tok/fwd", "accept len", "paper accept len",
               "AR tok/s", "Orthrus tok/s", "speedup", "paper speedup"]
    rows = []
    for rep in reports:
        label = rep.get("label") or rep["name"]
        runs = largest_k_rows(rep)
        for r in runs:
            b = r["benchmark"]
            rows.append([label, b, r["block_size"], r["tokens_per_iteration"], paper.cell("tokens_per_iteration", label, b, sources),
                         r["tokens_per_forward"], r["mean_acceptance_length"], paper.cell("mean_acceptance_length", label, b, sources),
                         _baseline_tps(rep, b), r["tokens_per_second"], r["speedup"], paper.cell("speedup", label, b, sources)])
        if len(runs) > 1:
            speedups = [r["speedup"] for r in runs if r["speedup"] is not None]
            rows.append([label, "average", None, _mean([r["tokens_per_iteration"] for r in runs]), None,
                         _mean([r["tokens_per_forward"] for r in runs]), _mean([r["mean_acceptance_length"] for r in runs]),
                         None, None, None, _mean(speedups) if speedups else None, paper.cell("speedup", label, "average", sources)])
    return headers, rows


def fidelity_table(reports: list[dict]) -> tuple[list[str], list[list]]:
    headers = ["model", "benchmark", "dtype", "K", "exact-match tokens", "exact-match sequences",
               "sampling test p", "alpha", "sampled tokens", "zero-probability tokens", "two-sample p (Bonferroni)"]
    rows = []
    for rep in reports:
        label = rep.get("label") or rep["name"]
        for f in rep["fidelity"]:
            em, st, ts = f.get("exact_match") or {}, f.get("sampling") or {}, f.get("two_sample") or {}
            rows.append([label, f["benchmark"], f["dtype"], f["block_size"], em.get("token_rate"), em.get("sequence_rate"),
                         st.get("pvalue"), st.get("alpha"), st.get("num_tokens"), st.get("zero_probability_tokens"),
                         ts.get("bonferroni_pvalue")])
    return headers, rows


def memory_table(reports: list[dict], paper: PaperNumbers, sources: list[dict]) -> tuple[list[str], list[list]]:
    headers = ["model", "dtype", "K", "persistent KV added (B)", "transient block K/V (MiB)", "paper (MiB)",
               "base KV per token (KiB)", "peak memory (MiB)", "peak memory kind"]
    rows = []
    for rep in reports:
        label, kv = rep.get("label") or rep["name"], rep["model"]["kv_overhead"]
        peak = max((r for r in rep["runs"]), key=lambda r: r["peak_memory_bytes"], default=None)
        rows.append([label, rep["model"]["dtype"], rep["model"]["block_size"], kv["persistent_bytes"],
                     kv["diffusion_block_bytes"] / 2**20, paper.cell("kv_overhead_mib", label, None, sources),
                     kv["kv_bytes_per_token"] / 2**10, peak and peak["peak_memory_bytes"] / 2**20, peak and peak["peak_memory_kind"]])
    return headers, rows


def sources_markdown(sources: list[dict]) -> str:
    lines = [f"[{i}] {n['source']['original']} — {n['source']['file']}, {n['source']['section']}"
             for i, n in enumerate(sources, 1)]
    return "Paper numbers (≤ up to, ≈ about):\n\n" + "\n".join(f"- {line}" for line in lines) + "\n"


def to_csv(headers: list[str], rows: list[list]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(headers)
    writer.writerows([["" if v is None else v for v in row] for row in rows])
    return buf.getvalue()


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)
