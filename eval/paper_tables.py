"""Paper-style tables from several metrics.json files, beside the paper's published numbers.

The published numbers live in eval/paper_numbers.json (PAPER_NUMBERS): each with its unit and its
public source. Rows are matched by (metric, method, model label, benchmark, temperature); a
number whose model size is not stated (model null) is shown for every model and marked so.
Every column states its unit (eval.metrics.UNITS): the paper's TPF is compared with our `tpf`
(tokens / all forward passes), its acceptance length with our `acceptance_length` (tokens per
verify pass); tokens per iteration is printed only as a labelled diagnostic. Each table is
headers + rows, written as markdown and CSV by `eval.evaluate.write_tables`
(entry point: `python -m scripts.reproduce_tables`), sources listed below.
"""

import csv
import io
import json
from pathlib import Path

from eval.metrics import UNITS, mean

PAPER_NUMBERS = Path(__file__).resolve().parent / "paper_numbers.json"
QUALIFIER_MARK = {"=": "", "up to": "≤", "about": "≈", "derived": "Σ"}
UNIT_NOTE = (
    f"TPF = {UNITS['tpf']}; TPF pooled = {UNITS['tpf_token_weighted']}; accept len = "
    f"{UNITS['acceptance_length']}; tok/iter = {UNITS['tokens_per_iteration']}; speedup = {UNITS['speedup']}."
)


class PaperNumbers:
    def __init__(self, data: dict):
        self.numbers, self.sources, self.recipe = data["numbers"], data["sources"], data.get("recipe")

    @classmethod
    def load(cls, path: str | Path = PAPER_NUMBERS) -> "PaperNumbers":
        return cls(json.loads(Path(path).read_text()))

    def lookup(
        self,
        metric: str,
        model: str | None,
        benchmark: str | None,
        method: str = "orthrus",
        temperature: float | None = None,
    ) -> dict | None:
        """The published entry for this row: same model preferred, else one with model unstated; same
        temperature preferred, else one whose temperature is not stated."""
        candidates = [
            n
            for n in self.numbers
            if n["metric"] == metric
            and n["method"] == method
            and n["benchmark"] == benchmark
            and n["temperature"] in (temperature, None)
        ]
        candidates.sort(key=lambda n: n["temperature"] is None)
        exact = [n for n in candidates if n["model"] is not None and n["model"] == model]
        unstated = [n for n in candidates if n["model"] is None]
        return (exact or unstated or [None])[0]

    def cell(
        self,
        metric: str,
        model: str | None,
        benchmark: str | None,
        sources: list[dict],
        temperature: float | None = None,
    ) -> str | None:
        """Display text of the paper number (with its entry appended to `sources` as a footnote)."""
        n = self.lookup(metric, model, benchmark, temperature=temperature)
        if n is None:
            return None
        if n not in sources:
            sources.append(n)
        note = "" if n["model"] is not None else " (size not stated)"
        return f"{QUALIFIER_MARK[n['qualifier']]}{n['value']:g} [{sources.index(n) + 1}]{note}"

    def source_text(self, n: dict) -> str:
        refs = "; ".join(f"{self.sources[s]['name']} <{self.sources[s]['url']}>" for s in n["sources"])
        return f"{n['where']} ({n['unit']}) — {refs}" + (f". Note: {n['note']}" if n.get("note") else "")


def largest_k_rows(report: dict) -> list[dict]:
    """Per benchmark, the run at the largest block size (the model's operating point)."""
    best = {}
    for r in report["runs"]:
        if r["benchmark"] not in best or r["block_size"] > best[r["benchmark"]]["block_size"]:
            best[r["benchmark"]] = r
    return list(best.values())


def _baseline(report: dict, benchmark: str) -> dict | None:
    return next((r for r in report["runs"] if r["benchmark"] == benchmark and r["block_size"] == 1), None)


def report_temperature(report: dict) -> float:
    """The sampling temperature an evaluation ran at (0: greedy)."""
    return report["config"]["decode"]["temperature"]


def report_label(report: dict) -> str:
    """The model label a report's rows carry in every table and figure (matched against the paper's)."""
    return report.get("label") or report["name"]


def _operating_points(reports: list[dict]):
    """Per report: its label, its sampling temperature and its largest-K run of each benchmark."""
    for rep in reports:
        yield rep, report_label(rep), report_temperature(rep), largest_k_rows(rep)


def speed_table(reports: list[dict], paper: PaperNumbers, sources: list[dict]) -> tuple[list[str], list[list]]:
    """Every speed number in its unit beside the paper's, per model and benchmark, plus averages."""
    headers = [
        "model",
        "benchmark",
        "T",
        "K",
        "TPF",
        "paper TPF",
        "TPF pooled",
        "accept len (tok/verify)",
        "paper accept len",
        "tok/iter (diagnostic)",
        "AR tok/s",
        "Orthrus tok/s",
        "speedup",
        "paper speedup",
    ]
    rows = []
    for rep, label, T, runs in _operating_points(reports):
        for r in runs:
            b, base = r["benchmark"], _baseline(rep, r["benchmark"])
            rows.append(
                [
                    label,
                    b,
                    T,
                    r["block_size"],
                    r["tpf"],
                    paper.cell("tpf", label, b, sources, T),
                    r["tpf_token_weighted"],
                    r["acceptance_length"],
                    paper.cell("acceptance_length", label, b, sources, T),
                    r["tokens_per_iteration"],
                    base and base["tokens_per_second"],
                    r["tokens_per_second"],
                    r["speedup"],
                    paper.cell("speedup", label, b, sources, T),
                ]
            )
        if len(runs) > 1:
            speedups = [r["speedup"] for r in runs if r["speedup"] is not None]
            rows.append(
                [
                    label,
                    "average",
                    T,
                    None,
                    mean([r["tpf"] for r in runs]),
                    paper.cell("tpf", label, "average", sources, T),
                    mean([r["tpf_token_weighted"] for r in runs]),
                    mean([r["acceptance_length"] for r in runs]),
                    None,
                    mean([r["tokens_per_iteration"] for r in runs]),
                    None,
                    None,
                    mean(speedups) if speedups else None,
                    paper.cell("speedup", label, "average", sources, T),
                ]
            )
    return headers, rows


