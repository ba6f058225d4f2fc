"""generate() reproduces transformers 4.57 `generate()` token for token, and refuses bad options and inputs.

The oracle is transformers' GPT-2 with the same random weights. initializer_range=0.5 makes next-token
distributions peaked, so greedy text does not collapse into one repeated token and beams end at
different lengths; eos ids are picked from tokens the model really produces, so rows finish early.
Sampling is compared by seeding torch's global RNG before each call, as transformers draws from it.
"""

from __future__ import annotations

import dataclasses
import itertools
import os

os.environ.setdefault("USE_TF", "0")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers.generation import logits_process as hf  # noqa: E402

from models.generation import (  # noqa: E402
    GenerationConfig,
    min_new_tokens_filter,
    no_repeat_ngram,
    repetition_penalty,
    temperature_scale,
    top_k_filter,
    top_p_filter,
)

from .oracle import pair  # noqa: E402

EOS = 98
SHAPE = dict(n_positions=64, n_layer=2, initializer_range=0.5, bos_token_id=EOS, eos_token_id=EOS)
PROMPT_LEN = 7
NEW = 12


@pytest.fixture(scope="module")
def lm():
    """(ours, transformers') LM: vocab 99, 64 positions, width 32, 2 layers, 4 heads, no dropout."""
    return pair("GPT2LMHeadModel", "sdpa", **SHAPE)


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Three prompts of 7, 4 and 6 real tokens, left-padded with the pad (= eos) id."""
    ids = torch.randint(0, EOS, (3, PROMPT_LEN), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    mask[2, :1] = 0
    return ids.masked_fill(mask == 0, EOS), mask


@pytest.fixture(scope="module")
def free_run(lm, batch) -> torch.Tensor:
    """The new tokens greedy decoding writes when no eos id stops it, (3, NEW)."""
    ours, _ = lm
    return ours.generate(*batch, max_new_tokens=NEW, eos_token_id=None)[:, PROMPT_LEN:]


def inputs(batch, which: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The unpadded first prompt alone (no mask), or the left-padded batch with its mask."""
    ids, mask = batch
    return (ids[:1], None) if which == "single" else (ids, mask)


def both(lm, ids, mask, **options) -> tuple[torch.Tensor, torch.Tensor]:
    """Our generate() and transformers' on the same prompts and options."""
    ours, theirs = lm
    extra = {} if mask is None else {"attention_mask": mask}
    return ours.generate(ids, mask, **options), theirs.generate(ids, **extra, **options)


