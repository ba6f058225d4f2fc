"""Checks on user inputs: each failure names the value, the limit and the fix, as a ValueError.

These run before any tensor math so a bad call never ends in an index error deep inside torch.
"""

from __future__ import annotations

import torch

from .config import GPT2Config
from .outputs import PastKeyValues


def as_legacy_past(past_key_values) -> PastKeyValues | None:
    """Accept our tuple layout, or a transformers Cache object (anything with `to_legacy_cache`)."""
    if past_key_values is None:
        return None
    if hasattr(past_key_values, "to_legacy_cache"):
        past_key_values = past_key_values.to_legacy_cache()
    past = tuple(tuple(layer) for layer in past_key_values)
    return past or None


def past_length(past: PastKeyValues | None) -> int:
    """Number of cached positions."""
    return 0 if not past else int(past[0][0].shape[-2])


def check_token_ids(name: str, ids: torch.Tensor, limit: int, limit_name: str) -> None:
    """Ids must be integers in [0, limit)."""
    if ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer token ids, got dtype {ids.dtype}: pass a torch.long tensor")
    if ids.numel() == 0:
        return
    low, high = int(ids.min()), int(ids.max())
    if high >= limit:
        raise ValueError(f"{name} holds id {high}, out of range for {limit_name} {limit}: ids must be in [0, {limit})")
    if low < 0:
        raise ValueError(f"{name} holds id {low}, negative: ids must be in [0, {limit})")


def check_past(past: PastKeyValues, config: GPT2Config, batch_size: int, num_heads: list[int]) -> None:
    """One (key, value[, cross_key, cross_value]) per layer, each (B, nh, P, hs) with one P for all layers."""
    if len(past) != config.n_layer:
        raise ValueError(
            f"past_key_values has {len(past)} layers but the model has n_layer={config.n_layer}: "
            "pass the past_key_values returned by the previous call unchanged"
        )
    length = past_length(past)
    for i, layer in enumerate(past):
        if len(layer) not in (2, 4):
            raise ValueError(f"past_key_values[{i}] has {len(layer)} tensors: expected (key, value)")
        expected = (batch_size, num_heads[i], length, config.head_dim)
        for name, tensor in zip(("key", "value"), layer[:2], strict=False):
            if tuple(tensor.shape) != expected:
                raise ValueError(
                    f"past_key_values[{i}] {name} has shape {tuple(tensor.shape)}, expected {expected} "
                    "(batch, n_head, past_length, head_dim)"
                )


def check_sequence_length(config: GPT2Config, past: int, new: int) -> None:
    """past + new tokens must fit the position table."""
    if past + new > config.n_positions:
        raise ValueError(
            f"sequence of {past} past + {new} new = {past + new} tokens is longer than n_positions="
            f"{config.n_positions}: shorten the prompt or generate fewer tokens"
        )


def check_attention_mask(mask: torch.Tensor, batch_size: int, total: int) -> None:
    """A 2-D (batch, past + new) mask of 0/1."""
    if tuple(mask.shape) != (batch_size, total):
        raise ValueError(
            f"attention_mask has shape {tuple(mask.shape)}, expected ({batch_size}, {total}) = "
            "(batch, past_length + new tokens): extend the mask by one column per generated token"
        )


def head_mask_per_layer(head_mask: torch.Tensor | None, config: GPT2Config, dtype: torch.dtype) -> list:
    """(n_head,) or (n_layer, n_head) -> one (1, nh, 1, 1) multiplier per layer (or None per layer)."""
    if head_mask is None:
        return [None] * config.n_layer
    if head_mask.dim() == 1:
        head_mask = head_mask.unsqueeze(0).expand(config.n_layer, -1)
    if head_mask.dim() != 2 or head_mask.shape[0] != config.n_layer:
        raise ValueError(
            f"head_mask has shape {tuple(head_mask.shape)}: expected (n_head,) or (n_layer, n_head) = "
            f"({config.n_layer}, n_head)"
        )
    return [head_mask[i].to(dtype)[None, :, None, None] for i in range(config.n_layer)]
