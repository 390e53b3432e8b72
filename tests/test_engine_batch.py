"""Batched, continuously batched decoding (models/serving.py) is lossless: every request's output is its
batch-1 output (fp32 greedy: the base model's, token for token; sampled: the same tokens as the request
alone with the same seed), with ragged prompts, EOS at different iterations, requests joining mid-run and
more requests than slots. Each exactness test is also run against a deliberately broken batched engine
(a slot reading another slot's length, RoPE at another slot's position, one generator row for all slots)
and must fail there.
"""

import contextlib
from types import SimpleNamespace

import pytest
import torch

import kernels.attention
import kernels.sample
import models.engine
from eval.runner import EngineDecode, decode_prompts, measure_block_sizes, serve_prompts
from models.engine import OrthrusEngine, StaticKVCache
from models.engine_ops import TorchOps
from models.sampling import SamplingParams
from models.serving import IN_FLIGHT, Server, _ReadBack
from tests.test_greedy import RecordingStreamer, base_greedy, prompt

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
S = 96  # cache rows per slot
# The Triton tests run compiled on a GPU where there is one, else in Triton's interpreter (tests/conftest.py
# sets TRITON_INTERPRET=1 only where CUDA is absent, so Triton on CPU tensors only works there).
CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"

# (prompt length, max_new_tokens, step at which it is submitted, EOS at this new token or None)
# The last two join while iterations are in flight and end at their first token (max_new_tokens 1, EOS).
GREEDY_REQUESTS = [(1, 23, 0, None), (5, 9, 0, None), (33, 17, 0, 6), (12, 30, 2, None), (3, 5, 3, None),
                   (20, 12, 3, 1), (8, 23, 9, None), (4, 1, 4, None), (6, 10, 5, 0)]  # fmt: skip


def serve(server: Server, requests: list[dict]) -> tuple[list, int]:
    """Submit each request (submit kwargs plus "at": the step to submit it at) and step until all are done.
    Returns the results in request order and the most requests seen waiting for a slot at once."""
    todo = sorted(enumerate(requests), key=lambda r: r[1].get("at", 0))
    ids, results, step, most_waiting = {}, {}, 0, 0
    while todo or server.busy:
        while todo and todo[0][1].get("at", 0) <= step:
            i, r = todo.pop(0)
            ids[server.submit(**{k: v for k, v in r.items() if k != "at"})] = i
        most_waiting = max(most_waiting, len(server.waiting))
        for rid, result in server.step():
            results[ids[rid]] = result
        step += 1
        assert step < 1000, "the queue stopped making progress"
    return [results[i] for i in range(len(requests))], most_waiting


def greedy_case(model, requests=GREEDY_REQUESTS):
    """The requests as submit kwargs (EOS ids taken from each prompt's own base continuation) and the
    base model's greedy outputs, on the model's device."""
    subs, refs = [], []
    for n, (L, max_new, at, eos_at) in enumerate(requests):
        ids = prompt(L, seed=n).to(model.device)
        eos = None if eos_at is None else int(base_greedy(model, ids, max_new)[0, L + eos_at])
        subs.append(dict(input_ids=ids, max_new_tokens=max_new, eos_token_id=eos, at=at))
        refs.append(base_greedy(model, ids, max_new, eos_token_id=eos))
    return subs, refs


def roll_start(op, arg: int):
    """A broken op: each slot reads the next slot's start (its positional argument `arg`)."""

    def broken(*args, **kwargs):
        args = list(args)
        args[arg] = args[arg].roll(1)
        return op(*args, **kwargs)

    return staticmethod(broken)


BROKEN_TORCH = {
    "verify_reads_next_slots_length": ("verify_attention", 3),
    "rope_at_next_slots_position": ("qkv_norm_rope", 7),
}


