"""Continuous batching: requests join the running batch at step boundaries and leave as they finish.

One batcher thread owns the model's decoding. Each request gets a cache slot and its own options
(greedy or sampling, with its own seeded generator). With an in-place cache export (`--kv-cache
shared`) every decode step runs all slots as one batch: the cache is one (max_batch, nh, max_length,
hs) buffer per tensor and rows are independent ragged sequences, so a request that joins is prefilled
alone (batch 1, exactly as `model.generate` would) with its keys/values written straight into a free
slot's row of that buffer (one row is a contiguous (1, nh, max_length, hs) block).
Rows never mix, and ONNX Runtime's CPU kernels compute each row the same whatever the batch, so a
greedy request's tokens equal the same request run alone. Other exports (growing cache) cannot share
a batch without re-padding every cache, so their requests are interleaved step by step instead, each
on its own decoder: the same tokens, without the batching speed-up.
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import numpy as np

from .kv_cache import SharedKVCache
from .logits_processors import logits_processors
from .manifest import cache_names
from .model import Model
from .onnx_decoder import OnnxRuntimeBackend
from .options import GenerationOptions
from .sampling import draw, log_softmax, topk_indices


@dataclass(frozen=True)
class CompletionRequest:
    """One completion: prompt token ids and its own decoding options."""

    prompt_ids: tuple[int, ...]
    max_new_tokens: int
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 disables
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] | None = None  # None: the model's eos
    logprobs: bool = False
    top_logprobs: int = 0  # with logprobs: also report this many most likely tokens of each step


@dataclass(frozen=True)
class TokenEvent:
    """A decoded token, or the end of a request."""

    token_id: int | None  # None only on a final event without a token (cancel, error)
    logprob: float | None
    finish_reason: str | None  # None while running; "stop" | "length" | "cancelled" | "error"
    time: float  # time.perf_counter() when produced
    error: str | None = None
    top_logprobs: tuple[tuple[int, float], ...] | None = None  # (token id, logprob), most likely first


PREFILL_CHUNK = 16  # prompt tokens prefilled per decode step while other requests decode (batched mode)
# Temperatures below this decode greedily (vLLM's rule): they are greedy in effect, and one far smaller (1e-300 rounds
# to 0 in float32) divides the logits to inf / NaN.
GREEDY_BELOW = 1e-5


def most_likely(logprobs: np.ndarray, k: int) -> list[tuple[tuple[int, float], ...]]:
    """Each row's k most likely (token id, logprob), most likely first: logprobs (R, V) -> R tuples."""
    best = topk_indices(logprobs, min(k, logprobs.shape[-1]))  # (R, k)
    return [tuple((int(i), float(row[i])) for i in picks) for row, picks in zip(logprobs, best, strict=True)]


class QueueFullError(RuntimeError):
    """The waiting queue is at max_queue; retry after `retry_after` seconds."""

    def __init__(self, depth: int, retry_after: float):
        super().__init__(f"the queue holds {depth} waiting requests (max_queue): retry after {retry_after:.0f} s")
        self.retry_after = retry_after


@dataclass
class BatcherStats:
    """A snapshot for /metrics."""

    queue_depth: int
    active: int
    max_batch: int
    last_batch_size: int
    steps: int
    tokens_generated: int


class RequestHandle:
    """The caller's side of a request: its events, and a way to cancel it."""

    _ids = itertools.count()

    def __init__(self, request: CompletionRequest, loop: asyncio.AbstractEventLoop | None):
        self.request = request
        self.request_id = f"cmpl-{next(self._ids)}"
        self.cancelled = threading.Event()
        self._loop = loop
        self._sync: queue.Queue[TokenEvent] = queue.Queue()
        self._async: asyncio.Queue[TokenEvent] | None = asyncio.Queue() if loop is not None else None

    def _deliver(self, event: TokenEvent) -> None:
        if self._async is not None:
            self._loop.call_soon_threadsafe(self._async.put_nowait, event)
        else:
            self._sync.put(event)

    def events(self, timeout: float | None = None) -> Iterator[TokenEvent]:
        """Blocking iterator over the events, ending after the final one (submit from a thread, not a loop)."""
        if self._async is not None:
            raise RuntimeError("this request was submitted from an event loop: iterate aevents() instead")
        while True:
            event = self._sync.get(timeout=timeout)
            yield event
            if event.finish_reason is not None:
                return

    async def aevents(self) -> AsyncIterator[TokenEvent]:
        """The same events for asyncio code (submit from inside the running loop)."""
        if self._async is None:
            raise RuntimeError("this request was submitted outside an event loop: iterate events() instead")
        while True:
            event = await self._async.get()
            yield event
            if event.finish_reason is not None:
                return

    def cancel(self) -> None:
        """Stop generating; the slot is freed at the next step boundary."""
        self.cancelled.set()


