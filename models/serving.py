"""Many requests on one engine: a request queue with continuous batching.

`Server(engine, block_size)` decodes up to `engine.max_batch_size` requests at once, one per cache slot:

    server = Server(engine, block_size=8)
    ids = [server.submit(prompt, 256, sampling=SamplingParams(0.7), seed=i) for i, prompt in enumerate(prompts)]
    for request_id, result in server:          # finished requests, in the order they finish
        ...

or `server.step()` by hand (each call returns the requests that finished in it). A request waits in
the queue until a slot is free (more requests than slots wait; none is dropped), joins between
iterations (its prefill runs between the others' iterations, in its own slot), and leaves when it
emits EOS, completes a stop string or reaches max_new_tokens; its slot is then free for the next one.
Each request has its own sampling parameters, seed, EOS ids, stop strings and streamer.

Every iteration runs the draft and verify passes of all slots in one pass each (`engine.steps(K, b)`,
b the batch-size bucket holding the highest busy slot: free slots below it decode garbage that nobody
reads; new requests take the lowest free slot, so the busy slots stay packed). Each slot reads its own
cache length (ragged contexts), and acceptance runs per slot on the device, so a request's tokens are
the ones it gets alone: fp32 greedy token for token; sampled, the same distribution, and the same draws
for the same seed wherever a row's logits do not depend on the number of rows (its generator row counts
its own iterations from its join; on the GPU the passes' kernel choices depend on the batch size).

The host keeps IN_FLIGHT iterations launched: each iteration's packed result (B, K + 1) is copied to
pinned host memory without blocking and read while the next one runs (the requests admitted between two
iterations have their prefills launched one after another and their first tokens copied the same way, in
one copy, read back together), so EOS and max_new_tokens are seen one iteration late; the extra
iteration a finished request is part of is discarded (it writes only rows of its own slot:
`_Steps.finish` clamps a slot's start inside the slot). Nothing else on the serving path waits for the
device: a streamed prompt is copied to the host at `submit`, a finished request's tokens go to the device
through pinned memory.

`Server.stats` (`ServeStats`) counts where the host loop's time went: admissions (prefills), waits for
read-backs, iterations per batch-size bucket and how many of their slots were busy.
"""

import time
from collections import Counter, deque
from dataclasses import dataclass, field

import torch

from models.generate import GenerationResult, _eos_ids, check_request
from models.sampling import SamplingParams
from models.stopping import Stopper

IN_FLIGHT = 2  # iterations launched ahead of the host's read-back
DRAFT_MODES = ("sampled", "greedy")


@dataclass
class ServeStats:
    """What one `Server` did, for finding where serving time goes (host clock, seconds).

    admit_seconds: in admissions: the prefills' launches (eager: one launch per kernel) and their first
      tokens' copy. wait_seconds: blocked on a read-back (an iteration's, or the first tokens'), i.e. the
      device was behind the host; a host-bound loop waits little. iterations: launched iterations per
      batch-size bucket; busy_slot_iterations: the busy slots in them (a bucket also decodes its free slots
      below the highest busy one)."""

    prefills: int = 0
    admit_seconds: float = 0.0
    wait_seconds: float = 0.0
    iterations: Counter = field(default_factory=Counter)
    busy_slot_iterations: int = 0

    def summary(self) -> dict:
        slot_iterations = sum(b * n for b, n in self.iterations.items())
        return {
            "prefills": self.prefills,
            "admit_seconds": self.admit_seconds,
            "wait_seconds": self.wait_seconds,
            "iterations": sum(self.iterations.values()),
            "iterations_per_bucket": dict(sorted(self.iterations.items())),
            "busy_slot_iterations": self.busy_slot_iterations,
            "slot_occupancy": self.busy_slot_iterations / slot_iterations if slot_iterations else None,
        }


@dataclass
class _Request:
    id: int
    prompt: torch.LongTensor  # (1, L), as submitted
    max_new_tokens: int
    sampling: SamplingParams
    seed: int | None
    stopper: Stopper
    streamer: object
    result: GenerationResult
    out: list[int] = field(default_factory=list)
    slot: int | None = None
    first: torch.Tensor | None = None  # the prefill's token, being copied to the host (not emitted yet)
    first_copied: object = None  # on CUDA, the event recorded after that copy
    in_flight: int = 0  # launched iterations that decode it, not read back yet
    done: bool = False


