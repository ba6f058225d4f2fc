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

Ties and rounding (selection and sampling live in `runtime.sampling`, the processors in
`runtime.logits_processors`, the options in `runtime.options`). Greedy uses `np.argmax` (first maximum), exactly
`torch.argmax`. Every top-k selection (beam candidates, running beams, finished beams, beam sampling) uses
`topk_indices`: largest first, equal values by increasing index (lower beam, then lower token id); top-p sorts
stably too. torch promises no order among equal values: torch.topk on CPU inherits libstdc++'s partial_sort /
nth_element, on CUDA a radix select, and torch.sort on CPU is not stable either, so no backend-independent order
exists to copy, and stable-by-index is the rule argmax already follows. In beam search an exact tie between real
scores needs two continuations with bitwise-equal accumulated log-probs (rare with float32 logits, likelier with
fp16 ones); the ties that always occur are among -1e9-sized placeholders (beams 1.. at the first step, unfilled
finished slots), which never reach the output unless fewer than num_return_sequences hypotheses finish. numpy's
exp, log and sums are not torch's vectorised kernels, so log-softmax and softmax values can differ from
transformers' in the last bit: a beam or a top-p boundary can only flip between candidates that close.

Deliberate differences from transformers, each an error where transformers warns or misbehaves: right-padded
prompts, NaN or +inf logits from the backend, min_new_tokens > max_new_tokens, and token ids outside the
vocabulary raise ValueError (an eos id past it is allowed: it never ends a row, as in transformers). max_length
counts the prompt and max_new_tokens wins over it, as in transformers. Sampling uses
`np.random.default_rng(seed)`: the exponential race argmax(p / Exp(1)), and for beam sampling its top K, the same
without-replacement scheme torch.multinomial uses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .logits_processors import (
    LogitsProcessor,
    apply_processors,
    logits_processors,
    min_new_tokens_filter,
    no_repeat_ngram,
    repetition_penalty,
    temperature_scale,
    top_k_filter,
    top_p_filter,
)
from .options import GenerationOptions, check_int
from .sampling import draw, log_softmax, probabilities, sample_without_replacement, topk_indices

# The processors, options and topk_indices are re-exported: `runtime.decoding` was their home before the split.
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



# ---- the beam helpers ---------------------------------------------------------------------------------------


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
        check_int("eos_token_id", token, 0, "token ids are non-negative")
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
        scores = apply_processors(plan.processors, tokens[:, :cur_len], logits)
        # (N,) a multinomial draw, or the first maximum as torch.argmax
        next_tokens = draw(scores, plan.rng, cur_len - prompt_len) if options.do_sample else np.argmax(scores, -1)
        if eos is not None:
            next_tokens = np.where(unfinished, next_tokens, plan.pad)
        tokens[:, cur_len] = next_tokens
        cur_len += 1
        if plan.on_tokens is not None:
            plan.on_tokens(next_tokens.copy())
        if eos is not None:
            unfinished &= ~(next_tokens[:, None] == eos).any(-1)  # np.isin costs ~30 us a step; E is tiny
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
        log_probs = apply_processors(plan.processors, flat, log_softmax(logits))  # (N, V)
        vocab = log_probs.shape[-1]
        totals = (log_probs.reshape(batch, beams, vocab) + running_scores[:, :, None]).reshape(batch, -1)

        # Top K continuations over all beams of a prompt (or K drawn without replacement): _get_top_k_continuations.
        if options.do_sample:
            top_idx = sample_without_replacement(probabilities(totals, cur_len - prompt_len), keep, plan.rng)
        else:
            top_idx = topk_indices(totals, keep)
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
        check_int("pad_token_id", pad, 0, "token ids are non-negative")
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
