"""The training objectives, chosen by `objective.kind`:

  * "distill" (DistillationObjective): the frozen AR view teaches the diffusion view to draft blocks;
  * "next_token" (NextTokenObjective): pretraining of the AR model itself, next-token cross-entropy
    over packed documents with every AR parameter learning (how the small base is made).

The distillation objective in detail.

One micro-batch (B packed rows of L tokens):
  1. AR pass of the frozen base under no_grad, causal within each document, filling a fresh
     DynamicCache: per layer the post-RoPE keys/values (B, Hkv, L, D) that decoding would have
     cached, and the final hidden states, from which teacher logits are computed on demand;
  2. one diffusion pass over all blocks of the batch (`blocks.py`) attending to
     [AR keys ; block keys] under the block mask (`attention.py`);
  3. loss over the valid targets: KL(teacher || student) summed over the vocabulary (default;
     the paper found KL beats cross-entropy for acceptance) or cross-entropy on the data token
     (ablation), optionally weighted by exp(-i / loss_decay) over block index i, averaged by the
     total weight.

Memory: at Qwen3's 151,936-token vocabulary the (targets x vocab) fp32 logits of a batch are
gigabytes, so the final lm_head, softmaxes and loss run in chunks of `chunk_size` targets: only
one chunk's logits exist at a time, in forward and in backward. Two ways to get the gradient:
  * `fused_loss=false` (default): activation checkpointing per chunk; backward recomputes the
    chunk's student and teacher logits, then back-propagates through lm_head: five lm_head
    matmuls per target in all;
  * `fused_loss=true`: the gradient with respect to the chunk's student hidden states is formed
    in the forward (d loss / d logits = w * (softmax(student) - target distribution), then one
    matmul by the frozen lm_head weight) and kept (targets x hidden); backward only scales it:
    three lm_head matmuls per target and no recomputation. It needs a frozen, unpartitioned
    lm_head (not ZeRO-3).
Eager, a chunk's softmaxes, KL and gradient are a dozen elementwise passes over its fp32
(chunk x vocab) logits; `compile_loss=true` compiles the chunk function (either way of getting
the gradient) so inductor fuses them into a few passes (compiled once for full chunks and once,
dynamic, for other sizes).
Each phase runs inside a `torch.profiler.record_function` range named in train.profile.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function
from torch.utils.checkpoint import checkpoint
from transformers import DynamicCache

from models.compat import cache_kwargs
from train import profile
from train.attention import ar_attention_mask, resolve_executor, training_attend
from train.blocks import DiffusionBlocks

KINDS = ("distill", "next_token")
LOSSES = ("kl", "ce")
FILLS = ("data", "teacher")


@dataclass
class ObjectiveConfig:
    kind: str = "distill"  # "distill": train the diffusion view | "next_token": pretrain the AR model
    blocks_per_row: int = 16  # diffusion blocks drawn per packed row (anchors: see blocks.py)
    loss: str = "kl"  # "kl": KL(teacher || student); "ce": cross-entropy on the data token
    loss_decay: float | None = None  # gamma: target i weighs exp(-i / gamma); None: uniform
    num_denoise_steps: int = 1  # S > 1: multi-step denoising ablation (blocks.py)
    denoise_fill: str = "data"  # revealed slots hold the data token or the teacher's greedy token
    chunk_size: int = 1024  # targets per lm_head/loss chunk
    fused_loss: bool = False  # true: gradient of each chunk formed in its forward (no recomputation)
    compile_loss: bool = False  # true: each chunk's lm_head + softmax + loss math through torch.compile
    attention: str = "auto"  # "flex" | "sdpa" | "auto" (flex on CUDA, sdpa on CPU)
    flex_block_size: int | None = None  # flex BlockMask tile (queries and keys); null: flex's default (128)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"objective.kind={self.kind!r}: choose one of {KINDS}")
        if self.loss not in LOSSES:
            raise ValueError(f"objective.loss={self.loss!r}: choose one of {LOSSES}")
        if self.denoise_fill not in FILLS:
            raise ValueError(f"objective.denoise_fill={self.denoise_fill!r}: choose one of {FILLS}")
        if self.loss_decay is not None and self.loss_decay <= 0:
            raise ValueError(f"objective.loss_decay={self.loss_decay} must be > 0, or null for uniform weights")
        if self.chunk_size < 1:
            raise ValueError(f"objective.chunk_size={self.chunk_size} must be >= 1")
        if self.flex_block_size is not None and (
            self.flex_block_size < 16 or self.flex_block_size & (self.flex_block_size - 1)
        ):
            raise ValueError(
                f"objective.flex_block_size={self.flex_block_size}: a power of two >= 16, or null for flex's default"
            )


@torch.no_grad()
def teacher_pass(model, input_ids, position_ids, doc_ids) -> tuple[torch.Tensor, DynamicCache]:
    """The frozen AR view over a packed batch: (final normed hidden states (B, L, H), filled cache)."""
    cache = DynamicCache(config=model.config)
    out = model.model(
        input_ids=input_ids,
        position_ids=position_ids,
        attention_mask=ar_attention_mask(doc_ids),
        **cache_kwargs(cache),
    )
    return out.last_hidden_state, cache


class DistillationObjective(nn.Module):
    """forward(batch, blocks) -> (loss, stats). A module so DDP/DeepSpeed can wrap it whole."""

    def __init__(
        self, model, config: ObjectiveConfig, gradient_checkpointing: bool = False, compile_backend="inductor"
    ):
        """`compile_backend`: torch.compile's backend for compile_loss (the CPU tests trace without code generation)."""
        super().__init__()
        self.model = model
        self.config = config
        self.gradient_checkpointing = gradient_checkpointing
        self.chunk_loss, self.fused_chunk_loss = self._chunk_loss, self._fused_chunk_loss
        if config.compile_loss:
            self.chunk_loss = torch.compile(self._chunk_loss, backend=compile_backend)
            self.fused_chunk_loss = torch.compile(self._fused_chunk_loss, backend=compile_backend)

    def forward(self, batch: dict[str, torch.Tensor], blocks: DiffusionBlocks):
        model, cfg = self.model, self.config
        with record_function(profile.TEACHER):
            teacher_hidden, cache = teacher_pass(model, batch["input_ids"], batch["position_ids"], batch["doc_ids"])
            block_ids = blocks.input_ids
            if cfg.num_denoise_steps > 1 and cfg.denoise_fill == "teacher":
                block_ids = self._teacher_fill(teacher_hidden, blocks)
        with record_function(profile.DIFFUSION):
            executor = resolve_executor(cfg.attention, teacher_hidden.device)
            scale = model.model.layers[0].self_attn.scaling
            attend = training_attend(cache, blocks, scale, executor, cfg.flex_block_size)
            hidden = model.diffusion_hidden_states(block_ids, blocks.position_ids, attend, self.gradient_checkpointing)
        with record_function(profile.LOSS):
            return self.loss(hidden, teacher_hidden, blocks)

    def loss(self, hidden: torch.Tensor, teacher_hidden: torch.Tensor, blocks: DiffusionBlocks):
        """Chunked lm_head + loss over the valid targets (checkpointed or fused per chunk); stats for logging."""
        cfg = self.config
        K = blocks.block_size
        student = hidden[blocks.target_row, blocks.target_col]
        teacher = teacher_hidden[blocks.target_row, blocks.teacher_col]
        weight = target_weights(blocks.target_pos, cfg.loss_decay)
        total = hidden.sum() * 0.0  # keeps the graph connected when a batch has no targets
        correct = torch.zeros(len(weight), dtype=torch.bool, device=hidden.device)
        grad = torch.is_grad_enabled() and student.requires_grad
        if grad and cfg.fused_loss:
            self._check_fused_head()
        for part in chunk_slices(len(weight), cfg.chunk_size):
            args = (student[part], teacher[part], blocks.target_token[part], weight[part])
            if grad and cfg.fused_loss:
                chunk_loss, chunk_correct = FusedChunkLoss.apply(*args, self)
            elif grad:
                chunk_loss, chunk_correct = checkpoint(self.chunk_loss, *args, use_reentrant=False)
            else:
                chunk_loss, chunk_correct = self.chunk_loss(*args)
            total = total + chunk_loss
            correct[part] = chunk_correct
        loss = total / weight.sum().clamp(min=torch.finfo(weight.dtype).tiny)
        pos, zeros = blocks.target_pos, torch.zeros(K - 1, device=hidden.device)
        stats = {  # per block index; index_add_ rather than bincount: no device sync
            "correct": zeros.index_add(0, pos, correct.float()),
            "count": zeros.index_add(0, pos, torch.ones_like(weight)),
        }
        return loss, stats

    def _check_fused_head(self) -> None:
        """The fused chunks form the student's gradient with the lm_head weight as it is at the call:
        it must be frozen and whole. Checked once per call, not at construction: DeepSpeed ZeRO-3
        partitions the weight (numel 0 on each rank) after the objective is built."""
        head = self.model.lm_head.weight
        if head.requires_grad or head.numel() == 0:
            raise ValueError(
                "objective.fused_loss=true needs a frozen lm_head whose weight is whole on every rank "
                "(not partitioned by deepspeed=zero3): set objective.fused_loss=false"
            )

    def _chunk_loss(self, student, teacher, token, weight):
        """(sum of weighted per-target losses, student argmax == teacher argmax) for one chunk."""
        logits = self.model.lm_head(student).float()
        logp = F.log_softmax(logits, dim=-1)
        with torch.no_grad():
            log_target, correct = self._log_target(logits, teacher, token)
        return (self._per_target(logp, log_target, token) * weight).sum(), correct

    @torch.no_grad()
    def _fused_chunk_loss(self, student, teacher, token, weight):
        """(sum of weighted per-target losses, correct, d sum / d student) for one chunk, the
        gradient formed here: d / d logits_t = w_t * (softmax(logits_t) - target_t) for both
        KL(target || student) and CE (target = one-hot), times the frozen lm_head weight."""
        head = self.model.lm_head.weight
        logits = self.model.lm_head(student).float()
        logp = F.log_softmax(logits, dim=-1)
        log_target, correct = self._log_target(logits, teacher, token)
        target = None if log_target is None else log_target.exp()
        per_target = self._per_target(logp, log_target, token, target)
        d_logits = logp.exp_()  # softmax(student) minus the target distribution, in place
        if target is None:  # cross-entropy: the target is the data token's one-hot
            d_logits[torch.arange(len(token), device=token.device), token] -= 1
        else:
            d_logits -= target
        d_logits *= weight[:, None]
        return (per_target * weight).sum(), correct, (d_logits.to(head.dtype) @ head).to(student.dtype)

    def _log_target(self, logits, teacher, token):
        """(log of the distribution the student is pulled towards: the teacher's (KL), None for CE,
        student argmax == teacher argmax), without gradient."""
        teacher_logits = self.model.lm_head(teacher).float()
        correct = logits.argmax(-1) == teacher_logits.argmax(-1)
        return (F.log_softmax(teacher_logits, dim=-1) if self.config.loss == "kl" else None), correct

    def _per_target(self, logp, log_target, token, target=None):
        """KL(teacher || student) or cross-entropy on the data token, per target. target: the teacher's
        probabilities, log_target.exp(), where the caller has them already."""
        if self.config.loss == "kl":
            target = log_target.exp() if target is None else target
            return (target * (log_target - logp)).sum(-1)
        return -logp.gather(-1, token[:, None]).squeeze(-1)

    @torch.no_grad()
    def _teacher_fill(self, teacher_hidden: torch.Tensor, blocks: DiffusionBlocks) -> torch.Tensor:
        """Block inputs with revealed slots holding the AR view's greedy token (multi-step ablation)."""
        K = blocks.block_size
        b, col = blocks.reveal.nonzero(as_tuple=True)
        row = blocks.ctx_end[b, col // K] + col % K - 1  # the AR logits at a+i-1 predict slot i
        ids = blocks.input_ids.clone()
        for part in chunk_slices(len(b), self.config.chunk_size):
            ids[b[part], col[part]] = self.model.lm_head(teacher_hidden[b[part], row[part]]).argmax(-1)
        return ids


class FusedChunkLoss(torch.autograd.Function):
    """One chunk's (weighted loss sum, correct) whose gradient with respect to the student hidden
    states is computed in the forward (DistillationObjective._fused_chunk_loss). Backward scales
    the stored gradient; the logits are never recomputed."""

    @staticmethod
    def forward(ctx, student, teacher, token, weight, objective: "DistillationObjective"):
        loss, correct, d_student = objective.fused_chunk_loss(student, teacher, token, weight)
        ctx.save_for_backward(d_student)
        ctx.mark_non_differentiable(correct)
        return loss, correct

    @staticmethod
    def backward(ctx, grad_loss, grad_correct):
        (d_student,) = ctx.saved_tensors
        return d_student * grad_loss.to(d_student.dtype), None, None, None, None


class NextTokenObjective(nn.Module):
    """forward(batch, blocks=None) -> (loss, stats): mean next-token cross-entropy of the AR view
    over the tokens whose successor is in the same document (a document's first token cannot be
    predicted from the one before it, which it does not attend to). stats put the next-token
    accuracy at block index 0, so the training log has the distillation run's shape."""

    def __init__(self, model, gradient_checkpointing: bool = False):
        super().__init__()
        self.model = model
        if gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def forward(self, batch: dict[str, torch.Tensor], blocks: DiffusionBlocks | None = None):
        ids, doc_ids = batch["input_ids"], batch["doc_ids"]
        hidden = self.model.model(
            input_ids=ids, position_ids=batch["position_ids"], attention_mask=ar_attention_mask(doc_ids)
        ).last_hidden_state
        valid = doc_ids[:, 1:] == doc_ids[:, :-1]
        logits = self.model.lm_head(hidden[:, :-1][valid]).float()
        labels = ids[:, 1:][valid]
        loss = F.cross_entropy(logits, labels) if len(labels) else hidden.sum() * 0.0
        K = self.model.config.block_size
        first = torch.zeros(K - 1, device=ids.device)
        first[0] = 1.0
        stats = {"correct": first * (logits.argmax(-1) == labels).sum(), "count": first * len(labels)}
        return loss, stats


def chunk_slices(n: int, size: int) -> list[slice]:
    """Consecutive slices of `size` covering range(n), the last one partial."""
    return [slice(s, min(s + size, n)) for s in range(0, n, size)]


def target_weights(block_pos: torch.Tensor, decay: float | None) -> torch.Tensor:
    """exp(-i / decay) per target (1 everywhere when decay is None), fp32 so sums stay exact."""
    if decay is None:
        return torch.ones(block_pos.shape, dtype=torch.float32, device=block_pos.device)
    return torch.exp(-block_pos.float() / decay)
