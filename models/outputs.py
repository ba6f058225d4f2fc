"""Named outputs of every forward method (the fields of Hugging Face's ModelOutput classes, as dataclasses).

Shape legend: B batch, T tokens, C embedding, V vocabulary, nh heads, S keys, L layers.
`past_key_values` is a tuple over layers of (key, value) pairs, each (B, nh, S, hs); with cross-attention
each layer holds (key, value, cross_key, cross_value), Hugging Face's legacy cache layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PastKeyValues = tuple[tuple[torch.Tensor, ...], ...]


@dataclass
class BaseModelOutput:
    """GPT2Model's output."""

    last_hidden_state: torch.Tensor  # (B, T, C)
    past_key_values: PastKeyValues | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None  # L + 1 of (B, T, C)
    attentions: tuple[torch.Tensor, ...] | None = None  # L of (B, nh, T, S)
    cross_attentions: tuple[torch.Tensor, ...] | None = None  # L of (B, nh, T, S_enc)


@dataclass
class CausalLMOutput:
    """GPT2LMHeadModel's output."""

    logits: torch.Tensor  # (B, T, V)
    loss: torch.Tensor | None = None
    past_key_values: PastKeyValues | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class DoubleHeadsOutput:
    """GPT2DoubleHeadsModel's output."""

    logits: torch.Tensor  # (B, num_choices, T, V)
    mc_logits: torch.Tensor  # (B, num_choices)
    loss: torch.Tensor | None = None
    mc_loss: torch.Tensor | None = None
    past_key_values: PastKeyValues | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class SequenceClassifierOutput:
    """GPT2ForSequenceClassification's output (logits pooled at each row's last non-pad token)."""

    logits: torch.Tensor  # (B, num_labels)
    loss: torch.Tensor | None = None
    past_key_values: PastKeyValues | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class TokenClassifierOutput:
    """GPT2ForTokenClassification's output."""

    logits: torch.Tensor  # (B, T, num_labels)
    loss: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class QuestionAnsweringOutput:
    """GPT2ForQuestionAnswering's output."""

    start_logits: torch.Tensor  # (B, T)
    end_logits: torch.Tensor  # (B, T)
    loss: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