def assert_same_tokens(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape, f"shapes differ: ours {tuple(a.shape)}, transformers {tuple(b.shape)}"
    assert torch.equal(a, b), f"tokens differ:\nours\n{a}\ntransformers\n{b}"


# ---- greedy ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["single", "batch"])
def test_greedy_matches_transformers(lm, batch, which):
    ours, theirs = both(lm, *inputs(batch, which), max_new_tokens=NEW, do_sample=False)
    assert ours.shape == (1 if which == "single" else 3, PROMPT_LEN + NEW)
    assert_same_tokens(ours, theirs)


def test_greedy_matches_transformers_with_the_eager_kernel(batch):
    ours, theirs = both(pair("GPT2LMHeadModel", "eager", **SHAPE), *batch, max_new_tokens=NEW)
    assert_same_tokens(ours, theirs)


@pytest.mark.parametrize("pad_token_id", [None, 0])
def test_rows_that_reach_eos_are_padded_while_the_others_go_on(lm, batch, free_run, pad_token_id):
    eos = int(free_run[0, 3])  # row 0 ends at its fourth new token
    assert eos not in free_run[0, :3].tolist() and eos not in free_run[1].tolist()
    ours, theirs = both(lm, *batch, max_new_tokens=NEW, eos_token_id=eos, pad_token_id=pad_token_id)
    assert_same_tokens(ours, theirs)
    pad = eos if pad_token_id is None else pad_token_id
    assert ours[0, PROMPT_LEN + 3] == eos and (ours[0, PROMPT_LEN + 4 :] == pad).all()
    assert torch.equal(ours[1, PROMPT_LEN:], free_run[1])  # row 1 never meets eos


def test_generation_stops_when_every_row_has_reached_eos(lm, batch, free_run):
    eos = [int(free_run[0, 1]), int(free_run[1, 3]), int(free_run[2, 2])]
    ours, theirs = both(lm, *batch, max_new_tokens=NEW, eos_token_id=eos)
    assert_same_tokens(ours, theirs)
    assert ours.shape[1] < PROMPT_LEN + NEW


def test_without_a_mask_pad_tokens_are_masked_only_when_pad_differs_from_eos(lm, batch):
    ids, mask = batch
    padded = ids.masked_fill(mask == 0, 0)
    ours, theirs = both(lm, padded, None, max_new_tokens=NEW, pad_token_id=0)  # inferred: ids != 0
    assert_same_tokens(ours, theirs)
    assert torch.equal(ours, lm[0].generate(padded, mask, max_new_tokens=NEW, pad_token_id=0))
    ours, theirs = both(lm, ids, None, max_new_tokens=NEW)  # pad = eos: nothing inferred, all ones
    assert_same_tokens(ours, theirs)
    assert torch.equal(ours, lm[0].generate(ids, torch.ones_like(ids), max_new_tokens=NEW))


def test_double_heads_model_generates_like_transformers(batch):
    ours, theirs = both(pair("GPT2DoubleHeadsModel", "sdpa", **SHAPE), *batch, max_new_tokens=NEW)
    assert_same_tokens(ours, theirs)


# ---- beam search ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("early_stopping", [True, False, "never"])
@pytest.mark.parametrize("length_penalty", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("num_beams,num_return_sequences", [(3, 1), (3, 2), (4, 1), (4, 2)])
def test_beam_search_matches_transformers(
    lm, batch, free_run, num_beams, num_return_sequences, length_penalty, early_stopping
):
    options = dict(
        max_new_tokens=NEW,
        num_beams=num_beams,
        num_return_sequences=num_return_sequences,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
    )
    eos_choices = [int(free_run[0, 2]), [int(free_run[1, 3]), int(free_run[2, 1])]]
    for which, eos in itertools.product(["single", "batch"], eos_choices):
        ours, theirs = both(lm, *inputs(batch, which), eos_token_id=eos, **options)
        rows = 1 if which == "single" else 3
        assert ours.shape[0] == rows * num_return_sequences
        assert_same_tokens(ours, theirs)


def test_beam_search_outputs_end_at_different_lengths_and_are_padded(lm, batch, free_run):
    eos = [int(free_run[1, 3]), int(free_run[2, 1])]
    ours, theirs = both(lm, *batch, max_new_tokens=NEW, num_beams=4, num_return_sequences=4, eos_token_id=eos)
    assert_same_tokens(ours, theirs)
    ended = torch.isin(ours[:, PROMPT_LEN:], torch.tensor(eos)).any(-1)
    assert ended.any() and not ended.all(), "the beams should mix finished and max-length sequences"


def test_beam_search_pads_with_eos_when_pad_token_id_is_0_as_transformers_does(lm, batch, free_run):
    eos = int(free_run[0, 2])
    ours, theirs = both(lm, *batch, max_new_tokens=NEW, num_beams=3, eos_token_id=eos, pad_token_id=0)
    assert_same_tokens(ours, theirs)
    assert 0 not in ours[:, PROMPT_LEN:].tolist()


def test_beam_search_without_eos_runs_to_max_new_tokens(lm, batch):
    ours, theirs = both(
        lm, *batch, max_new_tokens=NEW, num_beams=3, num_return_sequences=3, eos_token_id=None
    )
    assert ours.shape == (9, PROMPT_LEN + NEW)
    assert_same_tokens(ours, theirs)


# ---- penalties and eos blocking -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        dict(repetition_penalty=1.5),
        dict(repetition_penalty=0.7),
        dict(no_repeat_ngram_size=1),
        dict(no_repeat_ngram_size=2),
        dict(no_repeat_ngram_size=3, repetition_penalty=1.3),
        dict(no_repeat_ngram_size=2, num_beams=3, num_return_sequences=2),
        dict(repetition_penalty=1.4, num_beams=4),
    ],
)
def test_penalties_match_transformers(lm, batch, options):
    ours, theirs = both(lm, *batch, max_new_tokens=NEW, **options)
    assert_same_tokens(ours, theirs)


