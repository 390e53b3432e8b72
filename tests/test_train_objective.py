"""The training objective reproduces decoding exactly: same mask, same logits, same targets."""

import pytest
import torch
from transformers import DynamicCache

import train.objective as objective_module
from data.packing import PackedRows
from models.compat import cache_kwargs
from models.orthrus import prefix_attend
from tests.tiny import TINY
from train.attention import ar_attention_mask, block_mask_mod, dense_mask, training_attend
from train.blocks import build_blocks, sample_anchors, sample_blocks, segment_starts
from train.flops import block_pairs, causal_pairs
from train.objective import DistillationObjective, ObjectiveConfig, target_weights, teacher_pass

MASK = TINY.mask_token_id  # the tiny model's (conf/model/tiny.yaml): every token below it is text
DOC_LENGTHS = [5, 30, 3, 17, 40, 9, 22, 60, 2, 11, 1, 25]


def packed_batch(rows=2, seq_len=48, seed=0):
    """Rows from the data pipeline's own packing: documents cross rows and restart at position 0."""
    g = torch.Generator().manual_seed(seed)
    docs = [torch.randint(0, MASK, (n,), generator=g).tolist() for n in DOC_LENGTHS]
    packed = PackedRows(docs, seq_len)
    return {k: torch.stack([packed[i][k] for i in range(rows)]) for k in ("input_ids", "position_ids", "doc_ids")}


def blocks_for(batch, K, n=6, seed=0, steps=1):
    return sample_blocks(batch, blocks_per_row=n, block_size=K, mask_token_id=MASK, num_denoise_steps=steps, seed=seed)


def test_anchors_are_distinct_eligible_and_padded():
    doc_ids = torch.tensor([[0, 0, 1, 2, 2, 2, 3, 4]])  # eligible anchors: 0, 3, 4
    anchors, valid = sample_anchors(doc_ids, 5, torch.Generator().manual_seed(0))
    assert sorted(anchors[valid].tolist()) == [0, 3, 4]
    assert valid.sum() == 3 and len(set(anchors[0].tolist())) == 5
    with pytest.raises(ValueError, match="blocks_per_row"):
        sample_anchors(doc_ids, 8, torch.Generator())


