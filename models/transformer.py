"""GPT2Model: token + position embeddings, a stack of Pre-LN blocks, and the final LayerNorm.

References: transformers 4.57 `modeling_gpt2.GPT2Model.forward` (position ids from the cache position,
token_type_ids embedded through wte, legacy tuple caches, head_mask, cross-attention masks);
nanoGPT's `GPT.forward`. Shape legend: B batch, T new tokens, P past, S = P + T, C embedding.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from . import masks
from .attention import FlashAttentionUnavailableError, KernelInputs, flash_attention_available
from .block import GPT2Block
from .config import GPT2Config
from .outputs import BaseModelOutput
from .pretrained import GPT2PreTrainedModel
from .validation import (
    as_legacy_past,
    check_attention_mask,
    check_past,
    check_sequence_length,
    check_token_ids,
    head_mask_per_layer,
    past_length,
)


class GPT2Model(GPT2PreTrainedModel):
    """The bare GPT-2 transformer, returning hidden states."""

    def __init__(self, config: GPT2Config):
        super().__init__(config)
        if config.attn_implementation == "flash_attention_2" and not flash_attention_available():
            raise FlashAttentionUnavailableError(
                "attn_implementation='flash_attention_2' needs the flash-attn package (pip install flash-attn) "
                "and a CUDA GPU, and flash-attn is not installed: use attn_implementation='sdpa' or 'eager'"
            )
        self.embed_dim = config.n_embd
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList([GPT2Block(config, layer_idx=i) for i in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.gradient_checkpointing = False
        self.post_init()

    def _prune_heads(self, heads_to_prune: dict[int, list[int]]) -> None:
        for layer, heads in heads_to_prune.items():
            self.h[layer].attn.prune_heads(heads)

    def _implementation(self, output_attentions: bool, head_mask) -> str:
        """The kernel for this call: eager when weights or head masking are asked for (SDPA/flash lack both)."""
        if output_attentions or head_mask is not None:
            return "eager"
        return self.config.attn_implementation

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        past_key_values=None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        head_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cache_position: torch.LongTensor | None = None,
    ) -> BaseModelOutput:
        """Run the transformer; `return_dict` is accepted for compatibility and ignored (outputs are dataclasses)."""
        config = self.config
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        use_cache = config.use_cache if use_cache is None else use_cache
        if self.gradient_checkpointing and self.training and use_cache:
            warnings.warn(
                "use_cache=True is incompatible with gradient checkpointing: setting use_cache=False", stacklevel=2
            )
            use_cache = False

        if input_ids is not None and inputs_embeds is not None:
            raise ValueError("pass input_ids or inputs_embeds, not both")
        if input_ids is not None:
            if input_ids.dim() == 1:
                raise ValueError(
                    f"input_ids has shape {tuple(input_ids.shape)}: expected (batch, sequence); add a batch axis"
                )
            input_shape = input_ids.shape
            check_token_ids("input_ids", input_ids, config.vocab_size, "vocab_size")
            input_ids = input_ids.reshape(-1, input_shape[-1])  # (B, T)
            inputs_embeds = self.wte(input_ids)  # (B, T, C)
        elif inputs_embeds is not None:
            input_shape = inputs_embeds.shape[:-1]
            inputs_embeds = inputs_embeds.reshape(-1, *inputs_embeds.shape[-2:])
        else:
            raise ValueError("pass input_ids or inputs_embeds")
        batch_size, seq_len = inputs_embeds.shape[:2]
        device, dtype = inputs_embeds.device, inputs_embeds.dtype

        past = as_legacy_past(past_key_values)
        if past is not None:
            check_past(past, config, batch_size, [block.attn.num_heads for block in self.h])
        past_len = past_length(past)
        check_sequence_length(config, past_len, seq_len)

        if position_ids is None:
            start = int(cache_position[0]) if cache_position is not None else past_len
            position_ids = torch.arange(start, start + seq_len, device=device).unsqueeze(0)  # (1, T)
        else:
            position_ids = position_ids.reshape(-1, seq_len)
            check_token_ids("position_ids", position_ids, config.n_positions, "n_positions")
        hidden_states = inputs_embeds + self.wpe(position_ids).to(device)  # (B, T, C)
        if token_type_ids is not None:
            token_type_ids = token_type_ids.reshape(-1, seq_len)
            check_token_ids("token_type_ids", token_type_ids, config.vocab_size, "vocab_size")
            hidden_states = hidden_states + self.wte(token_type_ids)
        hidden_states = self.drop(hidden_states)

        if attention_mask is not None:
            attention_mask = attention_mask.reshape(batch_size, -1) if attention_mask.dim() > 2 else attention_mask
            check_attention_mask(attention_mask, batch_size, past_len + seq_len)
            attention_mask = attention_mask.to(device)

        implementation = self._implementation(output_attentions, head_mask)
        head_masks = head_mask_per_layer(head_mask, config, dtype)
        scales = [block.attn.scale for block in self.h]
        self_mask = self._self_attention_mask(
            implementation, attention_mask, position_ids, past, batch_size, seq_len, past_len, use_cache, dtype, device
        )
        cross_mask = None
        if encoder_hidden_states is not None:
            if not config.add_cross_attention:
                raise ValueError(
                    "encoder_hidden_states were passed but the model has no cross-attention layers: "
                    "build it with add_cross_attention=True (or drop encoder_hidden_states)"
                )
            if encoder_attention_mask is None:
                encoder_attention_mask = torch.ones(encoder_hidden_states.shape[:2], device=device)
            cross_mask = masks.encoder_mask(encoder_attention_mask, dtype, implementation, seq_len)

        presents = [] if use_cache else None
        all_hidden = [] if output_hidden_states else None
        all_attn = [] if output_attentions else None
        all_cross = [] if output_attentions and config.add_cross_attention else None
        for i, block in enumerate(self.h):
            block_device = block.ln_1.weight.device
            hidden_states = hidden_states.to(block_device)  # model-parallel: follow the blocks across devices
            if all_hidden is not None:
                all_hidden.append(hidden_states)
            block_head_mask = _to(head_masks[i], block_device)
            self_inputs = KernelInputs(_to(self_mask, block_device), seq_len > 1, block_head_mask, scales[i])
            cross_inputs = KernelInputs(_to(cross_mask, block_device), False, block_head_mask, scales[i])
            layer_past = past[i] if past is not None else None
            encoder_states = _to(encoder_hidden_states, block_device)
            if self.gradient_checkpointing and self.training:
                out = checkpoint(
                    block,
                    hidden_states,
                    None,
                    self_inputs,
                    implementation,
                    encoder_states,
                    cross_inputs,
                    False,
                    use_reentrant=False,
                )
            else:
                out = block(
                    hidden_states, layer_past, self_inputs, implementation, encoder_states, cross_inputs, use_cache
                )
            hidden_states = out.hidden_states
            if presents is not None:
                presents.append(out.present)
            if all_attn is not None:
                all_attn.append(out.attention)
                if all_cross is not None:
                    all_cross.append(out.cross_attention)

        hidden_states = self.ln_f(hidden_states.to(self.ln_f.weight.device))
        hidden_states = hidden_states.view(*input_shape, hidden_states.size(-1))  # (..., T, C)
        if all_hidden is not None:
            all_hidden.append(hidden_states)
        return BaseModelOutput(
            last_hidden_state=hidden_states,
            past_key_values=tuple(presents) if presents is not None else None,
            hidden_states=tuple(all_hidden) if all_hidden is not None else None,
            attentions=tuple(all_attn) if all_attn is not None else None,
            cross_attentions=tuple(all_cross) if all_cross is not None else None,
        )

    def _self_attention_mask(
        self,
        implementation,
        attention_mask,
        position_ids,
        past,
        batch_size,
        seq_len,
        past_len,
        use_cache,
        dtype,
        device,
    ):
        """The causal + padding mask in the implementation's format (None when the kernel's causal flag suffices)."""
        segment_ids = None
        if attention_mask is None and past is None and not use_cache and position_ids.shape[-1] == seq_len:
            # transformers treats position ids that restart as packed sequences when no cache is in play.
            segment_ids = masks.packed_segment_ids(position_ids.expand(batch_size, -1).to(device))
        if implementation == "flash_attention_2":
            if attention_mask is None or bool(attention_mask.bool().all()):
                return None
            return attention_mask
        if (
            implementation == "sdpa"
            and segment_ids is None
            and masks.sdpa_can_skip_mask(seq_len, past_len, attention_mask)
        ):
            return None
        allowed = masks.allowed_keys(batch_size, seq_len, past_len, attention_mask, segment_ids, device)
        return allowed if implementation == "sdpa" else masks.eager_mask(allowed, dtype)


def _to(tensor: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return tensor.to(device) if tensor is not None else None