def test_no_repeat_ngram_size_leaves_no_repeated_ngram(lm, batch):
    out = lm[0].generate(*batch, max_new_tokens=NEW, no_repeat_ngram_size=2, eos_token_id=None)
    for row in out[:, PROMPT_LEN - 2 :].tolist():
        bigrams = list(zip(row, row[1:], strict=False))
        assert len(bigrams) == len(set(bigrams))


@pytest.mark.parametrize("num_beams", [1, 3])
def test_min_new_tokens_blocks_eos(lm, batch, free_run, num_beams):
    eos = int(free_run[0, 0])  # without blocking, row 0 would end on its first new token
    ours, theirs = both(
        lm, *batch, max_new_tokens=NEW, min_new_tokens=4, eos_token_id=eos, num_beams=num_beams
    )
    assert_same_tokens(ours, theirs)
    assert eos not in ours[:, PROMPT_LEN : PROMPT_LEN + 4].tolist()
    assert eos in lm[0].generate(*batch, max_new_tokens=NEW, eos_token_id=eos)[0, PROMPT_LEN:].tolist()


# ---- sampling ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(top_k=5),
        dict(top_k=0, top_p=0.8),
        dict(temperature=0.7, top_k=None),
        dict(temperature=1.3, top_k=10, top_p=0.9),
        dict(num_return_sequences=3, top_p=0.95),
        dict(num_beams=3, top_k=8),
        dict(num_beams=2, top_k=1, temperature=0.5),  # beams keep top_k + 1 tokens: one more than eos ids
        dict(num_beams=3, top_k=0, top_p=0.05),
        dict(num_beams=3, num_return_sequences=2, temperature=0.8, top_p=0.9, eos_token_id=[5, 60, 93]),
    ],
)
def test_sampling_from_the_global_rng_matches_transformers(lm, batch, options):
    ids, mask = batch
    ours, theirs = lm
    torch.manual_seed(123)
    a = ours.generate(ids, mask, do_sample=True, max_new_tokens=NEW, **options)
    torch.manual_seed(123)
    b = theirs.generate(ids, attention_mask=mask, do_sample=True, max_new_tokens=NEW, **options)
    assert_same_tokens(a, b)


def test_a_seed_makes_sampling_reproducible_and_independent_of_the_global_rng(lm, batch):
    ours, _ = lm
    sample = dict(do_sample=True, max_new_tokens=NEW, top_k=0, eos_token_id=None)
    torch.manual_seed(1)
    first = ours.generate(*batch, seed=7, **sample)
    torch.manual_seed(2)
    assert torch.equal(ours.generate(*batch, seed=7, **sample), first)
    assert not torch.equal(ours.generate(*batch, seed=8, **sample), first)
    torch.manual_seed(7)  # on CPU a private generator seeded s draws torch.manual_seed(s)'s stream
    assert torch.equal(ours.generate(*batch, **sample), first)


def test_seed_is_ignored_by_greedy_decoding(lm, batch):
    ours, _ = lm
    assert torch.equal(ours.generate(*batch, seed=3), ours.generate(*batch))


# ---- logits processors ------------------------------------------------------------------------------------


def _scores(seed: int = 0) -> torch.Tensor:
    """(4, 99) random scores rounded to one decimal, so ties occur."""
    return torch.randn(4, 99, generator=torch.Generator().manual_seed(seed)).round(decimals=1)


def _ids(seed: int = 0, high: int = 6) -> torch.Tensor:
    """(4, 15) ids from a small range, so n-grams repeat."""
    return torch.randint(0, high, (4, 15), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("penalty", [0.5, 1.3, 2.0])
def test_repetition_penalty_equals_transformers(penalty):
    ids, scores = _ids(), _scores()
    expected = hf.RepetitionPenaltyLogitsProcessor(penalty)(ids, scores.clone())
    assert torch.equal(repetition_penalty(ids, scores, penalty), expected)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 16])
def test_no_repeat_ngram_equals_transformers(n):
    ids, scores = _ids(high=4), _scores()
    expected = hf.NoRepeatNGramLogitsProcessor(n)(ids, scores)
    assert torch.equal(no_repeat_ngram(ids, scores, n), expected)


