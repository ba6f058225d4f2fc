"""The reference model gives transformers 4.57's numbers (fp32, atol 1e-5) for every head and kernel.

The oracle is transformers' own GPT-2 with the same random weights. Where transformers' SDPA path is
wrong (it drops the scaling flags and head_mask), our SDPA is compared with transformers' eager path.
"""

from __future__ import annotations

import pytest
import torch

from .oracle import assert_close, left_padded, legacy, pair

KERNELS = ["eager", "sdpa"]


def _main_output(out):
    for name in ("logits", "last_hidden_state", "start_logits"):
        if getattr(out, name, None) is not None:
            return getattr(out, name)
    raise AssertionError("no main output")


@pytest.mark.parametrize("attn", KERNELS)
@pytest.mark.parametrize(
    "head", ["GPT2Model", "GPT2LMHeadModel", "GPT2ForTokenClassification", "GPT2ForQuestionAnswering"]
)
def test_every_head_matches_transformers_on_a_prompt(head, attn):
    ours, theirs = pair(head, attn)
    ids = torch.randint(0, 99, (2, 9))
    with torch.no_grad():
        a, b = ours(ids, output_hidden_states=True), theirs(ids, output_hidden_states=True)
    assert_close(_main_output(a), _main_output(b))
    if head == "GPT2ForQuestionAnswering":
        assert_close(a.end_logits, b.end_logits)
    for x, y in zip(a.hidden_states, b.hidden_states, strict=True):
        assert_close(x, y)


@pytest.mark.parametrize("attn", KERNELS)
def test_sequence_classification_pools_the_last_non_pad_token(attn):
    ours, theirs = pair("GPT2ForSequenceClassification", attn, num_labels=3, pad_token_id=0)
    ids = torch.randint(1, 99, (3, 8))
    ids[1, 5:] = 0  # right padding
    ids[2, :3] = 0  # left padding
    mask = (ids != 0).long()
    with torch.no_grad():
        a, b = ours(ids, attention_mask=mask), theirs(ids, attention_mask=mask)
    assert a.logits.shape == (3, 3)
    assert_close(a.logits, b.logits)


@pytest.mark.parametrize("attn", KERNELS)
def test_double_heads_match_with_choice_tokens(attn):
    ours, theirs = pair("GPT2DoubleHeadsModel", attn)
    ids = torch.randint(0, 99, (2, 3, 7))  # (batch, choices, tokens)
    mc = torch.tensor([[6, 4, 2], [0, 6, 3]])
    with torch.no_grad():
        a, b = ours(ids, mc_token_ids=mc), theirs(ids, mc_token_ids=mc)
        a0, b0 = ours(ids), theirs(ids)  # default: the last token of each choice
    assert a.logits.shape == (2, 3, 7, 99) and a.mc_logits.shape == (2, 3)
    assert_close(a.logits, b.logits)
    assert_close(a.mc_logits, b.mc_logits)
    assert_close(a0.mc_logits, b0.mc_logits)


@pytest.mark.parametrize(
    "summary",
    [
        dict(summary_type="last", summary_activation="tanh"),
        dict(summary_type="first", summary_use_proj=False),
        dict(summary_type="mean", summary_proj_to_labels=False),
        dict(summary_type="cls_index", summary_activation="gelu"),
    ],
)
def test_double_heads_summary_options_match(summary):
    ours, theirs = pair("GPT2DoubleHeadsModel", "eager", **summary)
    ids = torch.randint(0, 99, (2, 2, 5))
    with torch.no_grad():
        assert_close(ours(ids).mc_logits, theirs(ids).mc_logits)


