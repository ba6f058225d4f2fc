"""Attention masks: causal + padding (+ packed sequences), in the form each attention kernel wants.

Reference: transformers 4.57 `masking_utils.py` (`create_causal_mask`, `sdpa_mask`, `eager_mask`,
`find_packed_sequence_indices`) and `modeling_attn_mask_utils` for the encoder (cross-attention) mask.
Shape legend: B batch, T new tokens, P past length, S = P + T keys, nh heads, hs head size.
"""

from __future__ import annotations

import torch


def _is_tracing() -> bool:
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()


def allowed_keys(
    batch_size: int,
    query_length: int,
    past_length: int,
    attention_mask: torch.Tensor | None,
    segment_ids: torch.Tensor | None,
    device: torch.device,
) -> torch.Tensor:
    """Boolean (B, 1, T, S) mask, True where query t may attend key s (causal by cache position)."""
    key_length = past_length + query_length
    query_pos = torch.arange(query_length, device=device) + past_length  # (T,)
    key_pos = torch.arange(key_length, device=device)  # (S,)
    allowed = key_pos[None, :] <= query_pos[:, None]  # (T, S)
    allowed = allowed[None, None].expand(batch_size, 1, query_length, key_length)  # (B, 1, T, S)
    if attention_mask is not None:
        allowed = allowed & attention_mask.bool()[:, None, None, :]  # (B, 1, T, S)
    if segment_ids is not None:
        # Packed sequences: tokens only see keys of their own segment (segments only exist without a past).
        same = segment_ids[:, :, None] == segment_ids[:, None, :]  # (B, T, S)
        allowed = allowed & same[:, None]
    return allowed


def packed_segment_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """Segment index per token: a new segment starts wherever position_ids does not step by one."""
    first = position_ids[:, :1] - 1
    step = torch.diff(position_ids, prepend=first, dim=-1)  # (B, T)
    return (step != 1).cumsum(-1)


def eager_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive float mask: 0 where allowed, the dtype's most negative finite value elsewhere."""
    zero = torch.tensor(0.0, device=allowed.device, dtype=dtype)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


def sdpa_can_skip_mask(query_length: int, past_length: int, attention_mask: torch.Tensor | None) -> bool:
    """True when SDPA's own `is_causal` flag expresses the mask exactly (no padding, aligned diagonals)."""
    if _is_tracing():
        return False  # a traced graph would freeze is_causal for every later shape
    aligned = query_length == 1 or past_length == 0
    return aligned and (attention_mask is None or bool(attention_mask.bool().all()))


def encoder_mask(encoder_attention_mask: torch.Tensor, dtype: torch.dtype, implementation: str, query_length: int):
    """The cross-attention mask for an implementation: additive float, or None / 2-D when nothing is masked."""
    if implementation == "flash_attention_2":
        return encoder_attention_mask
    if implementation == "sdpa":
        if not _is_tracing() and bool((encoder_attention_mask == 1).all()):
            return None
        mask = encoder_attention_mask[:, None, None, :].to(dtype)  # (B, 1, 1, S_enc)
        mask = mask.expand(-1, 1, query_length, -1)  # (B, 1, T, S_enc)
        return (1.0 - mask).masked_fill((1.0 - mask).bool(), torch.finfo(dtype).min)
    mask = encoder_attention_mask[:, None, None, :].to(dtype)  # (B, 1, 1, S_enc)
    return (1.0 - mask) * torch.finfo(dtype).min
