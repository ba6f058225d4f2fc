"""Decoding loops in numpy: greedy, sampling (temperature / top-k / top-p) and beam search, backend-free.

Token for token with transformers 4.57 `generate()` for greedy decoding and beam search; sampling draws from
numpy's `np.random.Generator`, so it is reproducible by seed but not torch's stream. Any backend that can run
one forward pass over its own KV cache plugs in through `Decoder` (ONNX Runtime, TensorRT).

References: transformers 4.57 `generation/utils.py` (`generate`, `_prepare_special_tokens`,
`_prepare_attention_mask_for_generation`, `_expand_inputs_for_generation`, `prepare_inputs_for_generation` for
position ids, `_get_logits_processor` for the processor order, `_sample`, and the vectorised `_beam_search`
with `_get_top_k_continuations`, `_get_running_beams_for_next_iteration`, `_update_finished_beams`,
`_check_early_stop_heuristic`, `_beam_search_has_unfinished_sequences`), `generation/logits_process.py`
(`RepetitionPenaltyLogitsProcessor`, `NoRepeatNGramLogitsProcessor`, `MinNewTokensLengthLogitsProcessor`,
`TemperatureLogitsWarper`, `TopKLogitsWarper`, `TopPLogitsWarper`), `generation/stopping_criteria.py`
(`MaxLengthCriteria`, `EosTokenCriteria`). `models/generation.py` is the torch twin of this file.

Shape legend: B prompts, N rows fed to the decoder (B x beams, or B x return sequences), T0 prompt length,
T tokens so far, S attention-mask length (cache + new tokens), V vocabulary, nb beams, K beam candidates kept
per prompt, L = T0 + max_new_tokens.

transformers behaviours kept on purpose:
- Scores stay float32 throughout, with every Python scalar (penalties, temperature, 1 - top_p, the length
  penalty divisor, -1e9) applied as float32, as torch does for `float32_tensor op python_float`; top-p's
  cumulative sum accumulates in float64 and rounds each partial sum to float32, as torch's CPU cumsum does.
- Without an attention mask, one is inferred from pad_token_id only when pad occurs in the prompt and is not
  an eos id; with GPT-2's defaults (pad falls back to eos) the mask is all ones, even for a padded batch.
- Repetition penalty and no-repeat-ngram see the whole row, left padding and pads after eos included.
- Beam scores are sum_logprobs / (new tokens, eos included) ** length_penalty. early_stopping=False still stops
  a prompt once its best running beam, scored at the current length, cannot beat its worst finished one;
  "never" scores it at max length instead (when length_penalty > 0).
- Beam search pads short outputs with pad_token_id, except pad_token_id 0, which is falsy in transformers'
  `pad_token_id or eos_token_id[0]` and pads with the first eos id instead.

Ties and rounding. Greedy uses `np.argmax` (first maximum), exactly `torch.argmax`. Every top-k selection
(beam candidates, running beams, finished beams, beam sampling) uses `topk_indices`: largest first, equal values
by increasing index (lower beam, then lower token id); top-p sorts stably too. torch promises no order among
equal values: torch.topk on CPU inherits libstdc++'s partial_sort / nth_element, on CUDA a radix select, and
torch.sort on CPU is not stable either, so no backend-independent order exists to copy, and stable-by-index is
the rule argmax already follows. In beam search an exact tie between real scores needs two continuations with
bitwise-equal accumulated log-probs (rare with float32 logits, likelier with fp16 ones); the ties that always
occur are among -1e9-sized placeholders (beams 1.. at the first step, unfilled finished slots), which never
reach the output unless fewer than num_return_sequences hypotheses finish. numpy's exp, log and sums are not
torch's vectorised kernels, so log-softmax and softmax values can differ from transformers' in the last bit:
a beam or a top-p boundary can only flip between candidates that close.

Deliberate differences from transformers, each an error where transformers warns or misbehaves: right-padded
prompts, NaN or +inf logits from the backend, min_new_tokens > max_new_tokens, and token ids outside the
vocabulary raise ValueError (an eos id past it is allowed: it never ends a row, as in transformers). max_length
counts the prompt and max_new_tokens wins over it, as in transformers. Sampling uses
`np.random.default_rng(seed)`: the exponential race argmax(p / Exp(1)), and for beam sampling its top K, the same
without-replacement scheme torch.multinomial uses.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

__all__ = [
    "Decoder",
    "GenerationOptions",
    "LogitsProcessor",
    "generate",
    "logits_processors",
    "min_new_tokens_filter",
    "no_repeat_ngram",
    "repetition_penalty",
    "temperature_scale",
    "top_k_filter",
    "top_p_filter",
    "topk_indices",
]

NEG = np.float32(-1.0e9)  # transformers' "impossible" beam score (exact in float32)
_SMALL_SORT = 256  # rows up to this long are fully sorted by topk_indices; longer ones are partitioned first


class Decoder(Protocol):
    """A model with its own KV cache. First call: whole (left-padded) prompt, empty cache.

    `generate` expects a fresh decoder (empty cache) and leaves the cache in an unspecified state. For beam
    search and for num_return_sequences > 1 it repeats each prompt row before the first step, as transformers'
    `_expand_inputs_for_generation` does, so a decoder never needs to expand its cache itself.
    """

    def step(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray) -> np.ndarray:
        """input_ids/position_ids (B, T) int64, attention_mask (B, S) int64 covering cache + new tokens;
        returns float32 logits of the LAST position, shape (B, V).
        Appends the new tokens' keys/values to its cache."""
        ...

    def reorder(self, beam_idx: np.ndarray) -> None:
        """Reorder the cache's batch rows: row i becomes old row beam_idx[i] (beam search)."""
        ...