@pytest.mark.parametrize("attn", KERNELS)
@pytest.mark.parametrize("head", ["GPT2Model", "GPT2LMHeadModel", "GPT2DoubleHeadsModel"])
def test_decode_steps_from_the_cache_match(head, attn):
    ours, theirs = pair(head, attn)
    shape = (2, 2, 6) if head == "GPT2DoubleHeadsModel" else (2, 6)
    ids = torch.randint(0, 99, shape)
    with torch.no_grad():
        a, b = ours(ids, use_cache=True), theirs(ids, use_cache=True)
        past_a, past_b = a.past_key_values, b.past_key_values
        for step in range(3):
            new = torch.randint(0, 99, (*shape[:-1], 1 + (step == 1)))  # one step feeds two tokens
            a, b = ours(new, past_key_values=past_a), theirs(new, past_key_values=past_b)
            assert_close(_main_output(a), _main_output(b))
            past_a, past_b = a.past_key_values, b.past_key_values
    for (ka, va), (kb, vb) in zip(legacy(past_a), legacy(past_b), strict=True):
        assert ka.shape == kb.shape == (*((shape[0] * shape[1],) if len(shape) == 3 else (2,)), 4, 10, 8)
        assert_close(ka, kb)
        assert_close(va, vb)


@pytest.mark.parametrize("attn", KERNELS)
def test_left_padded_batch_and_its_decode_steps_match(attn):
    ours, theirs = pair("GPT2LMHeadModel", attn)
    ids, mask = left_padded(4, 9)
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    with torch.no_grad():
        a = ours(ids, attention_mask=mask, position_ids=positions)
        b = theirs(ids, attention_mask=mask, position_ids=positions)
        assert_close(a.logits, b.logits, mask)
        for _ in range(3):
            new = torch.randint(0, 99, (4, 1))
            mask = torch.cat([mask, torch.ones(4, 1, dtype=torch.long)], dim=1)
            pos = mask.sum(-1, keepdim=True) - 1
            a = ours(new, attention_mask=mask, position_ids=pos, past_key_values=a.past_key_values)
            b = theirs(new, attention_mask=mask, position_ids=pos, past_key_values=b.past_key_values)
            assert_close(a.logits, b.logits)


@pytest.mark.parametrize("attn", KERNELS)
def test_right_padding_and_default_positions_match(attn):
    ours, theirs = pair("GPT2LMHeadModel", attn)
    ids = torch.randint(0, 99, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 4:] = 0
    with torch.no_grad():
        assert_close(ours(ids, attention_mask=mask).logits, theirs(ids, attention_mask=mask).logits, mask)


@pytest.mark.parametrize("attn", KERNELS)
def test_packed_sequences_without_cache_match(attn):
    ours, theirs = pair("GPT2LMHeadModel", attn)
    ids = torch.randint(0, 99, (1, 8))
    positions = torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4]])
    with torch.no_grad():
        a = ours(ids, position_ids=positions, use_cache=False)
        b = theirs(ids, position_ids=positions, use_cache=False)
    assert_close(a.logits, b.logits)


@pytest.mark.parametrize("attn", KERNELS)
@pytest.mark.parametrize(
    "flags",
    [
        dict(scale_attn_weights=False),
        dict(scale_attn_by_inverse_layer_idx=True),
        dict(reorder_and_upcast_attn=True),
        dict(scale_attn_by_inverse_layer_idx=True, reorder_and_upcast_attn=True),
    ],
)
def test_attention_scaling_flags_match_transformers_eager(flags, attn):
    # transformers' SDPA path ignores these flags; its eager path is the reference semantics.
    ours, theirs = pair("GPT2LMHeadModel", attn, oracle_attn="eager", **flags)
    ids, mask = left_padded(3, 7)
    with torch.no_grad():
        a = ours(ids, attention_mask=mask)
        b = theirs(ids, attention_mask=mask)
        assert_close(a.logits, b.logits, mask)
        new = torch.randint(0, 99, (3, 1))
        mask = torch.cat([mask, torch.ones(3, 1, dtype=torch.long)], 1)
        a = ours(new, attention_mask=mask, past_key_values=a.past_key_values)
        b = theirs(new, attention_mask=mask, past_key_values=b.past_key_values)
        assert_close(a.logits, b.logits)


