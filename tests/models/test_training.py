"""Losses and gradients equal transformers', with and without gradient checkpointing."""

from __future__ import annotations

import warnings

import pytest
import torch

import models
from models.attention import attention_dropout_p, flash_attention_available

from .oracle import TINY, assert_close, pair


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


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_checkpointing_gives_the_same_gradients_as_plain_backprop(attn):
    plain, _ = pair("GPT2LMHeadModel", attn, resid_pdrop=0.1, attn_pdrop=0.1, embd_pdrop=0.1)
    ckpt, _ = pair("GPT2LMHeadModel", attn, resid_pdrop=0.1, attn_pdrop=0.1, embd_pdrop=0.1)
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


# Dropout as transformers 4.57 drives it: every p is read from its nn.Dropout module (SDPA and flash get
# `attn_dropout.p if training`), so setting the modules' p turns dropout off whatever the config says.
# Gradients are compared at atol 1e-5 (fp32); the seeded p > 0 runs draw the same masks in the same order.

LIVE_DROPOUT = dict(
    resid_pdrop=0.1,
    embd_pdrop=0.1,
    attn_pdrop=0.1,
    summary_first_dropout=0.1,
    summary_last_dropout=0.1,
    classifier_dropout=0.1,
)


def _case(name: str) -> tuple[str, dict, dict]:
    """(head, config overrides, forward kwargs) for one training case; every head gets a scalar loss."""
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(1, 99, (2, 7), generator=g)
    if name == "GPT2DoubleHeadsModel":
        choices = torch.randint(1, 99, (2, 3, 7), generator=g)
        mc = dict(mc_labels=torch.tensor([2, 0]), mc_token_ids=torch.tensor([[6, 4, 2], [0, 6, 3]]))
        return name, {}, dict(input_ids=choices, labels=choices, **mc)
    if name == "GPT2ForSequenceClassification":
        ids[1, 5:] = 0  # right padding: the pooled token is not the last one
        return name, dict(num_labels=3, pad_token_id=0), dict(input_ids=ids, labels=torch.tensor([2, 0]))
    if name == "GPT2ForTokenClassification":
        return name, dict(num_labels=5), dict(input_ids=ids, labels=torch.randint(0, 5, (2, 7), generator=g))
    if name == "GPT2ForQuestionAnswering":
        return name, {}, dict(input_ids=ids, start_positions=torch.tensor([1, 5]), end_positions=torch.tensor([3, 6]))
    if name == "GPT2Model":
        return name, {}, dict(input_ids=ids)
    if name == "GPT2LMHeadModel-padded":
        mask = torch.ones_like(ids)
        mask[1, :3] = 0  # left padding: SDPA gets a boolean mask instead of its causal flag
        return "GPT2LMHeadModel", {}, dict(input_ids=ids, attention_mask=mask, labels=ids)
    if name == "GPT2LMHeadModel-cross-attention":
        encoder = torch.randn(2, 4, 32, generator=g)
        kwargs = dict(input_ids=ids, encoder_hidden_states=encoder, labels=ids)
        return "GPT2LMHeadModel", dict(add_cross_attention=True), kwargs
    return name, {}, dict(input_ids=ids, labels=ids)


CASES = [
    "GPT2Model",
    "GPT2LMHeadModel",
    "GPT2LMHeadModel-padded",
    "GPT2LMHeadModel-cross-attention",
    "GPT2DoubleHeadsModel",
    "GPT2ForSequenceClassification",
    "GPT2ForTokenClassification",
    "GPT2ForQuestionAnswering",
]


def _loss(out) -> torch.Tensor:
    """The head's loss(es), or a fixed projection of the hidden states for the bare model."""
    if getattr(out, "loss", None) is None:
        weights = torch.linspace(-1.0, 1.0, out.last_hidden_state.shape[-1])
        return (out.last_hidden_state * weights).sum()
    mc_loss = getattr(out, "mc_loss", None)
    return out.loss + mc_loss if mc_loss is not None else out.loss