@pytest.mark.parametrize("broken", [None, *BROKEN_TORCH])
@pytest.mark.parametrize("block_size", [1, 4, 8])
def test_greedy_batch_equals_base(make_model, monkeypatch, block_size, broken):
    model = make_model(seed=block_size)
    subs, refs = greedy_case(model)
    if broken is not None:
        name, arg = BROKEN_TORCH[broken]
        monkeypatch.setattr(TorchOps, name, roll_start(getattr(TorchOps, name), arg))
    engine = OrthrusEngine(model, S, max_batch_size=3)
    server = Server(engine, block_size)
    results, most_waiting = serve(server, subs)
    exact = [torch.equal(out.sequences, ref) for out, ref in zip(results, refs)]
    if broken is not None:
        assert not all(exact), f"{broken} went unnoticed"
        return
    assert all(exact), exact
    assert most_waiting >= 2, "more requests than slots: some must wait"
    # Server.stats: every request was admitted once, and decoded in the iterations read back for it plus at most
    # the IN_FLIGHT launched after it was done.
    stats, read = server.stats.summary(), sum(len(out.accepted) for out in results)
    assert stats["prefills"] == len(subs) and stats["admit_seconds"] > 0
    assert read <= stats["busy_slot_iterations"] <= read + IN_FLIGHT * len(subs)
    assert 0 < stats["slot_occupancy"] <= 1 and set(stats["iterations_per_bucket"]) <= {1, 2, 3}
    assert sum(out.finished_by_eos for out in results) == 3
    for out in results:
        assert sum(out.emitted) + 1 == out.num_new_tokens
        assert out.ar_forwards == len(out.accepted) + 1
    if block_size > 1:
        assert sum(sum(out.accepted) for out in results) > 0, "no draft accepted: acceptance went untested"


@pytest.mark.parametrize("broken", [False, True])
def test_graph_prefill_equals_base(make_model, monkeypatch, broken):
    """graph_prefill: each prompt is prefilled chunk by chunk in the scratch slot (eagerly here; on a GPU through
    graphs: test_cuda_graph_serving_greedy_equals_base) and its rows copied to the request's slot; every output is
    the base model's (chunks of 16 tokens here, so the 20- and 33-token prompts take 2 and 3). Broken: the copy
    leaves out row 0 (the slot keeps what it held there)."""
    monkeypatch.setattr(models.engine, "PREFILL_CHUNK", 16)
    if broken:

        def copy_but_row_0(cache, src, dst, rows):
            cache.kv[:, :, dst, :, 1:rows].copy_(cache.kv[:, :, src, :, 1:rows])

        monkeypatch.setattr(StaticKVCache, "copy_rows", copy_but_row_0)
    model = make_model(seed=3)
    subs, refs = greedy_case(model)
    engine = OrthrusEngine(model, S, max_batch_size=3, graph_prefill=True)
    assert engine.cache.slots == 4
    results, _ = serve(Server(engine, 4), subs)
    exact = [torch.equal(out.sequences, ref) for out, ref in zip(results, refs)]
    assert all(exact) != broken, exact


def test_warm_up_builds_every_prefill_chunk_length(make_model, monkeypatch):
    """warm_up builds (on CUDA: captures) the graph_prefill layers of exactly the chunk lengths prompts pad to,
    so prefilling a prompt of any length a request can have builds nothing while a clock runs. With chunks of
    16 in slots of 40 rows, a prompt's third chunk has room for 8 rows only: it pads to 8, not 16."""
    monkeypatch.setattr(models.engine, "PREFILL_CHUNK", 16)
    K, rows = 4, 40
    engine = OrthrusEngine(make_model(seed=14), rows, graph_prefill=True)
    engine.warm_up(K)
    warmed = set(engine._prefill._fns)  # the lengths built (without CUDA graphs the build records them too)
    used = []
    build = engine._prefill.build
    monkeypatch.setattr(engine._prefill, "build", lambda T: used.append(T) or build(T))
    for L in range(1, rows - K + 1):
        engine.prefill(prompt(L, seed=L)[0])
    assert set(engine._prefill._fns) == warmed, "a prefill built a chunk length warm_up left out"
    assert set(used) == warmed == {8, 16}


