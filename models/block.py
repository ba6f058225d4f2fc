"""The Pre-LN transformer block of GPT-2: LayerNorm -> attention -> residual, LayerNorm -> MLP -> residual.

References: transformers 4.57 `modeling_gpt2.GPT2MLP` / `GPT2Block`; nanoGPT's `MLP` / `Block`.
Shape legend: B batch, T new tokens, S keys, C embedding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .activations import Activation
from .attention import GPT2Attention, KernelInputs
from .config import GPT2Config
from .conv1d import Conv1D


class GPT2MLP(nn.Module):
    """c_fc -> activation -> c_proj -> dropout."""

    def __init__(self, intermediate_size: int, config: GPT2Config):
        super().__init__()
        self.c_fc = Conv1D(intermediate_size, config.n_embd)
        self.c_proj = Conv1D(config.n_embd, intermediate_size)
        self.act = Activation(config.activation_function)
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))  # (B, T, C)


@dataclass
class BlockOutput:
    """What one block returns."""

    hidden_states: torch.Tensor  # (B, T, C)
    present: tuple[torch.Tensor, ...] | None  # (k, v) or (k, v, cross_k, cross_v), each (B, nh, S, hs)
    attention: torch.Tensor | None  # (B, nh, T, S)
    cross_attention: torch.Tensor | None  # (B, nh, T, S_enc)


class GPT2Block(nn.Module):
    """One transformer layer, with optional cross-attention between self-attention and the MLP."""

    def __init__(self, config: GPT2Config, layer_idx: int | None = None):
        super().__init__()
        inner = config.n_inner if config.n_inner is not None else 4 * config.n_embd
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = GPT2Attention(config, layer_idx=layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        if config.add_cross_attention:
            self.crossattention = GPT2Attention(config, is_cross_attention=True, layer_idx=layer_idx)
            self.ln_cross_attn = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = GPT2MLP(inner, config)

    def forward(
        self,
        hidden_states: torch.Tensor,  # (B, T, C)
        layer_past: tuple[torch.Tensor, ...] | None,
        self_inputs: KernelInputs,
        implementation: str,
        encoder_hidden_states: torch.Tensor | None = None,
        cross_inputs: KernelInputs | None = None,
        use_cache: bool = False,
    ) -> BlockOutput:
        self_past = layer_past[:2] if layer_past is not None else None
        attn = self.attn(self.ln_1(hidden_states), self_past, self_inputs, implementation, use_cache=use_cache)
        hidden_states = hidden_states + attn.hidden_states
        present = attn.present
        cross_weights = None
        if encoder_hidden_states is not None:
            cross_past = layer_past[2:4] if layer_past is not None and len(layer_past) == 4 else None
            cross = self.crossattention(
                self.ln_cross_attn(hidden_states),
                cross_past,
                cross_inputs,
                implementation,
                encoder_hidden_states=encoder_hidden_states,
                use_cache=use_cache,
            )
            hidden_states = hidden_states + cross.hidden_states
            cross_weights = cross.weights
            if use_cache:
                present = present + cross.present
        hidden_states = hidden_states + self.mlp(self.ln_2(hidden_states))
        return BlockOutput(hidden_states, present, attn.weights, cross_weights)