def test_sdpa_and_eager_kernels_give_the_same_numbers():
    eager, _ = pair("GPT2LMHeadModel", "eager", scale_attn_by_inverse_layer_idx=True)
    sdpa, _ = pair("GPT2LMHeadModel", "sdpa", scale_attn_by_inverse_layer_idx=True)
    ids, mask = left_padded(3, 10)
    with torch.no_grad():
        assert_close(eager(ids, attention_mask=mask).logits, sdpa(ids, attention_mask=mask).logits, mask)


@pytest.mark.parametrize(
    "activation",
    [
        "gelu_new",
        "gelu",
        "relu",
        "silu",
        "swish",
        "tanh",
        "gelu_fast",
        "quick_gelu",
        "gelu_pytorch_tanh",
        "gelu_python",
        "gelu_accurate",
        "gelu_10",
        "mish",
        "relu6",
        "sigmoid",
        "linear",
        "leaky_relu",
        "laplace",
        "relu2",
        "prelu",
    ],
)
def test_each_activation_matches(activation):
    ours, theirs = pair("GPT2LMHeadModel", "sdpa", activation_function=activation)
    ids = torch.randint(0, 99, (2, 5))
    with torch.no_grad():
        assert_close(ours(ids).logits, theirs(ids).logits)


def test_prelu_slope_is_a_weight_under_transformers_name():
    ours, theirs = pair("GPT2LMHeadModel", "sdpa", activation_function="prelu")
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    with torch.no_grad():
        for block in theirs.transformer.h:
            block.mlp.act.weight.fill_(-0.3)
    ours.load_state_dict(theirs.state_dict())
    ids = torch.randint(0, 99, (2, 5))
    with torch.no_grad():
        assert_close(ours(ids).logits, theirs(ids).logits)


@pytest.mark.parametrize("attn", KERNELS)
@pytest.mark.parametrize("shape", ["heads", "layers x heads"])
def test_head_mask_matches_transformers_eager(attn, shape):
    ours, theirs = pair("GPT2LMHeadModel", attn, oracle_attn="eager")
    head_mask = torch.tensor([1.0, 0.0, 1.0, 0.5]) if shape == "heads" else torch.rand(3, 4)
    ids, mask = left_padded(2, 6)
    with torch.no_grad():
        a = ours(ids, attention_mask=mask, head_mask=head_mask)
        b = theirs(ids, attention_mask=mask, head_mask=head_mask)
        unmasked = ours(ids, attention_mask=mask)
    assert_close(a.logits, b.logits, mask)
    assert not torch.allclose(a.logits, unmasked.logits), "head_mask must change the numbers"


@pytest.mark.parametrize("attn", KERNELS)
def test_attention_weights_are_returned_and_match(attn):
    ours, theirs = pair("GPT2Model", attn, oracle_attn="eager")
    ids, mask = left_padded(2, 6)
    with torch.no_grad():
        a = ours(ids, attention_mask=mask, output_attentions=True)
        b = theirs(ids, attention_mask=mask, output_attentions=True)
    assert len(a.attentions) == 3
    for x, y in zip(a.attentions, b.attentions, strict=True):
        assert x.shape == (2, 4, 6, 6)
        assert_close(x, y, mask[:, None, :, None].expand_as(x))


@pytest.mark.parametrize("attn", KERNELS)
def test_pruned_heads_match(attn):
    ours, theirs = pair("GPT2LMHeadModel", attn)
    prune = {0: [1], 2: [0, 3]}
    ours.prune_heads(prune)
    theirs.prune_heads(prune)
    assert ours.config.pruned_heads == {0: [1], 2: [0, 3]}
    assert ours.transformer.h[2].attn.num_heads == 2
    ids = torch.randint(0, 99, (2, 6))
    with torch.no_grad():
        a, b = ours(ids), theirs(ids)
        assert_close(a.logits, b.logits)
        a2 = ours(ids[:, :1], past_key_values=a.past_key_values)
        b2 = theirs(ids[:, :1], past_key_values=b.past_key_values)
    assert_close(a2.logits, b2.logits)
    ours.prune_heads({0: [1, 2]})  # pruning again skips heads already gone
    theirs.prune_heads({0: [1, 2]})
    with torch.no_grad():
        assert_close(ours(ids).logits, theirs(ids).logits)