@pytest.mark.parametrize("broken", [False, True])
def test_captures_put_back_what_they_change(make_model, monkeypatch, broken):
    """`_capture` runs the steps it captures for real (warm-ups, capture) at start 0 of its slots and puts back
    their start, last, rng and cache rows. Here on the CPU, torch.cuda's graph calls stubbed so that a capture
    runs its steps eagerly and its graphs are then left out (the steps run eagerly): the steps of bucket 3 are
    captured after three prompts are prefilled, and the prefill graph of 16-token chunks in the middle of a
    40-token prompt (chunks of 32); every output is still the base model's. Broken: the cache rows are not put
    back."""

    class Stream:
        def wait_stream(self, other):
            pass

    for name, stub in (("graph_pool_handle", lambda: None), ("Stream", Stream), ("current_stream", Stream),
                       ("stream", lambda s: contextlib.nullcontext()), ("CUDAGraph", lambda: None),
                       ("graph", lambda g, pool: contextlib.nullcontext())):  # fmt: skip
        monkeypatch.setattr(torch.cuda, name, stub)
    capture = models.engine._capture

    def eager_capture(e, fns, outputs, slots, cache_rows):
        capture(e, fns, outputs, slots, 0 if broken else cache_rows)
        return {}

    monkeypatch.setattr(models.engine, "_capture", eager_capture)
    monkeypatch.setattr(models.engine, "PREFILL_CHUNK", 32)
    model = make_model(seed=18)
    subs, refs = greedy_case(model, [(40, 5, 0, None), (5, 9, 0, None), (12, 6, 0, None), (3, 7, 2, None)])
    engine = OrthrusEngine(model, S, max_batch_size=3, graph_prefill=True)
    engine.cuda_graphs = True  # as on a GPU: steps and prefill chunk lengths are captured when first needed
    results, _ = serve(Server(engine, 4), subs)
    exact = [torch.equal(out.sequences, ref) for out, ref in zip(results, refs)]
    assert all(exact) != broken, exact


def test_triton_batch_equals_base(make_model, monkeypatch):
    """The fast path (compiled on a GPU, interpreted off it): ragged Triton attention and per-slot RoPE in
    one pass; broken, every slot reads slot 0's length (eager launches, so the broken length reaches them)."""
    model = make_model(seed=2).to(DEVICE)
    subs, refs = greedy_case(model, [(5, 7, 0, None), (17, 6, 0, 2), (3, 7, 1, None)])
    engine = OrthrusEngine(model, 48, backend="triton", cuda_graphs=False, max_batch_size=2)
    results, _ = serve(Server(engine, 4), subs)
    assert all(torch.equal(out.sequences, ref) for out, ref in zip(results, refs))

    check = kernels.attention._check_length
    monkeypatch.setattr(kernels.attention, "_check_length", lambda *a: check(*a)[:2] + (0,))
    results, _ = serve(Server(engine, 4), subs)
    assert not all(torch.equal(out.sequences, ref) for out, ref in zip(results, refs)), "a shared length went unnoticed"


@pytest.mark.parametrize(
    "backend,batch,swapped",
    [("torch", 1, False), ("torch", 3, False), ("torch", 3, True), ("triton", 1, False), ("triton", 3, False)],
)
def test_fused_gate_up_equals_base(make_model, monkeypatch, backend, batch, swapped):
    """fuse_gate_up: greedy output is the base model's (as the unfused engine's is: the tests above), at batch 1
    and with 3 slots, on the PyTorch path and the Triton path (compiled on a GPU, interpreted off it). Off CUDA
    both run one product against the fused matrix and SiLU * up on the halves of its output (the Triton kernel
    on strided halves); the skinny kernel reading the halves is tests/test_kernels_matmul.py's. Broken: the
    engine's fused matrix holds [up; gate]."""
    model = make_model(seed=4).to(DEVICE)
    requests = GREEDY_REQUESTS if backend == "torch" else [(33, 6, 0, None), (5, 7, 0, 2)]
    subs, refs = greedy_case(model, requests)
    if swapped:
        fuse = models.engine._fuse_gate_up
        monkeypatch.setattr(models.engine, "_fuse_gate_up", lambda mlp: torch.cat(fuse(mlp).chunk(2)[::-1]))
    kw = dict(backend=backend, cuda_graphs=False, max_batch_size=batch, fuse_gate_up=True)
    engine = OrthrusEngine(model, S if backend == "torch" else 48, **kw)
    results, _ = serve(Server(engine, 4), subs)
    exact = [torch.equal(out.sequences, ref) for out, ref in zip(results, refs)]
    assert all(exact) != swapped, exact


