"""Reference decoding with the KV cache: greedy, sampling (temperature / top-k / top-p) and beam search.

Token for token with transformers 4.57 `generate()` for greedy and beam search, and for sampling when both
draw from the same RNG state. References: transformers 4.57 `generation/utils.py` (`_sample`; the
vectorised `_beam_search` with `_get_top_k_continuations`, `_get_running_beams_for_next_iteration`,
`_update_finished_beams`, `_check_early_stop_heuristic`, `_beam_search_has_unfinished_sequences`;
`prepare_inputs_for_generation` for position ids and cache slicing), `generation/logits_process.py`,
`generation/stopping_criteria.py`. Shape legend: B prompts, N rows (B x beams or x return sequences),
T tokens so far, T0 prompt length, V vocabulary, K beam candidates kept per prompt, L max length.

transformers behaviours kept on purpose, so this stays a second oracle (each surprised someone):
- Without an attention mask, one is inferred from pad_token_id only when pad differs from every eos id;
  with GPT-2's defaults (pad falls back to eos) the mask is all ones, even for a padded batch.
- Repetition penalty and no-repeat-ngram see the whole row, left padding included.
- Beam search: a finished sequence scores sum_logprobs / new_tokens ** length_penalty, eos counted,
  the prompt and its padding not; running beams rank by the raw sum. Only candidates among the best
  num_beams of a step may finish. early_stopping=True ends a prompt once it has num_beams finished
  sequences; False also ends it when the best running beam, scored at the current length, cannot beat
  the worst finished one (a heuristic); "never" scores that beam at max length when length_penalty > 0.
- Beam search pads short outputs with pad_token_id, except pad_token_id 0, which is falsy in
  `pad or eos[0]` and pads with the first eos id.
Lengths count as transformers counts them: max_length includes the prompt, max_new_tokens wins when both are
given, and with neither a call adds 20 tokens. An eos id past the vocabulary never ends a row (small test configs
keep GPT-2's eos 50256) instead of being refused.
Deliberate differences: bad options and inputs raise ValueError up front where transformers warns
(right padding, prompt + max_new_tokens beyond n_positions, min_new_tokens > max_new_tokens), and
`seed` draws from a private torch.Generator (seed=None uses the global RNG, as transformers does).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from runtime.options import FROM_MODEL, FromModel, GenerationOptions

from .validation import check_token_ids

# A logits processor: (input_ids (N, T), scores (N, V)) -> scores (N, V).
Processor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
NEG = -1.0e9  # transformers' "impossible" beam score
# ---- options -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GenerationConfig(GenerationOptions):
    """The runtime's GenerationOptions (one validation, one set of names), read the reference model's way.

    eos_token_id / pad_token_id default to the model config's ids (FROM_MODEL); an explicit None turns eos off
    (never stop early) and lets pad fall back to the first eos id. seed=None draws from torch's global RNG.
    """

    eos_token_id: int | list[int] | tuple[int, ...] | None | FromModel = FROM_MODEL  # None: never stop early
    pad_token_id: int | None | FromModel = FROM_MODEL  # None or unset in the model config: the first eos id
    seed: int | None = None  # sampling: private generator; None draws from torch's global RNG

    _EOS_NONE = "use None to never stop at an eos token"
    _SEED_NONE = "or None for torch's global RNG"


# ---- logits processors: pure functions, numerically transformers' classes ---------------------------


def repetition_penalty(input_ids: torch.Tensor, scores: torch.Tensor, penalty: float) -> torch.Tensor:
    """Divide positive scores / multiply negative ones of every token already in the row (CTRL paper)."""
    seen = torch.gather(scores, 1, input_ids)  # (N, T)
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return scores.scatter(1, input_ids, seen)


def no_repeat_ngram(input_ids: torch.Tensor, scores: torch.Tensor, ngram_size: int) -> torch.Tensor:
    """Ban each token that would repeat an n-gram already in the row (fairseq's rule)."""
    cur_len = input_ids.shape[-1]
    if cur_len + 1 < ngram_size:
        return scores
    scores = scores.clone()
    for row, tokens in enumerate(input_ids.tolist()):
        prefix = tuple(tokens[cur_len + 1 - ngram_size :])  # the last n - 1 tokens
        ngrams = zip(*(tokens[i:] for i in range(ngram_size)), strict=False)
        scores[row, [ngram[-1] for ngram in ngrams if ngram[:-1] == prefix]] = -math.inf
    return scores


def min_new_tokens_filter(
    input_ids: torch.Tensor, scores: torch.Tensor, eos: torch.Tensor, prompt_len: int, min_new_tokens: int
) -> torch.Tensor:
    """-inf on the eos ids while fewer than min_new_tokens tokens are new (MinNewTokensLengthLogitsProcessor)."""
    if input_ids.shape[-1] - prompt_len >= min_new_tokens:
        return scores
    is_eos = torch.isin(torch.arange(scores.shape[-1], device=scores.device), eos)  # (V,)
    return torch.where(is_eos, -math.inf, scores)


def temperature_scale(scores: torch.Tensor, temperature: float) -> torch.Tensor:
    """scores / temperature."""
    return scores / temperature


def top_k_filter(scores: torch.Tensor, top_k: int, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """-inf below the k-th highest score (ties with it survive)."""
    k = min(max(top_k, min_tokens_to_keep), scores.shape[-1])
    kth = torch.topk(scores, k)[0][..., -1, None]  # (N, 1)
    return scores.masked_fill(scores < kth, -math.inf)


def top_p_filter(scores: torch.Tensor, top_p: float, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """-inf outside the smallest set of most likely tokens whose probability reaches top_p."""
    sorted_scores, order = torch.sort(scores, descending=False)  # (N, V) ascending
    cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative <= (1 - top_p)
    remove[..., -min_tokens_to_keep:] = False
    return scores.masked_fill(remove.scatter(1, order, remove), -math.inf)


def logits_processors(config: GenerationConfig, eos: torch.Tensor | None, prompt_len: int) -> list[Processor]:
    """The processors config asks for, in transformers' order: penalties, eos blocking, sampling warpers."""
    processors: list[Processor] = []
    if config.repetition_penalty != 1.0:
        processors.append(lambda ids, s: repetition_penalty(ids, s, config.repetition_penalty))
    if config.no_repeat_ngram_size > 0:
        processors.append(lambda ids, s: no_repeat_ngram(ids, s, config.no_repeat_ngram_size))
    if config.min_new_tokens > 0 and eos is not None:
        processors.append(lambda ids, s: min_new_tokens_filter(ids, s, eos, prompt_len, config.min_new_tokens))
    if config.do_sample:
        # Beam sampling keeps one token more than there are eos ids, so a beam can always continue.
        keep = (len(eos) + 1 if eos is not None else 2) if config.num_beams > 1 else 1
        if config.temperature != 1.0:
            processors.append(lambda ids, s: temperature_scale(s, config.temperature))
        if config.top_k:
            processors.append(lambda ids, s: top_k_filter(s, config.top_k, keep))
        if config.top_p < 1.0:
            processors.append(lambda ids, s: top_p_filter(s, config.top_p, keep))
    return processors


def _process(processors: list[Processor], input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    for processor in processors:
        scores = processor(input_ids, scores)
    return scores


# ---- the decoding loops -------------------------------------------------------------------------------


@dataclass
class _Plan:
    """What a decoding loop needs besides the model and its inputs, resolved once per generate() call."""

    config: GenerationConfig
    eos: torch.Tensor | None  # (E,)
    pad: int | None
    processors: list[Processor]
    generator: torch.Generator | None  # None: torch's global RNG


def _prepare_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip left padding: 0 at each row's first real token, 1 on pads (as transformers)."""
    position_ids = attention_mask.long().cumsum(-1) - 1  # (N, T)
    return position_ids.masked_fill_(attention_mask == 0, 1)


@functools.cache
def _keeps_logits(model_class: type) -> bool:
    """Whether forward() takes logits_to_keep (GPT2LMHeadModel does, GPT2DoubleHeadsModel does not)."""
    return "logits_to_keep" in inspect.signature(model_class.forward).parameters


def _step(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, past) -> tuple[torch.Tensor, tuple]:
    """One forward pass (whole prompt first, then only the newest token) -> fp32 last logits, cache."""
    position_ids = _prepare_positions(attention_mask)  # (N, T)
    if past is not None:
        input_ids, position_ids = input_ids[:, -1:], position_ids[:, -1:]  # (N, 1)
    extra = {"logits_to_keep": 1} if _keeps_logits(type(model)) else {}  # lm_head on the last position only
    out = model(
        input_ids=input_ids,
        past_key_values=past,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=True,
        **extra,
    )
    logits = out.logits[:, -1, :].to(dtype=torch.float32, copy=True)  # (N, V)
    return logits, out.past_key_values


def _grow(attention_mask: torch.Tensor) -> torch.Tensor:
    """One more column of ones for the token just generated."""
    return torch.cat([attention_mask, attention_mask.new_ones((attention_mask.shape[0], 1))], dim=-1)


def _greedy_or_sample(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, plan: _Plan
) -> torch.Tensor:
    """Greedy or multinomial decoding; rows that hit eos keep being fed and get pad_token_id appended."""
    config = plan.config
    unfinished = torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)  # (N,)
    past = None
    for _ in range(config.max_new_tokens):
        logits, past = _step(model, input_ids, attention_mask, past)  # (N, V)
        scores = _process(plan.processors, input_ids, logits)
        if config.do_sample:
            probs = F.softmax(scores, dim=-1)
            next_tokens = torch.multinomial(probs, num_samples=1, generator=plan.generator).squeeze(1)  # (N,)
        else:
            next_tokens = torch.argmax(scores, dim=-1)  # (N,)
        if plan.eos is not None:
            next_tokens = torch.where(unfinished, next_tokens, plan.pad)
        input_ids = torch.cat([input_ids, next_tokens[:, None]], dim=-1)  # (N, T + 1)
        attention_mask = _grow(attention_mask)
        if plan.eos is not None:
            unfinished &= ~torch.isin(next_tokens, plan.eos)
            if not unfinished.any():
                break
    return input_ids


def _gather_beams(tensor: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """tensor (B, X, ...) -> (B, Y, ...) picking indices (B, Y) along the beam axis."""
    while indices.dim() < tensor.dim():
        indices = indices.unsqueeze(-1)
    return torch.take_along_dim(tensor, indices, dim=1)


def _reorder_cache(past: tuple, beam_idx: torch.Tensor) -> tuple:
    """Each row's cache follows the beam it continues."""
    return tuple(tuple(t.index_select(0, beam_idx.to(t.device)) for t in layer) for layer in past)


def _beam_search(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, plan: _Plan) -> torch.Tensor:
    """transformers' vectorised beam search (or beam sampling): num_beams running + num_beams finished."""
    config, eos, device = plan.config, plan.eos, input_ids.device
    beams, length_penalty = config.num_beams, config.length_penalty
    rows, prompt_len = input_ids.shape
    batch = rows // beams
    max_length = prompt_len + config.max_new_tokens
    # K candidates: enough that `beams` of them survive even when the best ones all end on an eos id.
    keep = max(2, 1 + (len(eos) if eos is not None else 0)) * beams
    is_top = torch.arange(keep, device=device) < beams  # (K,) only these may finish a sequence
    fill = (plan.pad if plan.pad else int(eos[0])) if eos is not None else -1  # transformers' `pad or eos[0]`

    running = input_ids.new_full((batch, beams, max_length), fill)  # (B, beams, L)
    running[:, :, :prompt_len] = input_ids.view(batch, beams, prompt_len)
    running_scores = torch.zeros((batch, beams), device=device)
    running_scores[:, 1:] = NEG  # the beams start identical: expand only the first one at step 0
    finished = running.clone()
    finished_scores = torch.full((batch, beams), NEG, device=device)
    finished_lengths = torch.zeros((batch, beams), dtype=torch.long, device=device)  # new tokens; 0 if empty
    is_finished = torch.zeros((batch, beams), dtype=torch.bool, device=device)
    improvable = torch.ones((batch, 1), dtype=torch.bool, device=device)
    batch_offset = torch.arange(batch, device=device)[:, None] * beams  # (B, 1)
    past = None

    for cur_len in range(prompt_len, max_length):
        flat = running[:, :, :cur_len].reshape(rows, cur_len)  # (N, T)
        logits, past = _step(model, flat, attention_mask, past)
        log_probs = _process(plan.processors, flat, F.log_softmax(logits, dim=-1))  # (N, V)
        vocab = log_probs.shape[-1]
        totals = (log_probs.view(batch, beams, vocab) + running_scores[:, :, None]).view(batch, beams * vocab)

        # Top K continuations over all beams of a prompt (or K drawn without replacement).
        if config.do_sample:
            top_idx = torch.multinomial(F.softmax(totals, dim=-1), num_samples=keep, generator=plan.generator)
            top_scores = torch.gather(totals, 1, top_idx)  # (B, K)
        else:
            top_scores, top_idx = torch.topk(totals, k=keep)  # (B, K)
        top_beams = top_idx // vocab  # (B, K)
        candidates = _gather_beams(running, top_beams)  # (B, K, L)
        candidates[:, :, cur_len] = top_idx % vocab
        ends = torch.full_like(top_scores, cur_len + 1 >= max_length, dtype=torch.bool)  # (B, K)
        if eos is not None:
            ends |= torch.isin(candidates[:, :, cur_len], eos)

        # The best `beams` candidates that did not end keep running.
        running_candidates = top_scores + ends.to(torch.float32) * NEG
        next_idx = torch.topk(running_candidates, k=beams)[1]  # (B, beams)
        running = _gather_beams(candidates, next_idx)
        running_scores = _gather_beams(running_candidates, next_idx)
        beam_idx = (_gather_beams(top_beams, next_idx) + batch_offset).view(rows)  # (N,) rows of the cache

        # Candidates that ended (among the top `beams`) compete with the finished list, length-penalised.
        just_finished = ends & is_top[None, :]
        scores = top_scores / ((cur_len + 1 - prompt_len) ** length_penalty)
        full = torch.all(is_finished, dim=-1, keepdim=True) & (config.early_stopping is True)  # (B, 1)
        scores += full.to(torch.float32) * NEG
        scores += (~improvable).to(torch.float32) * NEG
        scores += (~just_finished) * NEG
        merged_idx = torch.topk(torch.cat((finished_scores, scores), dim=1), k=beams)[1]  # (B, beams)
        finished = _gather_beams(torch.cat((finished, candidates), dim=1), merged_idx)
        finished_scores = _gather_beams(torch.cat((finished_scores, scores), dim=1), merged_idx)
        new_lengths = torch.full_like(top_idx, cur_len + 1 - prompt_len)
        finished_lengths = _gather_beams(torch.cat((finished_lengths, new_lengths), dim=1), merged_idx)
        is_finished = _gather_beams(torch.cat((is_finished, just_finished), dim=1), merged_idx)

        past = _reorder_cache(past, beam_idx)
        attention_mask = _grow(attention_mask)

        # Can the best running beam still beat the worst finished one? (the "never" bound assumes max length)
        if config.early_stopping == "never" and length_penalty > 0.0:
            best_length = max_length - prompt_len
        else:
            best_length = cur_len + 1 - prompt_len
        best_running = running_scores[:, :1] / (best_length**length_penalty)  # (B, 1)
        worst_finished = torch.where(is_finished, torch.min(finished_scores, dim=1, keepdim=True)[0], NEG)
        improvable = improvable & torch.any(best_running > worst_finished, dim=-1, keepdim=True)
        all_done = torch.all(is_finished) and config.early_stopping is True
        if not torch.any(improvable) or all_done or torch.all(ends):
            break

    returned = config.num_return_sequences
    sequences = finished[:, :returned].reshape(batch * returned, max_length)  # (B * returned, L)
    return sequences[:, : prompt_len + int(finished_lengths[:, :returned].max())]


# ---- entry point ------------------------------------------------------------------------------------


def _special_tokens(config: GenerationConfig, model_config) -> tuple[list[int] | None, int | None]:
    """eos ids and pad id, defaults from the model config; pad falls back to the first eos id."""
    vocab_size = model_config.vocab_size
    eos = model_config.eos_token_id if config.eos_token_id is FROM_MODEL else config.eos_token_id
    pad = model_config.pad_token_id if config.pad_token_id is FROM_MODEL else config.pad_token_id
    if isinstance(eos, int):
        eos = [eos]
    eos = list(eos) if eos else None
    defaulted = pad is None and eos is not None
    if defaulted:
        pad = eos[0]
    # An eos id past the vocabulary can never be generated, so it never ends a row (transformers runs too: a
    # small test config keeps GPT-2's eos 50256). pad is fed back for finished rows, so it must be a real token
    # as soon as some eos id can finish a row.
    if pad is not None and not 0 <= pad < vocab_size and any(0 <= t < vocab_size for t in eos or []):
        raise ValueError(
            f"pad_token_id {pad}{' (the first eos id: no pad_token_id was set)' if defaulted else ''} is out of "
            f"range for vocab_size {vocab_size}: rows that end on an eos id are fed it afterwards; pass "
            f"pad_token_id in [0, {vocab_size})"
        )
    return eos, pad


def _check_inputs(
    model_config, config: GenerationConfig, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
) -> None:
    """Raise ValueError naming the numbers when the prompt cannot be generated from."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(
            f"input_ids has shape {shape}: expected (batch, prompt_length); add a batch axis with [None]"
        )
    batch, prompt_len = input_ids.shape
    if batch == 0 or prompt_len == 0:
        raise ValueError(
            f"input_ids has shape {(batch, prompt_len)}: generate needs at least one prompt of 1+ tokens "
            f"(GPT-2 starts unconditional text from bos_token_id {model_config.bos_token_id})"
        )
    check_token_ids("input_ids", input_ids, model_config.vocab_size, "vocab_size")
    if attention_mask is None:
        return
    if tuple(attention_mask.shape) != (batch, prompt_len):
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)} but input_ids has shape "
            f"{(batch, prompt_len)}: pass one 0/1 entry per prompt token"
        )
    right_padded = (attention_mask[:, -1] == 0).nonzero().flatten().tolist()
    if right_padded:
        raise ValueError(
            f"attention_mask ends in 0 for rows {right_padded}: pad prompts on the left "
            "(tokenizer padding_side='left') so every row's last token is real"
        )


def _check_length(model_config, config: GenerationConfig, prompt_len: int) -> None:
    """Prompt + max_new_tokens (resolved) must fit the position table."""
    total, limit = prompt_len + config.max_new_tokens, model_config.n_positions
    if total > limit:
        fix = (
            f"lower max_new_tokens to {limit - prompt_len} or shorten the prompt"
            if prompt_len < limit
            else f"shorten the prompt to fewer than {limit} tokens"
        )
        raise ValueError(
            f"prompt of {prompt_len} tokens + max_new_tokens {config.max_new_tokens} = {total} "
            f"exceeds n_positions {limit}: {fix}"
        )


def _default_attention_mask(input_ids: torch.Tensor, eos: list[int] | None, pad: int | None) -> torch.Tensor:
    """transformers' inference: mask pad tokens only when pad_token_id is set, present, and not an eos id."""
    if pad is not None and bool((input_ids == pad).any()) and pad not in (eos or []):
        return input_ids.ne(pad).long()
    return torch.ones_like(input_ids, dtype=torch.long)


class GenerationMixin:
    """generate() for LM heads: greedy, sampling and beam search over the KV cache."""

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        generation_config: GenerationConfig | None = None,
        **options,
    ) -> torch.LongTensor:
        """Prompt + new tokens: (batch * num_return_sequences, prompt_len + new_len).

        `options` override fields of `generation_config` (GenerationConfig() when None).

        Prompts of different lengths must be padded on the left with their attention_mask. The model is
        expected in eval mode. Sampling with seed=None draws from torch's global RNG exactly as transformers
        does, so `torch.manual_seed(s)` before each call gives transformers' tokens; seed=s uses a private
        generator (on CPU the same stream as torch.manual_seed(s)).
        """
        if generation_config is None:
            generation_config = GenerationConfig()
        if not isinstance(generation_config, GenerationConfig):
            raise TypeError(
                "generation_config must be a models.generation.GenerationConfig, "
                f"got {type(generation_config).__name__}"
            )
        config = generation_config.with_overrides(**options)
        model_config = self.config
        eos, pad = _special_tokens(config, model_config)
        _check_inputs(model_config, config, input_ids, attention_mask)
        config = config.resolved(input_ids.shape[1], model_config.n_positions)
        _check_length(model_config, config, input_ids.shape[1])
        device = self.device
        input_ids = input_ids.to(device)
        if attention_mask is None:
            attention_mask = _default_attention_mask(input_ids, eos, pad)
        attention_mask = attention_mask.to(device)

        copies = max(config.num_beams, config.num_return_sequences)
        input_ids = input_ids.repeat_interleave(copies, dim=0)  # (N, T0)
        attention_mask = attention_mask.repeat_interleave(copies, dim=0)
        eos_tensor = torch.tensor(eos, dtype=torch.long, device=device) if eos is not None else None
        generator = None
        if config.do_sample and config.seed is not None:
            generator = torch.Generator(device=device).manual_seed(config.seed)
        processors = logits_processors(config, eos_tensor, input_ids.shape[1])
        plan = _Plan(config, eos_tensor, pad, processors, generator)
        if config.num_beams > 1:
            return _beam_search(self, input_ids, attention_mask, plan)
        return _greedy_or_sample(self, input_ids, attention_mask, plan)
