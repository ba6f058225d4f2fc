"""Specification of runtime.decoding, with transformers 4.57 `generate()` and its logits processors as the oracle.

A tiny random GPT-2 runs behind `TorchDecoder`, a `Decoder` test double over transformers' own model and
DynamicCache, so the loops are compared token for token with `model.generate` on the same logits. The model has
a wide embedding (std 0.5) and large block weights (initializer_range 0.4): with GPT-2's default 0.02 the tied
head just repeats the last token, which would leave greedy, eos and beam ordering untested.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("USE_TF", "0")

import torch  # noqa: E402  (the oracle; runtime/ itself never imports it)
import transformers  # noqa: E402
from transformers.cache_utils import DynamicCache  # noqa: E402
from transformers.generation import logits_process as hf  # noqa: E402

from runtime.decoding import (  # noqa: E402
    GenerationOptions,
    generate,
    logits_processors,
    min_new_tokens_filter,
    no_repeat_ngram,
    repetition_penalty,
    temperature_scale,
    top_k_filter,
    top_p_filter,
    topk_indices,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
VOCAB = 99
PAD = 0
# One prompt, and three left-padded to length 6 (6, 4 and 2 real tokens).
PROMPT = np.array([[5, 17, 42, 8, 61, 23]])
BATCH = np.array([[5, 17, 42, 8, 61, 23], [PAD, PAD, 70, 3, 91, 12], [PAD, PAD, PAD, PAD, 33, 2]])
BATCH_MASK = (np.arange(6)[None, :] >= np.array([[0], [2], [4]])).astype(np.int64)
# Tokens this model produces (checked by test_eos_choices_occur and test_beam_grid_is_not_vacuous): 98 ends two
# of the greedy rows early, 28 every row; beams often end on 10 before max length.
GREEDY_EOS, GREEDY_EOS_ALL = 98, 28
BEAM_EOS = 10


# ---- the oracle and the test double -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model() -> Iterator[transformers.GPT2LMHeadModel]:
    """The tiny GPT-2, run on one thread (a 32-wide model only loses time to thread hand-offs)."""
    transformers.logging.set_verbosity_error()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        initializer_range=0.4,
        bos_token_id=None,
        eos_token_id=None,
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    model.transformer.wte.weight.data.normal_(0.0, 0.5)
    yield model
    torch.set_num_threads(threads)


class TorchDecoder:
    """runtime.decoding.Decoder over a transformers GPT-2 with its own DynamicCache; records what it is fed."""

    def __init__(self, model: transformers.GPT2LMHeadModel) -> None:
        self.model = model
        self.cache = DynamicCache()
        self.calls: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.reorders: list[np.ndarray] = []

    def step(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray) -> np.ndarray:
        self.calls.append((input_ids.copy(), attention_mask.copy(), position_ids.copy()))
        with torch.no_grad():
            out = self.model(
                input_ids=torch.from_numpy(input_ids),
                attention_mask=torch.from_numpy(attention_mask),
                position_ids=torch.from_numpy(position_ids),
                past_key_values=self.cache,
                use_cache=True,
                logits_to_keep=1,  # as generate() asks, so the head runs the same matmul
            )
        self.cache = out.past_key_values
        return out.logits[:, -1, :].to(torch.float32).numpy().copy()

    def reorder(self, beam_idx: np.ndarray) -> None:
        self.reorders.append(beam_idx.copy())
        self.cache.reorder_cache(torch.from_numpy(beam_idx))  # index_select on every layer's keys and values


def hf_generate(model, input_ids: np.ndarray, attention_mask: np.ndarray | None, **kwargs) -> np.ndarray:
    mask = None if attention_mask is None else torch.from_numpy(attention_mask)
    with torch.no_grad():
        return model.generate(torch.from_numpy(input_ids), attention_mask=mask, **kwargs).numpy()


def ours(model, input_ids, attention_mask, *, eos=None, pad=None, on_tokens=None, **options) -> np.ndarray:
    decoder = TorchDecoder(model)
    return generate(
        decoder,
        input_ids,
        attention_mask,
        GenerationOptions(**options),
        eos_token_id=eos,
        pad_token_id=pad,
        on_tokens=on_tokens,
    )


def assert_same_tokens(model, input_ids, attention_mask, *, eos=None, pad=None, **options) -> np.ndarray:
    expected = hf_generate(model, input_ids, attention_mask, eos_token_id=eos, pad_token_id=pad, **options)
    actual = ours(model, input_ids, attention_mask, eos=eos, pad=pad, **options)
    np.testing.assert_array_equal(actual, expected)
    assert actual.dtype == np.int64
    return actual


# ---- greedy -------------------------------------------------------------------------------------------------


def test_eos_choices_occur(model) -> None:
    """The greedy eos ids are tokens this model really generates, so the eos tests test something."""
    greedy = hf_generate(model, BATCH, BATCH_MASK, max_new_tokens=12, pad_token_id=PAD)[:, 6:]
    assert [GREEDY_EOS in row for row in greedy] == [True, True, False]
    assert all(GREEDY_EOS_ALL in row[:-1] for row in greedy)


def test_greedy_single_prompt_matches_transformers(model) -> None:
    out = assert_same_tokens(model, PROMPT, None, max_new_tokens=15)
    assert out.shape == (1, 21)


def test_greedy_padded_batch_matches_transformers(model) -> None:
    assert_same_tokens(model, BATCH, BATCH_MASK, max_new_tokens=12)


@pytest.mark.parametrize("pad", [PAD, 7, None], ids=["pad0", "pad7", "pad-is-eos"])
def test_greedy_pads_rows_after_eos(model, pad) -> None:
    out = assert_same_tokens(model, BATCH, BATCH_MASK, max_new_tokens=12, eos=GREEDY_EOS, pad=pad)
    assert out.shape == (3, 18)  # the third row never ends
    fill = GREEDY_EOS if pad is None else pad
    for row in out[:2, 6:]:
        end = list(row).index(GREEDY_EOS)
        assert (row[end + 1 :] == fill).all()


def test_greedy_stops_when_every_row_ended(model) -> None:
    out = assert_same_tokens(model, BATCH, BATCH_MASK, max_new_tokens=12, eos=GREEDY_EOS_ALL, pad=PAD)
    assert out.shape[1] < 18
    assert (out[:, 6:] == GREEDY_EOS_ALL).any(axis=1).all()


def test_greedy_with_several_eos_ids(model) -> None:
    assert_same_tokens(model, BATCH, BATCH_MASK, max_new_tokens=12, eos=[GREEDY_EOS, 36], pad=PAD)


@pytest.mark.parametrize(
    "options",
    [
        {"repetition_penalty": 1.5},
        {"repetition_penalty": 0.7},
        {"no_repeat_ngram_size": 1},
        {"no_repeat_ngram_size": 2},
        {"no_repeat_ngram_size": 3},
        {"min_new_tokens": 8},
        {"repetition_penalty": 1.3, "no_repeat_ngram_size": 2, "min_new_tokens": 5},
    ],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()),
)
def test_greedy_with_processors_matches_transformers(model, options) -> None:
    assert_same_tokens(model, BATCH, BATCH_MASK, max_new_tokens=12, eos=GREEDY_EOS_ALL, pad=PAD, **options)


def test_mask_is_inferred_as_transformers_does(model) -> None:
    # pad 0 occurs in the prompts and differs from eos: transformers masks it; pad == eos: it does not.
    assert_same_tokens(model, BATCH, None, max_new_tokens=8, eos=GREEDY_EOS, pad=PAD)
    assert_same_tokens(model, BATCH, None, max_new_tokens=8, eos=PAD, pad=None)


def test_decoder_is_fed_the_prompt_then_one_token_per_step(model) -> None:
    decoder = TorchDecoder(model)
    out = generate(
        decoder, BATCH, BATCH_MASK, GenerationOptions(max_new_tokens=4), eos_token_id=None, pad_token_id=None
    )
    first_ids, first_mask, first_positions = decoder.calls[0]
    np.testing.assert_array_equal(first_ids, BATCH)
    np.testing.assert_array_equal(first_mask, BATCH_MASK)
    np.testing.assert_array_equal(first_positions, [[0, 1, 2, 3, 4, 5], [1, 1, 0, 1, 2, 3], [1, 1, 1, 1, 0, 1]])
    for step, (ids, mask, positions) in enumerate(decoder.calls[1:], start=1):
        np.testing.assert_array_equal(ids, out[:, 5 + step : 6 + step])
        np.testing.assert_array_equal(mask, np.concatenate([BATCH_MASK, np.ones((3, step), np.int64)], axis=1))
        np.testing.assert_array_equal(positions, [[5 + step], [3 + step], [1 + step]])
        assert ids.dtype == mask.dtype == positions.dtype == np.int64
        assert ids.flags.c_contiguous and mask.flags.c_contiguous
    assert len(decoder.calls) == 4 and not decoder.reorders


def test_on_tokens_streams_each_step(model) -> None:
    seen: list[np.ndarray] = []
    out = ours(model, BATCH, BATCH_MASK, max_new_tokens=12, eos=GREEDY_EOS, pad=PAD, on_tokens=seen.append)
    np.testing.assert_array_equal(np.stack(seen, axis=1), out[:, 6:])


# ---- beam search ----------------------------------------------------------------------------------------------

BEAM_GRID = [
    (beams, returned, penalty, stopping)
    for beams, returned, penalty, stopping in itertools.product(
        [2, 3, 4], [1, 2], [0.5, 1.0, 2.0], [True, False, "never"]
    )
]


@pytest.mark.parametrize("prompts", ["single", "batch"])
@pytest.mark.parametrize(("num_beams", "num_return_sequences", "length_penalty", "early_stopping"), BEAM_GRID)
def test_beam_search_matches_transformers(
    model, prompts, num_beams, num_return_sequences, length_penalty, early_stopping
) -> None:
    input_ids, mask = (PROMPT, None) if prompts == "single" else (BATCH, BATCH_MASK)
    out = assert_same_tokens(
        model,
        input_ids,
        mask,
        max_new_tokens=10,
        eos=BEAM_EOS,
        pad=PAD,
        num_beams=num_beams,
        num_return_sequences=num_return_sequences,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
    )
    assert out.shape[0] == len(input_ids) * num_return_sequences


def test_beam_grid_is_not_vacuous(model) -> None:
    """On the single prompt, beams end on eos before max length and early_stopping changes the answer."""
    shorter, differing = 0, 0
    for num_beams, length_penalty in itertools.product([2, 3, 4], [0.5, 1.0, 2.0]):
        answers = set()
        for stopping in (True, False, "never"):
            out = hf_generate(
                model, PROMPT, None, max_new_tokens=10, eos_token_id=BEAM_EOS, pad_token_id=PAD,
                num_beams=num_beams, length_penalty=length_penalty, early_stopping=stopping,
            )  # fmt: skip
            shorter += out.shape[1] < PROMPT.shape[1] + 10
            answers.add((out.shape, out.tobytes()))
        differing += len(answers) > 1
    assert shorter >= 5 and differing >= 3


@pytest.mark.parametrize(
    "options",
    [
        {"no_repeat_ngram_size": 2},
        {"repetition_penalty": 1.4, "min_new_tokens": 4},
        {"eos": (BEAM_EOS, 98)},
        {"eos": None, "pad": None},
        {"pad": None},
        {"pad": 7},
    ],
    ids=["ngram", "penalty+min-new", "two-eos", "no-eos", "pad-is-eos", "pad7"],
)
def test_beam_search_with_options_matches_transformers(model, options) -> None:
    kwargs = {"eos": BEAM_EOS, "pad": PAD, **options}
    assert_same_tokens(model, BATCH, BATCH_MASK, max_new_tokens=10, num_beams=3, num_return_sequences=2, **kwargs)


def test_beam_search_reorders_the_cache_within_each_prompt(model) -> None:
    decoder = TorchDecoder(model)
    options = GenerationOptions(max_new_tokens=6, num_beams=3)
    generate(decoder, BATCH, BATCH_MASK, options, eos_token_id=None, pad_token_id=PAD)
    assert decoder.calls[0][0].shape == (9, 6)  # prompts repeated num_beams times before the first step
    for beam_idx in decoder.reorders:
        assert beam_idx.shape == (9,) and beam_idx.dtype == np.int64
        np.testing.assert_array_equal(beam_idx // 3, np.repeat(np.arange(3), 3))


def test_beam_search_streams_columns_at_the_end(model) -> None:
    seen: list[np.ndarray] = []
    out = ours(model, BATCH, BATCH_MASK, max_new_tokens=8, num_beams=2, eos=BEAM_EOS, pad=PAD, on_tokens=seen.append)
    np.testing.assert_array_equal(np.stack(seen, axis=1), out[:, 6:])


def test_beam_sampling_is_seeded(model) -> None:
    options = {"max_new_tokens": 8, "num_beams": 3, "num_return_sequences": 2, "do_sample": True, "top_k": 5}
    first = ours(model, BATCH, BATCH_MASK, eos=BEAM_EOS, pad=PAD, seed=1, **options)
    again = ours(model, BATCH, BATCH_MASK, eos=BEAM_EOS, pad=PAD, seed=1, **options)
    np.testing.assert_array_equal(first, again)
    assert first.shape[0] == 6
    others = [ours(model, BATCH, BATCH_MASK, eos=BEAM_EOS, pad=PAD, seed=s, **options) for s in range(2, 6)]
    assert any(other.shape != first.shape or (other != first).any() for other in others)


def test_beam_sampling_survives_fewer_live_tokens_than_candidates(model) -> None:
    # top_k=2 leaves 2 tokens on beam 0 at the first step but K = 2 * 4 candidates are drawn: as in transformers,
    # the zero-probability ones come last, score -inf and never win a place.
    out = ours(model, PROMPT, None, max_new_tokens=6, num_beams=4, do_sample=True, top_k=2, seed=0, eos=BEAM_EOS)
    assert out.shape[0] == 1 and 7 <= out.shape[1] <= 12
    assert ((out >= 0) & (out < VOCAB)).all()


# ---- sampling -------------------------------------------------------------------------------------------------


def test_sampling_is_reproducible_by_seed(model) -> None:
    options = {"max_new_tokens": 12, "do_sample": True, "top_k": 0, "temperature": 1.5}
    first = ours(model, BATCH, BATCH_MASK, seed=123, **options)
    np.testing.assert_array_equal(first, ours(model, BATCH, BATCH_MASK, seed=123, **options))
    assert (first != ours(model, BATCH, BATCH_MASK, seed=124, **options)).any()


def test_sampling_with_top_k_1_is_greedy(model) -> None:
    greedy = ours(model, BATCH, BATCH_MASK, max_new_tokens=12, eos=GREEDY_EOS, pad=PAD)
    sampled = ours(
        model, BATCH, BATCH_MASK, max_new_tokens=12, eos=GREEDY_EOS, pad=PAD, do_sample=True, top_k=1, seed=0
    )
    np.testing.assert_array_equal(sampled, greedy)


def test_sampling_returns_several_sequences_per_prompt(model) -> None:
    out = ours(model, BATCH, BATCH_MASK, max_new_tokens=5, do_sample=True, num_return_sequences=4, seed=0)
    assert out.shape == (12, 11)
    np.testing.assert_array_equal(out[:, :6], np.repeat(BATCH, 4, axis=0))


class FixedLogits:
    """A decoder whose logits never change: the first-token distribution is known exactly."""

    def __init__(self, logits: np.ndarray) -> None:
        self.logits = logits.astype(np.float32)

    def step(self, input_ids, attention_mask, position_ids) -> np.ndarray:
        return np.repeat(self.logits[None, :], len(input_ids), axis=0)

    def reorder(self, beam_idx) -> None:
        raise AssertionError("sampling never reorders")


def test_sampling_follows_the_filtered_distribution() -> None:
    logits = np.log(np.array([0.05, 0.4, 0.3, 0.15, 0.1]))
    prompts = np.zeros((4000, 1), dtype=np.int64)
    options = GenerationOptions(max_new_tokens=1, do_sample=True, top_k=0, seed=7)
    drawn = generate(FixedLogits(logits), prompts, None, options, eos_token_id=None, pad_token_id=None)[:, 1]
    frequencies = np.bincount(drawn, minlength=5) / len(drawn)
    np.testing.assert_allclose(frequencies, np.exp(logits), atol=0.025)
    # top_p=0.7 keeps {1, 2} (0.4 + 0.3 reaches 0.7), renormalised to 4/7 and 3/7.
    nucleus = options.with_overrides(top_p=0.7)
    drawn = generate(FixedLogits(logits), prompts, None, nucleus, eos_token_id=None, pad_token_id=None)[:, 1]
    frequencies = np.bincount(drawn, minlength=5) / len(drawn)
    np.testing.assert_allclose(frequencies, [0, 4 / 7, 3 / 7, 0, 0], atol=0.03)


# ---- each processor against transformers' class --------------------------------------------------------------


@pytest.fixture
def scores() -> np.ndarray:
    return (np.random.default_rng(0).standard_normal((6, VOCAB)) * 3).astype(np.float32)


@pytest.fixture
def history() -> np.ndarray:
    """Rows with repeats, so penalties and n-gram bans have something to find."""
    rng = np.random.default_rng(1)
    return np.concatenate([rng.integers(0, VOCAB, (6, 6)), rng.integers(0, 5, (6, 10))], axis=1)


def oracle(processor, history: np.ndarray, scores: np.ndarray) -> np.ndarray:
    return processor(torch.from_numpy(history), torch.from_numpy(scores.copy())).numpy()


@pytest.mark.parametrize("temperature", [0.3, 0.7, 1.3])
def test_temperature_matches_transformers(scores, history, temperature) -> None:
    expected = oracle(hf.TemperatureLogitsWarper(temperature), history, scores)
    np.testing.assert_array_equal(temperature_scale(scores, temperature), expected)


@pytest.mark.parametrize(("top_k", "keep"), [(1, 1), (5, 1), (5, 8), (50, 1), (200, 1)])
def test_top_k_matches_transformers(scores, history, top_k, keep) -> None:
    expected = oracle(hf.TopKLogitsWarper(top_k, min_tokens_to_keep=keep), history, scores)
    np.testing.assert_array_equal(top_k_filter(scores, top_k, keep), expected)


def test_top_k_keeps_ties_with_the_kth_score(scores, history) -> None:
    tied = scores.copy()
    tied[:, :4] = 10.0
    expected = oracle(hf.TopKLogitsWarper(2), history, tied)
    np.testing.assert_array_equal(top_k_filter(tied, 2), expected)
    assert (np.isfinite(top_k_filter(tied, 2)).sum(axis=1) == 4).all()


@pytest.mark.parametrize(("top_p", "keep"), [(0.05, 1), (0.3, 1), (0.3, 5), (0.9, 1), (0.99, 2), (1.0, 1)])
def test_top_p_matches_transformers(scores, history, top_p, keep) -> None:
    expected = oracle(hf.TopPLogitsWarper(top_p, min_tokens_to_keep=keep), history, scores)
    np.testing.assert_array_equal(top_p_filter(scores, top_p, keep), expected)


@pytest.mark.parametrize("penalty", [0.5, 1.2, 2.0])
def test_repetition_penalty_matches_transformers(scores, history, penalty) -> None:
    expected = oracle(hf.RepetitionPenaltyLogitsProcessor(penalty), history, scores)
    np.testing.assert_array_equal(repetition_penalty(history, scores, penalty), expected)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 16, 17, 20])
def test_no_repeat_ngram_matches_transformers(scores, history, size) -> None:
    expected = oracle(hf.NoRepeatNGramLogitsProcessor(size), history, scores)
    np.testing.assert_array_equal(no_repeat_ngram(history, scores, size), expected)


@pytest.mark.parametrize(("prompt_len", "min_new"), [(10, 8), (10, 6), (16, 1), (3, 20)])
def test_min_new_tokens_matches_transformers(scores, history, prompt_len, min_new) -> None:
    eos = np.array([3, 40])
    processor = hf.MinNewTokensLengthLogitsProcessor(prompt_len, min_new, torch.tensor([3, 40]))
    expected = oracle(processor, history, scores)
    np.testing.assert_array_equal(min_new_tokens_filter(history, scores, eos, prompt_len, min_new), expected)


@pytest.mark.parametrize("num_beams", [1, 2])
def test_processor_chain_matches_transformers_order(model, scores, history, num_beams) -> None:
    """Every processor at once, in _get_logits_processor's order (beam sampling keeps len(eos) + 1 tokens)."""
    settings = {
        "do_sample": True,
        "temperature": 0.7,
        "top_k": 6,
        "top_p": 0.6,
        "repetition_penalty": 1.3,
        "no_repeat_ngram_size": 2,
        "min_new_tokens": 8,
        "num_beams": num_beams,
    }
    config = transformers.GenerationConfig(**settings, eos_token_id=[3, 40], pad_token_id=PAD)
    model._prepare_special_tokens(config, True, device="cpu")
    chain = model._get_logits_processor(
        config, input_ids_seq_length=10, encoder_input_ids=torch.from_numpy(history), device="cpu", model_kwargs={}
    )
    assert len(chain) == 6
    expected = oracle(chain, history, scores)
    actual = scores
    for processor in logits_processors(GenerationOptions(**settings), np.array([3, 40]), prompt_len=10):
        actual = processor(history, actual)
    np.testing.assert_array_equal(actual, expected)
    assert np.isfinite(actual).sum(axis=1).min() >= (3 if num_beams > 1 else 1)