@pytest.mark.parametrize("length", [5, 9, 10, 12])
def test_min_new_tokens_filter_equals_min_new_tokens_and_min_length_processors(length):
    ids, scores, eos = _ids()[:, :length], _scores(), torch.tensor([3, 7])
    new_tokens = hf.MinNewTokensLengthLogitsProcessor(6, 4, eos)(ids, scores)
    min_length = hf.MinLengthLogitsProcessor(10, eos)(ids, scores)
    assert torch.equal(new_tokens, min_length)
    assert torch.equal(min_new_tokens_filter(ids, scores, eos, 0, 10), new_tokens)


@pytest.mark.parametrize("t", [0.3, 0.7, 1.0, 2.5])
def test_temperature_equals_transformers(t):
    scores = _scores()
    assert torch.equal(temperature_scale(scores, t), hf.TemperatureLogitsWarper(t)(None, scores))


@pytest.mark.parametrize("top_k,keep", [(1, 1), (5, 1), (5, 8), (98, 1), (500, 1), (1, 3)])
def test_top_k_equals_transformers(top_k, keep):
    scores = _scores(1)
    expected = hf.TopKLogitsWarper(top_k, min_tokens_to_keep=keep)(None, scores)
    assert torch.equal(top_k_filter(scores, top_k, keep), expected)


@pytest.mark.parametrize("top_p,keep", [(0.05, 1), (0.3, 1), (0.9, 1), (0.9, 5), (1.0, 1), (0.01, 3)])
def test_top_p_equals_transformers(top_p, keep):
    scores = _scores(2)
    expected = hf.TopPLogitsWarper(top_p, min_tokens_to_keep=keep)(None, scores)
    assert torch.equal(top_p_filter(scores, top_p, keep), expected)


# ---- options and inputs that cannot work ------------------------------------------------------------------


@pytest.mark.parametrize(
    "options,message",
    [
        (dict(max_new_tokens=0), r"max_new_tokens=0 must be an integer >= 1"),
        (dict(max_new_tokens=-5), r"max_new_tokens=-5 must be an integer >= 1"),
        (dict(min_new_tokens=-1), r"min_new_tokens=-1 must be an integer >= 0"),
        (
            dict(min_new_tokens=30),
            r"min_new_tokens=30 exceeds max_new_tokens=20: raise max_new_tokens to at least 30",
        ),
        (dict(do_sample=True, temperature=0), r"temperature=0 must be > 0 when do_sample=True"),
        (dict(do_sample=True, temperature=-1.0), r"temperature=-1.0 must be > 0"),
        (dict(top_p=0.0), r"top_p=0.0 is outside \(0, 1\]"),
        (dict(top_p=1.5), r"top_p=1.5 is outside \(0, 1\]"),
        (dict(top_k=-1), r"top_k=-1 must be an integer >= 0"),
        (dict(repetition_penalty=0.0), r"repetition_penalty=0.0 must be > 0: 1.0 turns it off"),
        (dict(no_repeat_ngram_size=-2), r"no_repeat_ngram_size=-2 must be an integer >= 0"),
        (dict(num_beams=0), r"num_beams=0 must be an integer >= 1"),
        (dict(num_beams=2, num_return_sequences=3), r"num_return_sequences=3 exceeds num_beams=2"),
        (dict(num_return_sequences=2), r"num_return_sequences=2 with greedy decoding .* set do_sample=True"),
        (dict(num_return_sequences=0), r"num_return_sequences=0 must be an integer >= 1"),
        (dict(early_stopping="yes"), r"early_stopping='yes' must be True, False or 'never'"),
        (dict(early_stopping=1), r"early_stopping=1 must be True, False or 'never'"),
        (dict(length_penalty=float("nan")), r"length_penalty=nan must be a finite number"),
        (dict(eos_token_id=[]), r"eos_token_id=\[\] names no token: use None"),
        (dict(eos_token_id=-1), r"eos_token_id=-1 must be an integer >= 0"),
        (dict(eos_token_id=[3, -4]), r"eos_token_id=-4 must be an integer >= 0"),
        (dict(pad_token_id=-3), r"pad_token_id=-3 must be an integer >= 0"),
        (dict(seed=-1), r"seed=-1 must be an integer >= 0"),
        (dict(do_sample="yes"), r"do_sample='yes' must be True or False"),
    ],
)
def test_invalid_options_raise_naming_the_value_and_the_limit(lm, options, message):
    with pytest.raises(ValueError, match=message):
        GenerationConfig(**options)
    with pytest.raises(ValueError, match=message):  # the same check when passed to generate()
        lm[0].generate(torch.tensor([[1, 2, 3]]), **options)


