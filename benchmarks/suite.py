"""What is measured on every backend, in one worker process: prefill sweep, per-token decode, generate().

- prefill: batch 1, one forward per prompt length, warm-up then repeats;
- decode: batch 1, `new_tokens` greedy steps after a `decode_prompt`-token prompt, every step timed,
  warm-up runs then repeats (so each position has `repeats` samples);
- at batch `decode_batch` (rows of differing prompts): one prefill of the `decode_prompt` length, warm-up
  then repeats, and the same per-step decode as at batch 1 (a step's time covers every row's token);
- generate: end to end (prefill + decode loop + the backend's own sampling code) at each batch size,
  one warm-up call then `generate_repeats` calls; tokens/s = batch x new tokens / seconds.
A prefill sweep of one length, a decode run or a generate() call during which other processes took more
than `quiet_share` of the CPUs is measured again (at most 3 times; the count is recorded): these
machines are shared and noisy.
Prompts are random token ids drawn from the seed and the shape, so every backend sees the same ones.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from .backends import Backend
from .measure import guarded, now_ns, repeat, seconds_since


def prompt(batch: int, length: int, seed: int, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids (B, T) int64 from (seed, B, T) and an all-ones mask."""
    ids = np.random.default_rng((seed, batch, length)).integers(0, vocab_size, (batch, length), dtype=np.int64)
    return ids, np.ones_like(ids)


def measure_prefill(backend: Backend, plan: dict[str, Any], report: Callable[[str], None]) -> dict[str, list[float]]:
    """Seconds per prefill at each prompt length (batch 1)."""
    samples = {}
    for length in plan["prompt_lengths"]:
        ids, mask = prompt(1, length, plan["seed"], backend.vocab_size)
        sweep = partial(repeat, partial(backend.prefill, ids, mask), plan["warmup"], plan["repeats"])
        samples[str(length)], _ = guarded(sweep, plan["quiet_share"])  # all repeats of a length as one unit
        report(f"prefill {length:>4} tokens: median {np.median(samples[str(length)]) * 1e3:.1f} ms")
    return samples


def measure_batch_prefill(backend: Backend, plan: dict[str, Any], report: Callable[[str], None]) -> dict[str, Any]:
    """Seconds per prefill of `decode_batch` rows of `decode_prompt` tokens."""
    batch, length = plan["decode_batch"], plan["decode_prompt"]
    ids, mask = prompt(batch, length, plan["seed"], backend.vocab_size)
    sweep = partial(repeat, partial(backend.prefill, ids, mask), plan["warmup"], plan["repeats"])
    seconds, discarded = guarded(sweep, plan["quiet_share"])  # all repeats as one unit, like a prompt length
    report(f"prefill batch {batch} x {length} tokens: median {np.median(seconds) * 1e3:.1f} ms")
    return {"batch": batch, "prompt_length": length, "seconds": seconds, "discarded_noisy_runs": discarded}


def measure_decode(backend: Backend, plan: dict[str, Any], report: Callable[[str], None],
                   batch: int = 1) -> dict[str, Any]:
    """Seconds of every decode step (all `batch` rows at once), per timed run."""
    length, steps = plan["decode_prompt"], plan["new_tokens"]
    ids, mask = prompt(batch, length, plan["seed"], backend.vocab_size)
    for _ in range(plan["warmup"]):
        backend.decode_steps(ids, mask, steps)
    runs, discarded = [], 0
    for _ in range(plan["repeats"]):
        steps_s, redone = guarded(lambda: backend.decode_steps(ids, mask, steps), plan["quiet_share"])
        runs.append(steps_s)
        discarded += redone
    report(f"decode batch {batch}, {steps} steps after {length}: median {np.median(runs) * 1e3:.2f} ms/step")
    return {"batch": batch, "prompt_length": length, "positions": list(range(length, length + steps)), "runs_s": runs,
            "discarded_noisy_runs": discarded}


def _timed_generate(backend: Backend, ids: np.ndarray, mask: np.ndarray, new: int) -> tuple[float, np.ndarray]:
    """Seconds of one generate() call, and its new tokens (checked to be exactly `new` per row)."""
    start = now_ns()
    out = backend.generate(ids, mask, new)
    seconds = seconds_since(start)
    if out.shape != (ids.shape[0], new):
        raise RuntimeError(f"generate returned new tokens of shape {out.shape}, expected {(ids.shape[0], new)}")
    return seconds, np.asarray(out)


def measure_generate(backend: Backend, plan: dict[str, Any], report: Callable[[str], None]) -> dict[str, Any]:
    """Seconds per generate() call at each batch size, and the greedy tokens of batch 1."""
    length, new = plan["decode_prompt"], plan["new_tokens"]
    results: dict[str, Any] = {}
    for batch in plan["batch_sizes"]:
        ids, mask = prompt(batch, length, plan["seed"], backend.vocab_size)
        _, out = _timed_generate(backend, ids, mask, new)  # warm-up
        seconds, discarded = [], 0
        for _ in range(plan["generate_repeats"]):
            (elapsed, out), redone = guarded(partial(_timed_generate, backend, ids, mask, new), plan["quiet_share"])
            seconds.append(elapsed)
            discarded += redone
        results[str(batch)] = {"batch": batch, "new_tokens": new, "prompt_length": length, "seconds": seconds,
                               "tokens_row0": out[0].tolist(), "discarded_noisy_calls": discarded}
        report(f"generate batch {batch}: {batch * new / np.median(seconds):.1f} tokens/s")
    return results


def measure_backend(backend: Backend, plan: dict[str, Any], report: Callable[[str], None]) -> dict[str, Any]:
    """Every measurement of one backend (raw seconds; summaries are computed by the parent)."""
    return {
        "prefill_s": measure_prefill(backend, plan, report),
        "decode": measure_decode(backend, plan, report),
        "prefill_batch": measure_batch_prefill(backend, plan, report),
        "decode_batch": measure_decode(backend, plan, report, plan["decode_batch"]),
        "generate": measure_generate(backend, plan, report),
    }
