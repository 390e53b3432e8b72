"""The fast Orthrus decoding engine: static KV cache, a lean Qwen3 forward, CUDA graphs.

Same algorithm as the reference loop in `models/generate.py` (draft a block with the diffusion
view, verify it with the AR view, keep the longest agreeing prefix plus one AR token), built so
that one iteration costs about two reads of the weights:

* One preallocated KV cache, shared by both views, with a slot of `max_seq_len` rows per concurrent
  sequence (`max_batch_size` slots). Each slot's number of valid rows (`start`) and last emitted
  token (`last`) live in device tensors: the verify pass writes a slot's block at its rows
  start..start+K-1, and "cropping" to the accepted length is `start += n + 1`. Rows past `start`
  are stale and are overwritten before anything reads them.
* The engine's own forward over the model's weight tensors (no copies, unless `fuse_qkv`), with
  fused elementwise kernels and the `kernels/` decode attention (`models/engine_ops.py`), instead
  of `transformers`' per-layer Python and mask building.
* An iteration runs B slots in one draft and one verify pass (B * K token rows; each slot attends to
  its own length). Each step (draft pass, verify pass, acceptance) is captured once per block size
  K and batch-size bucket B as a CUDA graph and replayed. Acceptance and the bonus token are
  computed on the device, so an iteration reads back one small tensor: per slot the accepted length
  and the emitted tokens (`_Steps.packed`).

* Matrix products go through `kernels.matmul.Matmul`: on CUDA, per weight shape and row tile, the
  fastest of cuBLAS and a Triton kernel built to stream weights at decode shapes (64-row tiles for batched
  passes of up to `matmul_triton_rows` rows); gate and up are one kernel with SiLU * up in its epilogue.
* On Hopper and newer, every Triton kernel is launched with Programmatic Dependent Launch
  (`kernels/pdl.py`): a pass is ~290 short kernels, and PDL lets each one launch and start reading
  its weights while the kernel before it finishes, instead of idling between them.

K = 1 is plain AR decoding on the same code (verify + accept, no draft): the baseline that
speedups compare against. Output is token-for-token the base model's greedy output in fp32
(tests/test_engine.py). In bf16 the verify pass runs matrix products over K rows where AR decoding
runs them over one, and different kernels round differently, which can flip a near-tie argmax.
`batch_invariant=True` removes that: every op computes a token's row the same way whatever the
number of rows (matrix products with one config per weight shape, verify attention per position),
so bf16 Orthrus greedy output equals the engine's own bf16 AR output bit for bit
(tests/test_engine_triton.py; scripts/bench_decode.py measures both modes and the cost).

Sampling runs on the device too (`kernels/sample.py`: the transform of `models/sampling.py`, drafts
sampled from the diffusion view or greedy, speculative rejection sampling with a counter-based
random generator seeded per request), captured in graphs beside the passes, so a sampled
iteration also reads back one small tensor.

The host loop is `models.serving.Server`, a request queue with continuous batching: requests join
free slots between iterations and leave when done, two iterations in flight, EOS and max_new_tokens
applied on the host one iteration late. `generate` is one request through it.
"""

import torch
import torch.nn.functional as F

import kernels.pdl
import kernels.sample
from kernels.matmul import DEFAULT_TRITON_ROWS, Matmul
from models.engine_ops import TorchOps, TritonOps
from models.generate import GenerationResult
from models.orthrus import OrthrusForCausalLM
from models.sampling import SamplingParams
from models.serving import DRAFT_MODES, Server, request_seed

__all__ = ["DRAFT_MODES", "OrthrusEngine", "StaticKVCache"]

PREFILL_CHUNK = 1024  # prompt tokens per prefill pass: bounds activation memory for long prompts


def prefill_chunk_length(n: int, room: int | None = None) -> int:
    """The length `OrthrusEngine.prefill` pads a chunk of n prompt tokens to: the next power of two (>= 16),
    at most the `room` rows left in the slot from the chunk's first row. The attention kernels (and
    `graph_prefill`'s graphs) are built per chunk length, so this bounds them to a handful instead of one
    per prompt length."""
    padded = max(16, 1 << (n - 1).bit_length())
    return padded if room is None else min(padded, room)


def prefill_chunk_lengths(max_seq_len: int) -> set[int]:
    """Every chunk length a prompt of 1..max_seq_len tokens is prefilled at (chunks of PREFILL_CHUNK tokens
    from rows 0, PREFILL_CHUNK, ..., each padded by `prefill_chunk_length`)."""
    return {
        prefill_chunk_length(n, max_seq_len - lo)
        for lo in range(0, max_seq_len, PREFILL_CHUNK)
        for n in range(1, min(PREFILL_CHUNK, max_seq_len - lo) + 1)
    }