class Server:
    """A request queue over one `OrthrusEngine` at one block size K (every slot decodes the same K),
    decoding up to `batch_size` requests at once (default: all of the engine's slots). The server owns
    the engine's slots while it has requests: run one server per engine at a time (`engine.generate`
    is one too)."""

    def __init__(self, engine, block_size: int | None = None, drafts: str = "sampled", batch_size: int | None = None):
        if drafts not in DRAFT_MODES:
            raise ValueError(f"drafts={drafts!r}: choose one of {DRAFT_MODES}")
        batch_size = engine.max_batch_size if batch_size is None else batch_size
        if not 1 <= batch_size <= engine.max_batch_size:
            raise ValueError(
                f"batch_size={batch_size}: this engine has max_batch_size={engine.max_batch_size} slots; "
                "build it with more"
            )
        self.engine, self.drafts = engine, drafts
        self.K = engine.config.block_size if block_size is None else block_size
        engine.steps(self.K)  # checks K against the engine before any request is taken
        self.slots: list[_Request | None] = [None] * batch_size
        self.waiting: deque[_Request] = deque()
        self.stats = ServeStats()
        self.reader = _ReadBack(engine.max_batch_size * (self.K + 1), engine.device)
        self._finished: list[tuple[int, GenerationResult]] = []
        self._next_id = 0

    def submit(
        self,
        input_ids: torch.LongTensor,
        max_new_tokens: int,
        *,
        sampling: SamplingParams = SamplingParams(),
        seed: int | None = None,
        eos_token_id: int | list[int] | None = None,
        streamer=None,
        stop_strings: list[str] | None = None,
        tokenizer=None,
    ) -> int:
        """Queue a request (input_ids (1, L) or (L,)); returns its id. Checked now, decoded once a slot is free.

        seed: the request's sampler seed (sampled requests; None: one draw from torch's default
        generator). streamer: `put(tensor)` / `end()` for this request alone (the prompt, here, then each
        iteration's tokens). eos_token_id / stop_strings / tokenizer: as in `models.generate.generate`.
        """
        e = self.engine
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        check_request(input_ids, max_new_tokens, self.K, e.config)
        L = input_ids.shape[1]
        need = max(L, L + max_new_tokens + self.K - 2)
        if need > e.cache.max_seq_len:
            raise ValueError(
                f"prompt {L} + max_new_tokens {max_new_tokens} with block_size {self.K} needs {need} cache "
                f"rows; this engine has max_seq_len={e.cache.max_seq_len} per slot. Build it with a larger one."
            )
        if seed is None and not sampling.greedy:
            seed = request_seed(None)
        request = _Request(
            id=self._next_id,
            prompt=input_ids,
            max_new_tokens=max_new_tokens,
            sampling=sampling,
            seed=seed,
            stopper=Stopper(_eos_ids(e.model, eos_token_id), stop_strings, tokenizer),
            streamer=streamer,
            result=GenerationResult(sequences=input_ids, prompt_len=L, block_size=self.K),
        )
        self._next_id += 1
        if streamer is not None:  # now, not at admission, where the copy would wait for the iterations in flight
            streamer.put(input_ids.cpu())
        self.waiting.append(request)
        return request.id

    @property
    def busy(self) -> bool:
        """Requests waiting or decoding."""
        return bool(self.waiting) or any(r is not None for r in self.slots)

    @torch.inference_mode()
    def step(self) -> list[tuple[int, GenerationResult]]:
        """Admit waiting requests to free slots, keep up to IN_FLIGHT iterations launched and read one
        back. Returns the (id, result) of the requests that finished meanwhile."""
        self._admit()
        # Nothing in flight: the first tokens being copied are read back now, together; the slots of requests
        # that end at their first token take the next waiting requests.
        while not len(self.reader) and (firsts := [r for r in self.slots if r is not None and r.first is not None]):
            self._emit_first(firsts)
            self._admit()
        active = [r for r in self.slots if r is not None]
        # Launch ahead while some request may still need every launched iteration.
        while len(self.reader) < IN_FLIGHT and any(
            len(r.out) + (r.first is not None) + r.in_flight < r.max_new_tokens for r in active
        ):
            self._launch(active)
        if len(self.reader):
            self._read()
        finished, self._finished = self._finished, []
        return finished

    def __iter__(self):
        """Step until the queue is empty, yielding (id, result) of each request as it finishes."""
        while self.busy:
            yield from self.step()

    def _admit(self) -> None:
        """Waiting requests into the free slots: each one's prefill and first token launched on the device,
        then all their first tokens copied to the host in one copy, without blocking. They are emitted at
        the read-back of the first iteration launched after them or, with nothing in flight, right after
        (`step`): one wait for all, not one blocking read per request between its prefill and the next."""
        e = self.engine
        admitted = []
        while self.waiting and None in self.slots:
            t0 = time.perf_counter()
            r, slot = self.waiting.popleft(), self.slots.index(None)
            logits = e.prefill(_to_device(r.prompt[0], e.device), slot)
            # The slot runs in every iteration from now on (its request's or, once done, as a free slot)
            # and writes its block at rows start..start+K-1: keep that inside the slot, as `_Steps.finish`
            # does. Only a request that ends at its first token (it needs no iteration) has L > S_max - K.
            e.start[slot].clamp_(max=e.cache.max_seq_len - self.K)
            r.result.ar_forwards += 1
            if r.seed is not None:
                e.rng[slot, 0].fill_(r.seed)  # generator row [seed, iteration 0], written on the device
                e.rng[slot, 1].zero_()
            e.last[slot : slot + 1].copy_(e.first_token(logits, r.sampling, slot))
            r.slot, self.slots[slot] = slot, r
            admitted.append(r)
            self.stats.prefills += 1
            self.stats.admit_seconds += time.perf_counter() - t0
        if admitted:
            t0 = time.perf_counter()
            lo, hi = min(r.slot for r in admitted), max(r.slot for r in admitted) + 1
            firsts, copied = self.reader.copy(e.last[lo:hi])  # one copy over the admitted slots' span
            for r in admitted:
                r.first, r.first_copied = firsts[r.slot - lo], copied
            self.stats.admit_seconds += time.perf_counter() - t0

    def _launch(self, active: list[_Request]) -> None:
        """One iteration of every slot up to the bucket of the highest busy one; no host sync."""
        e, K = self.engine, self.K
        b = e.batch_bucket(1 + max(r.slot for r in active))
        steps = e.steps(K, b)
        # Free slots take the first request's parameters, so a batch of like requests needs one sampler.
        params = [active[0].sampling] * b
        for r in active:
            params[r.slot] = r.sampling
        sampler = None if all(p.greedy for p in params) else steps.sampler(tuple(params), self.drafts)
        if K > 1:
            steps.draft()
            if sampler is not None and sampler.sampled_drafts:
                sampler.draft()
        steps.verify()
        packed = steps.accept() if sampler is None else sampler.accept()
        self.reader.push(packed.view(-1), list(active))
        for r in active:
            r.in_flight += 1
        self.stats.iterations[b] += 1
        self.stats.busy_slot_iterations += len(active)

    def _read(self) -> None:
        """The oldest launched iteration's result, handed to the requests it decoded."""
        t0 = time.perf_counter()
        result, members = self.reader.pop()
        self.stats.wait_seconds += time.perf_counter() - t0
        rows = result.tolist()
        # With streamers, also the iteration as one host tensor of its own (the buffer is reused), sliced per
        # request (a tensor per request costs more host time than the rest of its bookkeeping).
        chunks = result.clone() if any(r.streamer is not None for r in members) else None
        K = self.K
        for r in members:
            r.in_flight -= 1
            if r.first is not None:
                self._emit_first([r])
            if r.done:  # finished in an earlier iteration (or at its first token): this one ran past its end
                continue
            lo = r.slot * (K + 1)
            row = rows[lo : lo + K + 1]
            n_acc = row[0]
            res = r.result
            res.accepted.append(n_acc)
            res.proposed.append(K)  # always the whole block: emitted tokens are clipped instead
            res.diffusion_forwards += K > 1
            res.ar_forwards += 1
            res.emitted.append(self._emit(r, row[1 : n_acc + 2], None if chunks is None else chunks[lo + 1 :]))

    def _emit_first(self, requests: list[_Request]) -> None:
        """Emit the prefills' tokens of `requests` once their copies are done, one wait per copy (requests
        admitted together share one). A copy may not be done yet when no iteration launched after it was
        read back: requests admitted while nothing was in flight, or a one-token request joining while the
        last iterations ran."""
        copies = {id(r.first_copied): r.first_copied for r in requests if r.first_copied is not None}
        if copies:
            t0 = time.perf_counter()
            for event in copies.values():
                event.synchronize()
            self.stats.wait_seconds += time.perf_counter() - t0
        for r in requests:
            first, r.first, r.first_copied = int(r.first), None, None
            self._emit(r, [first])

    def _emit(self, r: _Request, tokens: list[int], chunk: torch.Tensor | None = None) -> int:
        """Append tokens, clipped at max_new_tokens, EOS or a stop string; finish the request when it is
        done. Returns how many were kept. chunk: the same tokens as a host tensor (or longer), for the
        streamer."""
        tokens = r.stopper.clip(tokens[: r.max_new_tokens - len(r.out)])
        res = r.result
        res.finished_by_eos, res.finished_by_stop_string = r.stopper.reason == "eos", r.stopper.reason == "stop"
        r.out.extend(tokens)
        if r.streamer is not None:
            r.streamer.put(torch.tensor(tokens) if chunk is None else chunk[: len(tokens)])
        if r.stopper.reason is not None or len(r.out) >= r.max_new_tokens:
            r.done, self.slots[r.slot] = True, None
            new_ids = _to_device(torch.tensor(r.out, dtype=r.prompt.dtype), r.prompt.device)
            res.sequences = torch.cat([r.prompt[0], new_ids])[None]
            if r.streamer is not None:
                r.streamer.end()
            self._finished.append((r.id, res))
        return len(tokens)