def _train_step(model, kwargs: dict, seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss and every parameter's gradient of one seeded training-mode forward + backward."""
    model.zero_grad()
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers' checkpointing notes that the cache is off
        loss = _loss(model(**kwargs))
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _training_pair(case: str, attn: str, checkpointing: bool):
    head, overrides, kwargs = _case(case)
    ours, theirs = pair(head, attn, **{**LIVE_DROPOUT, **overrides})
    for model in (ours, theirs):
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable()
    return ours, theirs, kwargs


def _dropouts(model) -> list[torch.nn.Dropout]:
    return [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]


def _assert_same_step(ours, theirs, kwargs: dict, seed: int) -> None:
    loss_a, grads_a = _train_step(ours, kwargs, seed)
    loss_b, grads_b = _train_step(theirs, kwargs, seed)
    assert_close(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_b:
        assert_close(grads_a[name], grads_b[name], atol=1e-5)


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("case", CASES)
def test_dropout_modules_set_to_zero_turn_dropout_off_whatever_the_config_says(case, attn, checkpointing):
    ours, theirs, kwargs = _training_pair(case, attn, checkpointing)
    assert ours.config.attn_pdrop == 0.1  # the config keeps asking for dropout
    for model in (ours, theirs):
        for dropout in _dropouts(model):
            dropout.p = 0.0
    # Different seeds: with every module at p=0 nothing random is left, so the steps agree anyway.
    loss_a, grads_a = _train_step(ours, kwargs, seed=1)
    loss_b, grads_b = _train_step(theirs, kwargs, seed=2)
    assert_close(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_b:
        assert_close(grads_a[name], grads_b[name], atol=1e-5)


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("case", CASES)
def test_live_dropout_draws_transformers_masks_with_the_same_seed(case, attn, checkpointing):
    ours, theirs, kwargs = _training_pair(case, attn, checkpointing)
    for model in (ours, theirs):
        # Per-module p that differ from the config: layer 0 without attention dropout, layer 1 with more.
        model.base_model.h[0].attn.attn_dropout.p = 0.0
        model.base_model.h[1].attn.attn_dropout.p = 0.3
    _assert_same_step(ours, theirs, kwargs, seed=3)


def test_live_dropout_is_random_and_eval_turns_it_off():
    ours, _, kwargs = _training_pair("GPT2LMHeadModel", "sdpa", checkpointing=False)
    assert not torch.equal(_train_step(ours, kwargs, seed=1)[0], _train_step(ours, kwargs, seed=2)[0])
    for dropout in _dropouts(ours):
        if dropout is not ours.transformer.h[0].attn.attn_dropout:
            dropout.p = 0.0
    # Only layer 0's attention dropout is left, and SDPA applies it: the seeds still disagree.
    assert not torch.equal(_train_step(ours, kwargs, seed=1)[0], _train_step(ours, kwargs, seed=2)[0])
    ours.eval()
    assert torch.equal(_train_step(ours, kwargs, seed=1)[0], _train_step(ours, kwargs, seed=2)[0])


def test_attention_dropout_p_is_the_modules_while_it_trains():
    attention = models.GPT2Model(models.GPT2Config(**{**TINY, "attn_pdrop": 0.1})).h[0].attn
    attention.attn_dropout.p = 0.25
    assert attention_dropout_p(attention.train()) == 0.25
    assert attention_dropout_p(attention.eval()) == 0.0


@pytest.mark.skipif(
    not (torch.cuda.is_available() and flash_attention_available()),
    reason="flash_attention_2 needs a CUDA GPU and the flash-attn package",
)
def test_flash_attention_follows_the_modules_p():
    ours, theirs = pair("GPT2LMHeadModel", "flash_attention_2", **LIVE_DROPOUT)
    ids = torch.randint(0, 99, (2, 7), device="cuda")
    for model in (ours, theirs):
        model.to("cuda", torch.float16).train()
        for dropout in _dropouts(model):
            dropout.p = 0.0
    with torch.no_grad():
        train_logits, theirs_logits = ours(ids).logits, theirs(ids).logits
        eval_logits = ours.eval()(ids).logits
    torch.testing.assert_close(train_logits, eval_logits, atol=0, rtol=0)  # no dropout left to draw
    torch.testing.assert_close(train_logits, theirs_logits, atol=1e-3, rtol=0)  # fp16