# ---- options -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GenerationOptions:
    """Decoding options with transformers' names and defaults, validated on construction.

    eos_token_id / pad_token_id, when not None, override the model's ids passed to `generate`.
    """

    max_new_tokens: int | None = None  # None: max_length - prompt length if set, else 20 (fewer near n_positions)
    max_length: int | None = None  # prompt + new tokens; max_new_tokens wins when both are set (transformers)
    min_new_tokens: int = 0  # eos is blocked until this many tokens are new
    do_sample: bool = False
    temperature: float = 1.0  # sampling only; must be > 0 then
    top_k: int | None = 50  # sampling only; 0 or None disables
    top_p: float = 1.0  # sampling only; 1.0 disables
    repetition_penalty: float = 1.0  # 1.0 disables
    no_repeat_ngram_size: int = 0  # 0 disables
    num_beams: int = 1  # > 1: beam search (with do_sample: beam sampling, as transformers)
    length_penalty: float = 1.0  # beam search: score = sum_logprobs / new_tokens ** length_penalty
    early_stopping: bool | str = False  # beam search: True, False or "never"
    num_return_sequences: int = 1
    eos_token_id: int | tuple[int, ...] | None = None  # None: the model's
    pad_token_id: int | None = None  # None: the model's, else the first eos id
    seed: int | None = None  # sampling: None draws fresh OS entropy

    def __post_init__(self) -> None:
        if self.max_new_tokens is not None:
            _check_int("max_new_tokens", self.max_new_tokens, 1, "ask for at least one new token")
        if self.max_length is not None:
            _check_int("max_length", self.max_length, 1, "it counts the prompt too; or set max_new_tokens")
        _check_int("min_new_tokens", self.min_new_tokens, 0, "use 0 to allow eos right away")
        # Known here unless max_length sets it from the prompt's length (resolved() checks it again then).
        max_new = self.max_new_tokens if self.max_new_tokens is not None or self.max_length is not None \
            else DEFAULT_MAX_NEW_TOKENS
        if max_new is not None and self.min_new_tokens > max_new:
            raise ValueError(
                f"min_new_tokens={self.min_new_tokens} exceeds max_new_tokens={max_new}: "
                f"raise max_new_tokens to at least {self.min_new_tokens} or lower min_new_tokens"
            )
        if not isinstance(self.do_sample, bool):
            raise ValueError(
                f"do_sample={self.do_sample!r} is not a bool: pass True to sample, False for greedy / beams"
            )
        if not _is_number(self.temperature) or (self.do_sample and not (0 < self.temperature < math.inf)):
            raise ValueError(
                f"temperature={self.temperature!r} must be a number > 0 when do_sample=True: use e.g. 0.7 "
                "(1.0 leaves the distribution as is), or do_sample=False for greedy decoding"
            )
        if self.top_k is not None:
            _check_int("top_k", self.top_k, 0, "use e.g. 50, or 0 / None to turn top-k filtering off")
        if not (_is_number(self.top_p) and 0 < self.top_p <= 1):
            raise ValueError(
                f"top_p={self.top_p!r} is outside (0, 1]: use a probability such as 0.9 "
                "(1.0 turns nucleus filtering off)"
            )
        if not (_is_number(self.repetition_penalty) and 0 < self.repetition_penalty < math.inf):
            raise ValueError(
                f"repetition_penalty={self.repetition_penalty!r} must be > 0: 1.0 turns it off, "
                "values above 1 (e.g. 1.2) discourage repeats"
            )
        _check_int("no_repeat_ngram_size", self.no_repeat_ngram_size, 0, "use 0 to turn it off, or e.g. 3")
        _check_int("num_beams", self.num_beams, 1, "use 1 for greedy / sampling, or e.g. 4 for beam search")
        if not (_is_number(self.length_penalty) and math.isfinite(self.length_penalty)):
            raise ValueError(
                f"length_penalty={self.length_penalty!r} is not a finite number: use e.g. 1.0 (> 0 favours longer "
                "beams, < 0 shorter ones)"
            )
        if not (isinstance(self.early_stopping, bool) or self.early_stopping == "never"):
            raise ValueError(
                f"early_stopping={self.early_stopping!r} is not one of True, False, 'never': use True to stop once "
                "num_beams sequences are finished, False for transformers' heuristic, 'never' for the full search"
            )
        _check_int("num_return_sequences", self.num_return_sequences, 1, "use 1 or more")
        if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
            raise ValueError(
                f"num_return_sequences={self.num_return_sequences} exceeds num_beams={self.num_beams}: "
                "beam search keeps num_beams sequences per prompt; "
                f"set num_beams >= {self.num_return_sequences} or lower num_return_sequences"
            )
        if self.num_beams == 1 and not self.do_sample and self.num_return_sequences > 1:
            raise ValueError(
                f"num_return_sequences={self.num_return_sequences} with greedy decoding (num_beams=1, "
                "do_sample=False) would return identical copies: set do_sample=True or num_beams >= "
                f"{self.num_return_sequences}"
            )
        if isinstance(self.eos_token_id, np.ndarray):  # as transformers takes a tensor of ids
            object.__setattr__(self, "eos_token_id", self.eos_token_id.tolist())  # 0-d: one int
        if isinstance(self.eos_token_id, (list, tuple)):
            if not self.eos_token_id:
                raise ValueError(f"eos_token_id={self.eos_token_id!r} names no token: use None for the model's eos id")
            for token in self.eos_token_id:
                _check_int("eos_token_id", token, 0, "token ids are non-negative")
            object.__setattr__(self, "eos_token_id", tuple(int(t) for t in self.eos_token_id))
        elif self.eos_token_id is not None:
            _check_int("eos_token_id", self.eos_token_id, 0, "token ids are non-negative")
        if self.pad_token_id is not None:
            _check_int("pad_token_id", self.pad_token_id, 0, "token ids are non-negative")
        if self.seed is not None:
            _check_int("seed", self.seed, 0, "use a non-negative integer, or None for fresh entropy")

    def with_overrides(self, **overrides: object) -> GenerationOptions:
        """A copy with some fields replaced (and validated); unknown names raise TypeError listing valid ones."""
        names = [field.name for field in dataclasses.fields(self)]
        unknown = sorted(set(overrides) - set(names))
        if unknown:
            hints = "".join(f" ({key}: {_HINTS[key]})" for key in unknown if key in _HINTS)
            raise TypeError(
                f"unknown generation option(s) {', '.join(unknown)}{hints}; valid options: {', '.join(names)}"
            )
        # transformers reads None as "off" for these (generate(temperature=None) samples unscaled).
        overrides = {key: OFF_VALUES[key] if value is None and key in OFF_VALUES else value
                     for key, value in overrides.items()}
        return dataclasses.replace(self, **overrides)

    def resolved(self, prompt_len: int, n_positions: int | None = None) -> GenerationOptions:
        """A copy with max_new_tokens set from max_new_tokens, max_length or the default, as transformers does."""
        if self.max_new_tokens is not None:
            new = self.max_new_tokens
        elif self.max_length is not None:
            if n_positions is not None and self.max_length > n_positions:
                raise ValueError(f"max_length={self.max_length} exceeds n_positions {n_positions}: lower max_length "
                                 f"to {n_positions} or fewer (it counts the prompt)")
            new = self.max_length - prompt_len
            if new < 1:
                raise ValueError(
                    f"input_ids has {prompt_len} tokens but max_length={self.max_length}, which counts the prompt: "
                    f"raise max_length above {prompt_len}, or set max_new_tokens (new tokens only)"
                )
        else:  # transformers: max_length 20 counted from the prompt's end, capped at the position table
            room = n_positions - prompt_len if n_positions is not None else DEFAULT_MAX_NEW_TOKENS
            new = min(DEFAULT_MAX_NEW_TOKENS, room)
            if new < 1:
                raise ValueError(f"input_ids has {prompt_len} tokens, which fills n_positions {n_positions}: shorten "
                                 f"the prompt below {n_positions} tokens")
        if self.min_new_tokens > new:  # a length set by max_length or the position table, not by max_new_tokens
            fits = n_positions is None or prompt_len + self.min_new_tokens <= n_positions
            if self.max_new_tokens is None and self.max_length is not None and fits:
                why = (f"max_length={self.max_length} leaves after a {prompt_len}-token prompt: raise max_length to "
                       f"{prompt_len + self.min_new_tokens} or lower min_new_tokens")
            else:
                why = (f"n_positions {n_positions} leaves after a {prompt_len}-token prompt: shorten the prompt or "
                       "lower min_new_tokens")
            raise ValueError(f"min_new_tokens={self.min_new_tokens} exceeds the {new} new tokens {why}")
        return dataclasses.replace(self, max_new_tokens=new, max_length=None)


