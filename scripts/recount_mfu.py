"""Recount the MFU of the stored training results with train/flops.py (method: eval/mfu_recount.py).

    python -m scripts.recount_mfu [--dry-run]

Rewrites, in place, the FLOPs and MFU fields of results/scale_*/bench_*/bench.json (and their
bench.md / bench.png) and of results/train_*/ (summary.json, summary.md, smoke.json,
metrics.jsonl), each with an "mfu_recount" record (command, commit, method); writes
results/mfu_recount.json with published -> recounted per figure. Refuses to write when the
replay does not reproduce a stored FLOP count.
"""

import argparse
import json
import subprocess
from pathlib import Path

from omegaconf import OmegaConf

from data._io import atomic_write_text
from eval.mfu_recount import recount_bench_result, recount_train_log, recount_train_summary
from scripts.bench_train import PARTS, compose, shape_overrides, write_reports

REPO = Path(__file__).resolve().parent.parent
COMMAND = "python -m scripts.recount_mfu"
METHOD = ("eval/mfu_recount.py: the run's batches and block draws replayed from its config; FLOPs by "
          "train/flops.py; MFU = published MFU x recounted FLOPs / published-rule FLOPs over the same steps")


def _commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False)
    return out.stdout.strip()


def recount_bench_file(path: Path, note: dict, write: bool) -> list[dict]:
    report = json.loads(path.read_text())
    if "mfu_recount" in report:
        raise SystemExit(f"{path} was already recounted ({report['mfu_recount']}); nothing to do")
    rows = []
    for r in report["results"]:
        if r["status"] != "ok":
            continue
        model = compose(shape_overrides(r["shape"])).model
        got = recount_bench_result(r, report["settings"], report["world_size"], trainable=list(model.trainable),
                                   mask_token_id=model.mask_token_id, block_size=model.block_size)
        stored = r["flops_per_step_per_gpu"]["total"]
        if abs(got["published"] - stored) > 1e-9 * stored:
            raise SystemExit(f"{path}: replay gives {got['published']:.6g} FLOPs, stored {stored:.6g}: "
                             "not the run's draws")
        p, step_s, peak = got["parts"], r["step_time_s"], report["settings"]["peak_flops_per_gpu"]
        flops = {"ar_forward": p["ar_forward"], "diffusion_forward": p["diffusion_forward"],
                 "diffusion_backward": p["diffusion_backward_activations"] + p["diffusion_backward_weights"],
                 "diffusion_backward_activations": p["diffusion_backward_activations"],
                 "diffusion_backward_weights": p["diffusion_backward_weights"]}
        flops["total"] = flops["ar_forward"] + flops["diffusion_forward"] + flops["diffusion_backward"]
        rows.append({"file": str(path.relative_to(REPO)), "shape": r["shape"], "seq_len": r["seq_len"],
                     "gradient_checkpointing": r["gradient_checkpointing"], "attention": r["attention"],
                     "mfu_published": r["mfu"], "mfu": flops["total"] / step_s / peak})
        r.update(flops_per_step_per_gpu=flops, mfu=flops["total"] / step_s / peak,
                 mfu_by_part={k: flops[k] / step_s / peak for k in PARTS},
                 flops_share={k: flops[k] / flops["total"] for k in PARTS})
    report["mfu_recount"] = note
    if write:
        write_reports(report, path.parent)
    return rows


def recount_train_dir(folder: Path, note: dict, write: bool) -> dict:
    summary = json.loads((folder / "summary.json").read_text())
    if "mfu_recount" in summary:
        raise SystemExit(f"{folder} was already recounted; nothing to do")
    cfg = OmegaConf.load(REPO / "results/train_h100_2026-11-22/config.yaml")  # both runs' config
    cfg.train.steps = summary["steps"]
    metrics = folder / "metrics.jsonl"
    if metrics.is_file():
        records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        first = summary["averaged_over_steps"][0]
        got = recount_train_log(records, cfg, skip_steps=first - cfg.logging.log_every)
        if abs(got["mfu_published"] - summary["mfu"]) > 1e-9:
            raise SystemExit(f"{folder}: the windows' mean MFU {got['mfu_published']} is not the summary's "
                             f"{summary['mfu']}")
        for r, w in zip(records, got["windows"]):
            r["mfu"] = w["mfu"]
        if write:
            atomic_write_text(metrics, "".join(json.dumps(r) + "\n" for r in records))
    else:
        got = recount_train_summary(summary, cfg)
    row = {"file": str((folder / "summary.json").relative_to(REPO)), "mfu_published": summary["mfu"], "mfu": got["mfu"]}
    if write:
        for name in ("summary.json", "smoke.json"):
            data = json.loads((folder / name).read_text())
            data.update(mfu=got["mfu"], mfu_recount=note)
            atomic_write_text(folder / name, json.dumps(data, indent=2) + "\n")
        md = folder / "summary.md"
        text = md.read_text().replace(f"| MFU | {summary['mfu']:.3f} |", f"| MFU | {got['mfu']:.3f} |")
        text = text.replace("\n- device:", f"\n- MFU recounted from the stored times by `{COMMAND}` (commit "
                            f"`{note['commit']}`; {METHOD})\n- device:", 1)
        atomic_write_text(md, text)
    return row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="print the recounted figures, write nothing")
    args = ap.parse_args(argv)
    note = {"command": COMMAND, "commit": _commit(), "method": METHOD}
    rows = [row for path in sorted(REPO.glob("results/scale_*/bench_*/bench.json"))
            for row in recount_bench_file(path, note, not args.dry_run)]
    rows += [recount_train_dir(d, note, not args.dry_run) for d in sorted(REPO.glob("results/train_*/"))
             if (d / "summary.json").is_file()]
    for row in rows:
        setting = f"{row.get('shape', '')} {row.get('seq_len', '')}"
        print(f"{row['file']}: {setting} MFU {row['mfu_published']:.3f} -> {row['mfu']:.3f}")
    if not args.dry_run:
        atomic_write_text(REPO / "results/mfu_recount.json", json.dumps({**note, "figures": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