def serve_all(
    server: Server,
    prompts: list[list[int]],
    max_new_tokens: int,
    seeds: list[int | None],
    *,
    streamers: list | None = None,
    on_finish=None,
    **request,
) -> list[GenerationResult]:
    """Every prompt (token ids) queued on `server` at once, prompt i with seeds[i] (and streamers[i]);
    returns the results in prompt order. on_finish(i, result) runs as each request finishes (in the
    order they finish). request: `Server.submit`'s other keywords, the same for every prompt."""
    index = {}
    for i, (ids, seed) in enumerate(zip(prompts, seeds, strict=True)):
        prompt = torch.tensor([ids], dtype=torch.long, device=server.engine.device)
        streamer = None if streamers is None else streamers[i]
        index[server.submit(prompt, max_new_tokens, seed=seed, streamer=streamer, **request)] = i
    results: list[GenerationResult | None] = [None] * len(prompts)
    for rid, result in server:
        i = index[rid]
        results[i] = result
        if on_finish is not None:
            on_finish(i, result)
    return results


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on the device without waiting for the work already queued there: a copy from
    pageable memory blocks the host until the stream drains (the in-flight iterations), one from
    pinned memory is queued behind them (PyTorch keeps the pinned block alive until it is done)."""
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def request_seed(generator: torch.Generator | None) -> int:
    """A request's sampler seed: one draw from `generator` (None: torch's default generator), on the
    generator's own device, so a seeded generator reproduces a run."""
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=device))


