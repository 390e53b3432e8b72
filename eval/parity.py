"""Judging two training curves that should be the same run: data-parallel parity.

A world-size-N run and a one-process run with the same global batch see the same rows and block
draws (scripts/dp_parity.py), so their losses and gradient norms agree up to float rounding.
A relative loss difference alone cannot tell a broken run from a good one: over a short run the
loss moves by a few percent, so a run that never stepped differs from the reference by no more
than that. The judgement is therefore

  * loss: every step's |loss_N - loss_1| is at most `loss_tol` x how far the reference loss
    moved (max over steps of |loss_1[s] - loss_1[first]|), and the loss must have moved at all;
  * gradient norm: every step's |gn_N - gn_1| / gn_1 is at most `grad_norm_tol` (a run that
    sums gradients over ranks instead of averaging them, or scales by the wrong accumulation
    count, is off by a factor from the first step, although Adam's updates barely change);
  * the runs logged the same steps, tokens and learning rates.

Defaults per precision: fp32 agrees to rounding (1e-3 both); bf16 reduces gradients in bf16
(the 8B runs of results/scale_h200x2_2026-11-22 differ by 4% of the loss movement and 2.8% in grad norm).
"""

TOLERANCES = {"fp32": {"loss_tol": 1e-3, "grad_norm_tol": 1e-3}, "bf16": {"loss_tol": 0.1, "grad_norm_tol": 0.05}}


def judge_parity(ref: list[dict], dp: list[dict], *, loss_tol: float, grad_norm_tol: float) -> dict:
    """Compare two metrics.jsonl curves (records with step, loss, grad_norm, lr, tokens).

    Returns {"pass", "reasons" (why it failed), "loss_moved", "max_loss_diff_over_moved",
    "max_rel_grad_norm_diff", "max_abs_loss_diff", "steps": per-step rows}.
    """
    if [r["step"] for r in ref] != [r["step"] for r in dp]:
        raise ValueError("the two runs logged different steps: compare runs with the same train.steps and log_every")
    rows = [
        {
            "step": a["step"],
            "loss_ref": a["loss"],
            "loss_dp": b["loss"],
            "abs_diff": abs(a["loss"] - b["loss"]),
            "grad_norm_ref": a["grad_norm"],
            "grad_norm_dp": b["grad_norm"],
            "rel_grad_norm_diff": abs(a["grad_norm"] - b["grad_norm"]) / max(abs(a["grad_norm"]), 1e-30),
            "lr_ref": a["lr"],
            "lr_dp": b["lr"],
            "tokens_ref": a["tokens"],
            "tokens_dp": b["tokens"],
        }
        for a, b in zip(ref, dp)
    ]
    moved = max(abs(r["loss_ref"] - rows[0]["loss_ref"]) for r in rows)
    max_abs = max(r["abs_diff"] for r in rows)
    max_gn = max(r["rel_grad_norm_diff"] for r in rows)
    over_moved = max_abs / moved if moved > 0 else float("inf")
    reasons = []
    if moved == 0:
        reasons.append("the reference loss never moved: raise optim.lr or the steps so the curve can be judged")
    elif over_moved > loss_tol:
        reasons.append(
            f"loss differs by {max_abs:.3g}, {over_moved:.3g} of how far it moved ({moved:.3g}); tolerance {loss_tol:g}"
        )
    if max_gn > grad_norm_tol:
        reasons.append(f"gradient norms differ by {max_gn:.3g} (relative); tolerance {grad_norm_tol:g}")
    if any(r["tokens_ref"] != r["tokens_dp"] or r["lr_ref"] != r["lr_dp"] for r in rows):
        reasons.append("tokens or learning rates differ between the runs")
    return {
        "pass": not reasons,
        "reasons": reasons,
        "loss_tol": loss_tol,
        "grad_norm_tol": grad_norm_tol,
        "loss_moved": moved,
        "max_abs_loss_diff": max_abs,
        "max_loss_diff_over_moved": over_moved,
        "max_rel_grad_norm_diff": max_gn,
        "steps": rows,
    }
