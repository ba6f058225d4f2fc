"""Bad input ends in a ValueError that names the value, the limit and the fix, never deep inside torch."""

from __future__ import annotations

import pytest
import torch

import models

from .oracle import TINY, pair


@pytest.fixture(scope="module")
def lm():
    return pair("GPT2LMHeadModel", "sdpa")[0]


def test_token_id_beyond_the_vocabulary(lm):
    with pytest.raises(ValueError, match=r"input_ids holds id 99, out of range for vocab_size 99"):
        lm(torch.tensor([[1, 99]]))
    with pytest.raises(ValueError, match=r"holds id -1, negative"):
        lm(torch.tensor([[1, -1]]))


def test_float_ids_and_missing_batch_axis(lm):
    with pytest.raises(ValueError, match="integer token ids, got dtype torch.float32"):
        lm(torch.tensor([[1.0, 2.0]]))
    with pytest.raises(ValueError, match=r"expected \(batch, sequence\)"):
        lm(torch.tensor([1, 2]))


def test_sequence_longer_than_n_positions(lm):
    with pytest.raises(ValueError, match="0 past \\+ 49 new = 49 tokens is longer than n_positions=48"):
        lm(torch.zeros(1, 49, dtype=torch.long))
    past = lm(torch.zeros(1, 40, dtype=torch.long)).past_key_values
    with pytest.raises(ValueError, match="40 past \\+ 9 new = 49 tokens"):
        lm(torch.zeros(1, 9, dtype=torch.long), past_key_values=past)


def test_position_ids_beyond_the_table(lm):
    with pytest.raises(ValueError, match="position_ids holds id 48, out of range for n_positions 48"):
        lm(torch.zeros(1, 2, dtype=torch.long), position_ids=torch.tensor([[47, 48]]))


def test_attention_mask_of_the_wrong_shape(lm):
    with pytest.raises(ValueError, match=r"attention_mask has shape \(1, 3\), expected \(1, 4\)"):
        lm(torch.zeros(1, 4, dtype=torch.long), attention_mask=torch.ones(1, 3))
    past = lm(torch.zeros(1, 4, dtype=torch.long)).past_key_values
    with pytest.raises(ValueError, match=r"expected \(1, 5\) = \(batch, past_length \+ new tokens\)"):
        lm(torch.zeros(1, 1, dtype=torch.long), past_key_values=past, attention_mask=torch.ones(1, 1))


def test_past_of_the_wrong_shape(lm):
    past = lm(torch.zeros(2, 4, dtype=torch.long)).past_key_values
    with pytest.raises(ValueError, match=r"past_key_values\[0\] key has shape \(2, 4, 4, 8\), expected \(1, 4, 4, 8\)"):
        lm(torch.zeros(1, 1, dtype=torch.long), past_key_values=past)
    with pytest.raises(ValueError, match="past_key_values has 2 layers but the model has n_layer=3"):
        lm(torch.zeros(2, 1, dtype=torch.long), past_key_values=past[:2])


def test_input_ids_and_inputs_embeds_together_or_neither(lm):
    with pytest.raises(ValueError, match="not both"):
        lm(torch.zeros(1, 2, dtype=torch.long), inputs_embeds=torch.zeros(1, 2, 32))
    with pytest.raises(ValueError, match="pass input_ids or inputs_embeds"):
        lm()


def test_head_count_must_divide_the_embedding():
    with pytest.raises(ValueError, match="n_head=5 does not divide n_embd=32"):
        models.GPT2LMHeadModel(models.GPT2Config(**{**TINY, "n_head": 5}))


def test_head_mask_of_the_wrong_shape(lm):
    with pytest.raises(ValueError, match=r"head_mask has shape \(2, 4\): expected \(n_head,\) or \(n_layer, n_head\)"):
        lm(torch.zeros(1, 2, dtype=torch.long), head_mask=torch.ones(2, 4))


def test_encoder_states_without_cross_attention(lm):
    with pytest.raises(ValueError, match="no cross-attention layers: build it with add_cross_attention=True"):
        lm(torch.zeros(1, 2, dtype=torch.long), encoder_hidden_states=torch.zeros(1, 3, 32))


def test_flash_attention_where_it_cannot_run():
    config = models.GPT2Config(**TINY, attn_implementation="flash_attention_2")
    with pytest.raises(models.FlashAttentionUnavailableError, match="flash-attn.*use attn_implementation='sdpa'"):
        models.GPT2LMHeadModel(config)


def test_sequence_classification_batch_without_pad_token():
    model = pair("GPT2ForSequenceClassification", "sdpa")[0]
    with pytest.raises(ValueError, match="a batch of 2 sequences needs config.pad_token_id"):
        model(torch.zeros(2, 3, dtype=torch.long))


def test_choice_token_outside_the_sequence():
    model = pair("GPT2DoubleHeadsModel", "sdpa")[0]
    with pytest.raises(ValueError, match="mc_token_ids holds 5, outside the sequence of 4 tokens"):
        model(torch.zeros(1, 2, 4, dtype=torch.long), mc_token_ids=torch.tensor([[5, 1]]))


def test_pruning_invalid_heads(lm):
    with pytest.raises(ValueError, match="cannot prune heads \\[7\\] of layer 0: heads are 0..3"):
        lm.prune_heads({0: [7]})
    with pytest.raises(ValueError, match="would leave layer 1 with no head"):
        lm.prune_heads({1: [0, 1, 2, 3]})
    with pytest.raises(ValueError, match="the model has layers 0..2"):
        lm.prune_heads({5: [0]})
