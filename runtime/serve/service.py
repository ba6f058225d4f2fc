"""Service: one export folder behind a continuous batcher, with the checks that turn requests into work.

The service reads export.json up front (a wrong folder fails before anything listens), loads the model and
starts the batcher (in the background when served by uvicorn, so /health can answer 503 while loading), and
turns a parsed completions request into batcher requests: prompts tokenized, token ids, lengths and capacity
checked with errors that name the value and the limit, then submitted all or none.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import numpy as np

import runtime
from runtime.batching import (
    CompletionRequest,
    ContinuousBatcher,
    QueueFullError,
    RequestHandle,
    TokenEvent,
    most_likely,
)
from runtime.manifest import Manifest
from runtime.providers import check_provider
from runtime.sampling import log_softmax
from runtime.tokenizer import Tokenizer, TokenizerNotFoundError

from .config import ServeConfig
from .metrics import Metrics
from .schemas import APIError, CompletionParams, bad

log = logging.getLogger("runtime.serve")

# (model, max_batch, max_queue) -> a batcher with ContinuousBatcher's API; tests pass fakes.
BatcherFactory = Callable[[runtime.Model, int, int], ContinuousBatcher]


def default_batcher(model: runtime.Model, max_batch: int, max_queue: int) -> ContinuousBatcher:
    """The continuous batcher."""
    return ContinuousBatcher(model, max_batch=max_batch, max_queue=max_queue)


# The names before issue 17, kept for callers that pass their own factory.
EngineFactory, default_engine = BatcherFactory, default_batcher


class PromptOnlyHandle:
    """The handle of a max_tokens 0 completion (echo only): nothing to decode, so it ends at once."""

    def cancel(self) -> None:
        """Nothing runs, so nothing to stop."""

    async def aevents(self) -> AsyncIterator[TokenEvent]:
        yield TokenEvent(None, None, "length", time.perf_counter())


SCORE_ROWS = 64  # prompt positions log-softmaxed together when scoring a prompt


@dataclass(frozen=True)
class PreparedPrompt:
    """One prompt of a request, tokenized and checked."""

    ids: tuple[int, ...]
    text: str | None  # the prompt as text (echo), None without a tokenizer
    # echo + logprobs: each prompt token's log-probability given the tokens before it (None for the first) and,
    # with logprobs N > 0, the N most likely (id, logprob) at that position
    logprobs: tuple[float | None, ...] | None = None
    top_logprobs: tuple[tuple[tuple[int, float], ...] | None, ...] | None = None


class Service:
    """The model, its batcher and the service's state: loading -> ready -> draining -> stopped (or failed)."""

    def __init__(self, config: ServeConfig, batcher_factory: BatcherFactory = default_batcher):
        self.config = config
        self.manifest = Manifest.load(config.folder)  # fails fast, with the manifest's own message
        if self.manifest.head != "lm":
            raise ValueError(
                f"{config.folder} holds the {self.manifest.head!r} head: serving completions needs an lm export "
                "(re-export with --head lm)"
            )
        check_provider(config.provider)  # before anything listens: a CPU-only onnxruntime cannot serve --provider cuda
        self.name = config.served_name
        self.created = int(time.time())
        self.status = "loading"
        self.error: str | None = None
        self.model: runtime.Model | None = None
        self.batcher: ContinuousBatcher | None = None
        self.tokenizer: Tokenizer | None = None
        self._batcher_factory = batcher_factory
        self._scoring = threading.Semaphore(1)  # echo + logprobs forwards, beside the batcher's decoding
        self.metrics = Metrics(lambda: self.batcher.stats() if self.batcher is not None else None)
        shape = self.manifest.shape
        eos = shape.eos_token_id
        self.eos_ids = tuple(eos if isinstance(eos, list) else ([eos] if eos is not None else []))
        self.vocab_size, self.n_positions = shape.vocab_size, shape.n_positions
        if config.max_model_len is not None and config.max_model_len > shape.n_positions:
            raise ValueError(f"--max-model-len {config.max_model_len} exceeds the model's n_positions "
                             f"{shape.n_positions}: lower it, or leave it unset to serve the full context")
        # The longest prompt + completion served, and what to call it in errors.
        self.max_model_len = config.max_model_len or shape.n_positions
        self._length_name = "n_positions" if config.max_model_len is None else "--max-model-len"

    # ---- lifecycle -------------------------------------------------------------------------------

    @property
    def engine(self) -> ContinuousBatcher | None:
        """The batcher, under its name before issue 17."""
        return self.batcher

    @property
    def ready(self) -> bool:
        return self.status == "ready"

    def load(self) -> None:
        """Load the model and start the batcher (blocking); the status says how it went."""
        started = time.perf_counter()
        try:
            model = runtime.load(self.config.folder, provider=self.config.provider, threads=self.config.threads)
            batcher = self._batcher_factory(model, self.config.max_batch, self.config.max_queue)
            if self.config.max_model_len is not None:  # before start(): the batch cache is sized by it
                batcher.cap_length(self.config.max_model_len)
            batcher.start()
        except Exception as e:
            self.status, self.error = "failed", f"{type(e).__name__}: {e}"
            log.error("loading %s failed: %s", self.config.folder, self.error)
            raise
        try:
            self.tokenizer = model.tokenizer
        except TokenizerNotFoundError:
            self.tokenizer = None
        self.model, self.batcher = model, batcher
        if self.status == "loading":  # a drain that began while loading wins
            self.status = "ready"
        log.info("loaded %s in %.1f s (%s)", self.config.folder, time.perf_counter() - started,
                 "with a tokenizer" if self.tokenizer is not None else "no tokenizer: token-id prompts only")

    def load_in_background(self, on_failure: Callable[[], None] | None = None) -> threading.Thread:
        """Load on a thread, so the server answers /health (503) while the model loads."""

        def run() -> None:
            try:
                self.load()
            except Exception:
                if on_failure is not None:
                    on_failure()

        thread = threading.Thread(target=run, name="model-load", daemon=True)
        thread.start()
        return thread

    def begin_drain(self) -> None:
        """Stop taking completions (503, /health 503); requests in flight go on."""
        if self.status in ("loading", "ready"):
            self.status = "draining"

    def shutdown(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop the batcher: finish (drain) or cancel what is in flight."""
        self.begin_drain()
        if self.batcher is not None:
            self.batcher.shutdown(drain=drain, timeout=timeout)
        if self.status != "failed":
            self.status = "stopped"

    def unavailable(self) -> APIError | None:
        """The 503 a completion gets while the service cannot take one, else None."""
        if self.status == "ready":
            return None
        messages = {
            "loading": "the model is still loading: retry when GET /health returns 200",
            "draining": "the server is shutting down and takes no new requests",
            "stopped": "the server has stopped",
            "failed": f"the model failed to load ({self.error})",
        }
        headers = {"Retry-After": "1"} if self.status == "loading" else {}
        return APIError(503, messages[self.status], code=f"server_{self.status}", headers=headers)

    # ---- requests --------------------------------------------------------------------------------

    def prepare(self, params: CompletionParams) -> list[PreparedPrompt]:
        """Tokenize and check every prompt of a request (400 naming the prompt, the value and the limit)."""
        if params.model is not None and params.model != self.name:
            raise APIError(404, f"model {params.model!r} does not exist: this server serves {self.name!r} "
                                "(GET /v1/models)", param="model", code="model_not_found")
        if self.tokenizer is None and params.stop:
            raise bad("stop", f"{self.config.folder} has no tokenizer files, so stop strings cannot be matched: use "
                              "stop_token_ids")
        prepared = []
        for i, prompt in enumerate(params.prompts):
            where = f"prompt[{i}]" if params.batched else "prompt"
            if isinstance(prompt, str):
                prepared.append(self._encode(prompt, where))
            else:
                bad_ids = [t for t in prompt if not 0 <= t < self.vocab_size]
                if bad_ids:
                    raise bad("prompt", f"{where}: token id {bad_ids[0]} is out of range for vocab_size "
                                        f"{self.vocab_size}: ids must be in [0, {self.vocab_size})")
                prepared.append(PreparedPrompt(tuple(prompt), self._decode(prompt)))
            self._check_length(len(prepared[-1].ids), params.max_tokens, where)
        for token in params.stop_token_ids:
            if token >= self.vocab_size:
                raise bad("stop_token_ids", f"stop token id {token} is out of range for vocab_size {self.vocab_size}")
        total = params.n * len(prepared)
        capacity = self.config.max_batch + self.config.max_queue
        if total > capacity:
            raise bad("n", f"{total} completions ({len(prepared)} prompts x n={params.n}) exceed what this server "
                           f"holds at once, max_batch {self.config.max_batch} + max_queue {self.config.max_queue} = "
                           f"{capacity}: send fewer per request")
        return prepared

    def _encode(self, text: str, where: str) -> PreparedPrompt:
        if self.tokenizer is None:
            raise bad("prompt", f"{self.config.folder} has no tokenizer files (vocab.json + merges.txt or *.tiktoken),"
                                " so text prompts cannot be encoded: send token ids (a list of integers) instead")
        # A lone surrogate (valid JSON "\\ud83d") has no UTF-8: it tokenizes as U+FFFD (tiktoken's rule) and echoes so.
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        ids = self.tokenizer.encode(text)
        if not ids:  # OpenAI's rule: no prompt means the start of a document, <|endoftext|> for GPT-2
            bos = self.manifest.shape.bos_token_id
            if bos is None:
                raise bad("prompt", f"{where} is empty and the model has no bos_token_id to start from: give text")
            ids = [bos]
        return PreparedPrompt(tuple(ids), text)

    def _decode(self, ids: tuple[int, ...]) -> str | None:
        """A token-id prompt as text (for echo), None without a tokenizer or for ids it does not assign."""
        try:
            return self.tokenizer.decode(ids) if self.tokenizer is not None else None
        except ValueError:
            return None

    def _check_length(self, n: int, max_tokens: int, where: str) -> None:
        limit = self.max_model_len
        if n + max_tokens > limit:
            room = limit - n
            if room >= 1:
                fix = f"set max_tokens <= {room}"
            elif max_tokens < limit:
                fix = f"shorten it to {limit - max_tokens} tokens or fewer, or lower max_tokens"
            else:
                fix = f"shorten it and set max_tokens below {limit}"
            raise bad("max_tokens", f"{where} of {n} tokens + max_tokens {max_tokens} = {n + max_tokens} exceeds the "
                                    f"context length {self._length_name} {limit}: {fix}")

    def score(self, prompt: PreparedPrompt, top: int) -> PreparedPrompt:
        """The prompt with its tokens' log-probabilities (echo + logprobs, as evaluation harnesses ask for).

        One forward over the whole prompt on the loaded model (thread-safe beside the batcher's decoding).
        """
        ids = np.array([prompt.ids], dtype=np.int64)  # (1, T)
        t = ids.shape[1]
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids),
                 "position_ids": np.arange(t, dtype=np.int64)[None]}
        values: list[float | None] = [None]
        tops: list[tuple[tuple[int, float], ...] | None] = [None]
        with self._scoring:  # one prompt's (T, V) logits in memory at a time, whatever the concurrency
            logits = self.model.forward(feeds)["logits"][0, : t - 1]  # (T - 1, V): position i predicts ids[i + 1]
            for start in range(0, t - 1, SCORE_ROWS):  # log-softmax a block of rows at a time: bounded temporaries
                block = log_softmax(logits[start : start + SCORE_ROWS].astype(np.float32, copy=False))  # (R, V)
                rows = np.arange(block.shape[0])
                values += block[rows, ids[0, start + 1 : start + 1 + block.shape[0]]].tolist()
                if top:
                    tops += most_likely(block, top)
        return dataclasses.replace(prompt, logprobs=tuple(values), top_logprobs=tuple(tops) if top else None)

    def stop_ids(self, params: CompletionParams) -> tuple[int, ...]:
        """Token ids that end a completion: the model's eos (unless ignore_eos) and stop_token_ids."""
        ids = () if params.ignore_eos else self.eos_ids
        return tuple(dict.fromkeys((*ids, *params.stop_token_ids)))

    def submit(self, params: CompletionParams,
               prompts: list[PreparedPrompt]) -> list[RequestHandle | PromptOnlyHandle]:
        """Submit n requests per prompt, all or none: 429 (Retry-After) past the queue bound, 503 when stopping."""
        if self.batcher is None:
            raise self.unavailable() or APIError(503, "the batcher is not running")
        if params.max_tokens == 0:  # echo only: nothing to decode, no slot taken
            return [PromptOnlyHandle() for _ in range(len(prompts) * params.n)]
        stops = self.stop_ids(params)
        handles: list[RequestHandle] = []
        try:
            for prompt in prompts:
                for j in range(params.n):
                    handles.append(self.batcher.submit(CompletionRequest(
                        prompt_ids=prompt.ids,
                        max_new_tokens=params.max_tokens,
                        temperature=params.temperature,
                        top_k=params.top_k,
                        top_p=params.top_p,
                        seed=params.seed + j if params.seed is not None else None,
                        stop_token_ids=stops,
                        logprobs=params.logprobs is not None,
                        top_logprobs=params.logprobs or 0,
                    )))
        except QueueFullError as e:
            self._cancel(handles)
            self.metrics.rejected.inc(1, "queue_full")
            retry = max(1, math.ceil(e.retry_after))
            raise APIError(429, f"the server is at capacity ({self.config.max_queue} requests waiting, --max-queue): "
                                f"retry after {retry} s", code="queue_full", headers={"Retry-After": str(retry)}) from e
        except ValueError as e:
            self._cancel(handles)
            raise bad("prompt", str(e)) from e
        except RuntimeError as e:  # the batcher stopped taking requests (shutdown)
            self._cancel(handles)
            raise APIError(503, f"the server is shutting down: {e}", code="server_draining") from e
        self.metrics.prompt_tokens.inc(sum(len(p.ids) for p in prompts))
        return handles

    @staticmethod
    def _cancel(handles: list[RequestHandle]) -> None:
        for handle in handles:
            handle.cancel()