@pytest.mark.parametrize("copied", [False, True])
def test_fused_gate_up_shares_the_models_weights(make_model, monkeypatch, copied):
    """fuse_gate_up: each layer's gate and up weights become the halves of one [gate; up] matrix, shared with
    the model, whose own forward stays bit for bit what it was (fp32); a second engine finds the halves already
    in one matrix and moves nothing. Broken: the engine's fused matrix is a copy of gate and up."""
    model = make_model(seed=4).to(DEVICE)
    ids = prompt(40, seed=9).to(DEVICE)
    with torch.no_grad():
        before = model(ids).logits
    if copied:
        monkeypatch.setattr(
            models.engine, "_fuse_gate_up", lambda mlp: torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])
        )
    kw = dict(backend="torch", cuda_graphs=False, fuse_gate_up=True)
    engine = OrthrusEngine(model, 48, **kw)
    mlp, fused = model.model.layers[1].mlp, engine.layers[1].gate_up
    half = fused.shape[0] // 2
    assert engine.layers[1].gate is mlp.gate_proj.weight and fused.shape == (2 * half, mlp.gate_proj.in_features)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, before)
    again = OrthrusEngine(model, 48, **kw)
    shared = [
        mlp.gate_proj.weight.data_ptr() == fused.data_ptr(),
        mlp.up_proj.weight.data_ptr() == fused[half:].data_ptr(),
        again.layers[1].gate_up.data_ptr() == fused.data_ptr(),
    ]
    assert shared == [not copied] * 3, shared


SAMPLED_REQUESTS = [
    (SamplingParams(1.0), 4, 0),  # (params, prompt length, step at which it is submitted)
    (SamplingParams(0.7, 8, 0.9), 11, 0),
    (SamplingParams(), 6, 1),
    (SamplingParams(1.3, 0, 0.8), 2, 1),
    (SamplingParams(1.0), 9, 4),
]


@pytest.mark.parametrize("broken", [False, True])
@pytest.mark.parametrize("drafts", ["sampled", "greedy"])
def test_sampled_batch_equals_alone(make_model, monkeypatch, drafts, broken):
    """Per-request parameters and seeds in one batch: each request draws what it draws alone. Broken:
    every slot samples with slot 0's generator row."""
    model = make_model(seed=5)
    subs = [
        dict(input_ids=prompt(L, seed=10 + n), max_new_tokens=14, sampling=p, seed=100 + n, at=at)
        for n, (p, L, at) in enumerate(SAMPLED_REQUESTS)
    ]
    alone = [serve(Server(OrthrusEngine(model, S), 4, drafts), [s])[0][0] for s in subs]
    engine = OrthrusEngine(model, S, max_batch_size=3)
    if broken:
        for name, arg in (("sample_rows", 3), ("accept", 6)):
            op = getattr(kernels.sample, name)

            def shared_row(*args, op=op, arg=arg, **kwargs):
                args = list(args)
                args[arg] = engine.rng[0]
                return op(*args, **kwargs)

            monkeypatch.setattr(kernels.sample, name, shared_row)
    batched, _ = serve(Server(engine, 4, drafts), subs)
    same = [(a.sequences.tolist(), a.accepted) == (b.sequences.tolist(), b.accepted) for a, b in zip(alone, batched)]
    if broken:
        assert not all(same), "a shared generator row went unnoticed"
        return
    assert all(same), same
    assert sum(sum(a.accepted) for a in alone) > 0, "no draft accepted: acceptance went untested"


