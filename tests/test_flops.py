"""train/flops.py against a counter nobody here wrote: torch.utils.flop_counter.FlopCounterMode
on one real micro-step of the Trainer (tiny model, fp32, CPU).

How the two are made comparable:
  * matmuls (every projection and lm_head, forward and backward) are compared exactly: the
    counter's aten.mm/addmm FLOPs against the formula's "matmul" terms;
  * attention: the counter counts what executes, and an SDPA executor runs a dense mask (every
    (query, key) pair, masked or not), while the formula counts the pairs the masks allow. So the
    counter's attention FLOPs (SDPA's math path: aten.bmm) are checked against the dense pair
    count, and the formula's visible pairs against the masks the step actually used;
  * the lm_head + loss chunks run under activation checkpointing, whose recomputation is not
    model work (the MFU convention): the step is measured with `checkpoint` made a plain call.
"""

import pytest
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import train.objective
from tests.tiny import tiny_run
from train.attention import ar_attention_mask, block_mask_mod, dense_mask
from train.blocks import sample_blocks
from train.data import batches
from train.flops import block_pairs, causal_pairs, flop_terms, micro_batch_flops_breakdown
from train.loop import Trainer

TINY = [
    "data.synthetic_documents.max_length=40",
    "train.micro_batch_size=2",
    "model.config.intermediate_size=96",
    "model.config.num_hidden_layers=3",
]
MATMUL_OPS = ("aten.mm", "aten.addmm")
ATTENTION_OPS = ("aten.bmm", "aten.baddbmm")


def old_rule(terms: dict) -> float:
    """The rule this module replaced: backward = 2x the diffusion forward + weight gradients."""
    return 2 * sum(terms["diffusion_forward"].values()) + terms["diffusion_backward_weights"]["matmul"]


def measured_step(trainable: str, tmp_path, monkeypatch, *overrides, recompute: bool = False):
    """(counter FLOPs by op, formula terms, batch, blocks) of one real micro-step with backward;
    `recompute`: leave the loss chunks' checkpointing as it runs (recomputation counted)."""
    cfg = tiny_run(*TINY, f"model.trainable={trainable}", "objective.blocks_per_row=5", *overrides)
    trainer = Trainer(cfg, tmp_path)
    batch = next(batches(trainer.dataset, 2))
    blocks = sample_blocks(
        batch,
        blocks_per_row=5,
        block_size=trainer.block_size,
        mask_token_id=trainer.model.config.mask_token_id,
        num_denoise_steps=1,
        seed=0,
    )
    assert (batch["doc_ids"][:, 1:] != batch["doc_ids"][:, :-1]).any()  # packed: several documents per row
    if not recompute:
        monkeypatch.setattr(train.objective, "checkpoint", lambda fn, *args, **kw: fn(*args))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        trainer.backend.micro_step(batch, blocks, last=True)
    counts = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    terms = flop_terms(trainer.model.config, batch["doc_ids"], blocks, trainer.model_cfg.trainable)
    return counts, terms, trainer.model.config, batch, blocks


@pytest.mark.parametrize(
    "trainable",
    [
        "[q_proj_diff,k_proj_diff,v_proj_diff,o_proj_diff,q_norm_diff,k_norm_diff]",  # the paper's
        "[q_proj_diff,k_proj_diff,v_proj_diff]",  # conf/exp/ablate_trainable.yaml's other arm
    ],
)
def test_matmul_flops_equal_flop_counter_on_a_real_step(trainable, tmp_path, monkeypatch):
    counts, terms, config, batch, blocks = measured_step(trainable, tmp_path, monkeypatch)
    assert set(counts) <= {*MATMUL_OPS, *ATTENTION_OPS}, counts  # nothing else is counted
    counted_matmul = sum(counts.get(op, 0) for op in MATMUL_OPS)
    assert sum(t["matmul"] for t in terms.values()) == counted_matmul

    # attention, dense as executed: AR pass L x L per row; diffusion pass T x (L + T) per row,
    # forward, and backward dP, dQ, dK, dV over the whole dense grid (the AR keys' too)
    (B, L), T = batch["doc_ids"].shape, blocks.input_ids.shape[1]
    per_pair = 4 * config.num_attention_heads * config.head_dim * config.num_hidden_layers
    dense = per_pair * (B * L * L + 3 * B * T * (L + T))
    assert sum(counts.get(op, 0) for op in ATTENTION_OPS) == dense
    # the formula's pairs are exactly those the step's masks allow (and far fewer than dense)
    assert causal_pairs(batch["doc_ids"]) == int(ar_attention_mask(batch["doc_ids"]).sum())
    mask = dense_mask(block_mask_mod(blocks.ctx_start, blocks.ctx_end, L, blocks.block_size), B, T, L + T, "cpu")
    assert block_pairs(blocks) == int(mask.sum())
    assert sum(t["attention"] for t in terms.values()) < 0.7 * dense