class _ReadBack:
    """Iteration results copied to host memory without blocking (pinned buffers + an event each on
    CUDA), read in launch order with the tag each was pushed with: the host reads iteration i while
    iteration i + 1 runs."""

    def __init__(self, n: int, device: torch.device):
        self.cuda = device.type == "cuda"
        self.buffers = [torch.empty(n, dtype=torch.long, pin_memory=self.cuda) for _ in range(IN_FLIGHT)]
        self.events = [torch.cuda.Event() if self.cuda else None for _ in range(IN_FLIGHT)]
        self.queue: deque[tuple[int, int, object]] = deque()
        self.next = 0

    def __len__(self) -> int:
        return len(self.queue)

    def push(self, src: torch.Tensor, tag) -> None:
        i, self.next = self.next, (self.next + 1) % IN_FLIGHT
        self.buffers[i][: src.numel()].copy_(src, non_blocking=self.cuda)
        if self.cuda:
            self.events[i].record()
        self.queue.append((i, src.numel(), tag))

    def copy(self, src: torch.Tensor) -> tuple[torch.Tensor, object]:
        """src copied to (pinned) host memory without blocking, and the event to wait on before reading
        it (None off CUDA, where the copy is done on return)."""
        host = torch.empty(src.shape, dtype=src.dtype, pin_memory=self.cuda)
        host.copy_(src, non_blocking=self.cuda)
        if not self.cuda:
            return host, None
        event = torch.cuda.Event()
        event.record()
        return host, event

    def pop(self) -> tuple[torch.Tensor, object]:
        """The oldest result, once its copy is done, and its tag. The result is a view of a host buffer that
        the next `push` may reuse: read (or clone) it before pushing again."""
        i, n, tag = self.queue.popleft()
        if self.cuda:
            self.events[i].synchronize()
        return self.buffers[i][:n], tag