def test_processors_do_not_modify_their_input(scores, history) -> None:
    before = scores.copy()
    repetition_penalty(history, scores, 1.3)
    no_repeat_ngram(history, scores, 2)
    min_new_tokens_filter(history, scores, np.array([3]), 10, 20)
    top_k_filter(scores, 3)
    top_p_filter(scores, 0.5)
    np.testing.assert_array_equal(scores, before)


def test_topk_indices_is_stable_on_ties() -> None:
    values = np.array([[0.0, 2.0, 2.0, -1.0, 2.0], [-np.inf, -np.inf, 1.0, -np.inf, -np.inf]], dtype=np.float32)
    np.testing.assert_array_equal(topk_indices(values, 3), [[1, 2, 4], [2, 0, 1]])
    long = np.zeros((2, 1000), dtype=np.float32)
    long[0, 700] = 1.0
    np.testing.assert_array_equal(topk_indices(long, 4), [[700, 0, 1, 2], [0, 1, 2, 3]])


# ---- packaging -------------------------------------------------------------------------------------------------


def test_decoding_imports_without_torch() -> None:
    # sys.modules[name] = None makes any import of that name raise ImportError.
    code = (
        "import sys\n"
        "sys.modules['torch'] = sys.modules['transformers'] = sys.modules['models'] = None\n"
        "import numpy as np\n"
        "from runtime.decoding import GenerationOptions, generate\n"
        "class Counter:\n"
        "    def step(self, ids, mask, positions):\n"
        "        return np.eye(5, dtype=np.float32)[(ids[:, -1] + 1) % 5]\n"
        "    def reorder(self, beam_idx):\n"
        "        pass\n"
        "out = generate(Counter(), np.array([[0]]), None, GenerationOptions(max_new_tokens=4, num_beams=2),\n"
        "               eos_token_id=None, pad_token_id=None)\n"
        "print(out.tolist())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[[0, 1, 2, 3, 4]]"


# ---- options and inputs -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens=0"),
        ({"max_new_tokens": -3}, "max_new_tokens=-3"),
        ({"min_new_tokens": -1}, "min_new_tokens=-1"),
        ({"min_new_tokens": 30, "max_new_tokens": 20}, "min_new_tokens=30"),
        ({"do_sample": "yes"}, "do_sample='yes'"),
        ({"do_sample": True, "temperature": 0.0}, "temperature=0.0"),
        ({"do_sample": True, "temperature": -1.0}, "temperature=-1.0"),
        ({"temperature": "hot"}, "temperature='hot'"),
        ({"top_k": -1}, "top_k=-1"),
        ({"top_k": 2.5}, "top_k=2.5"),
        ({"top_p": 0.0}, "top_p=0.0"),
        ({"top_p": 1.5}, "top_p=1.5"),
        ({"repetition_penalty": 0.0}, "repetition_penalty=0.0"),
        ({"repetition_penalty": -1.0}, "repetition_penalty=-1.0"),
        ({"no_repeat_ngram_size": -2}, "no_repeat_ngram_size=-2"),
        ({"num_beams": 0}, "num_beams=0"),
        ({"length_penalty": float("nan")}, "length_penalty=nan"),
        ({"early_stopping": "sometimes"}, "early_stopping='sometimes'"),
        ({"num_return_sequences": 0}, "num_return_sequences=0"),
        ({"num_beams": 2, "num_return_sequences": 3}, "num_return_sequences=3 exceeds num_beams=2"),
        ({"num_return_sequences": 2}, "num_return_sequences=2 with greedy"),
        ({"eos_token_id": -1}, "eos_token_id=-1"),
        ({"eos_token_id": ()}, "eos_token_id=()"),
        ({"eos_token_id": (3, -4)}, "eos_token_id=-4"),
        ({"pad_token_id": -1}, "pad_token_id=-1"),
        ({"seed": -5}, "seed=-5"),
    ],
)
def test_invalid_options_raise_naming_the_value(options, named) -> None:
    with pytest.raises(ValueError) as error:
        GenerationOptions(**options)
    assert named in str(error.value)
    assert ":" in str(error.value)  # value: limit and fix