def test_the_old_2x_backward_rule_fails_the_counter(tmp_path, monkeypatch):
    """Charging the backward through frozen layers at 2x the forward over-counts the step."""
    trainable = "[q_proj_diff,k_proj_diff,v_proj_diff,o_proj_diff,q_norm_diff,k_norm_diff]"
    counts, terms, *_ = measured_step(trainable, tmp_path, monkeypatch)
    counted_matmul = sum(counts.get(op, 0) for op in MATMUL_OPS)
    matmul_only = {part: {"matmul": t["matmul"], "attention": 0} for part, t in terms.items()}
    old = sum(matmul_only["ar_forward"].values()) + old_rule(matmul_only)
    assert sum(t["matmul"] for t in terms.values()) == counted_matmul
    assert old - counted_matmul > 0.01 * counted_matmul  # the equality above fails for the old rule


def test_fused_loss_runs_the_model_flops_and_checkpointing_two_lm_heads_more(tmp_path, monkeypatch):
    """objective.fused_loss: the counter sees exactly the formula's matmuls (3 lm_head matmuls per
    target) with nothing made a plain call; the checkpointed loss as it runs recomputes the
    student's and the teacher's logits: 2 more lm_head matmuls per target."""
    trainable = "[q_proj_diff,k_proj_diff,v_proj_diff,o_proj_diff,q_norm_diff,k_norm_diff]"
    runs = {}
    for fused in (True, False):
        counts, terms, config, _, blocks = measured_step(
            trainable, tmp_path / str(fused), monkeypatch, f"objective.fused_loss={fused}", recompute=True
        )
        runs[fused] = sum(counts.get(op, 0) for op in MATMUL_OPS)
    assert runs[True] == sum(t["matmul"] for t in terms.values())
    head = 2 * config.hidden_size * config.vocab_size * len(blocks.target_pos)
    assert runs[False] - runs[True] == 2 * head


def test_breakdown_sums_the_terms(tmp_path, monkeypatch):
    trainable = "[q_proj_diff,k_proj_diff,v_proj_diff,o_proj_diff,q_norm_diff,k_norm_diff]"
    _, terms, config, batch, blocks = measured_step(trainable, tmp_path, monkeypatch)
    parts = micro_batch_flops_breakdown(config, batch["doc_ids"], blocks, trainable.strip("[]").split(","))
    assert parts == {part: float(t["matmul"] + t["attention"]) for part, t in terms.items()}


def test_pretraining_matmul_flops_equal_flop_counter(tmp_path, monkeypatch):
    """objective.kind=next_token: every matrix learns, so the step is 3x its forward's matmuls."""
    from train.flops import layer_params, next_token_flops

    cfg = tiny_run(*TINY, "objective.kind=next_token")
    trainer = Trainer(cfg, tmp_path)
    batch = next(batches(trainer.dataset, 2))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        trainer.backend.micro_step(batch, None, last=True)
    counts = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    config, doc_ids = trainer.model.config, batch["doc_ids"]
    (B, L), n = doc_ids.shape, config.num_hidden_layers
    targets = int((doc_ids[:, 1:] == doc_ids[:, :-1]).sum())
    matmul = 3 * (2 * layer_params(config) * n * B * L + 2 * config.hidden_size * config.vocab_size * targets)
    assert sum(counts.get(op, 0) for op in MATMUL_OPS) == matmul
    attention = next_token_flops(config, doc_ids) - matmul  # visible causal pairs, 3x
    dense = 3 * 4 * config.num_attention_heads * config.head_dim * n * B * L * L
    assert sum(counts.get(op, 0) for op in ATTENTION_OPS) == dense and 0 < attention < 0.7 * dense
