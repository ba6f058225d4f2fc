"""A fresh model is initialised as GPT-2 describes, and seed for seed as transformers does."""

from __future__ import annotations

import math

import pytest
import torch
import transformers

import models

from .oracle import HEADS, TINY


def test_fresh_weights_follow_the_gpt2_scheme():
    config = models.GPT2Config(n_embd=256, n_layer=6, n_head=8, vocab_size=2000, n_positions=256)
    torch.manual_seed(0)
    model = models.GPT2LMHeadModel(config)
    std = config.initializer_range
    residual_std = std / math.sqrt(2 * config.n_layer)
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight"):
            assert abs(p.std().item() - residual_std) < 0.1 * residual_std, name
            assert abs(p.mean().item()) < 0.1 * residual_std, name
        elif name.startswith("transformer.ln") or ".ln_" in name:
            expected = 1.0 if name.endswith("weight") else 0.0
            assert torch.all(p == expected), name
        elif name.endswith("bias"):
            assert torch.all(p == 0), name
        else:
            assert abs(p.std().item() - std) < 0.05 * std, name
    assert model.lm_head.weight is model.transformer.wte.weight


@pytest.mark.parametrize("head", HEADS)
def test_same_seed_gives_transformers_weights(head):
    fields = {**TINY, "add_cross_attention": head == "GPT2LMHeadModel"}
    torch.manual_seed(42)
    theirs = getattr(transformers, head)(transformers.GPT2Config(**fields))
    torch.manual_seed(42)
    ours = getattr(models, head)(models.GPT2Config(**fields))
    state = ours.state_dict()
    for name, tensor in theirs.state_dict().items():
        assert torch.equal(state[name], tensor), name


def test_untied_lm_head_is_its_own_parameter():
    model = models.GPT2LMHeadModel(models.GPT2Config(**TINY, tie_word_embeddings=False))
    assert model.lm_head.weight is not model.transformer.wte.weight


def test_resize_token_embeddings_keeps_rows_and_ties():
    model = models.GPT2LMHeadModel(models.GPT2Config(**TINY))
    old = model.transformer.wte.weight.detach().clone()
    model.resize_token_embeddings(120)
    assert model.config.vocab_size == 120
    assert torch.equal(model.transformer.wte.weight[:99], old)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model(torch.tensor([[119]])).logits.shape == (1, 1, 120)
