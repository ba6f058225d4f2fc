"""Continuous batching: every request gets exactly the tokens it would get alone, whatever else is running."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import runtime
from runtime.batching import CompletionRequest, ContinuousBatcher, QueueFullError

from .sessions import SlowSession


@pytest.fixture(scope="module", params=["lm-shared", "lm"])
def model(exports, request):
    """The in-place cache export (batched) and the growing-cache export (interleaved)."""
    return runtime.load(exports[request.param])


PROMPTS = [[5, 17, 42, 99, 7, 250], [80, 81, 82], [12, 13, 14, 15, 16, 17, 18, 19], [3], [200, 100, 50, 25]]


def _alone(model, prompt, **options):
    return model.generate(np.array([prompt]), **options)[0, len(prompt) :].tolist()


def _collect(handle):
    return [e for e in handle.events(timeout=60)]


def test_concurrent_greedy_requests_equal_each_request_alone(model):
    engine = ContinuousBatcher(model, max_batch=3, max_queue=16)
    engine.start()
    try:
        lengths = [9, 4, 12, 7, 10, 5, 11, 6]
        handles = [engine.submit(CompletionRequest(tuple(PROMPTS[i % 5]), lengths[i])) for i in range(8)]
        results = [[e.token_id for e in _collect(h) if e.token_id is not None] for h in handles]
    finally:
        engine.shutdown()
    for i, tokens in enumerate(results):
        expected = _alone(model, PROMPTS[i % 5], max_new_tokens=lengths[i], eos_token_id=None)
        stop = model.eos_token_id
        expected_until_eos = expected[: expected.index(stop) + 1] if stop in expected else expected
        assert tokens == expected_until_eos, f"request {i}"
    assert engine.stats().steps > 0


def test_requests_that_join_mid_stream_are_unaffected(model):
    engine = ContinuousBatcher(model, max_batch=4, max_queue=16)
    engine.start()
    try:
        first = engine.submit(CompletionRequest(tuple(PROMPTS[0]), 20))
        time.sleep(0.05)
        later = [engine.submit(CompletionRequest(tuple(p), 6)) for p in PROMPTS[1:4]]
        tokens = [[e.token_id for e in _collect(h)] for h in [first, *later]]
    finally:
        engine.shutdown()
    for prompt, got, n in zip(PROMPTS[:4], tokens, [20, 6, 6, 6], strict=True):
        assert got == _alone(model, prompt, max_new_tokens=n, eos_token_id=None)[: len(got)]


def test_seeded_sampling_equals_the_same_request_alone(model):
    engine = ContinuousBatcher(model, max_batch=2)
    engine.start()
    try:
        options = dict(temperature=5.0, top_k=40, top_p=0.95, seed=11)
        handles = [engine.submit(CompletionRequest(tuple(PROMPTS[1]), 8, **options)) for _ in range(2)]
        runs = [[e.token_id for e in _collect(h)] for h in handles]
    finally:
        engine.shutdown()
    alone = _alone(
        model,
        PROMPTS[1],
        max_new_tokens=8,
        do_sample=True,
        temperature=5.0,
        top_k=40,
        top_p=0.95,
        seed=11,
        eos_token_id=None,
    )
    assert runs[0] == runs[1] == alone[: len(runs[0])]


def test_logprobs_are_log_softmax_of_the_logits(model):
    engine = ContinuousBatcher(model, max_batch=2)
    engine.start()
    try:
        events = _collect(engine.submit(CompletionRequest(tuple(PROMPTS[0]), 3, logprobs=True)))
    finally:
        engine.shutdown()
    assert all(e.logprob is not None and e.logprob <= 0 for e in events)


def test_a_cancelled_request_frees_its_slot(model):
    engine = ContinuousBatcher(model, max_batch=1, max_queue=4)
    engine.start()
    try:
        long = engine.submit(CompletionRequest(tuple(PROMPTS[0]), 50))
        waiting = engine.submit(CompletionRequest(tuple(PROMPTS[1]), 3))
        next(long.events(timeout=30))
        long.cancel()
        assert [e.finish_reason for e in long.events(timeout=30)][-1] == "cancelled"
        assert _collect(waiting)[-1].finish_reason in ("length", "stop")
    finally:
        engine.shutdown()


def test_the_queue_is_bounded(model):
    engine = ContinuousBatcher(model, max_batch=1, max_queue=2)  # not started: nothing leaves the queue
    for _ in range(2):
        engine.submit(CompletionRequest((1, 2), 2))
    engine._slots[0] = object()  # the only slot is busy
    with pytest.raises(QueueFullError, match="retry after") as info:
        engine.submit(CompletionRequest((1, 2), 2))
    assert info.value.retry_after > 0


def test_shutdown_drains_in_flight_requests_and_refuses_new_ones(model):
    engine = ContinuousBatcher(model, max_batch=2)
    engine.start()
    handles = [engine.submit(CompletionRequest(tuple(p), 8)) for p in PROMPTS[:3]]
    stopper = threading.Thread(target=engine.shutdown)
    stopper.start()
    stopper.join(60)
    assert all(_collect(h)[-1].finish_reason in ("length", "stop") for h in handles)
    with pytest.raises(RuntimeError, match="shutting down"):
        engine.submit(CompletionRequest((1,), 1))


@pytest.mark.parametrize(
    "request_kwargs, message",
    [
        (dict(prompt_ids=(), max_new_tokens=2), "the prompt is empty"),
        (dict(prompt_ids=(1, 317), max_new_tokens=2), "token id 317 is out of range for vocab_size 317"),
        (
            dict(prompt_ids=(1,) * 60, max_new_tokens=10),
            "prompt of 60 tokens \\+ max_tokens 10 = 70 exceeds n_positions 64",
        ),
        (dict(prompt_ids=(1,), max_new_tokens=0), "max_tokens=0 must be >= 1"),
        (dict(prompt_ids=(1,), max_new_tokens=2, temperature=-1.0), "temperature=-1.0 must be >= 0"),
        (dict(prompt_ids=(1,), max_new_tokens=2, temperature=1.0, top_p=2.0), "top_p"),
    ],
)
def test_bad_requests_are_refused_with_the_numbers(model, request_kwargs, message):
    engine = ContinuousBatcher(model, max_batch=1)
    with pytest.raises(ValueError, match=message):
        engine.submit(CompletionRequest(**request_kwargs))


def test_a_chunked_prefill_gives_the_cache_and_logits_of_a_whole_one(exports):
    model = runtime.load(exports["lm-shared"])
    engine = ContinuousBatcher(model, max_batch=3)
    prompt = np.array([PROMPTS[2] + PROMPTS[0]], dtype=np.int64)  # (1, 14)
    whole = engine._prefill_into_slot(prompt, 0)
    for start in range(0, prompt.shape[1], 3):
        chunked = engine._prefill_into_slot(prompt[:, start : start + 3], 2)
    np.testing.assert_array_equal(chunked, whole)
    cache = engine._batch_cache()
    assert cache.lengths[0] == cache.lengths[2] == 14
    for i in range(len(cache.names)):
        rows = cache._buffers[i].view(cache._shape(i))  # (3, nh, max_length, hs)
        np.testing.assert_array_equal(rows[2, :, :14], rows[0, :, :14])


def test_a_prompt_joining_running_requests_is_prefilled_a_chunk_per_step(exports, monkeypatch):
    model = runtime.load(exports["lm-shared"])
    engine = ContinuousBatcher(model, max_batch=4, prefill_chunk=3)
    chunks = []
    prefill = engine._prefill_into_slot

    def spy(ids, slot):
        chunks.append(ids.shape[1])
        return prefill(ids, slot)

    monkeypatch.setattr(engine, "_prefill_into_slot", spy)
    # 10 ms a step: the running request is still decoding when the other one joins, under load
    monkeypatch.setattr(model.backend, "session", SlowSession(model.backend.session, 0.01))
    engine.start()
    try:
        # Seeded sampling: the tiny checkpoint's greedy continuation repeats one token, which would prove nothing.
        # No stop ids: it runs all 30 steps (0.3 s) whatever it samples.
        running = engine.submit(CompletionRequest(tuple(PROMPTS[0]), 30, temperature=5.0, top_k=40, seed=3,
                                                  stop_token_ids=()))
        events = running.events(timeout=60)
        first = next(events).token_id  # decoding now
        joining = engine.submit(CompletionRequest(tuple(PROMPTS[2]), 5))  # 8 tokens: chunks of 3, 3, 2
        tokens = [[e.token_id for e in _collect(joining)], [first, *(e.token_id for e in events)]]
    finally:
        engine.shutdown()
    assert chunks[0] == len(PROMPTS[0]) and chunks[1:] == [3, 3, 2]
    assert tokens[0] == _alone(model, PROMPTS[2], max_new_tokens=5, eos_token_id=None)[: len(tokens[0])]
    sampled = _alone(model, PROMPTS[0], max_new_tokens=30, eos_token_id=None, do_sample=True, temperature=5.0, top_k=40,
                     seed=3)
    assert tokens[1] == sampled[: len(tokens[1])] and len(set(tokens[1])) > 3


def test_an_in_place_export_on_a_gpu_provider_interleaves_instead_of_binding_host_buffers(exports, monkeypatch):
    model = runtime.load(exports["lm-shared"])
    assert ContinuousBatcher(model).batched
    monkeypatch.setattr(model.backend, "device", "cuda")  # what provider="cuda" sets; no GPU needed to check
    assert not ContinuousBatcher(model).batched


def test_a_max_length_engine_holds_that_many_positions_and_gives_the_same_tokens(model):
    engine = ContinuousBatcher(model, max_batch=2, max_queue=4, max_length=16)
    engine.start()
    try:
        handles = [engine.submit(CompletionRequest(tuple(p), 16 - len(p))) for p in PROMPTS[:3]]
        results = [[e.token_id for e in _collect(h) if e.token_id is not None] for h in handles]
        with pytest.raises(ValueError, match="prompt of 8 tokens \\+ max_tokens 9 = 17 exceeds max_length 16"):
            engine.submit(CompletionRequest(tuple(PROMPTS[2]), 9))
    finally:
        engine.shutdown()
    if engine.batched:
        assert engine._cache.max_length == 16  # the memory the bound is for
    for prompt, tokens in zip(PROMPTS[:3], results, strict=True):
        expected = _alone(model, prompt, max_new_tokens=16 - len(prompt), eos_token_id=None)
        eos = model.eos_token_id
        assert tokens == (expected[: expected.index(eos) + 1] if eos in expected else expected)


@pytest.mark.parametrize("max_length", [1, 65])
def test_a_max_length_outside_the_models_positions_is_refused(model, max_length):
    with pytest.raises(ValueError, match=f"max_length={max_length} must be an integer in \\[2, n_positions 64\\]"):
        ContinuousBatcher(model, max_length=max_length)


def test_the_length_is_capped_before_the_cache_exists_or_not_at_all(model):
    engine = ContinuousBatcher(model, max_batch=1)
    engine.cap_length(20)
    engine.start()
    try:
        assert engine.max_length == 20
        with pytest.raises(ValueError, match="= 21 exceeds max_length 20"):
            engine.submit(CompletionRequest(tuple(PROMPTS[0]), 15))
        if engine.batched:
            assert engine._cache.max_length == 20
        with pytest.raises(RuntimeError, match="cap_length\\(\\) after start\\(\\)"):
            engine.cap_length(10)
    finally:
        engine.shutdown()


def test_a_request_whose_options_fail_on_its_logits_ends_alone(model, monkeypatch):
    # e.g. a sampling distribution that overflows: that request gets an error event, the engine and the others go on
    import runtime.batching as batching

    def failing_draw(scores, rng, step):  # only sampling requests draw; greedy ones take the argmax
        raise ValueError(f"rows [0] have no valid distribution to sample at step {step}")

    monkeypatch.setattr(batching, "draw", failing_draw)
    engine = ContinuousBatcher(model, max_batch=2, max_queue=4)
    engine.start()
    try:
        sampled = engine.submit(CompletionRequest(tuple(PROMPTS[0]), 5, temperature=1.0, seed=1))
        greedy = engine.submit(CompletionRequest(tuple(PROMPTS[1]), 4))
        events = _collect(sampled)
        greedy_events = _collect(greedy)
        tokens = [e.token_id for e in greedy_events if e.token_id is not None]
        again = _collect(engine.submit(CompletionRequest(tuple(PROMPTS[1]), 4)))  # the engine thread still runs
    finally:
        engine.shutdown()
    assert events[-1].finish_reason == "error" and "no valid distribution" in events[-1].error, events
    assert greedy_events[-1].finish_reason in ("length", "stop")
    assert tokens and tokens == _alone(model, PROMPTS[1], max_new_tokens=4)[: len(tokens)]
    assert [e.token_id for e in again if e.token_id is not None] == tokens


def test_the_names_before_the_rename_still_work():
    # "engine" means a TensorRT engine now; code written against the old names keeps running.
    from runtime.batching import BatchEngine, BatcherStats, EngineStats
    from runtime.serve import server, service

    assert BatchEngine is ContinuousBatcher and EngineStats is BatcherStats
    assert service.default_engine is service.default_batcher and service.EngineFactory is service.BatcherFactory
    assert "engine_factory" in server.serve.__code__.co_varnames