def test_triton_sampled_batch_equals_torch_alone(make_model):
    """Per-slot sampling kernels (compiled on a GPU, interpreted off it) in a batch draw what the PyTorch path
    draws alone on the same device."""
    model = make_model(seed=6).to(DEVICE)
    subs = [
        dict(input_ids=prompt(L, seed=20 + L).to(DEVICE), max_new_tokens=6, sampling=p, seed=30 + L, at=at)
        for L, p, at in ((4, SamplingParams(1.0), 0), (7, SamplingParams(0.7, 8, 0.9), 0), (2, SamplingParams(), 1))
    ]
    alone = [serve(Server(OrthrusEngine(model, 32, backend="torch", cuda_graphs=False), 4), [s])[0][0] for s in subs]
    engine = OrthrusEngine(model, 32, backend="triton", cuda_graphs=False, max_batch_size=2)
    batched, _ = serve(Server(engine, 4), subs)
    assert [(r.sequences.tolist(), r.accepted) for r in batched] == [(r.sequences.tolist(), r.accepted) for r in alone]


@pytest.mark.parametrize("broken", [False, True])
def test_first_token_copy_is_waited_for(make_model, monkeypatch, broken):
    """A request's first token is copied to the host without blocking; when no later iteration is read back
    (a one-token request joining while the last iterations run, with nothing else left to decode), the host
    must wait for that copy itself, and the request still finishes. Here a copy lands only when waited for
    (on CUDA it may still be in flight); broken, the wait does nothing and the requests' tokens are garbage."""
    copies = []

    class PendingCopy:
        def __init__(self, host, src):
            self.host, self.src = host, src.clone()

        def synchronize(self):
            if not broken:
                self.host.copy_(self.src)

    def pending_copy(reader, src):
        host = torch.full(src.shape, -1, dtype=src.dtype)
        copies.append(PendingCopy(host, src))
        in_flight.append(len(reader))
        return host, copies[-1]

    in_flight = []  # iterations in flight at each copy
    monkeypatch.setattr(_ReadBack, "copy", pending_copy)
    model = make_model(seed=12)
    subs, refs = greedy_case(model, [(5, 3, 0, None), (4, 1, 1, None)])
    results, _ = serve(Server(OrthrusEngine(model, S, max_batch_size=2), 4), subs)
    assert any(in_flight), "no first token was copied while iterations were in flight: the case went untested"
    exact = [torch.equal(out.sequences, ref) for out, ref in zip(results, refs)]
    assert all(exact) != broken, exact


def test_admissions_into_an_idle_server_read_back_once(make_model, monkeypatch):
    """Requests filling an idle server's slots have their prefills launched one after another and their first
    tokens read back together: one copy and one wait, not a blocking read per request between its prefill and
    the next one's. A request that ends at its first token frees its slot for the next waiting one in the
    same step (a second round: one more copy and wait)."""
    copies, waits = [], []
    copy = _ReadBack.copy

    class Waited:
        def __init__(self, event):
            self.event = event

        def synchronize(self):
            waits.append(1)
            if self.event is not None:
                self.event.synchronize()

    def counted_copy(reader, src):
        copies.append(src.numel())
        host, event = copy(reader, src)
        return host, Waited(event)

    monkeypatch.setattr(_ReadBack, "copy", counted_copy)
    model = make_model(seed=15)
    subs, refs = greedy_case(model, [(5, 6, 0, None), (9, 1, 0, None), (2, 7, 0, None), (4, 5, 0, None)])
    server = Server(OrthrusEngine(model, S, max_batch_size=3), 4)
    ids = {server.submit(**{k: v for k, v in sub.items() if k != "at"}): i for i, sub in enumerate(subs)}
    results = dict(server.step())
    assert (copies, waits, len(server.waiting), server.stats.prefills) == ([3, 1], [1, 1], 0, 4)
    while server.busy:
        results.update(server.step())
    assert all(torch.equal(results[rid].sequences, refs[i]) for rid, i in ids.items())


