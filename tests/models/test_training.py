"""Losses and gradients equal transformers', with and without gradient checkpointing."""

from __future__ import annotations

import warnings

import pytest
import torch

from .oracle import assert_close, pair


def test_lm_loss_is_the_shifted_cross_entropy_and_ignores_minus_100():
    ours, theirs = pair("GPT2LMHeadModel", "sdpa")
    ids = torch.randint(0, 99, (2, 7))
    labels = ids.clone()
    labels[0, :3] = -100
    with torch.no_grad():
        assert_close(ours(ids, labels=labels).loss, theirs(ids, labels=labels).loss)


def test_double_heads_losses_match():
    ours, theirs = pair("GPT2DoubleHeadsModel", "eager")
    ids = torch.randint(0, 99, (2, 3, 5))
    mc_labels = torch.tensor([2, 0])
    with torch.no_grad():
        a = ours(ids, labels=ids, mc_labels=mc_labels)
        b = theirs(ids, labels=ids, mc_labels=mc_labels)
    assert_close(a.loss, b.loss)
    assert_close(a.mc_loss, b.mc_loss)


@pytest.mark.parametrize(
    "num_labels, labels, problem_type",
    [
        (1, torch.tensor([0.5, -1.0]), "regression"),
        (3, torch.tensor([2, 0]), "single_label_classification"),
        (3, torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]), "multi_label_classification"),
    ],
)
def test_sequence_classification_losses_follow_the_problem_type(num_labels, labels, problem_type):
    ours, theirs = pair("GPT2ForSequenceClassification", "sdpa", num_labels=num_labels, pad_token_id=0)
    ids = torch.randint(1, 99, (2, 6))
    with torch.no_grad():
        a, b = ours(ids, labels=labels), theirs(ids, labels=labels)
    assert ours.config.problem_type == problem_type
    assert_close(a.loss, b.loss)


def test_token_classification_and_question_answering_losses_match():
    ours, theirs = pair("GPT2ForTokenClassification", "sdpa", num_labels=5, classifier_dropout=0.0)
    ids = torch.randint(0, 99, (2, 6))
    labels = torch.randint(0, 5, (2, 6))
    with torch.no_grad():
        assert_close(ours(ids, labels=labels).loss, theirs(ids, labels=labels).loss)
    ours, theirs = pair("GPT2ForQuestionAnswering", "sdpa")
    start, end = torch.tensor([1, 9]), torch.tensor([3, 4])  # 9 is outside the input: ignored
    with torch.no_grad():
        a = ours(ids, start_positions=start, end_positions=end)
        b = theirs(ids, start_positions=start, end_positions=end)
    assert_close(a.loss, b.loss)


def _gradients(model, ids):
    model.zero_grad()
    model(ids, labels=ids).loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_gradients_match_with_and_without_gradient_checkpointing(checkpointing, attn):
    ours, theirs = pair("GPT2LMHeadModel", attn)
    ours.train()
    theirs.train()  # dropout is 0 in the tiny config, so train mode is deterministic
    if checkpointing:
        ours.gradient_checkpointing_enable()
        theirs.gradient_checkpointing_enable()
    ids = torch.randint(0, 99, (2, 6))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours_grads, theirs_grads = _gradients(ours, ids), _gradients(theirs, ids)
    assert ours_grads.keys() == theirs_grads.keys()
    for name in theirs_grads:
        assert_close(ours_grads[name], theirs_grads[name], atol=1e-6)


def test_gradient_checkpointing_turns_the_cache_off_with_a_warning():
    ours, _ = pair("GPT2LMHeadModel", "sdpa")
    ours.gradient_checkpointing_enable()
    ours.train()
    assert ours.is_gradient_checkpointing
    with pytest.warns(UserWarning, match="use_cache=False"):
        out = ours(torch.randint(0, 99, (1, 4)), use_cache=True)
    assert out.past_key_values is None


def test_checkpointing_gives_the_same_gradients_as_plain_backprop():
    plain, _ = pair("GPT2LMHeadModel", "sdpa", resid_pdrop=0.1, attn_pdrop=0.1, embd_pdrop=0.1)
    ckpt, _ = pair("GPT2LMHeadModel", "sdpa", resid_pdrop=0.1, attn_pdrop=0.1, embd_pdrop=0.1)
    ckpt.gradient_checkpointing_enable()
    ids = torch.randint(0, 99, (2, 6))
    plain.train()
    ckpt.train()
    torch.manual_seed(3)
    a = _gradients(plain, ids)
    torch.manual_seed(3)
    b = _gradients(ckpt, ids)  # dropout masks are replayed during recomputation
    for name in a:
        assert_close(a[name], b[name], atol=1e-6)