def test_valid_edge_options_are_accepted() -> None:
    GenerationOptions(temperature=0.0)  # ignored without sampling, as transformers does
    GenerationOptions(top_p=1.0, top_k=None, num_beams=4, num_return_sequences=4, do_sample=True)
    assert GenerationOptions(eos_token_id=[5, 6]).eos_token_id == (5, 6)
    assert GenerationOptions(eos_token_id=np.array([5, 6])).eos_token_id == (5, 6)
    assert GenerationOptions(eos_token_id=np.array(5)).eos_token_id == 5


def test_with_overrides_validates_and_rejects_unknown_names() -> None:
    base = GenerationOptions()
    assert base.with_overrides(num_beams=4, length_penalty=2.0) == GenerationOptions(num_beams=4, length_penalty=2.0)
    with pytest.raises(TypeError, match="min_length: use min_new_tokens") as error:
        base.with_overrides(min_length=30, beams=2)
    assert "beams" in str(error.value) and "valid options: max_new_tokens" in str(error.value)
    with pytest.raises(ValueError, match="top_p=2"):
        base.with_overrides(top_p=2)
    # transformers reads None as "off" for these
    off = base.with_overrides(do_sample=None, temperature=None, top_p=None, repetition_penalty=None,
                              no_repeat_ngram_size=None, min_new_tokens=None)
    assert off == base