def test_one_token_request_at_the_end_of_a_slot(make_model):
    """A one-token request whose prompt fills its slot but K - 1 rows (allowed: it needs no iteration)
    joins while iterations are in flight: its slot decodes on in the next iterations and must write
    inside its own rows (the PyTorch path raises on a row past the slot; Triton would write the next
    slot's first row). Its first token, and the other request's output, are the base model's."""
    model = make_model(seed=13)
    K, rows = 4, 32
    subs, refs = greedy_case(model, [(5, 10, 0, None), (rows - K + 1, 1, 1, None), (3, 6, 2, None)])
    results, _ = serve(Server(OrthrusEngine(model, rows, max_batch_size=2), K), subs)
    assert all(torch.equal(out.sequences, ref) for out, ref in zip(results, refs))


def test_streamers_per_request(make_model):
    model = make_model(seed=8)
    subs, _ = greedy_case(model, [(3, 9, 0, None), (7, 5, 0, None), (2, 8, 1, None)])
    streamers = [RecordingStreamer() for _ in subs]
    for sub, streamer in zip(subs, streamers):
        sub["streamer"] = streamer
    results, _ = serve(Server(OrthrusEngine(model, S, max_batch_size=2), 4), subs)
    for sub, out, s in zip(subs, results, streamers):
        assert s.ended and s.chunks[0] == sub["input_ids"][0].tolist()
        assert sum(s.chunks[1:], []) == out.new_tokens.tolist()


def test_generate_on_a_batched_engine(make_model):
    """`generate` (one request) on an engine with many slots, after a batched run: the base model's output."""
    model = make_model(seed=9)
    engine = OrthrusEngine(model, S, max_batch_size=4)
    subs, _ = greedy_case(model, GREEDY_REQUESTS[:4])
    serve(Server(engine, 4), subs)
    ids = prompt(6, seed=40)
    assert torch.equal(engine.generate(ids, 15, block_size=4).sequences, base_greedy(model, ids, 15))


@pytest.mark.parametrize("broken", [False, True])
@pytest.mark.parametrize("kernel", ["draft", "verify", "verify_per_position"])
def test_ragged_attention_kernels_equal_one_slot_calls(monkeypatch, kernel, broken):
    """Triton draft/verify attention over slots of different lengths = each slot's own batch-1 call, bitwise,
    per kernel (draft, verify, per_position verify).

    With an explicit num_splits (2: the split + combine path, also off the GPU, where one split is the
    default): the default depends on the batch size on a GPU (one wave of programs), so only a fixed split
    count makes the batched and one-slot calls tile alike. per_position verify is batch-invariant with the
    default splits too, by design, so it is also compared that way. Broken: every slot reads slot 0's length."""
    g = torch.Generator().manual_seed(0)
    B, H, Hkv, K, D, S_max = 3, 4, 2, 4, 16, 80

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(DEVICE)

    q, k_cache, v_cache = randn(B, H, K, D), randn(B, Hkv, S_max, D), randn(B, Hkv, S_max, D)
    start = torch.tensor([70, 3, 41], device=DEVICE)
    if broken:
        check = kernels.attention._check_length
        monkeypatch.setattr(kernels.attention, "_check_length", lambda *a: check(*a)[:2] + (0,))
    if kernel == "draft":
        slots = (q, k_cache, v_cache, start, randn(B, Hkv, K, D), randn(B, Hkv, K, D))
        attention, calls = kernels.attention.diffusion_attention, [dict(num_splits=2)]
    else:
        per_position = kernel == "verify_per_position"
        slots, attention = (q, k_cache, v_cache, start), kernels.attention.verify_attention
        calls = [dict(num_splits=s, per_position=per_position) for s in ([2, None] if per_position else [2])]
    exact = []
    for kw in calls:
        batched = attention(*slots, 0.25, **kw)
        exact += [
            torch.equal(batched[b : b + 1], attention(*(t[b : b + 1] for t in slots), 0.25, **kw)) for b in range(B)
        ]
    assert all(exact) != broken, exact