@pytest.mark.parametrize("attn", KERNELS)
def test_cross_attention_matches_with_cache(attn):
    ours, theirs = pair("GPT2LMHeadModel", attn, add_cross_attention=True)
    ids = torch.randint(0, 99, (2, 5))
    encoder = torch.randn(2, 7, 32)
    encoder_mask = torch.ones(2, 7, dtype=torch.long)
    encoder_mask[1, 5:] = 0
    with torch.no_grad():
        a = ours(ids, encoder_hidden_states=encoder, encoder_attention_mask=encoder_mask)
        b = theirs(ids, encoder_hidden_states=encoder, encoder_attention_mask=encoder_mask)
        assert_close(a.logits, b.logits)
        assert len(a.past_key_values[0]) == 4 and a.past_key_values[0][2].shape == (2, 4, 7, 8)
        new = torch.randint(0, 99, (2, 1))
        a2 = ours(
            new, past_key_values=a.past_key_values, encoder_hidden_states=encoder, encoder_attention_mask=encoder_mask
        )
        b2 = theirs(
            new, past_key_values=b.past_key_values, encoder_hidden_states=encoder, encoder_attention_mask=encoder_mask
        )
        assert_close(a2.logits, b2.logits)


@pytest.mark.parametrize("attn", KERNELS)
def test_cross_attention_weights_are_returned_and_match(attn):
    ours, theirs = pair("GPT2LMHeadModel", attn, oracle_attn="eager", add_cross_attention=True)
    ids, encoder = torch.randint(0, 99, (2, 5)), torch.randn(2, 7, 32)
    with torch.no_grad():
        a = ours(ids, encoder_hidden_states=encoder, output_attentions=True)
        b = theirs(ids, encoder_hidden_states=encoder, output_attentions=True)
    assert len(a.cross_attentions) == 3
    for x, y in zip(a.cross_attentions, b.cross_attentions, strict=True):
        assert_close(x, y)


def test_token_type_ids_and_inputs_embeds_match():
    ours, theirs = pair("GPT2LMHeadModel", "sdpa")
    ids = torch.randint(0, 99, (2, 6))
    types = torch.randint(0, 3, (2, 6))
    embeds = torch.randn(2, 6, 32)
    with torch.no_grad():
        assert_close(ours(ids, token_type_ids=types).logits, theirs(ids, token_type_ids=types).logits)
        assert_close(ours(inputs_embeds=embeds).logits, theirs(inputs_embeds=embeds).logits)


def test_transformers_cache_objects_are_accepted_as_past():
    ours, theirs = pair("GPT2LMHeadModel", "sdpa")
    ids = torch.randint(0, 99, (1, 5))
    with torch.no_grad():
        past = theirs(ids).past_key_values  # a DynamicCache, which transformers then grows in place
        new = torch.randint(0, 99, (1, 1))
        actual = ours(new, past_key_values=past).logits
        assert_close(actual, theirs(new, past_key_values=past).logits)


def test_logits_to_keep_keeps_the_last_positions():
    ours, theirs = pair("GPT2LMHeadModel", "sdpa")
    ids = torch.randint(0, 99, (2, 6))
    with torch.no_grad():
        a, b = ours(ids, logits_to_keep=1), theirs(ids, logits_to_keep=1)
    assert a.logits.shape == (2, 1, 99)
    assert_close(a.logits, b.logits)


def test_empty_past_is_the_same_as_no_past():
    ours, _ = pair("GPT2LMHeadModel", "sdpa")
    ids = torch.randint(0, 99, (2, 5))
    empty = tuple((torch.zeros(2, 4, 0, 8), torch.zeros(2, 4, 0, 8)) for _ in range(3))
    with torch.no_grad():
        assert_close(ours(ids, past_key_values=empty).logits, ours(ids).logits)