@pytest.mark.parametrize(
    ("input_ids", "mask", "named"),
    [
        (np.array([1, 2, 3]), None, "shape (3,)"),
        (np.zeros((1, 0), np.int64), None, "shape (1, 0)"),
        (np.array([[1, -2]]), None, "token id -2"),
        (np.array([[1.0, 2.0]]), None, "dtype float64"),
        (BATCH, BATCH_MASK[:, 1:], "attention_mask has shape (3, 5)"),
        (BATCH, np.fliplr(BATCH_MASK), "rows [1, 2]"),
        (BATCH, BATCH_MASK * 2, "other than 0 and 1"),
    ],
)
def test_bad_inputs_raise(model, input_ids, mask, named) -> None:
    with pytest.raises(ValueError) as error:
        ours(model, input_ids, mask, max_new_tokens=2)
    assert named in str(error.value)


def test_an_eos_id_past_the_vocabulary_never_ends_a_row_as_in_transformers(model) -> None:
    # Small test configs keep GPT-2's eos 50256: transformers generates, it just never stops on it.
    for options in (dict(max_new_tokens=4), dict(max_new_tokens=4, num_beams=2), dict(max_length=9),
                    dict(max_new_tokens=4, min_new_tokens=2)):
        out = assert_same_tokens(model, BATCH, BATCH_MASK, eos=50256, **options)
        assert out.shape[1] == BATCH.shape[1] + (options.get("max_new_tokens") or 9 - BATCH.shape[1])