def table1(reports: list[dict], paper: PaperNumbers, sources: list[dict]) -> tuple[list[str], list[list]]:
    """The paper's Table 1 layout: per benchmark TPF and speedup beside the paper's, and accuracy of
    Orthrus (largest K) against the base (K=1 on the same engine); lossless decoding makes them equal
    under greedy decoding. The average rows carry both the printed paper average and the mean of its cells."""
    headers = [
        "model",
        "benchmark",
        "T",
        "TPF",
        "paper TPF",
        "speedup",
        "paper speedup",
        "accuracy base",
        "accuracy Orthrus",
        "accuracy metric",
    ]
    rows = []
    for rep, label, T, runs in _operating_points(reports):
        for r in runs:
            base = _baseline(rep, r["benchmark"]) or {}
            acc, acc_base = r.get("accuracy") or {}, base.get("accuracy") or {}
            rows.append(
                [
                    label,
                    r["benchmark"],
                    T,
                    r["tpf"],
                    paper.cell("tpf", label, r["benchmark"], sources, T),
                    r["speedup"],
                    paper.cell("speedup", label, r["benchmark"], sources, T),
                    acc_base.get("score"),
                    acc.get("score"),
                    acc.get("metric"),
                ]
            )
        speedups = [r["speedup"] for r in runs if r["speedup"] is not None]
        rows.append(
            [
                label,
                "average",
                T,
                mean([r["tpf"] for r in runs]),
                paper.cell("tpf", label, "average", sources, T),
                mean(speedups) if speedups else None,
                paper.cell("speedup", label, "average", sources, T),
                None,
                None,
                None,
            ]
        )
        cells = paper.cell("speedup", label, "average_of_cells", sources, T)
        if cells:
            rows.append([label, "average of the paper's cells", T, None, None, None, cells, None, None, None])
    return headers, rows


def fidelity_table(reports: list[dict]) -> tuple[list[str], list[list]]:
    headers = [
        "model",
        "benchmark",
        "dtype",
        "K",
        "exact-match tokens",
        "exact-match sequences",
        "sampling test p",
        "alpha",
        "sampled tokens",
        "zero-probability tokens",
        "two-sample p (Bonferroni)",
    ]
    rows = []
    for rep in reports:
        label = report_label(rep)
        for f in rep["fidelity"]:
            em, st, ts = f.get("exact_match") or {}, f.get("sampling") or {}, f.get("two_sample") or {}
            rows.append(
                [
                    label,
                    f["benchmark"],
                    f["dtype"],
                    f["block_size"],
                    em.get("token_rate"),
                    em.get("sequence_rate"),
                    st.get("pvalue"),
                    st.get("alpha"),
                    st.get("num_tokens"),
                    st.get("zero_probability_tokens"),
                    ts.get("bonferroni_pvalue"),
                ]
            )
    return headers, rows


def memory_table(reports: list[dict], paper: PaperNumbers, sources: list[dict]) -> tuple[list[str], list[list]]:
    headers = [
        "model",
        "dtype",
        "K",
        "persistent KV added (B)",
        "transient block K/V (MiB)",
        "paper (MiB)",
        "base KV per token (KiB)",
        "peak memory (MiB)",
        "peak memory kind",
    ]
    rows = []
    for rep in reports:
        label, kv = report_label(rep), rep["model"]["kv_overhead"]
        peak = max((r for r in rep["runs"]), key=lambda r: r["peak_memory_bytes"], default=None)
        rows.append(
            [
                label,
                rep["model"]["dtype"],
                rep["model"]["block_size"],
                kv["persistent_bytes"],
                kv["diffusion_block_bytes"] / 2**20,
                paper.cell("kv_overhead_mib", label, None, sources),
                kv["kv_bytes_per_token"] / 2**10,
                peak and peak["peak_memory_bytes"] / 2**20,
                peak and peak["peak_memory_kind"],
            ]
        )
    return headers, rows


def sources_markdown(paper: PaperNumbers, sources: list[dict]) -> str:
    lines = [f"[{i}] {paper.source_text(n)}" for i, n in enumerate(sources, 1)]
    return (
        "Paper numbers (≤ up to, ≈ about, Σ derived from the printed cells):\n\n"
        + "\n".join(f"- {line}" for line in lines)
        + "\n"
    )


def to_csv(headers: list[str], rows: list[list]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(headers)
    writer.writerows([["" if v is None else v for v in row] for row in rows])
    return buf.getvalue()