def test_clear_errors(make_model):
    model = make_model()
    engine = OrthrusEngine(model, 32, max_batch_size=2, block_sizes=(4,))
    server = Server(engine, 4)
    with pytest.raises(ValueError, match="max_seq_len=32 per slot"):
        server.submit(torch.zeros(1, 10, dtype=torch.long), 21)  # a request longer than a slot
    assert not server.busy, "a refused request must leave nothing queued"
    with pytest.raises(ValueError, match=r"built for block sizes \(4,\)"):
        Server(engine, 8)
    with pytest.raises(ValueError, match="max_batch_size=2"):
        engine.steps(4, 3)
    with pytest.raises(ValueError, match="max_batch_size=0"):
        OrthrusEngine(model, 32, max_batch_size=0)
    with pytest.raises(ValueError, match="drafts"):
        Server(engine, 4, drafts="beam")
    with pytest.raises(ValueError, match="shape"):
        server.submit(torch.zeros(2, 3, dtype=torch.long), 4)


@pytest.mark.parametrize("sampling", [SamplingParams(), SamplingParams(0.8, 10)], ids=str)
def test_eval_serves_prompt_sets_with_one_by_one_outputs(make_model, sampling):
    """eval.runner with a batched EngineDecode (evaluation's default) decodes a prompt set through the queue
    with the outputs of one call per prompt (same seeds), and labels its rows with the batch size."""
    model = make_model(seed=11)
    prompts = [prompt(L, seed=50 + L)[0].tolist() for L in (3, 9, 1, 14, 6)]
    kw = dict(block_size=4, max_new_tokens=10, sampling=sampling, seed=7, progress=False)
    one_by_one = decode_prompts(model, prompts, decode_fn=EngineDecode(S), **kw)
    batched = decode_prompts(model, prompts, decode_fn=EngineDecode(S, batch_size=2), **kw)
    assert [r.sequences.tolist() for r in batched.results] == [r.sequences.tolist() for r in one_by_one.results]
    assert batched.batch_size == 2 and batched.wall_seconds > 0 and one_by_one.wall_seconds is None
    del kw["block_size"]
    engine = EngineDecode(S, batch_size=4).engine(model)
    built = []  # sampling steps built, at each reading of the clock (the first one starts it)

    def now() -> float:
        built.append(sum(len(steps._samplers) for steps in engine._steps.values()))
        return 0.0

    serve_prompts(
        engine, prompts, 4, 10, sampling=sampling, progress=False, clock=SimpleNamespace(now=now, host_now=now)
    )
    assert built[0] == built[-1], "sampling steps were built (on CUDA: captured) while the clock ran"
    rows, _ = measure_block_sizes(model, prompts, [1, 4], decode_fn=EngineDecode(S, batch_size=2), **kw)
    assert [r["batch_size"] for r in rows] == [2, 2] and rows[0]["speedup"] == 1.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@torch.no_grad()
