"""Traceable wrappers: each exported head as a module with flat tensors in and out, in contract order.

They reuse the reference model's modules (wte, wpe, blocks, ln_f, heads) and replace only the parts a
trace cannot keep dynamic: the attention mask is built once from shapes (no Python ints), and every
layer runs one traceable kernel. Shape legend: B batch, T new tokens, P past, S = P + T, C embedding.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

import models
from models.attention import KernelInputs, register_kernel

KERNEL = "onnx-traceable"


def traceable_attention(module, q, k, v, inputs: KernelInputs):
    """softmax(q k^T / sqrt(hs) [/ (layer + 1)] + mask) v with one precomputed additive (B, 1, T, S) mask."""
    w = torch.matmul(q, k.transpose(-1, -2))  # (B, nh, T, S)
    if module.scale_attn_weights:
        w = w / torch.full([], v.size(-1) ** 0.5, dtype=w.dtype)
    if module.scale_attn_by_inverse_layer_idx:
        w = w / float(module.layer_idx + 1)
    w = F.softmax(w + inputs.mask, dim=-1).type(v.dtype)
    out = torch.matmul(w, v)  # (B, nh, T, hs)
    return out.transpose(1, 2), None


register_kernel(KERNEL, traceable_attention)


def additive_mask(attention_mask: torch.Tensor, query_length_from: torch.Tensor, dtype: torch.dtype,
                  mask_value: float) -> torch.Tensor:
    """(B, S) 0/1 padding mask -> (B, 1, T, S): 0 where causal and not padded, mask_value elsewhere."""
    s = attention_mask.shape[-1]
    t = query_length_from.shape[-1]
    key_pos = torch.arange(s, device=attention_mask.device)  # (S,)
    query_pos = torch.arange(t, device=attention_mask.device) + (s - t)  # (T,)
    causal = key_pos[None, :] <= query_pos[:, None]  # (T, S)
    allowed = causal[None, None] & attention_mask[:, None, None, :].bool()  # (B, 1, T, S)
    zero = torch.zeros([], dtype=dtype)
    return torch.where(allowed, zero, torch.full([], mask_value, dtype=dtype))


def lm_logits(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """hidden (..., C) @ weight (V, C)^T as a 2-D linear with a zero bias: it traces to Gemm(transB=1) on wte.

    nn.Linear traces to MatMul on a transposed copy that constant folding stores next to wte, doubling
    the largest tensor of a tied model (+148 MB for GPT-2 small); a 2-D linear with a bias does not.
    """
    zero_bias = torch.zeros(weight.shape[0], dtype=weight.dtype)
    flat = F.linear(hidden.reshape(-1, hidden.shape[-1]), weight, zero_bias)  # (N, V)
    return flat.reshape(*hidden.shape[:-1], weight.shape[0])


class DecoderGraph(nn.Module):
    """GPT2Model with explicit past in / present out; the base of every head's graph."""

    def __init__(self, base: models.GPT2Model, mask_value: float):
        super().__init__()
        self.base = base
        self.mask_value = mask_value
        self.n_layer = len(base.h)

    def decode(self, input_ids, attention_mask, position_ids, past: list[torch.Tensor]):
        """(B, T) ids -> hidden (B, T, C) and the presents, flat [k0, v0, k1, v1, ...]."""
        base = self.base
        hidden = base.wte(input_ids) + base.wpe(position_ids)  # (B, T, C)
        mask = additive_mask(attention_mask, input_ids, hidden.dtype, self.mask_value)  # (B, 1, T, S)
        presents = []
        for i, block in enumerate(base.h):
            inputs = KernelInputs(mask=mask, is_causal=False, head_mask=None, scale=block.attn.scale)
            out = block(hidden, (past[2 * i], past[2 * i + 1]), inputs, KERNEL, use_cache=True)
            hidden = out.hidden_states
            presents.extend(out.present)
        return base.ln_f(hidden), presents


class BaseGraph(DecoderGraph):
    """base head: last_hidden_state, presents."""

    def forward(self, input_ids, attention_mask, position_ids, *past):
        hidden, presents = self.decode(input_ids, attention_mask, position_ids, list(past))
        return (hidden, *presents)


class LMGraph(DecoderGraph):
    """lm head: logits, presents."""

    def __init__(self, model: models.GPT2LMHeadModel, mask_value: float):
        super().__init__(model.transformer, mask_value)
        self.lm_head = model.lm_head

    def forward(self, input_ids, attention_mask, position_ids, *past):
        hidden, presents = self.decode(input_ids, attention_mask, position_ids, list(past))
        return (lm_logits(hidden, self.lm_head.weight), *presents)  # (B, T, V)


class SequenceClassificationGraph(DecoderGraph):
    """seq-cls head: logits pooled at each row's last non-pad token, presents."""

    def __init__(self, model: models.GPT2ForSequenceClassification, mask_value: float):
        super().__init__(model.transformer, mask_value)
        self.score = model.score
        self.pad_token_id = model.config.pad_token_id

    def forward(self, input_ids, attention_mask, position_ids, *past):
        hidden, presents = self.decode(input_ids, attention_mask, position_ids, list(past))
        logits = self.score(hidden)  # (B, T, num_labels)
        if self.pad_token_id is None:
            pooled = logits[:, -1]
        else:
            non_pad = (input_ids != self.pad_token_id).to(torch.int64)
            positions = torch.arange(input_ids.shape[-1], dtype=torch.int64)
            last = (positions * non_pad).argmax(-1)  # (B,)
            pooled = logits[torch.arange(input_ids.shape[0]), last]
        return (pooled, *presents)  # (B, num_labels)


class DoubleHeadsGraph(DecoderGraph):
    """double-heads: (B, choices, T) inputs -> LM logits, choice logits, presents over B * choices rows."""

    def __init__(self, model: models.GPT2DoubleHeadsModel, mask_value: float):
        super().__init__(model.transformer, mask_value)
        self.lm_head = model.lm_head
        self.multiple_choice_head = model.multiple_choice_head

    def forward(self, input_ids, attention_mask, position_ids, mc_token_ids, *past):
        b, c, t = input_ids.shape
        hidden, presents = self.decode(
            input_ids.reshape(b * c, t),
            attention_mask.reshape(b * c, attention_mask.shape[-1]),
            position_ids.reshape(b * c, t),
            list(past),
        )
        hidden = hidden.reshape(b, c, t, hidden.shape[-1])  # (B, choices, T, C)
        mc_logits = self.multiple_choice_head(hidden, mc_token_ids).squeeze(-1)  # (B, choices)
        return (lm_logits(hidden, self.lm_head.weight), mc_logits, *presents)


HEAD_CLASSES: dict[str, type[models.GPT2PreTrainedModel]] = {
    "base": models.GPT2Model,
    "lm": models.GPT2LMHeadModel,
    "seq-cls": models.GPT2ForSequenceClassification,
    "double-heads": models.GPT2DoubleHeadsModel,
}


def graph_for(head: str, model: models.GPT2PreTrainedModel, mask_value: float) -> DecoderGraph:
    """The traceable wrapper of `model` for `head`."""
    if head == "base":
        return BaseGraph(model.base_model, mask_value)
    if head == "lm":
        return LMGraph(model, mask_value)
    if head == "seq-cls":
        return SequenceClassificationGraph(model, mask_value)
    return DoubleHeadsGraph(model, mask_value)