_HINTS = {"min_length": "use min_new_tokens"}
OFF_VALUES = {"do_sample": False, "temperature": 1.0, "top_p": 1.0, "repetition_penalty": 1.0,
              "no_repeat_ngram_size": 0, "min_new_tokens": 0}
DEFAULT_MAX_NEW_TOKENS = 20  # transformers' max_length 20, which it counts from the prompt's end when left unset


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _check_int(name: str, value: object, minimum: int, fix: str) -> None:
    """value must be an int >= minimum, or raise ValueError naming both and the fix."""
    is_int = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if not is_int or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}: {fix}")


# ---- logits processors: pure functions, numerically transformers' classes --------------------------------

# A logits processor: (input_ids (N, T) int64, scores (N, V) float32) -> new scores (N, V) float32.
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
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):  # a vanishing temperature: _draw says so
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
        probs = _softmax(scores)  # (N, V)
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


def _process(processors: list[LogitsProcessor], input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
    for processor in processors:
        scores = processor(input_ids, scores)
    return scores


# ---- float32 kernels and selection ---------------------------------------------------------------------------


def _softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def _log_softmax(x: np.ndarray) -> np.ndarray:
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


def _sample(probs: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """(R, n) probabilities -> (R, k) indices drawn without replacement, in draw order.

    The exponential race: argsort of p / Exp(1) descending draws in proportion to p, then among the rest in
    proportion to p, ... (torch.multinomial without replacement does the same); zero-probability entries
    come last, so they are never drawn while a positive one is left.
    """
    race = rng.standard_exponential(probs.shape)
    keys = np.divide(probs, race, out=np.full(probs.shape, -1.0), where=probs > 0)
    return topk_indices(keys, k)


def _draw(scores: np.ndarray, rng: np.random.Generator, step: int) -> np.ndarray:
    """(N, V) processed scores -> (N,) one token per row drawn from their softmax."""
    empty = np.flatnonzero(~(scores > -np.inf).any(axis=-1)).tolist()
    if empty:
        raise ValueError(
            f"rows {empty} have no token left to sample at step {step}: the logits processors set every score "
            "to -inf; relax no_repeat_ngram_size / repetition_penalty or check the decoder's logits"
        )
    return _sample(_probabilities(scores, step), 1, rng)[:, 0]


def _probabilities(scores: np.ndarray, step: int) -> np.ndarray:
    """softmax(scores) (R, X) to sample from; ValueError naming the rows whose scores overflowed float32."""
    with np.errstate(invalid="ignore", over="ignore"):  # inf scores: reported below, by name
        probs = _softmax(scores)
    bad = np.flatnonzero(~np.isfinite(probs).all(axis=-1)).tolist()
    if bad:  # transformers raises too ("probability tensor contains either inf, nan or element < 0")
        raise ValueError(
            f"rows {bad} have no valid distribution to sample at step {step}: the scaled scores overflowed float32 "
            "(a temperature far below 1e-5 divides them to inf); raise the temperature or use do_sample=False"
        )
    return probs


def _gather_beams(tensor: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """tensor (B, X, ...) -> (B, Y, ...) picking indices (B, Y) along the beam axis."""
    return tensor[np.arange(tensor.shape[0])[:, None], indices]


# ---- inputs ----------------------------------------------------------------------------------------------------


def _as_eos(eos_token_id: int | Sequence[int] | None) -> np.ndarray | None:
    """None, an id or a sequence of ids -> None or (E,) int64."""
    if eos_token_id is None:
        return None
    ids = [eos_token_id] if isinstance(eos_token_id, (int, np.integer)) else list(eos_token_id)
    if not ids:
        return None
    for token in ids:
        _check_int("eos_token_id", token, 0, "token ids are non-negative")
    return np.asarray(ids, dtype=np.int64)


def _check_prompt(input_ids: np.ndarray, attention_mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Validated int64 copies of the prompt and its mask; ValueError names the numbers and the fix."""
    input_ids = np.asarray(input_ids)
    if input_ids.ndim != 2 or not np.issubdtype(input_ids.dtype, np.integer):
        raise ValueError(
            f"input_ids has shape {input_ids.shape} and dtype {input_ids.dtype}: expected integer token ids of "
            "shape (batch, prompt_length); add a batch axis with [None]"
        )
    batch, prompt_len = input_ids.shape
    if batch == 0 or prompt_len == 0:
        raise ValueError(
            f"input_ids has shape {input_ids.shape}: generate needs at least one prompt of 1+ tokens "
            "(GPT-2 starts unconditional text from its bos/eos token)"
        )
    if input_ids.min() < 0:
        raise ValueError(f"input_ids contains token id {int(input_ids.min())}: token ids are non-negative")
    if attention_mask is None:
        return input_ids.astype(np.int64), None
    attention_mask = np.asarray(attention_mask)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask has shape {attention_mask.shape} but input_ids has shape {input_ids.shape}: "
            "pass one 0/1 entry per prompt token"
        )
    if not np.isin(attention_mask, (0, 1)).all():
        raise ValueError("attention_mask holds values other than 0 and 1: mark real tokens 1 and padding 0")
    right_padded = np.flatnonzero(attention_mask[:, -1] == 0).tolist()
    if right_padded:
        raise ValueError(
            f"attention_mask ends in 0 for rows {right_padded}: pad prompts on the left "
            "(tokenizer padding_side='left') so every row's last token is real"
        )
    return input_ids.astype(np.int64), attention_mask.astype(np.int64)


def _check_vocab(vocab: int, input_ids: np.ndarray, eos: np.ndarray | None, pad: int | None,
                 pad_from_eos: bool = False) -> None:
    """Token ids must index the logits the decoder returned.

    An eos id past the vocabulary is never generated, so it never ends a row (transformers runs too: small test
    configs keep GPT-2's eos 50256). pad is fed back for ended rows, so it must be real once an eos id can end one.
    """
    named = [("input_ids", int(input_ids.max()))]
    if pad is not None and eos is not None and (eos < vocab).any():
        named.append(("pad_token_id", pad))
    for name, token in named:
        if token >= vocab:
            fed = ": rows that end on an eos id are fed it afterwards;" if name == "pad_token_id" else ":"
            defaulted = name == "pad_token_id" and pad_from_eos
            unset = " (no pad_token_id was set, so it is the first eos id: pass one)" if defaulted else ""
            raise ValueError(
                f"{name} {token} is out of range for vocab_size {vocab} (the decoder's logits width){fed} "
                f"use token ids in [0, {vocab}){unset}"
            )


def _check_logits(logits: np.ndarray, rows: int, vocab: int | None, step: int) -> np.ndarray:
    """The decoder's output as float32 (N, V), or ValueError naming what it returned."""
    logits = np.asarray(logits)
    if logits.ndim != 2 or logits.shape[0] != rows or (vocab is not None and logits.shape[1] != vocab):
        expected = f"({rows}, {vocab if vocab is not None else 'V'})"
        raise ValueError(
            f"decoder.step returned logits of shape {logits.shape} at step {step}: expected {expected}, "
            "the last position's logits for every row"
        )
    logits = logits.astype(np.float32, copy=False)
    if not (logits < np.inf).all():  # catches NaN and +inf in one pass
        bad = np.flatnonzero(~(logits < np.inf).all(axis=-1)).tolist()
        raise ValueError(
            f"decoder.step returned NaN or +inf logits for rows {bad} at step {step}: the backend overflowed "
            "(an fp16 graph without fp32 softmax?) or was fed bad inputs"
        )
    return logits


def _first_positions(attention_mask: np.ndarray) -> np.ndarray:
    """Position ids that skip left padding: 0 at each row's first real token, 1 on pads (as transformers)."""
    positions = np.cumsum(attention_mask, axis=-1) - 1  # (N, T0)
    positions[attention_mask == 0] = 1
    return positions


class _Feeder:
    """Feeds the decoder transformers' way: the whole prompt first, then only the newest token, with the
    attention mask one column of ones longer each step and the position = last column of cumsum(mask) - 1."""

    def __init__(self, decoder: Decoder, attention_mask: np.ndarray, max_new_tokens: int) -> None:
        rows, prompt_len = attention_mask.shape
        self.decoder = decoder
        self.mask = np.ones((rows, prompt_len + max_new_tokens), dtype=np.int64)  # (N, L)
        self.mask[:, :prompt_len] = attention_mask
        self.prompt_positions = _first_positions(attention_mask)  # (N, T0)
        self.next_position = attention_mask.sum(axis=-1)  # (N,) position of the first new token
        self.prompt_len = prompt_len
        self.vocab: int | None = None

    def step(self, tokens: np.ndarray, cur_len: int) -> np.ndarray:
        """tokens (N, >= cur_len) holding the row so far -> float32 logits (N, V) for position cur_len."""
        rows = tokens.shape[0]
        new = cur_len - self.prompt_len  # tokens generated so far
        if new == 0:
            input_ids = np.ascontiguousarray(tokens[:, :cur_len])  # (N, T0)
            position_ids = self.prompt_positions
        else:
            input_ids = np.ascontiguousarray(tokens[:, cur_len - 1 : cur_len])  # (N, 1)
            position_ids = (self.next_position + (new - 1))[:, None]  # (N, 1)
        mask = np.ascontiguousarray(self.mask[:, :cur_len])  # (N, S)
        logits = self.decoder.step(input_ids, mask, position_ids)
        logits = _check_logits(logits, rows, self.vocab, new)
        self.vocab = logits.shape[1]
        return logits


# ---- the decoding loops --------------------------------------------------------------------------------------


@dataclass
class _Plan:
    """What a decoding loop needs besides the decoder and the rows, resolved once per generate() call."""

    options: GenerationOptions
    eos: np.ndarray | None  # (E,)
    pad: int | None
    processors: list[LogitsProcessor]
    rng: np.random.Generator | None
    on_tokens: Callable[[np.ndarray], None] | None
    pad_from_eos: bool = False  # no pad_token_id was set: pad is the first eos id


def _greedy_or_sample(feeder: _Feeder, input_ids: np.ndarray, plan: _Plan) -> np.ndarray:
    """transformers' `_sample`: rows that hit eos keep being fed and get pad_token_id appended."""
    options, eos = plan.options, plan.eos
    rows, prompt_len = input_ids.shape
    max_length = prompt_len + options.max_new_tokens
    tokens = np.empty((rows, max_length), dtype=np.int64)  # (N, L), filled left to right
    tokens[:, :prompt_len] = input_ids
    unfinished = np.ones(rows, dtype=bool)  # (N,)
    cur_len = prompt_len
    while cur_len < max_length:
        logits = feeder.step(tokens, cur_len)  # (N, V)
        if cur_len == prompt_len:
            _check_vocab(logits.shape[1], input_ids, eos, plan.pad, plan.pad_from_eos)
        scores = _process(plan.processors, tokens[:, :cur_len], logits)
        # (N,) a multinomial draw, or the first maximum as torch.argmax
        next_tokens = _draw(scores, plan.rng, cur_len - prompt_len) if options.do_sample else np.argmax(scores, -1)
        if eos is not None:
            next_tokens = np.where(unfinished, next_tokens, plan.pad)
        tokens[:, cur_len] = next_tokens
        cur_len += 1
        if plan.on_tokens is not None:
            plan.on_tokens(next_tokens.copy())
        if eos is not None:
            unfinished &= ~np.isin(next_tokens, eos)
            if not unfinished.any():
                break
    return tokens[:, :cur_len].copy()


def _beam_search(feeder: _Feeder, input_ids: np.ndarray, plan: _Plan) -> np.ndarray:
    """transformers' vectorised `_beam_search` (or beam sampling): nb running beams + nb finished per prompt."""
    options, eos, decoder = plan.options, plan.eos, feeder.decoder
    beams, length_penalty, early_stopping = options.num_beams, options.length_penalty, options.early_stopping
    rows, prompt_len = input_ids.shape
    batch = rows // beams
    max_length = prompt_len + options.max_new_tokens
    # K candidates: enough that nb of them survive even when the best ones all end on an eos id.
    keep = max(2, 1 + (len(eos) if eos is not None else 0)) * beams
    is_top = np.arange(keep) < beams  # (K,) only these may finish a sequence
    # transformers' `pad_token_id or eos_token_id[0]`: a pad id of 0 is falsy and pads with eos.
    fill = (plan.pad if plan.pad else int(eos[0])) if eos is not None else -1

    running = np.full((batch, beams, max_length), fill, dtype=np.int64)  # (B, nb, L)
    running[:, :, :prompt_len] = input_ids.reshape(batch, beams, prompt_len)
    running_scores = np.zeros((batch, beams), dtype=np.float32)
    running_scores[:, 1:] = NEG  # the beams start identical: expand only the first one at step 0
    finished = running.copy()  # (B, nb, L)
    finished_scores = np.full((batch, beams), NEG, dtype=np.float32)
    finished_lengths = np.zeros((batch, beams), dtype=np.int64)  # new tokens of each finished slot
    is_finished = np.zeros((batch, beams), dtype=bool)
    improvable = np.ones((batch, 1), dtype=bool)  # transformers' is_early_stop_heuristic_unsatisfied
    batch_offset = np.arange(batch)[:, None] * beams  # (B, 1)

    for cur_len in range(prompt_len, max_length):
        flat = running[:, :, :cur_len].reshape(rows, cur_len)  # (N, T) a view
        logits = feeder.step(flat, cur_len)  # (N, V)
        if cur_len == prompt_len:
            _check_vocab(logits.shape[1], input_ids, eos, plan.pad, plan.pad_from_eos)
        log_probs = _process(plan.processors, flat, _log_softmax(logits))  # (N, V)
        vocab = log_probs.shape[-1]
        totals = (log_probs.reshape(batch, beams, vocab) + running_scores[:, :, None]).reshape(batch, -1)

        # Top K continuations over all beams of a prompt (or K drawn without replacement): _get_top_k_continuations.
        top_idx = (_sample(_probabilities(totals, cur_len - prompt_len), keep, plan.rng) if options.do_sample
                   else topk_indices(totals, keep))
        top_scores = np.take_along_axis(totals, top_idx, axis=1)  # (B, K)
        top_beams = top_idx // vocab  # (B, K)
        candidates = _gather_beams(running, top_beams)  # (B, K, L)
        candidates[:, :, cur_len] = top_idx % vocab
        ends = np.full((batch, keep), cur_len + 1 >= max_length)  # (B, K) stopping criteria
        if eos is not None:
            ends |= np.isin(candidates[:, :, cur_len], eos)

        # The best nb candidates that did not end keep running: _get_running_beams_for_next_iteration.
        running_candidates = top_scores + ends.astype(np.float32) * NEG
        next_idx = topk_indices(running_candidates, beams)  # (B, nb)
        running = _gather_beams(candidates, next_idx)
        running_scores = _gather_beams(running_candidates, next_idx)
        beam_idx = (_gather_beams(top_beams, next_idx) + batch_offset).reshape(rows)  # (N,) cache rows

        # Candidates that ended among the top nb compete with the finished ones: _update_finished_beams.
        just_finished = ends & is_top[None, :]  # (B, K)
        new_tokens = cur_len + 1 - prompt_len
        scores = top_scores / np.float32(new_tokens**length_penalty)
        full = is_finished.all(axis=-1, keepdims=True) & (early_stopping is True)  # (B, 1)
        scores += full.astype(np.float32) * NEG
        scores += (~improvable).astype(np.float32) * NEG
        scores += (~just_finished).astype(np.float32) * NEG
        merged_scores = np.concatenate((finished_scores, scores), axis=1)  # (B, nb + K)
        merged_idx = topk_indices(merged_scores, beams)  # (B, nb)
        finished = _gather_beams(np.concatenate((finished, candidates), axis=1), merged_idx)
        finished_scores = _gather_beams(merged_scores, merged_idx)
        lengths = np.concatenate((finished_lengths, np.full((batch, keep), new_tokens)), axis=1)
        finished_lengths = _gather_beams(lengths, merged_idx)
        is_finished = _gather_beams(np.concatenate((is_finished, just_finished), axis=1), merged_idx)

        # Can the best running beam still beat the worst finished one? _check_early_stop_heuristic.
        never = early_stopping == "never" and length_penalty > 0.0  # then the best score is at max length
        best_length = max_length - prompt_len if never else new_tokens
        best_running = running_scores[:, :1] / np.float32(best_length**length_penalty)  # (B, 1)
        worst_finished = np.where(is_finished, finished_scores.min(axis=1, keepdims=True), NEG)  # (B, nb)
        improvable &= (best_running > worst_finished).any(axis=-1, keepdims=True)
        # _beam_search_has_unfinished_sequences
        all_full = bool(is_finished.all()) and early_stopping is True
        if not improvable.any() or all_full or ends.all():
            break
        decoder.reorder(beam_idx)

    returned = options.num_return_sequences
    sequences = finished[:, :returned].reshape(batch * returned, max_length)  # (B * returned, L)
    return sequences[:, : prompt_len + int(finished_lengths[:, :returned].max())].copy()


# ---- entry point -----------------------------------------------------------------------------------------------


def generate(
    decoder: Decoder,
    input_ids: np.ndarray,
    attention_mask: np.ndarray | None,
    options: GenerationOptions,
    *,
    eos_token_id: int | Sequence[int] | None,
    pad_token_id: int | None,
    on_tokens: Callable[[np.ndarray], None] | None = None,
) -> np.ndarray:
    """Prompt + new tokens, int64 (batch * num_return_sequences, prompt_len + new_len), as transformers.

    input_ids (B, T0): prompts padded on the left, attention_mask (B, T0) 1 on real tokens (None: inferred as
    transformers does). eos_token_id / pad_token_id are the model's; options.eos_token_id / pad_token_id
    override them when set, and pad falls back to the first eos id. Generation stops once every row has ended;
    the output is as long as the longest row, shorter rows padded with pad_token_id.

    on_tokens receives the (N,) ids appended at each step (pads for ended rows), once per step, while
    greedy decoding or sampling runs. Beam search only knows its sequences at the end: it then calls on_tokens
    once per generated column of the returned sequences, in order, so a streaming consumer still sees every
    token.
    """
    if not isinstance(options, GenerationOptions):
        raise TypeError(f"options must be a runtime.decoding.GenerationOptions, got {type(options).__name__}")
    input_ids, attention_mask = _check_prompt(input_ids, attention_mask)
    options = options.resolved(input_ids.shape[1])
    eos = _as_eos(options.eos_token_id if options.eos_token_id is not None else eos_token_id)
    pad = options.pad_token_id if options.pad_token_id is not None else pad_token_id
    if pad is not None:
        _check_int("pad_token_id", pad, 0, "token ids are non-negative")
        pad = int(pad)
    pad_from_eos = pad is None and eos is not None
    if pad_from_eos:
        pad = int(eos[0])  # transformers: "Setting `pad_token_id` to `eos_token_id` for open-end generation"
    if attention_mask is None:
        # transformers infers a mask only when pad is set, present in the prompt, and not an eos id.
        inferable = pad is not None and (input_ids == pad).any() and (eos is None or pad not in eos)
        attention_mask = (input_ids != pad).astype(np.int64) if inferable else np.ones_like(input_ids)

    copies = max(options.num_beams, options.num_return_sequences)
    input_ids = np.repeat(input_ids, copies, axis=0)  # (N, T0), each prompt's copies adjacent
    attention_mask = np.repeat(attention_mask, copies, axis=0)
    rng = np.random.default_rng(options.seed) if options.do_sample else None
    processors = logits_processors(options, eos, input_ids.shape[1])
    streaming = on_tokens if options.num_beams == 1 else None
    plan = _Plan(options, eos, pad, processors, rng, streaming, pad_from_eos)
    feeder = _Feeder(decoder, attention_mask, options.max_new_tokens)
    if options.num_beams == 1:
        return _greedy_or_sample(feeder, input_ids, plan)
    sequences = _beam_search(feeder, input_ids, plan)
    if on_tokens is not None:
        for column in range(input_ids.shape[1], sequences.shape[1]):
            on_tokens(sequences[:, column].copy())
    return sequences