@pytest.mark.parametrize("options", [dict(), dict(max_length=10), dict(max_length=10, max_new_tokens=3),
                                     dict(max_length=10, num_beams=2)],
                         ids=["default 20 new", "max_length", "max_new_tokens wins", "max_length beams"])
def test_max_length_counts_the_prompt_and_max_new_tokens_wins_as_in_transformers(model, options) -> None:
    assert_same_tokens(model, BATCH, BATCH_MASK, eos=None, **options)


def test_ids_outside_the_logits_raise(model) -> None:
    with pytest.raises(ValueError, match="pad_token_id 99 is out of range for vocab_size 99 .*: rows that end on an "
                                         "eos id are fed it afterwards; use token ids in \\[0, 99\\)$"):
        ours(model, PROMPT, None, max_new_tokens=2, eos=3, pad=99)  # a pad that was set: no hint about defaults
    with pytest.raises(ValueError, match="pad_token_id 150 .* \\(no pad_token_id was set, so it is the first eos id"):
        ours(model, PROMPT, None, max_new_tokens=2, eos=[150, 3])
    with pytest.raises(ValueError, match="input_ids has 6 tokens but max_length=6, which counts the prompt"):
        ours(model, PROMPT, None, max_length=PROMPT.shape[1])
    # A backend that does not bounds-check its embedding lookup (TensorRT's gather) is caught after one step.
    lenient = FixedLogits(np.zeros(VOCAB))
    with pytest.raises(ValueError, match="input_ids 120 is out of range for vocab_size 99"):
        generate(lenient, np.array([[1, 120]]), None, GenerationOptions(), eos_token_id=None, pad_token_id=None)