def test_block_targets_follow_the_document():
    batch = packed_batch()
    K = 8
    blocks = blocks_for(batch, K)
    ids, docs = batch["input_ids"], batch["doc_ids"]
    a = blocks.ctx_end[blocks.target_row, blocks.target_col // K]
    i = blocks.target_pos
    assert torch.equal(blocks.target_col % K, i) and (i <= K - 2).all()
    assert torch.equal(blocks.teacher_col, a + i)
    assert torch.equal(blocks.target_token, ids[blocks.target_row, a + i + 1])
    assert torch.equal(docs[blocks.target_row, a + i + 1], docs[blocks.target_row, a])  # never past the document
    # every in-document, in-row successor of every valid block is a target, and nothing else
    expected = 0
    for b in range(ids.shape[0]):
        for j in range(blocks.num_blocks):
            start, anchor = int(blocks.ctx_start[b, j]), int(blocks.ctx_end[b, j])
            if anchor == start and docs[b, anchor] != docs[b, min(anchor + 1, ids.shape[1] - 1)]:
                continue  # padding block
            for k in range(1, K):
                t = anchor + k
                expected += t < ids.shape[1] and docs[b, t] == docs[b, anchor]
            assert blocks.input_ids[b, j * K] == ids[b, anchor]
            assert (blocks.input_ids[b, j * K + 1 : (j + 1) * K] == MASK).all()
            pos = batch["position_ids"][b, anchor] + torch.arange(K)
            assert torch.equal(blocks.position_ids[b, j * K : (j + 1) * K], pos)
    assert len(i) == expected


def test_mask_is_what_decoding_sees():
    """Position for position: AR keys before the anchor in its document, plus its own block."""
    batch = packed_batch()
    K, L = 8, batch["input_ids"].shape[1]
    blocks = blocks_for(batch, K)
    B, T = blocks.input_ids.shape
    mask = dense_mask(block_mask_mod(blocks.ctx_start, blocks.ctx_end, L, K), B, T, L + T, "cpu")[:, 0]
    expected = torch.zeros(B, T, L + T, dtype=torch.bool)
    docs = batch["doc_ids"]
    for b in range(B):
        for j in range(blocks.num_blocks):
            anchor = int(blocks.ctx_end[b, j])  # 0 for padding blocks: no AR context
            for q in range(j * K, (j + 1) * K):
                for kv in range(anchor):
                    expected[b, q, kv] = bool(docs[b, kv] == docs[b, anchor])
                expected[b, q, L + j * K : L + (j + 1) * K] = True
    assert torch.equal(mask, expected)
    # the FLOP counts are the mask's own pair counts
    assert block_pairs(blocks) == int(mask.sum())
    assert causal_pairs(docs) == int(ar_attention_mask(docs).sum())


def test_ar_pass_keeps_documents_apart(make_model):
    """The teacher pass over packed rows equals each document's own forward pass."""
    model = make_model(seed=1)
    batch = packed_batch()
    hidden, cache = teacher_pass(model, batch["input_ids"], batch["position_ids"], batch["doc_ids"])
    starts = segment_starts(batch["doc_ids"])
    for b in range(2):
        for s in starts[b].unique().tolist():
            e = int((batch["doc_ids"][b] == batch["doc_ids"][b, s]).nonzero().max()) + 1
            c = DynamicCache(config=model.config)
            out = model.model(input_ids=batch["input_ids"][b : b + 1, s:e], **cache_kwargs(c))
            torch.testing.assert_close(hidden[b, s:e], out.last_hidden_state[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(cache.layers[1].keys[b, :, s:e], c.layers[1].keys[0], atol=1e-5, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("executor,tile", [("sdpa", None), ("flex", None), ("flex", 16)])
@pytest.mark.parametrize("K", [4, 8])
def test_training_logits_equal_decoding_logits(make_model, executor, tile, K):
    """Many blocks of packed documents in one pass == one decode-time draft per block (flex: with
    its default BlockMask tile and with objective.flex_block_size=16)."""
    model = make_model(seed=K, block_size=K)
    batch = packed_batch()
    blocks = blocks_for(batch, K, n=7, seed=K)
    scale = model.model.layers[0].self_attn.scaling
    with torch.no_grad():
        _, cache = teacher_pass(model, batch["input_ids"], batch["position_ids"], batch["doc_ids"])
        logits = model.diffusion_forward(
            blocks.input_ids, blocks.position_ids, training_attend(cache, blocks, scale, executor, tile)
        )
        checked = 0
        for b in range(2):
            for j in range(blocks.num_blocks):
                start, anchor = int(blocks.ctx_start[b, j]), int(blocks.ctx_end[b, j])
                # decoding: AR cache of the document prefix (at least one token so the cache exists),
                # then the draft pass with ctx_len = anchor - start (the anchor is the block's first token)
                prefix = slice(start, max(anchor, start + 1))
                dec_cache = DynamicCache(config=model.config)
                model(
                    input_ids=batch["input_ids"][b : b + 1, prefix],
                    position_ids=batch["position_ids"][b : b + 1, prefix],
                    **cache_kwargs(dec_cache),
                )
                cols = slice(j * K, (j + 1) * K)
                draft = model.diffusion_forward(
                    blocks.input_ids[b : b + 1, cols],
                    blocks.position_ids[b : b + 1, cols],
                    prefix_attend(dec_cache, anchor - start, scale),
                )
                torch.testing.assert_close(logits[b, cols], draft[0], atol=1e-5, rtol=1e-5)
                checked += 1
    assert checked == 14


def dense_reference_loss(model, batch, blocks, kind, decay):
    """The loss written the obvious way: full teacher logits, full student logits."""
    with torch.no_grad():
        teacher = model(
            input_ids=batch["input_ids"],
            position_ids=batch["position_ids"],
            attention_mask=ar_attention_mask(batch["doc_ids"]),
        ).logits
        _, cache = teacher_pass(model, batch["input_ids"], batch["position_ids"], batch["doc_ids"])
    scale = model.model.layers[0].self_attn.scaling
    student = model.diffusion_forward(
        blocks.input_ids, blocks.position_ids, training_attend(cache, blocks, scale, "sdpa")
    )
    s = student[blocks.target_row, blocks.target_col].log_softmax(-1)
    t = teacher[blocks.target_row, blocks.teacher_col].log_softmax(-1)
    per = (t.exp() * (t - s)).sum(-1) if kind == "kl" else -s.gather(-1, blocks.target_token[:, None])[:, 0]
    w = target_weights(blocks.target_pos, decay)
    return (per * w).sum() / w.sum()


def loss_and_grads(model, batch, blocks, **config):
    """(loss, stats, gradients of the diffusion view) of one objective call; gradients cleared after."""
    objective = DistillationObjective(model, ObjectiveConfig(attention="sdpa", **config))
    loss, stats = objective(batch, blocks)
    loss.backward()
    grads = [p.grad.clone() for _, p in model.diffusion_named_parameters()]
    model.zero_grad(set_to_none=True)
    return loss.detach(), stats, grads


@pytest.mark.parametrize("kind,decay", [("kl", None), ("ce", None), ("kl", 4.0)])
def test_chunked_loss_equals_dense_loss(make_model, kind, decay):
    """Checkpointed and fused chunks, a partial last chunk (3 does not divide the target count) and
    one chunk: the loss of the dense reference and its gradients (autograd through full logits)."""
    model = make_model(seed=2, block_size=8)
    model.freeze_base()
    batch = packed_batch(seed=2)
    blocks = blocks_for(batch, 8, seed=2)
    assert len(blocks.target_pos) % 3 != 0  # the partial last chunk is exercised
    ref = dense_reference_loss(model, batch, blocks, kind, decay)
    ref.backward()
    ref_grads = [p.grad.clone() for _, p in model.diffusion_named_parameters()]
    model.zero_grad(set_to_none=True)
    for chunk in (3, 10_000):
        for fused in (False, True):
            loss, stats, grads = loss_and_grads(
                model, batch, blocks, loss=kind, loss_decay=decay, chunk_size=chunk, fused_loss=fused
            )
            torch.testing.assert_close(loss, ref.detach(), atol=1e-5, rtol=1e-5)
            for g, r in zip(grads, ref_grads, strict=True):
                torch.testing.assert_close(g, r, atol=1e-6, rtol=1e-4)
            assert stats["count"].sum() == len(blocks.target_pos)


@pytest.mark.parametrize("kind", ["kl", "ce"])
def test_compiled_loss_chunks_give_the_same_loss_and_gradients(make_model, counting_backend, kind):
    """objective.compile_loss: the chunk functions (checkpointed and fused) run through dynamo (the
    graphs it captured are counted) and give the eager loss and gradients, partial chunk included."""
    model = make_model(seed=2, block_size=8)
    model.freeze_base()
    batch = packed_batch(seed=2)
    blocks = blocks_for(batch, 8, seed=2)
    for fused in (False, True):
        ref_loss, _, ref_grads = loss_and_grads(model, batch, blocks, loss=kind, chunk_size=3, fused_loss=fused)
        torch._dynamo.reset()
        counting_backend.graphs.clear()
        config = ObjectiveConfig(attention="sdpa", loss=kind, chunk_size=3, fused_loss=fused, compile_loss=True)
        loss, _ = DistillationObjective(model, config, compile_backend=counting_backend)(batch, blocks)
        loss.backward()
        grads = [p.grad.clone() for _, p in model.diffusion_named_parameters()]
        model.zero_grad(set_to_none=True)
        assert counting_backend.graphs  # the chunks went through torch.compile
        torch.testing.assert_close(loss.detach(), ref_loss, atol=1e-6, rtol=1e-6)
        for g, r in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(g, r, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("fused", [False, True])
def test_chunking_that_drops_the_partial_chunk_is_caught(make_model, monkeypatch, fused):
    """The comparison above fails when the chunks leave out the last partial chunk."""
    model = make_model(seed=2, block_size=8)
    model.freeze_base()
    batch = packed_batch(seed=2)
    blocks = blocks_for(batch, 8, seed=2)
    ref = dense_reference_loss(model, batch, blocks, "kl", None)
    monkeypatch.setattr(
        objective_module, "chunk_slices", lambda n, size: [slice(s, s + size) for s in range(0, n - size + 1, size)]
    )
    loss, _, _ = loss_and_grads(model, batch, blocks, chunk_size=3, fused_loss=fused)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(loss, ref.detach(), atol=1e-5, rtol=1e-5)


def test_flex_block_size_must_be_a_power_of_two():
    for bad in (48, 8):
        with pytest.raises(ValueError, match="objective.flex_block_size"):
            ObjectiveConfig(flex_block_size=bad)
    assert ObjectiveConfig(flex_block_size=64).flex_block_size == 64


def test_fused_loss_needs_a_frozen_lm_head(make_model):
    model = make_model(seed=2, block_size=8)
    model.freeze_base()
    model.lm_head.weight.requires_grad_(True)
    batch = packed_batch(seed=2)
    with pytest.raises(ValueError, match="fused_loss=true needs a frozen lm_head"):
        loss_and_grads(model, batch, blocks_for(batch, 8, seed=2), fused_loss=True)


def test_multistep_reveals_fill_slots_and_drop_their_targets(make_model):
    batch = packed_batch(seed=3)
    K = 8
    single = blocks_for(batch, K, seed=3, steps=1)
    multi = blocks_for(batch, K, seed=3, steps=4)
    assert not single.reveal.any() and multi.reveal.any()
    assert not multi.reveal[:, ::K].any()  # the anchor slot is the input token, never "revealed"
    b, col = multi.reveal.nonzero(as_tuple=True)
    anchor = multi.ctx_end[b, col // K]
    assert torch.equal(multi.input_ids[b, col], batch["input_ids"][b, anchor + col % K])  # teacher-forced fill
    predicted = set(zip(multi.target_row.tolist(), (multi.target_col + 1).tolist()))
    assert not predicted & set(zip(b.tolist(), col.tolist()))  # revealed slots are inputs, not targets
    assert len(multi.target_pos) < len(single.target_pos)

    model = make_model(seed=3, block_size=K)
    objective = DistillationObjective(
        model, ObjectiveConfig(num_denoise_steps=4, denoise_fill="teacher", attention="sdpa")
    )
    hidden, _ = teacher_pass(model, batch["input_ids"], batch["position_ids"], batch["doc_ids"])
    filled = objective._teacher_fill(hidden, multi)
    greedy = model.lm_head(hidden).argmax(-1)
    assert torch.equal(filled[b, col], greedy[b, anchor + col % K - 1])
    assert torch.equal(filled[~multi.reveal], multi.input_ids[~multi.reveal])


def test_bad_objective_settings_name_the_key():
    with pytest.raises(ValueError, match="objective.loss"):
        ObjectiveConfig(loss="mse")
    with pytest.raises(ValueError, match="objective.num_denoise_steps"):
        build_blocks(
            torch.zeros(1, 4, dtype=torch.long),
            torch.arange(4)[None],
            torch.zeros(1, 4, dtype=torch.long),
            torch.tensor([[0]]),
            torch.tensor([[True]]),
            block_size=2,
            mask_token_id=1,
            num_denoise_steps=0,
        )