def test_batch_invariant_verify_independent_of_batch(make_model, dtype):
    """batch_invariant: each slot's verify logits in a pass over 3 ragged slots are bitwise those of the
    same block alone at batch 1 (so bf16 outputs do not depend on the batch size). GPU only: Triton's
    interpreter multiplies tiles with numpy, whose BLAS rounds a row differently by its position in the
    tile (rows 6-11 of 18 differ from the same rows alone), which a GPU's MMA does not."""
    device = "cuda"
    model = make_model(seed=23).to(device, dtype)
    kw = dict(backend="triton", cuda_graphs=device == "cuda", batch_invariant=True)
    batched = OrthrusEngine(model, 64, max_batch_size=3, **kw)
    single = OrthrusEngine(model, 64, **kw)
    cases = [(prompt(L, seed=L).to(device)[0], prompt(6, seed=L + 1).to(device)[0]) for L in (11, 3, 30)]
    steps = batched.steps(6, 3)
    for slot, (ids, tokens) in enumerate(cases):
        batched.prefill(ids, slot)
        batched.last[slot] = tokens[0]
        steps.block[slot, 1:].copy_(tokens[1:])
    logits = steps.verify().view(3, 6, -1).clone()
    for slot, (ids, tokens) in enumerate(cases):
        single.prefill(ids)
        single.last.fill_(int(tokens[0]))
        alone = single.steps(6)
        alone.block[0, 1:].copy_(tokens[1:])
        assert torch.equal(alone.verify(), logits[slot])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("graph_prefill", [False, True], ids=["eager-prefill", "graph-prefill"])
@pytest.mark.parametrize("block_sizes", [None, (1, 4)], ids=["captured-while-serving", "captured-up-front"])
@pytest.mark.parametrize("block_size", [1, 4])
def test_cuda_graph_serving_greedy_equals_base(make_model, monkeypatch, block_sizes, block_size, graph_prefill):
    """The batched engine as it runs on a GPU: compiled Triton, a CUDA graph per (K, batch bucket) (with
    block_sizes None captured while iterations are in flight), two iterations in flight read back through
    pinned memory, requests admitted between them (one filling its slot but K - 1 rows), EOS at different
    iterations: every fp32 greedy output is the base model's. Then a one-token request joining while the
    last iterations run, its first token read back once nothing is in flight (a copy still landing).
    graph_prefill: prompts prefilled through captured graphs in chunks of 32 (the first prompt's second
    chunk, 8 tokens, is the first of its length: its graph is captured mid-prompt when block_sizes is None)."""
    monkeypatch.setattr(models.engine, "PREFILL_CHUNK", 32)
    model = make_model(seed=40 + block_size)
    first = [(40, 5, 0, None)] if graph_prefill else []
    cases = [greedy_case(model, first + GREEDY_REQUESTS + [(S - block_size + 1, 1, 4, None)])]
    cases.append(greedy_case(model, [(5, 3, 0, None), (4, 1, 1, None)]))
    engine = OrthrusEngine(model.cuda(), S, max_batch_size=3, block_sizes=block_sizes, graph_prefill=graph_prefill)
    assert engine.backend == "triton" and engine.cuda_graphs
    for subs, refs in cases:
        results, _ = serve(Server(engine, block_size), subs)
        exact = [torch.equal(out.sequences, ref) for out, ref in zip(results, refs)]
        assert all(exact), exact


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("drafts", ["sampled", "greedy"])
def test_cuda_graph_serving_sampled_equals_alone(make_model, drafts):
    """Sampled requests with their own parameters in one captured batch (a `_Sampler` graph per setting,
    captured while iterations are in flight) draw what each draws alone at batch 1. batch_invariant, so
    the logits are bitwise the same at every batch size and only the batching is tested."""
    model = make_model(seed=5).cuda()
    kw = dict(backend="triton", cuda_graphs=True, batch_invariant=True)
    subs = [
        dict(input_ids=prompt(L, seed=10 + n), max_new_tokens=14, sampling=p, seed=100 + n, at=at)
        for n, (p, L, at) in enumerate(SAMPLED_REQUESTS)
    ]
    single = OrthrusEngine(model, S, **kw)
    alone = [serve(Server(single, 4, drafts), [s])[0][0] for s in subs]
    batched, _ = serve(Server(OrthrusEngine(model, S, max_batch_size=3, **kw), 4, drafts), subs)
    same = [(a.sequences.tolist(), a.accepted) == (b.sequences.tolist(), b.accepted) for a, b in zip(alone, batched)]
    assert all(same), same
