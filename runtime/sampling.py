"""Float32 softmax, log-softmax, top-k selection and sampling in numpy: the runtime's one sampling module.

Used by the decoding loops (`runtime.decoding`), the continuous batcher (`runtime.batching`) and the HTTP
service's log-probabilities (`runtime.serve`). Every top-k selection uses `topk_indices`: largest first, equal
values by increasing index, since torch.topk promises no order among equal values (see `runtime.decoding`).
Sampling is the exponential race argmax(p / Exp(1)), and for k > 1 its top k: the without-replacement scheme
torch.multinomial uses, drawn from numpy's `np.random.Generator`. Shape legend: R rows, n entries per row,
N rows fed to the decoder, V vocabulary.
"""

from __future__ import annotations

import numpy as np

__all__ = ["draw", "log_softmax", "probabilities", "sample_without_replacement", "softmax", "topk_indices"]

_SMALL_SORT = 256  # rows up to this long are fully sorted by topk_indices; longer ones are partitioned first


def softmax(x: np.ndarray) -> np.ndarray:
    """exp(x - max) / sum(exp(x - max)) over the last axis, in x's dtype."""
    shifted = x - x.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def log_softmax(x: np.ndarray) -> np.ndarray:
    """(x - max) - log(sum(exp(x - max))), torch's CPU formula, in float32."""
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def topk_indices(values: np.ndarray, k: int) -> np.ndarray:
    """(R, n) -> (R, k): indices of each row's k largest values, largest first, equal values by lower index.

    Stands in for torch.topk, whose order among equal values is unspecified (see the module docstring).
    """
    if k == 1:
        return np.argmax(values, axis=-1)[:, None]  # first maximum, as torch.argmax
    if values.shape[-1] <= _SMALL_SORT:
        return np.argsort(-values, axis=-1, kind="stable")[:, :k]
    # Long rows (beams x vocabulary): keep what reaches the k-th largest value, then sort just those.
    kth = -np.partition(-values, k - 1, axis=-1)[:, k - 1]  # (R,)
    out = np.empty((values.shape[0], k), dtype=np.int64)
    for row, (line, threshold) in enumerate(zip(values, kth, strict=True)):
        kept = np.flatnonzero(line >= threshold)  # ascending index order
        out[row] = kept[np.argsort(-line[kept], kind="stable")[:k]]
    return out


def sample_without_replacement(probs: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """(R, n) probabilities -> (R, k) indices drawn without replacement, in draw order.

    The exponential race: argsort of p / Exp(1) descending draws in proportion to p, then among the rest in
    proportion to p, ... (torch.multinomial without replacement does the same); zero-probability entries
    come last, so they are never drawn while a positive one is left.
    """
    race = rng.standard_exponential(probs.shape)
    keys = np.divide(probs, race, out=np.full(probs.shape, -1.0), where=probs > 0)
    return topk_indices(keys, k)


def draw(scores: np.ndarray, rng: np.random.Generator, step: int) -> np.ndarray:
    """(N, V) processed scores -> (N,) one token per row drawn from their softmax."""
    empty = np.flatnonzero(~(scores > -np.inf).any(axis=-1)).tolist()
    if empty:
        raise ValueError(
            f"rows {empty} have no token left to sample at step {step}: the logits processors set every score "
            "to -inf; relax no_repeat_ngram_size / repetition_penalty or check the decoder's logits"
        )
    return sample_without_replacement(probabilities(scores, step), 1, rng)[:, 0]


def probabilities(scores: np.ndarray, step: int) -> np.ndarray:
    """softmax(scores) (R, X) to sample from; ValueError naming the rows whose scores overflowed float32."""
    with np.errstate(invalid="ignore", over="ignore"):  # inf scores: reported below, by name
        probs = softmax(scores)
    bad = np.flatnonzero(~np.isfinite(probs).all(axis=-1)).tolist()
    if bad:  # transformers raises too ("probability tensor contains either inf, nan or element < 0")
        raise ValueError(
            f"rows {bad} have no valid distribution to sample at step {step}: the scaled scores overflowed float32 "
            "(a temperature far below 1e-5 divides them to inf); raise the temperature or use do_sample=False"
        )
    return probs