class StaticKVCache:
    """All layers' keys and values in one zero-initialised buffer (L, 2, slots, Hkv, S_max, D): one slot of
    S_max rows per concurrent sequence.

    Zeros rather than uninitialised memory because the PyTorch attention path masks stale rows
    after computing on them (0 * NaN would be NaN); the Triton kernels never read past the valid length.
    """

    def __init__(self, num_layers, num_kv_heads, max_seq_len, head_dim, dtype, device, slots: int = 1):
        self.kv = torch.zeros(num_layers, 2, slots, num_kv_heads, max_seq_len, head_dim, dtype=dtype, device=device)

    @property
    def max_seq_len(self) -> int:
        return self.kv.shape[4]

    @property
    def slots(self) -> int:
        return self.kv.shape[2]

    def keys(self, layer: int) -> torch.Tensor:
        return self.kv[layer, 0]

    def values(self, layer: int) -> torch.Tensor:
        return self.kv[layer, 1]

    @property
    def nbytes(self) -> int:
        return self.kv.numel() * self.kv.element_size()

    def copy_rows(self, src: int, dst: int, rows: int) -> None:
        """Rows [0, rows) of every layer's keys and values, slot src -> slot dst (one copy, no host sync)."""
        self.kv[:, :, dst, :, :rows].copy_(self.kv[:, :, src, :, :rows])


class _AttnWeights:
    """One view's attention weights of one layer: q/k/v projections (one fused matrix, or three),
    q/k norms and the output projection."""

    def __init__(self, attn, view: str, fuse_qkv: bool):
        def w(name):
            return getattr(attn, name + view).weight

        self.qkv = (
            (torch.cat([w("q_proj"), w("k_proj"), w("v_proj")]),)
            if fuse_qkv
            else (w("q_proj"), w("k_proj"), w("v_proj"))
        )
        self.q_norm, self.k_norm, self.o = w("q_norm"), w("k_norm"), w("o_proj")


class _LayerWeights:
    def __init__(self, layer, fuse_qkv: bool, fuse_gate_up: bool):
        self.in_norm = layer.input_layernorm.weight
        self.post_norm = layer.post_attention_layernorm.weight
        self.ar = _AttnWeights(layer.self_attn, "", fuse_qkv)
        self.diff = _AttnWeights(layer.self_attn, "_diff", fuse_qkv)
        mlp = layer.mlp
        self.gate_up = _fuse_gate_up(mlp) if fuse_gate_up else None
        self.gate, self.up, self.down = mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight


def _fuse_gate_up(mlp) -> torch.Tensor:
    """One [gate; up] matrix (2I, H) that is the storage of the MLP's own gate_proj and up_proj weights: their
    `.data` become its two halves (views), so the model and the engine share one copy and the model's forward
    computes what it did (the Parameters stay the same objects). Where the two already lie back to back in one
    storage (an engine fused them before), the matrix is a view over them and nothing moves. The old storages
    are freed: CUDA graphs captured before on this model by an engine without `fuse_gate_up` would read freed
    memory, so build such engines after this one (they then run on the halves)."""
    gate, up = mlp.gate_proj.weight, mlp.up_proj.weight
    rows, cols = gate.shape
    if (
        up.shape == gate.shape
        and gate.is_contiguous()
        and up.is_contiguous()
        and gate.untyped_storage().data_ptr() == up.untyped_storage().data_ptr()
        and up.storage_offset() == gate.storage_offset() + gate.numel()
    ):
        return gate.new_empty(0).set_(gate.untyped_storage(), gate.storage_offset(), (2 * rows, cols), (cols, 1))
    fused = torch.cat([gate.detach(), up.detach()])
    gate.data, up.data = fused[:rows], fused[rows:]
    return fused