def test_options_that_only_sampling_reads_are_not_checked_for_greedy():
    assert GenerationConfig(temperature=0.0).temperature == 0.0


def test_the_config_is_frozen_and_options_override_it_without_changing_it(lm, batch):
    config = GenerationConfig(max_new_tokens=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.max_new_tokens = 5  # type: ignore[misc]
    out = lm[0].generate(*batch, generation_config=config, max_new_tokens=5, eos_token_id=None)
    assert out.shape == (3, PROMPT_LEN + 5) and config.max_new_tokens == 3
    assert GenerationConfig(eos_token_id=[4, 5]).eos_token_id == (4, 5)


def test_unknown_options_raise_listing_the_valid_names(lm, batch):
    with pytest.raises(
        TypeError,
        match=r"unknown generation option\(s\) min_length \(min_length: use min_new_tokens\).*"
        r"valid options: max_new_tokens, max_length, min_new_tokens, do_sample",
    ):
        lm[0].generate(*batch, min_length=30)
    with pytest.raises(
        TypeError, match=r"generation_config must be a models.generation.GenerationConfig, got dict"
    ):
        lm[0].generate(*batch, generation_config={"max_new_tokens": 3})


def _long(*shape: int) -> torch.Tensor:
    return torch.ones(*shape, dtype=torch.long)


BAD_INPUTS = {
    "too long": (
        _long(1, 30),
        None,
        dict(max_new_tokens=40),
        r"prompt of 30 tokens \+ max_new_tokens 40 = 70 exceeds n_positions 64: lower max_new_tokens to 34",
    ),
    "prompt fills the table": (
        _long(1, 64),
        None,
        dict(max_new_tokens=1),
        r"prompt of 64 tokens \+ max_new_tokens 1 = 65 exceeds n_positions 64: shorten the prompt",
    ),
    "empty prompt": (_long(1, 0), None, {}, r"input_ids has shape \(1, 0\): generate needs at least one"),
    "empty batch": (_long(0, 5), None, {}, r"input_ids has shape \(0, 5\)"),
    "no batch axis": (_long(5), None, {}, r"input_ids has shape \(5,\): expected \(batch, prompt_length\)"),
    "id too large": (
        torch.tensor([[1, 120, 3]]),
        None,
        {},
        r"input_ids holds id 120, out of range for vocab_size 99",
    ),
    "negative id": (torch.tensor([[1, -2, 3]]), None, {}, r"input_ids holds id -2, negative"),
    "float ids": (torch.tensor([[1.0, 2.0]]), None, {}, r"input_ids must hold integer token ids, got dtype"),
    "mask shape": (
        _long(2, 6),
        torch.ones(2, 5),
        {},
        r"attention_mask has shape \(2, 5\) but input_ids has shape \(2, 6\)",
    ),
    "right padding": (
        _long(3, 4),
        torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]]),
        {},
        r"attention_mask ends in 0 for rows \[1, 2\]: pad prompts on the left",
    ),
    "pad out of range while an eos id can end a row": (
        _long(1, 4),
        None,
        dict(eos_token_id=[150, 5], pad_token_id=None),
        r"pad_token_id 150 \(the first eos id: no pad_token_id was set\) is out of range for vocab_size 99: rows "
        r"that end on an eos id are fed it",
    ),
    "max_length within the prompt": (
        _long(2, 6),
        None,
        dict(max_length=6),
        r"input_ids has 6 tokens but max_length=6, which counts the prompt: raise max_length above 6",
    ),
    "pad out of range": (
        _long(1, 4),
        None,
        dict(pad_token_id=99),
        r"pad_token_id 99 is out of range for vocab_size 99",
    ),
}