def test_sampling_with_every_token_filtered_raises() -> None:
    # no_repeat_ngram_size=1 over a 2-token vocabulary bans both tokens once both were seen.
    options = GenerationOptions(max_new_tokens=3, do_sample=True, no_repeat_ngram_size=1, seed=0)
    with pytest.raises(ValueError, match=r"rows \[0\] have no token left to sample at step 0"):
        generate(FixedLogits(np.zeros(2)), np.array([[0, 1]]), None, options, eos_token_id=None, pad_token_id=None)


class OneRowOfLogits(FixedLogits):
    """A broken decoder: (V,) instead of (B, V)."""

    def step(self, input_ids, attention_mask, position_ids) -> np.ndarray:
        return self.logits


def test_bad_decoder_output_raises() -> None:
    prompt = np.zeros((2, 3), dtype=np.int64)
    options = GenerationOptions(max_new_tokens=2)
    with pytest.raises(ValueError, match=r"shape \(5,\) at step 0: expected \(2, V\)"):
        generate(OneRowOfLogits(np.zeros(5)), prompt, None, options, eos_token_id=None, pad_token_id=None)
    with pytest.raises(ValueError, match=r"NaN or \+inf logits for rows \[0, 1\] at step 0"):
        generate(FixedLogits(np.array([0.0, np.nan])), prompt, None, options, eos_token_id=None, pad_token_id=None)


@pytest.mark.filterwarnings("error")  # the ValueError explains it: no numpy RuntimeWarnings on the way
def test_a_temperature_that_overflows_the_scores_is_an_error_not_token_0(model) -> None:
    # transformers raises as well ("probability tensor contains either inf, nan or element < 0")
    for beams, top_p in ((1, 1.0), (2, 1.0), (1, 0.9), (2, 0.9)):  # sampling and beam sampling, with top-p
        with pytest.raises(ValueError, match="no valid distribution to sample at step 0: the scaled scores overflowed"):
            ours(model, PROMPT, None, max_new_tokens=3, do_sample=True, temperature=1e-300, seed=0, num_beams=beams,
                 top_p=top_p)