class OrthrusEngine:
    """Decoding engine for one `OrthrusForCausalLM`, for up to `max_batch_size` concurrent sequences.

    max_seq_len: cache rows per sequence (slot); a request needs prompt + max_new_tokens + K - 2 of them.
    max_batch_size: cache slots, the most sequences decoded at once (`models.serving.Server` queues the
      rest); each slot costs max_seq_len rows of KV cache (`cache.nbytes`).
    block_sizes: the block sizes K this engine serves, their steps built (and on CUDA captured) for
      every batch-size bucket up front (`warm_up`); another K is then a ValueError. None (default):
      any K, built on first use.
    backend: "triton" (fused kernels; CUDA, or CPU under TRITON_INTERPRET=1) or "torch" (PyTorch
      ops matching `transformers`); default "triton" on CUDA, "torch" elsewhere.
    cuda_graphs: capture each step as a CUDA graph (default: on CUDA).
    fuse_qkv: one [q; k; v] weight matrix per view and layer, a one-time copy of
      `fused_weight_bytes` (one matrix product instead of three small ones).
    fuse_gate_up: one [gate; up] weight matrix per layer, at no memory cost: the engine re-binds the
      model's own `mlp.gate_proj.weight` / `up_proj.weight` to the two halves of it (`_fuse_gate_up`), so
      the model's forward is unchanged and shares the weights. cuBLAS may then run gate and up as one
      product of twice the columns (fewer partial waves of output tiles at many rows; `Matmul` times it
      against the two products and keeps the faster). Off by default: measured 4% off the 8B iteration at
      B = 4, K = 16, 0-1% at B = 16, nothing at B = 1 (docs/engine.md), and it changes the caller's model.
    matmul: how matrix products run (`kernels.matmul.Matmul` modes): "auto" (default with the
      Triton backend on CUDA: per shape and row tile the fastest of cuBLAS and the Triton kernel's configs,
      timed on first use), "triton", or "torch" (cuBLAS / F.linear; the default elsewhere).
    matmul_triton_rows: the most rows at which "auto" and "triton" time the Triton kernel (`Matmul`
      triton_rows); default kernels.matmul.DEFAULT_TRITON_ROWS (64: its tiles won there on an H200, cuBLAS
      won every product of 128 and 256 rows; docs/engine.md), cuBLAS alone above.
    batch_invariant: every op computes a token's row independently of how many rows the pass has
      (Triton backend only; matrix products in the "invariant" mode, verify attention per position),
      so greedy Orthrus output equals the engine's K = 1 output bit for bit in any dtype.
    pdl: launch every Triton kernel with Programmatic Dependent Launch (`kernels/pdl.py`), so each
      kernel's launch and weight loads overlap the end of the previous one. Same results either way.
      Default (None): on with the Triton backend on a CUDA GPU of compute capability >= 9.0 (not in
      Triton's interpreter); True where that does not hold is a ValueError.
    graph_prefill: prefill through one extra cache slot (a scratch slot) with the layers captured as a
      CUDA graph per chunk length, then copy the prompt's rows to the request's slot (`_Prefill`): a
      graph replay and a copy instead of one eager launch per kernel (~13 per layer), which makes a small
      model's prefill cost host time (docs/engine.md, "Batched decoding: where the time goes"). Without
      CUDA graphs the same path runs eagerly. Same values either way; costs one slot of KV cache.
      Default (None): on with CUDA graphs (it lifted orthrus-small's batch-16 serving from 1.28x to 1.70x
      its AR baseline on an H200: results/engine_batch_h200_2026-12-01).
    """

    def __init__(
        self,
        model: OrthrusForCausalLM,
        max_seq_len: int,
        *,
        backend: str | None = None,
        cuda_graphs: bool | None = None,
        fuse_qkv: bool = False,
        fuse_gate_up: bool = False,
        matmul: str | None = None,
        matmul_triton_rows: int = DEFAULT_TRITON_ROWS,
        batch_invariant: bool = False,
        pdl: bool | None = None,
        max_batch_size: int = 1,
        block_sizes: tuple[int, ...] | None = None,
        graph_prefill: bool | None = None,
    ):
        config = model.config
        _check_supported(model)
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size={max_batch_size} must be >= 1")
        self.max_batch_size = max_batch_size
        self.block_sizes = None if block_sizes is None else tuple(sorted(set(block_sizes)))
        self.model, self.config = model, config
        self.device = model.model.embed_tokens.weight.device
        self.dtype = model.model.embed_tokens.weight.dtype
        backend = backend or ("triton" if self.device.type == "cuda" else "torch")
        if backend not in ("triton", "torch"):
            raise ValueError(f"backend={backend!r}: choose 'triton' or 'torch'")
        self.backend = backend
        self.ops = TritonOps if backend == "triton" else TorchOps
        if batch_invariant and (backend != "triton" or matmul not in (None, "invariant")):
            raise ValueError("batch_invariant=True needs backend='triton' and its own matmul mode ('invariant')")
        self.batch_invariant = batch_invariant
        self.pdl = _resolve_pdl(pdl, backend, self.device)
        if matmul is None:
            matmul = (
                "invariant"
                if batch_invariant
                else "auto"
                if backend == "triton" and self.device.type == "cuda"
                else "torch"
            )
        self.mm = Matmul(
            matmul,
            lambda gate, up: self.ops.silu_mul(gate, up, pdl=self.pdl),
            pdl=self.pdl,
            triton_rows=matmul_triton_rows,
        )
        self.cuda_graphs = self.device.type == "cuda" if cuda_graphs is None else cuda_graphs
        if self.cuda_graphs and self.device.type != "cuda":
            raise ValueError("cuda_graphs=True needs the model on a CUDA device")

        attn = model.model.layers[0].self_attn
        self.num_heads, self.num_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim, self.scale, self.eps = attn.head_dim, attn.scaling, config.rms_norm_eps
        with torch.no_grad():
            self.layers = [_LayerWeights(layer, fuse_qkv, fuse_gate_up) for layer in model.model.layers]
            self.fuse_gate_up = fuse_gate_up
            self.fused_weight_bytes = (
                sum(t.numel() * t.element_size() for lw in self.layers for v in (lw.ar, lw.diff) for t in v.qkv)
                if fuse_qkv
                else 0
            )
            self.embed, self.final_norm = model.model.embed_tokens.weight, model.model.norm.weight
            self.lm_head = model.lm_head.weight
            self.graph_prefill = self.cuda_graphs if graph_prefill is None else graph_prefill
            slots = max_batch_size + self.graph_prefill  # the scratch slot of `_Prefill` comes last
            _check_cache_fits(config, self.num_kv_heads, self.head_dim, max_seq_len, slots, self.dtype, self.device)
            self.cache = StaticKVCache(
                config.num_hidden_layers, self.num_kv_heads, max_seq_len, self.head_dim, self.dtype, self.device, slots
            )
            # RoPE tables from the model's own rotary module: the same values `transformers` uses.
            positions = torch.arange(max_seq_len, device=self.device)[None]
            cos, sin = model.model.rotary_emb(self.embed[:1], positions)
            self.cos, self.sin = cos[0].contiguous(), sin[0].contiguous()
            # Per slot: valid cache rows, last emitted token, [seed, iteration] of the sampler.
            self.start = torch.zeros(slots, dtype=torch.long, device=self.device)
            self.last = torch.zeros(slots, dtype=torch.long, device=self.device)
            self.rng = torch.zeros(slots, 2, dtype=torch.long, device=self.device)
        self._prefill = _Prefill(self, slots - 1) if self.graph_prefill else None
        self._steps: dict[tuple[int, int], _Steps] = {}
        for K in self.block_sizes or ():
            self.warm_up(K)

    @torch.no_grad()
    def warm_up(self, block_size: int, sampling: SamplingParams | None = None, drafts: str = "sampled") -> None:
        """Build (on CUDA, capture) the steps of block size K at every batch-size bucket; with a sampled
        `sampling`, also the sampling steps of a batch whose requests all sample with it (`Server`'s
        setting for such a batch), so that no capture is left for the first iterations that need one.
        With `graph_prefill`, also the prefill graph of every chunk length a prompt can pad to."""
        if self._prefill is not None:
            for T in sorted(prefill_chunk_lengths(self.cache.max_seq_len)):
                self._prefill.build(T)
        b = 1
        while True:
            steps = self.steps(block_size, b)
            if sampling is not None and not sampling.greedy:
                steps.sampler((sampling,) * b, drafts)
            if b >= self.max_batch_size:
                return
            b = self.batch_bucket(b + 1)

    # --- the forward ----------------------------------------------------------------------------

    def _logits(self, ids: torch.Tensor, mode: str, rows: slice, slots: slice) -> torch.Tensor:
        """One pass of the decoder over B blocks `ids` (B * T,), block b in cache slot slots.start + b at
        positions start[b]..start[b]+T-1 (ragged: each slot at its own length).

        mode "verify": the AR view; keys/values are written to the slot's cache rows start[b].. and each
        query sees its slot's cache up to itself. mode "draft": the diffusion view; its keys/values stay
        in a block buffer, and each query sees its slot's cache rows [0, start[b]) plus its whole block.
        Returns the logits of `rows` of every block, block after block.
        """
        x, residual = self._layers(ids, mode, slots)
        return self._head(x, residual, rows, slots.stop - slots.start)

    def _layers(self, ids: torch.Tensor, mode: str, slots: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder layers of `_logits`' pass: the last layer's output and residual stream, (B * T, hidden)."""
        start, ops, pdl = self.start[slots], self.ops, self.pdl
        B, draft = start.shape[0], mode == "draft"
        T = ids.shape[0] // B
        x = F.embedding(ids, self.embed)
        residual = None
        for i, lw in enumerate(self.layers):
            h, residual = ops.add_rms_norm(x, residual, lw.in_norm, self.eps, pdl=pdl)
            w = lw.diff if draft else lw.ar
            q, k, v = self._qkv(h, w)
            k_cache, v_cache = self.cache.keys(i)[slots], self.cache.values(i)[slots]
            if draft:
                k_dst = torch.empty(B, self.num_kv_heads, T, self.head_dim, dtype=self.dtype, device=self.device)
                v_dst = torch.empty_like(k_dst)
            else:
                k_dst, v_dst = k_cache, v_cache
            q = ops.qkv_norm_rope(
                q, k, v, w.q_norm, w.k_norm, self.cos, self.sin, start, k_dst, v_dst, not draft, self.eps, pdl=pdl
            )
            if draft:
                o = ops.diffusion_attention(q, k_cache, v_cache, start, k_dst, v_dst, self.scale, pdl=pdl)
            else:
                o = ops.verify_attention(
                    q, k_cache, v_cache, start, self.scale, per_position=self.batch_invariant, pdl=pdl
                )
            x = self.mm.linear(o.transpose(1, 2).reshape(B * T, -1), w.o)
            h, residual = ops.add_rms_norm(x, residual, lw.post_norm, self.eps, pdl=pdl)
            x = self.mm.linear(self.mm.gate_up(h, lw.gate, lw.up, lw.gate_up), lw.down)
        return x, residual

    def _head(self, x: torch.Tensor, residual: torch.Tensor, rows: slice, B: int) -> torch.Tensor:
        """Final norm and LM head over `rows` of each of the B blocks of `_layers`' output."""

        def pick(t):  # `rows` of every block, contiguous
            return t.view(B, t.shape[0] // B, -1)[:, rows].reshape(-1, t.shape[-1])

        h, _ = self.ops.add_rms_norm(pick(x), pick(residual), self.final_norm, self.eps, pdl=self.pdl)
        return self.mm.linear(h, self.lm_head)

    def _qkv(self, h, w: _AttnWeights):
        if len(w.qkv) == 3:
            return tuple(self.mm.linear(h, m) for m in w.qkv)
        qkv = self.mm.linear(h, w.qkv[0])
        nq, nkv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        return qkv[:, :nq], qkv[:, nq : nq + nkv], qkv[:, nq + nkv :]

    @torch.no_grad()
    def prefill(self, prompt: torch.Tensor, slot: int = 0) -> torch.Tensor:
        """Write the prompt (L,) into rows [0, L) of cache slot `slot`; returns the last position's
        logits (1, V) and leaves start[slot] = L. The other slots are untouched.

        Chunks of up to PREFILL_CHUNK tokens, each padded to `prefill_chunk_length`. Padding sits after
        the real tokens, so causal attention keeps it out of their results; the rows it writes past L are
        overwritten before anything reads them.
        With `graph_prefill` the chunks run in the scratch slot (`_Prefill`) and are then copied to `slot`.
        """
        L = prompt.shape[0]
        at = slot if self._prefill is None else self._prefill.slot
        for lo in range(0, L, PREFILL_CHUNK):
            chunk = prompt[lo : lo + PREFILL_CHUNK]
            n = chunk.shape[0]
            padded = prefill_chunk_length(n, self.cache.max_seq_len - lo)
            chunk = F.pad(chunk, (0, padded - n), value=self.config.mask_token_id)
            self.start[at].fill_(lo)
            if self._prefill is None:
                x, residual = self._layers(chunk, "verify", slice(at, at + 1))
            else:
                x, residual = self._prefill.layers(chunk)
        if self._prefill is not None:
            self.cache.copy_rows(at, slot, lo + padded)
        self.start[slot].fill_(L)
        return self._head(x, residual, slice(n - 1, n), 1)

    @torch.no_grad()
    def steps(self, block_size: int, batch: int = 1) -> "_Steps":
        """The iteration steps at block size K over cache slots [0, batch), built (and on CUDA,
        captured) on first use. Serving runs them at the batch-size buckets of `batch_bucket`."""
        key = (block_size, batch)
        if key not in self._steps:
            if block_size < 1:
                raise ValueError(f"block_size={block_size} must be >= 1 (1 = plain AR decoding)")
            if block_size > self.cache.max_seq_len:
                raise ValueError(f"block_size={block_size} exceeds max_seq_len={self.cache.max_seq_len}")
            if self.block_sizes is not None and block_size not in self.block_sizes:
                raise ValueError(
                    f"block_size={block_size}: this engine was built for block sizes {self.block_sizes} "
                    "(its graphs are captured up front); build it with this K in block_sizes"
                )
            if not 1 <= batch <= self.max_batch_size:
                raise ValueError(f"batch={batch} outside [1, max_batch_size={self.max_batch_size}]")
            self._steps[key] = _Steps(self, block_size, batch)
        return self._steps[key]

    def first_token(self, logits: torch.Tensor, params: SamplingParams, slot: int) -> torch.Tensor:
        """The prefill's token of slot `slot`: the argmax (greedy) or one draw from p with the slot's
        generator row (eager; once per request)."""
        if params.greedy:
            return logits.argmax(-1)
        stats = _stats(logits, params)
        return kernels.sample.sample_rows(
            logits, stats, params.temperature, self.rng[slot], kernels.sample.FIRST, **_kernel_kw(self)
        )

    def batch_bucket(self, n: int) -> int:
        """The smallest batch-size bucket (1, 2, 4, ..., max_batch_size) holding n slots: graphs are
        captured per bucket, not per batch size."""
        return min(1 << (n - 1).bit_length(), self.max_batch_size)

    # --- decoding -------------------------------------------------------------------------------

    @torch.inference_mode()
    def generate(
        self,
        input_ids: torch.LongTensor,
        max_new_tokens: int,
        *,
        block_size: int | None = None,
        generator: torch.Generator | None = None,
        drafts: str = "sampled",
        **request,
    ) -> GenerationResult:
        """Same contract as `models.generate.generate` (so evaluation can use either), on this engine:
        one request through a `models.serving.Server` of its own (cache slot 0).

        request: `Server.submit`'s sampling, eos_token_id, streamer, stop_strings, tokenizer.
        Sampling: the device generator's seed is one draw from `generator` (or torch's default
        generator), so a seeded generator reproduces a run. drafts: "sampled" (drafts drawn from the
        diffusion view's distribution q) or "greedy" (its argmax, q = one-hot); both are lossless.
        """
        server = Server(self, block_size, drafts)
        sampled = not request.get("sampling", SamplingParams()).greedy
        seed = request_seed(generator) if sampled else None
        server.submit(input_ids, max_new_tokens, seed=seed, **request)
        return next(iter(server))[1]


class _Prefill:
    """`graph_prefill`: the decoder layers over one prompt chunk in the scratch cache slot `slot`, at
    start[slot], captured (on CUDA with graphs) once per padded chunk length T from a static input of T
    ids. The kernels read the slot's cache at a fixed address and its start from the device, so one graph
    per T serves every request and chunk; `OrthrusEngine.prefill` copies the rows to the request's slot
    and runs the LM head on the last prompt row eagerly."""

    def __init__(self, engine: OrthrusEngine, slot: int):
        self.engine, self.slot = engine, slot
        self.inputs: dict[int, torch.Tensor] = {}  # per chunk length T: the static input of its graph
        self._graphs: dict[int, object] = {}
        self._outputs: dict[int, tuple] = {}
        self._fns: dict[int, object] = {}

    def layers(self, chunk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The layers over `chunk` (T ids) at start[slot]; built (and captured) on the first chunk of length T."""
        T = chunk.shape[0]
        self.build(T)
        self.inputs[T].copy_(chunk)
        return _run(T, self._fns, self._graphs, self._outputs)

    def build(self, T: int) -> None:
        e = self.engine
        if T in self._fns:
            return
        ids = self.inputs[T] = torch.full((T,), e.config.mask_token_id, dtype=torch.long, device=e.device)
        self._fns[T] = lambda: e._layers(ids, "verify", slice(self.slot, self.slot + 1))
        if e.cuda_graphs:  # mid-prompt too: `_capture` puts back the rows of the chunks prefilled so far
            self._graphs.update(_capture(e, {T: self._fns[T]}, self._outputs, slice(self.slot, self.slot + 1), T))


class _Steps:
    """The steps of one iteration at block size K over cache slots [0, B), on static buffers.

    draft():  diffusion pass over [last[b], MASK x (K-1)] per slot -> draft logits (B * (K-1), V);
              writes block[b] = [last[b], argmax drafts].
    verify(): AR pass over `block`, appending each slot's block to its cache -> logits (B * K, V).
    accept(): greedy acceptance on the device, per slot: n = longest prefix of drafts equal to the AR
              argmax; token = AR token n (the bonus); `finish`.
    finish(n, token): packed[b] = [n, drafts, ...] with token at n + 1 (so packed[b, 1:n+2] are the
              tokens emitted); start += n + 1; last = token. start is clamped to S_max - K: a slot's
              start only gets there once its request is past its end (requests are checked to fit;
              `Server` clamps a one-token request's start at its admission the same way), so a
              finished or free slot decoding on keeps writing inside its own rows.
    On CUDA with graphs each step is captured once (`_capture`) and replayed. Sampling adds the
    steps of a `_Sampler` per setting (`sampler()`).
    """

    def __init__(self, engine: OrthrusEngine, K: int, B: int):
        self.engine, self.K, self.B, self.slots = engine, K, B, slice(0, B)
        device = engine.device
        self.draft_in = torch.full((B, K), engine.config.mask_token_id, dtype=torch.long, device=device)
        self.block = torch.zeros(B, K, dtype=torch.long, device=device)
        self.packed = torch.zeros(B, K + 1, dtype=torch.long, device=device)
        fns = {"verify": self._verify, "accept": self._accept}
        if K > 1:
            fns = {"draft": self._draft, **fns}
        self._fns = fns
        self._outputs: dict[str, torch.Tensor] = {}
        self._graphs = _capture(engine, fns, self._outputs, self.slots, K) if engine.cuda_graphs else {}
        self._samplers: dict[tuple, _Sampler] = {}

    def _draft(self):
        e = self.engine
        self.draft_in[:, 0].copy_(e.last[self.slots])
        logits = e._logits(self.draft_in.view(-1), "draft", slice(0, self.K - 1), self.slots)
        self.block[:, 1:].copy_(logits.argmax(-1).view(self.B, -1))
        return logits

    def _verify(self):
        e = self.engine
        self.block[:, 0].copy_(e.last[self.slots])
        return e._logits(self.block.view(-1), "verify", slice(None), self.slots)

    def _accept(self):
        ar = self._outputs["verify"].argmax(-1).view(self.B, self.K)
        n = self.engine.ops.greedy_accept(self.block[:, 1:], ar, pdl=self.engine.pdl)
        return self.finish(n, ar.gather(1, n[:, None])[:, 0])

    def finish(self, n: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        e, packed = self.engine, self.packed
        packed[:, :1].copy_(n[:, None])
        packed[:, 1 : self.K].copy_(self.block[:, 1:])
        packed.scatter_(1, n[:, None] + 1, token[:, None])
        e.start[self.slots].add_(n + 1).clamp_(max=e.cache.max_seq_len - self.K)
        e.last[self.slots].copy_(token)
        return packed

    def sampler(self, params: tuple[SamplingParams, ...], drafts: str) -> "_Sampler":
        """The sampling steps for one setting (params: one per slot), built (and captured) on first use."""
        if (
            not isinstance(params, tuple)
            or len(params) != self.B
            or not all(isinstance(p, SamplingParams) for p in params)
        ):
            raise ValueError(
                f"params must be a tuple of {self.B} SamplingParams (one per slot of this batch-{self.B} step), "
                f"got {params!r}"
            )
        key = (params, drafts if self.K > 1 else "greedy")
        if key not in self._samplers:
            self._samplers[key] = _Sampler(self, params, key[1] == "sampled")
        return self._samplers[key]

    def _run(self, name: str) -> torch.Tensor:
        return _run(name, self._fns, self._graphs, self._outputs)

    def draft(self) -> torch.Tensor:
        return self._run("draft")

    def verify(self) -> torch.Tensor:
        return self._run("verify")

    def accept(self) -> torch.Tensor:
        return self._run("accept")


class _Sampler:
    """Speculative rejection sampling steps for one (K, B, sampling params per slot, draft mode), on
    the device. A slot with greedy params is accepted greedily; each sampled slot draws with its own
    parameters and its own generator row rng[b] = [seed, iteration] (the kernels of `kernels.sample`
    take one block and one setting, so they run slot by slot: B small launches per step).

    draft():  after the draft pass, per sampled slot: q = transform(draft logits); block[b, 1:] = one
              draw per row of q. (Greedy drafts skip it: the draft pass already wrote the argmax, and
              q = one-hot.)
    accept(): after the verify pass, per sampled slot: p = transform(verify logits); acceptance,
              residual / bonus token (`kernels.sample.accept`); then `_Steps.finish`, and every slot's
              iteration += 1.
    The parameters are constants of the captured graphs, hence one sampler per setting.
    """

    def __init__(self, steps: _Steps, params: tuple[SamplingParams, ...], sampled_drafts: bool):
        self.steps, self.params, self.sampled_drafts = steps, params, sampled_drafts
        e = steps.engine
        self.q_stats: dict[int, torch.Tensor] = {}
        fns = {"draft": self._draft, "accept": self._accept} if sampled_drafts else {"accept": self._accept}
        self._fns = fns
        self._outputs: dict[str, torch.Tensor] = {}
        self._graphs = _capture(e, fns, self._outputs, steps.slots, 0) if e.cuda_graphs else {}

    def _sampled(self):
        return [(b, p) for b, p in enumerate(self.params) if not p.greedy]

    def _draft(self):
        e, steps = self.steps.engine, self.steps
        logits = steps._outputs["draft"].view(steps.B, steps.K - 1, -1)
        for b, p in self._sampled():
            self.q_stats[b] = _stats(logits[b], p)
            draws = kernels.sample.sample_rows(
                logits[b], self.q_stats[b], p.temperature, e.rng[b], kernels.sample.DRAFT, **_kernel_kw(e)
            )
            steps.block[b, 1:].copy_(draws)
        return steps.block

    def _accept(self):
        e, steps = self.steps.engine, self.steps
        p_logits = steps._outputs["verify"].view(steps.B, steps.K, -1)
        q_logits = steps._outputs["draft"].view(steps.B, steps.K - 1, -1) if self.sampled_drafts else None
        ar = p_logits.argmax(-1)
        n = e.ops.greedy_accept(steps.block[:, 1:], ar, pdl=e.pdl)
        token = ar.gather(1, n[:, None])[:, 0]
        for b, p in self._sampled():
            n_b, token_b = kernels.sample.accept(
                p_logits[b],
                _stats(p_logits[b], p),
                None if q_logits is None else q_logits[b],
                self.q_stats.get(b) if self.sampled_drafts else None,
                steps.block[b, 1:],
                p.temperature,
                e.rng[b],
                **_kernel_kw(e),
            )
            n[b : b + 1].copy_(n_b)
            token[b : b + 1].copy_(token_b)
        packed = steps.finish(n, token)
        e.rng[steps.slots, 1].add_(1)
        return packed

    def draft(self) -> torch.Tensor:
        return _run("draft", self._fns, self._graphs, self._outputs)

    def accept(self) -> torch.Tensor:
        return _run("accept", self._fns, self._graphs, self._outputs)


def _stats(logits, params: SamplingParams):
    return kernels.sample.transform_stats(logits, params.temperature, params.top_k, params.top_p)


def _kernel_kw(e: OrthrusEngine) -> dict:
    return dict(use_triton=e.backend == "triton", pdl=e.pdl)


def _run(name, fns, graphs, outputs) -> torch.Tensor:
    if name in graphs:
        graphs[name].replay()
    else:
        outputs[name] = fns[name]()
    return outputs[name]


def _capture(e: OrthrusEngine, fns: dict, outputs: dict, slots: slice, cache_rows: int) -> dict:
    """Capture each step of `fns` (steps over cache slots `slots`) as a CUDA graph (after two warm-ups
    that compile the kernels); fills `outputs` with the steps' static outputs and returns the graphs.

    The warm-ups and the capture run the steps for real: they move start/last/rng of `slots` and write
    cache rows start..start+cache_rows-1 of those slots. They run at start 0 (inside the cache) and what
    they change is put back, so steps may be built after a prefill, or mid-prompt, without corrupting the
    prompts' rows; the other slots are not touched.
    """
    state = e.start[slots], e.last[slots], e.rng[slots], e.cache.kv[:, :, slots, :, :cache_rows]  # views
    saved = [t.clone() for t in state]
    e.start[slots].zero_()
    pool = torch.cuda.graph_pool_handle()
    side = torch.cuda.Stream()
    graphs = {}
    for name, fn in fns.items():
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # compile kernels, create library handles
                outputs[name] = fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            outputs[name] = fn()
        graphs[name] = graph
    for t, s in zip(state, saved):
        t.copy_(s)
    return graphs


def _resolve_pdl(pdl: bool | None, backend: str, device: torch.device) -> bool:
    """The engine's `pdl` option: None -> on wherever it can run; True where it cannot -> ValueError."""
    if backend != "triton":
        reason = "backend='torch' launches no Triton kernels"
    else:
        reason = kernels.pdl.pdl_unsupported(device)
    if pdl is None:
        return reason is None
    if pdl and reason is not None:
        raise ValueError(
            f"pdl=True needs the Triton backend on a CUDA GPU of compute capability >= 9.0, but {reason}. "
            "Pass pdl=False, or leave pdl=None to use it only where it is supported."
        )
    return bool(pdl)


def _check_cache_fits(config, kv_heads, head_dim, max_seq_len, slots, dtype, device) -> None:
    """On CUDA, a KV cache larger than the free device memory is a clear error before anything is allocated."""
    if device.type != "cuda":
        return
    need = config.num_hidden_layers * 2 * slots * kv_heads * max_seq_len * head_dim * dtype.itemsize
    free = torch.cuda.mem_get_info(device)[0]
    if need > free:
        raise ValueError(
            f"the KV cache of {slots} slots (max_batch_size, plus graph_prefill's scratch slot if on) x "
            f"max_seq_len={max_seq_len} rows needs {need / 1e9:.1f} GB but {device} has {free / 1e9:.1f} GB free: "
            "lower max_batch_size (evaluation: decode.batch_size) or max_seq_len"
        )


def _check_supported(model: OrthrusForCausalLM) -> None:
    """The engine implements Qwen3 as released: say clearly what else it does not cover."""
    c = model.config
    problems = []
    if getattr(c, "attention_bias", False):
        problems.append("attention_bias=True (Qwen3 has no attention biases)")
    if c.hidden_act != "silu":
        problems.append(f"hidden_act={c.hidden_act!r} (the engine's MLP is SwiGLU)")
    rope_type = (getattr(c, "rope_parameters", None) or {}).get("rope_type", "default")
    if rope_type in ("dynamic", "longrope"):
        problems.append(
            f"rope_type={rope_type!r} (its frequencies depend on the sequence length; the engine "
            "precomputes one RoPE table)"
        )
    dtypes = {p.dtype for p in model.parameters()}
    if len(dtypes) != 1:
        problems.append(f"mixed parameter dtypes {sorted(map(str, dtypes))}; cast the model to one dtype")
    if problems:
        raise ValueError("OrthrusEngine does not support: " + "; ".join(problems))