@dataclass
class _Active:
    """A request holding a slot."""

    handle: RequestHandle
    options: GenerationOptions
    processors: list
    rng: np.random.Generator
    stops: set[int]
    tokens: list[int] = field(default_factory=list)  # prompt + generated
    generated: int = 0
    decoder: object = None  # interleaved mode: the request's own decoder
    prefilled: int = 0  # batched mode: prompt tokens already in the slot's cache row

    @property
    def decoding(self) -> bool:
        """Prefill done: the request takes part in decode steps."""
        return self.generated > 0


class ContinuousBatcher:
    """Schedules completion requests over one loaded Model (continuous batching; not a TensorRT engine)."""

    def __init__(self, model: Model, max_batch: int = 8, max_queue: int = 64, prefill_chunk: int = PREFILL_CHUNK,
                 max_length: int | None = None):
        if max_batch < 1 or max_queue < 0 or prefill_chunk < 1:
            raise ValueError(f"max_batch and prefill_chunk must be >= 1 and max_queue >= 0, got {max_batch}, "
                             f"{prefill_chunk} and {max_queue}")
        self.prefill_chunk = prefill_chunk
        if model.manifest.head != "lm":
            raise ValueError(f"serving needs an lm export, not {model.manifest.head!r}: re-export with --head lm")
        self.model = model
        self.shape = model.manifest.shape
        # Longest prompt + completion; the batch cache holds max_batch rows of this many positions.
        self.max_length, self._length_name = self.shape.n_positions, "n_positions"
        self.max_batch, self.max_queue = max_batch, max_queue
        # The batch cache is host memory bound by pointer: on a GPU provider, requests interleave on their own
        # device-resident decoders instead (same tokens, no batching speed-up) until a device batch cache exists.
        self.batched = (model.manifest.kv_cache == "shared" and isinstance(model.backend, OnnxRuntimeBackend)
                        and model.backend.device == "cpu")
        self._queue: deque[RequestHandle] = deque()
        self._wake = threading.Condition()
        self._slots: list[_Active | None] = [None] * max_batch
        self._accepting = True
        self._stop = False
        self._thread: threading.Thread | None = None
        self._cache: SharedKVCache | None = None
        self._steps = self._tokens = self._last_batch = 0
        if max_length is not None:
            self.cap_length(max_length)

    # ---- public API ------------------------------------------------------------------------------

    @property
    def accepting(self) -> bool:
        return self._accepting

    def cap_length(self, max_length: int) -> None:
        """Serve at most max_length positions (prompt + completion); call before start(), which sizes the cache."""
        n_positions = self.shape.n_positions
        if not isinstance(max_length, int) or isinstance(max_length, bool) or not 2 <= max_length <= n_positions:
            raise ValueError(f"max_length={max_length!r} must be an integer in [2, n_positions {n_positions}]: the "
                             f"model has no position embeddings past {n_positions}")
        if self._thread is not None or self._cache is not None:
            raise RuntimeError("cap_length() after start(): the batcher already runs (and its cache is allocated)")
        self.max_length, self._length_name = max_length, "max_length"

    def start(self) -> None:
        """Allocate the batch cache (in-place exports) and start the batcher's thread."""
        if self.batched:
            self._batch_cache()
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="continuous-batcher", daemon=True)
            self._thread.start()

    def submit(self, request: CompletionRequest) -> RequestHandle:
        """Queue a request; raises ValueError for bad requests and QueueFullError past max_queue."""
        self._validate(request)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        handle = RequestHandle(request, loop)
        with self._wake:
            if not self._accepting:
                raise RuntimeError("the batcher is shutting down and takes no new requests")
            if len(self._queue) >= self.max_queue and self.max_queue >= 0 and not self._free_slot_available():
                raise QueueFullError(len(self._queue), retry_after=1.0)
            self._queue.append(handle)
            self._wake.notify()
        return handle

    def stats(self) -> BatcherStats:
        """Queue depth, active slots and counters."""
        active = sum(slot is not None for slot in self._slots)
        return BatcherStats(len(self._queue), active, self.max_batch, self._last_batch, self._steps, self._tokens)

    def shutdown(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop taking requests; finish the ones queued and in flight (drain) or cancel them."""
        with self._wake:
            self._accepting = False
            if not drain:
                for handle in self._queue:
                    handle.cancel()
                for slot in self._slots:
                    if slot is not None:
                        slot.handle.cancel()
            self._stop = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    # ---- validation ------------------------------------------------------------------------------

    def _validate(self, request: CompletionRequest) -> None:
        n, vocab, limit = len(request.prompt_ids), self.shape.vocab_size, self.max_length
        if n == 0:
            raise ValueError("the prompt is empty: give at least one token")
        bad = [t for t in request.prompt_ids if not 0 <= int(t) < vocab]
        if bad:
            raise ValueError(f"token id {bad[0]} is out of range for vocab_size {vocab}: ids must be in [0, {vocab})")
        if request.temperature < 0:
            raise ValueError(f"temperature={request.temperature} must be >= 0 (0 = greedy)")
        if request.top_logprobs < 0:
            raise ValueError(f"top_logprobs={request.top_logprobs} must be >= 0")
        if request.max_new_tokens < 1:
            raise ValueError(f"max_tokens={request.max_new_tokens} must be >= 1")
        if n + request.max_new_tokens > limit:
            raise ValueError(
                f"prompt of {n} tokens + max_tokens {request.max_new_tokens} = {n + request.max_new_tokens} "
                f"exceeds {self._length_name} {limit}: shorten the prompt or lower max_tokens"
            )
        self._options(request)  # temperature / top_p / top_k checks, with GenerationOptions' messages

    def _options(self, request: CompletionRequest) -> GenerationOptions:
        sampling = request.temperature >= GREEDY_BELOW
        return GenerationOptions(
            max_new_tokens=request.max_new_tokens,
            do_sample=sampling,
            temperature=request.temperature if sampling else 1.0,
            top_k=request.top_k or None,
            top_p=request.top_p,
            seed=request.seed,
        )

    def _free_slot_available(self) -> bool:
        return any(slot is None for slot in self._slots)

    # ---- the batcher thread -----------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not any(self._slots) and not self._stop:
                    self._wake.wait()
                if self._stop and not self._queue and not any(self._slots):
                    return
                decoding = self._decoding_slots()
                prefilling = any(isinstance(s, _Active) and not s.decoding for s in self._slots)
                # While others decode, one request prefills at a time, a chunk per step (batched mode) or whole
                # (interleaved mode), so their inter-token gaps grow by one chunk at most; an idle batcher takes all.
                budget = self.max_batch if not decoding else (0 if prefilling else 1)
                joining = []
                while self._queue and self._free_slot_available() and len(joining) < budget:
                    joining.append((self._slots.index(None), self._queue.popleft()))
                    self._slots[joining[-1][0]] = _RESERVED
            firsts = [first for slot, handle in joining if (first := self._join(slot, handle)) is not None]
            if self.batched:
                firsts += self._prefill_step(chunked=bool(decoding))
            # First tokens go out after the whole round's prefills: a request that emitted its first token
            # and then waited for seven more prefills would see that wait as one long inter-token gap.
            for slot, active, logits in firsts:
                self._slots[slot] = active
                self._emit(slot, active, logits)
            self._drop_cancelled()
            if self._decoding_slots():
                try:
                    self._step()
                except Exception as e:  # a failed step ends every request in it, with the reason
                    self._fail_all(f"{type(e).__name__}: {e}")

    def _decoding_slots(self) -> list[int]:
        return [i for i, s in enumerate(self._slots) if isinstance(s, _Active) and s.decoding]

    def _join(self, slot: int, handle: RequestHandle) -> tuple[int, _Active, np.ndarray] | None:
        """Give a request `slot`. Interleaved mode prefills it here and returns what its first token comes from;
        batched mode leaves the prefill to `_prefill_step` (None)."""
        request = handle.request
        if handle.cancelled.is_set():
            self._slots[slot] = None
            handle._deliver(TokenEvent(None, None, "cancelled", time.perf_counter()))
            return None
        try:
            options = self._options(request)
            eos = self.shape.eos_token_id
            stops = set(request.stop_token_ids) if request.stop_token_ids is not None else set(
                eos if isinstance(eos, list) else ([eos] if eos is not None else []))
            eos_array = np.array(sorted(stops), dtype=np.int64) if stops else None
            active = _Active(handle, options, logits_processors(options, eos_array, len(request.prompt_ids)),
                             np.random.default_rng(request.seed), stops, list(request.prompt_ids))
            if self.batched:
                self._batch_cache().lengths[slot] = 0
                self._slots[slot] = active
                return None
            ids = np.array([request.prompt_ids], dtype=np.int64)
            n = ids.shape[1]
            active.decoder = self.model.backend.decoder(1, n + request.max_new_tokens)
            logits = active.decoder.step(ids, np.ones_like(ids), np.arange(n)[None])
            return slot, active, logits[0]
        except Exception as e:
            self._slots[slot] = None
            handle._deliver(TokenEvent(None, None, "error", time.perf_counter(), error=f"{type(e).__name__}: {e}"))
            return None

    def _prefill_step(self, chunked: bool) -> list[tuple[int, _Active, np.ndarray]]:
        """Batched mode: advance prefills; one chunk of the oldest while others decode, else every prompt whole.

        A chunked prefill gives the same keys/values and logits bit for bit as a whole one (checked by the tests).
        """
        firsts = []
        for slot, active in enumerate(self._slots):
            if not isinstance(active, _Active) or active.decoding:
                continue
            prompt = active.handle.request.prompt_ids
            end = min(len(prompt), active.prefilled + self.prefill_chunk) if chunked else len(prompt)
            try:
                logits = self._prefill_into_slot(np.array([prompt[active.prefilled:end]], dtype=np.int64), slot)
            except Exception as e:
                self._slots[slot] = None
                active.handle._deliver(TokenEvent(None, None, "error", time.perf_counter(),
                                                  error=f"{type(e).__name__}: {e}"))
                continue
            active.prefilled = end
            if end == len(prompt):
                firsts.append((slot, active, logits[0]))
            if chunked:
                break
        return firsts

    def _batch_cache(self) -> SharedKVCache:
        if self._cache is None:
            names = cache_names(self.shape.n_layer)
            dtype = "float16" if self.model.manifest.dtype == "fp16" else "float32"
            self._cache = SharedKVCache(names, [self.shape.n_head] * len(names), self.shape.head_dim,
                                        self.max_batch, self.max_length, dtype, "cpu")
            # Fresh pages cost a fault on first write (100-200 ms per joining row measured on a VM): pay once here.
            self._cache.touch()
        return self._cache

    def _prefill_into_slot(self, ids: np.ndarray, slot: int) -> np.ndarray:
        """Append prompt tokens ids (1, n) to row `slot`, writing their keys/values in place; (1, V) logits."""
        past, n = int(self._batch_cache().lengths[slot]), ids.shape[1]
        mask = np.ones((1, past + n), dtype=np.int64)
        positions = np.arange(past, past + n, dtype=np.int64)[None]
        logits = self._run_rows(ids, mask, positions, first_row=slot)
        self._cache.lengths[slot] = past + n
        return logits

    def _run_rows(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray, first_row: int = 0) -> np.ndarray:
        """One forward of rows [first_row, first_row + B) of the batch cache, in place; (B, V) last-position logits."""
        rows, new_tokens = ids.shape
        binding = self.model.backend.session.io_binding()
        binding.bind_cpu_input("input_ids", ids)
        binding.bind_cpu_input("attention_mask", mask)
        binding.bind_cpu_input("position_ids", positions)
        cache = self._batch_cache()
        # Into our own array: get_outputs() would wrap all 25 outputs (the cache's too) as OrtValues every step.
        logits = np.empty((rows, new_tokens, self.shape.vocab_size), dtype=cache.dtype)  # logits share the cache dtype
        binding.bind_output("logits", "cpu", 0, logits.dtype, logits.shape, logits.ctypes.data)
        cache.bind(binding, np.full(rows, new_tokens, dtype=np.int64), rows=rows, first_row=first_row)
        self.model.backend.session.run_with_iobinding(binding)
        return logits[:, -1].astype(np.float32)

    def _step(self) -> None:
        """One decode step for every request past its prefill."""
        slots = self._decoding_slots()
        self._last_batch = len(slots)
        self._steps += 1
        if not self.batched:
            for i in slots:
                active = self._slots[i]
                n = len(active.tokens)
                logits = active.decoder.step(np.array([[active.tokens[-1]]]), np.ones((1, n), np.int64),
                                             np.array([[n - 1]]))
                self._emit(i, active, logits[0])
            return
        cache = self._batch_cache()
        # Rows are the outermost axis, so the first b rows of every buffer are a smaller batch: skip idle tails.
        b = max(slots) + 1
        ids = np.zeros((b, 1), dtype=np.int64)
        positions = np.zeros((b, 1), dtype=np.int64)
        new = np.zeros(b, dtype=np.int64)
        for i in slots:
            ids[i, 0] = self._slots[i].tokens[-1]
            positions[i, 0] = cache.lengths[i]
            new[i] = 1
        # Rows not decoding attend to one garbage token written at their own length, never read: free rows restart
        # at 0; a row mid-prefill keeps its prompt, and its next chunk overwrites the garbage.
        for i in range(b):
            if not new[i] and not isinstance(self._slots[i], _Active):
                cache.lengths[i] = 0
        lengths = cache.lengths[:b] + 1
        mask = (np.arange(int(lengths.max()))[None, :] < lengths[:, None]).astype(np.int64)
        logits = self._run_rows(ids, mask, positions)  # (b, V)
        cache.lengths[:b] += new
        for i in slots:
            self._emit(i, self._slots[i], logits[i])

    def _emit(self, slot: int, active: _Active, logits: np.ndarray) -> None:
        """Choose the next token of one request, deliver it, and free the slot when the request ends."""
        try:
            history = np.array([active.tokens], dtype=np.int64)
            scores = logits[None, :]  # (1, V)
            for processor in active.processors:
                scores = processor(history, scores)
            if active.options.do_sample:
                token = int(draw(scores, active.rng, active.generated)[0])
            else:
                token = int(np.argmax(scores[0]))
            logprob, top = self._logprobs(active.handle.request, logits, token)
        except Exception as e:  # this request's options failed on these logits: it ends, the others go on
            self._slots[slot] = None
            reason = f"{type(e).__name__}: {e}"
            active.handle._deliver(TokenEvent(None, None, "error", time.perf_counter(), error=reason))
            return
        active.tokens.append(token)
        active.generated += 1
        self._tokens += 1
        finish = None
        if token in active.stops:
            finish = "stop"
        elif active.generated >= active.options.max_new_tokens:
            finish = "length"
        active.handle._deliver(TokenEvent(token, logprob, finish, time.perf_counter(), top_logprobs=top))
        if finish is not None:
            self._slots[slot] = None

    @staticmethod
    def _logprobs(request: CompletionRequest, logits: np.ndarray,
                  token: int) -> tuple[float | None, tuple[tuple[int, float], ...] | None]:
        """The chosen token's log-probability and the request's top_logprobs most likely (id, logprob), if asked."""
        if not request.logprobs:
            return None, None
        logprobs = log_softmax(logits[None, :])  # (1, V)
        top = most_likely(logprobs, request.top_logprobs)[0] if request.top_logprobs else None
        return float(logprobs[0, token]), top

    def _drop_cancelled(self) -> None:
        for i, active in enumerate(self._slots):
            if active is not None and active is not _RESERVED and active.handle.cancelled.is_set():
                self._slots[i] = None
                active.handle._deliver(TokenEvent(None, None, "cancelled", time.perf_counter()))

    def _fail_all(self, reason: str) -> None:
        for i, active in enumerate(self._slots):
            if active is not None and active is not _RESERVED:
                self._slots[i] = None
                active.handle._deliver(TokenEvent(None, None, "error", time.perf_counter(), error=reason))


_RESERVED = object()  # a slot taken by a request being admitted


# The names before issue 17 ("engine" now means a TensorRT engine only).
BatchEngine = ContinuousBatcher
EngineStats = BatcherStats