@pytest.mark.parametrize("ids,mask,options,message", list(BAD_INPUTS.values()), ids=list(BAD_INPUTS))
def test_bad_inputs_raise_naming_the_numbers(lm, ids, mask, options, message):
    with pytest.raises(ValueError, match=message):
        lm[0].generate(ids, mask, **options)


def test_a_prompt_that_exactly_fills_the_position_table_is_accepted(lm):
    out = lm[0].generate(torch.ones(1, 60, dtype=torch.long), max_new_tokens=4, eos_token_id=None)
    assert out.shape == (1, 64)


# ---- lengths and special tokens as transformers counts them -----------------------------------------------


@pytest.mark.parametrize("options", [dict(), dict(max_length=11), dict(max_length=11, max_new_tokens=3),
                                     dict(max_length=11, num_beams=3), dict(max_new_tokens=5, num_beams=2)],
                         ids=["default 20 new", "max_length", "max_new_tokens wins", "max_length beams", "beams"])
def test_max_length_counts_the_prompt_and_max_new_tokens_wins_as_in_transformers(lm, batch, options):
    ours, theirs = both(lm, *batch, **options)
    assert_same_tokens(ours, theirs)


def test_an_eos_id_past_a_small_vocabulary_never_stops_generation_as_in_transformers():
    # A tiny test config that keeps GPT-2's default eos 50256 (vocab 99): transformers generates; so must we.
    lm = pair("GPT2LMHeadModel", "sdpa", n_positions=64, n_layer=2, initializer_range=0.5)
    ids, mask = torch.randint(0, 99, (2, 5), generator=torch.Generator().manual_seed(3)), None
    for options in (dict(max_new_tokens=6), dict(max_new_tokens=6, num_beams=2), dict(max_length=9),
                    dict(max_new_tokens=6, min_new_tokens=2)):
        ours, theirs = both(lm, ids, mask, **options)
        assert_same_tokens(ours, theirs)


@pytest.mark.parametrize("off", [dict(temperature=None), dict(top_p=None), dict(repetition_penalty=None),
                                 dict(no_repeat_ngram_size=None), dict(min_new_tokens=None)],
                         ids=lambda off: next(iter(off)))
def test_none_turns_an_option_off_as_in_transformers(lm, batch, off):
    ours, theirs = lm
    torch.manual_seed(5)
    a = ours.generate(*batch, max_new_tokens=6, do_sample=True, **off)
    torch.manual_seed(5)
    b = theirs.generate(batch[0], attention_mask=batch[1], max_new_tokens=6, do_sample=True, **off)
    assert_same_tokens(a, b)
    assert_same_tokens(*both(lm, *batch, max_new_tokens=6, do_sample=None))  # greedy


def test_the_default_length_stops_at_the_position_table_as_in_transformers(lm):
    ids = torch.randint(0, EOS, (1, 55), generator=torch.Generator().manual_seed(4))
    ours, theirs = both(lm, ids, None, eos_token_id=None)
    assert_same_tokens(ours, theirs)
    assert ours.shape[1] == 64  # 9 new tokens, not 20


@pytest.mark.parametrize(("options", "message"), [
    (dict(max_length=100), r"max_length=100 exceeds n_positions 64: lower max_length to 64 or fewer"),
    (dict(max_length=9, min_new_tokens=5), r"min_new_tokens=5 exceeds the 4 new tokens max_length=9 leaves after a "
                                           r"5-token prompt: raise max_length to 10"),
])
def test_length_errors_name_the_option_that_was_given(lm, options, message):
    with pytest.raises(ValueError, match=message):
        lm[0].generate(torch.ones(1, 5, dtype=torch.long), **options)


def test_min_new_tokens_past_the_position_table_says_to_shorten_the_prompt(lm):
    message = r"min_new_tokens={} exceeds the {} new tokens n_positions 64 leaves after a {}-token prompt: shorten"
    with pytest.raises(ValueError, match=message.format(15, 9, 55)):
        lm[0].generate(torch.ones(1, 55, dtype=torch.long), min_new_tokens=15)
    with pytest.raises(ValueError, match=message.format(5, 2, 60)):  # raising max_length would not help here
        lm[0].generate(torch.ones(1, 60, dtype=torch.long), max_length=62, min_new_tokens=5)
