"""Logits processors in numpy: pure functions, numerically transformers 4.57's classes.

References: transformers 4.57 `generation/logits_process.py` (`RepetitionPenaltyLogitsProcessor`,
`NoRepeatNGramLogitsProcessor`, `MinNewTokensLengthLogitsProcessor`, `TemperatureLogitsWarper`,
`TopKLogitsWarper`, `TopPLogitsWarper`) and `generation/utils.py` `_get_logits_processor` for their order.
Scores stay float32 throughout, with every Python scalar applied as float32, as torch does for
`float32_tensor op python_float`; top-p's cumulative sum accumulates in float64 and rounds each partial sum
to float32, as torch's CPU cumsum does. Shape legend: N rows, T tokens so far, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .options import GenerationOptions
from .sampling import softmax

__all__ = [
    "LogitsProcessor",
    "apply_processors",
    "logits_processors",
    "min_new_tokens_filter",
    "no_repeat_ngram",
    "repetition_penalty",
    "temperature_scale",
    "top_k_filter",
    "top_p_filter",
]

LogitsProcessor = Callable[[np.ndarray, np.ndarray], np.ndarray]


def repetition_penalty(input_ids: np.ndarray, scores: np.ndarray, penalty: float) -> np.ndarray:
    """Divide positive / multiply negative scores of every token already in the row (CTRL; transformers'
    RepetitionPenaltyLogitsProcessor)."""
    rows = np.arange(scores.shape[0])[:, None]  # (N, 1)
    seen = scores[rows, input_ids]  # (N, T)
    factor = np.float32(penalty)
    seen = np.where(seen < 0, seen * factor, seen / factor)
    out = scores.copy()
    out[rows, input_ids] = seen  # repeated ids write the same value
    return out


def no_repeat_ngram(input_ids: np.ndarray, scores: np.ndarray, ngram_size: int) -> np.ndarray:
    """-inf on each token that would complete an n-gram already in the row (fairseq's rule; transformers'
    NoRepeatNGramLogitsProcessor)."""
    n_rows, cur_len = input_ids.shape
    out = scores.copy()
    if cur_len < ngram_size:  # no complete n-gram yet
        return out
    if ngram_size == 1:  # every token seen is banned
        out[np.arange(n_rows)[:, None], input_ids] = -np.inf
        return out
    prefix = input_ids[:, cur_len - ngram_size + 1 :]  # (N, n-1): the n-gram being started
    starts = np.lib.stride_tricks.sliding_window_view(input_ids[:, :-1], ngram_size - 1, axis=1)  # (N, G, n-1)
    match = (starts == prefix[:, None, :]).all(axis=-1)  # (N, G) G = cur_len - n + 1 earlier n-grams
    rows, where = np.nonzero(match)
    out[rows, input_ids[rows, where + ngram_size - 1]] = -np.inf
    return out


def min_new_tokens_filter(
    input_ids: np.ndarray, scores: np.ndarray, eos: np.ndarray, prompt_len: int, min_new_tokens: int
) -> np.ndarray:
    """-inf on the eos ids while fewer than min_new_tokens tokens are new (MinNewTokensLengthLogitsProcessor)."""
    out = scores.copy()
    if input_ids.shape[-1] - prompt_len < min_new_tokens:
        out[:, eos[eos < out.shape[-1]]] = -np.inf  # an eos id past the vocabulary has no score to block
    return out


def temperature_scale(scores: np.ndarray, temperature: float) -> np.ndarray:
    """scores / temperature (TemperatureLogitsWarper)."""
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):  # a vanishing temperature: draw() says so
        return scores / np.float32(temperature)


def top_k_filter(scores: np.ndarray, top_k: int, min_tokens_to_keep: int = 1) -> np.ndarray:
    """-inf below the k-th highest score; ties with it survive (TopKLogitsWarper)."""
    k = min(max(top_k, min_tokens_to_keep), scores.shape[-1])
    # Partition for the k-th from the top: numpy's introselect crawls on a k-th near the end of a row whose
    # low end is one repeated value (-inf after other filters).
    kth = -np.partition(-scores, k - 1, axis=-1)[:, k - 1, None]  # (N, 1)
    return np.where(scores < kth, np.float32(-np.inf), scores)


def top_p_filter(scores: np.ndarray, top_p: float, min_tokens_to_keep: int = 1) -> np.ndarray:
    """-inf outside the smallest set of most likely tokens whose probability reaches top_p (TopPLogitsWarper).

    transformers sorts each row ascending, removes the prefix whose cumulative probability is <= 1 - top_p and
    keeps the last min_tokens_to_keep whatever their mass. Equal scores sort lower token id first (stable).
    """
    threshold = np.float32(1 - top_p)
    with np.errstate(invalid="ignore", over="ignore"):  # overflowed scores: the sampler names the problem
        probs = softmax(scores)  # (N, V)
    remove = [_outside_nucleus(line, p, threshold, min_tokens_to_keep) for line, p in zip(scores, probs, strict=True)]
    return np.where(np.stack(remove), np.float32(-np.inf), scores)


def _outside_nucleus(line: np.ndarray, probs: np.ndarray, threshold: np.float32, keep: int) -> np.ndarray:
    """One row of top_p_filter: (V,) scores and their probabilities -> (V,) True where removed.

    Only the top of the ascending order decides anything, so the row sorts just a head of its most likely
    tokens, grown until the probability left out of it is itself removable (a full sort of a 50257 vocabulary
    costs milliseconds per row). Zero-probability tokens (-inf after top-k) come first in that order with
    cumulative probability 0, so they are removed unless min_tokens_to_keep reaches them. The cumulative sums
    are transformers' (float64 accumulation, each partial sum rounded to float32, as torch's CPU cumsum) up to
    the order the left-out mass is added in.
    """
    live = np.flatnonzero(probs > 0)  # (n,) ascending token ids
    head, left_out = live, 0.0
    if live.size < keep:  # min_tokens_to_keep reaches zero-probability tokens: sort the whole row
        head = np.arange(line.shape[0])
    size = max(256, 4 * keep)
    while live.size >= keep and size < live.size:
        live_scores = line[live]
        top = live_scores >= -np.partition(-live_scores, size - 1)[size - 1]  # a suffix of the ascending order
        rest = probs[live[~top]].sum(dtype=np.float64)  # the cumulative probability just below it
        if np.float32(rest) <= threshold:  # everything below the suffix is removed
            head, left_out = live[top], rest
            break
        size *= 8
    order = head[np.argsort(line[head], kind="stable")]  # ascending, equal scores by token id
    cumulative = (left_out + np.cumsum(probs[order], dtype=np.float64)).astype(np.float32)
    remove = np.ones(line.shape[0], dtype=bool)
    remove[order] = cumulative <= threshold
    remove[order[-keep:]] = False
    return remove


def logits_processors(options: GenerationOptions, eos: np.ndarray | None, prompt_len: int) -> list[LogitsProcessor]:
    """The processors options ask for, in transformers' `_get_logits_processor` order: repetition penalty,
    no-repeat-ngram, min new tokens, then (sampling only) temperature, top-k, top-p."""
    processors: list[LogitsProcessor] = []
    if options.repetition_penalty != 1.0:
        processors.append(lambda ids, s: repetition_penalty(ids, s, options.repetition_penalty))
    if options.no_repeat_ngram_size > 0:
        processors.append(lambda ids, s: no_repeat_ngram(ids, s, options.no_repeat_ngram_size))
    if options.min_new_tokens > 0 and eos is not None:
        processors.append(lambda ids, s: min_new_tokens_filter(ids, s, eos, prompt_len, options.min_new_tokens))
    if options.do_sample:
        # Beam sampling keeps one token more than there are eos ids, so every beam can continue.
        keep = (len(eos) + 1 if eos is not None else 2) if options.num_beams > 1 else 1
        if options.temperature != 1.0:
            processors.append(lambda ids, s: temperature_scale(s, options.temperature))
        if options.top_k:
            processors.append(lambda ids, s: top_k_filter(s, options.top_k, keep))
        if options.top_p < 1.0:
            processors.append(lambda ids, s: top_p_filter(s, options.top_p, keep))
    return processors


def apply_processors(processors: list[LogitsProcessor], input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """scores (N, V) through each processor in turn."""
    for processor in processors:
        scores = processor(input_ids, scores)
    return scores
