"""Multi-head attention of GPT-2: Conv1D projections, causal mask, three kernels with the same numbers.

References: transformers 4.57 `modeling_gpt2.GPT2Attention` (eager path, `_upcast_and_reordered_attn`,
`prune_heads`, cross-attention with `q_attn`), `integrations/sdpa_attention.py`, and
`integrations/flash_attention.py`; nanoGPT's `CausalSelfAttention` for the layout.
Shape legend: B batch, T new tokens, P past length, S = P + T keys, C embedding, nh heads, hs head size.

Deliberate differences from transformers 4.57, both cases where it gives wrong numbers:
- SDPA and flash-attention receive the real softmax scale, so `scale_attn_weights=False` and
  `scale_attn_by_inverse_layer_idx=True` mean the same thing on every kernel (4.57 ignores them there).
- a `head_mask` or `output_attentions=True` runs the eager kernel instead of being dropped by SDPA.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .config import GPT2Config
from .conv1d import Conv1D, heads_to_keep, prune_conv1d


class FlashAttentionUnavailableError(RuntimeError):
    """flash_attention_2 was asked for where it cannot run."""


@dataclass
class AttentionOutput:
    """What one attention layer returns."""

    hidden_states: torch.Tensor  # (B, T, C)
    present: tuple[torch.Tensor, torch.Tensor] | None  # keys, values (B, nh, S, hs)
    weights: torch.Tensor | None  # (B, nh, T, S), eager kernel only


@dataclass
class KernelInputs:
    """Everything a kernel needs besides q, k, v."""

    mask: torch.Tensor | None  # eager: additive (B, 1, T, S); sdpa: bool (B, 1, T, S) or None; flash: (B, S) or None
    is_causal: bool  # only read when mask is None
    head_mask: torch.Tensor | None  # (B or 1, nh, 1, 1)
    scale: float


def attention_dropout_p(module: GPT2Attention) -> float:
    """The dropout p that SDPA and flash apply: the module's `attn_dropout.p` while it trains, as transformers 4.57."""
    # Read from the module, not config.attn_pdrop: trainers turn dropout off by setting the modules' p.
    return module.attn_dropout.p if module.training else 0.0


def eager_attention(module: GPT2Attention, q, k, v, inputs: KernelInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T * scale + mask) v, written out as transformers' eager path does."""
    w = torch.matmul(q, k.transpose(-1, -2))  # (B, nh, T, S)
    if module.scale_attn_weights:
        w = w / torch.full([], v.size(-1) ** 0.5, dtype=w.dtype, device=w.device)
    if module.scale_attn_by_inverse_layer_idx:
        w = w / float(module.layer_idx + 1)
    return _masked_softmax_values(module, w, v, inputs)


def _masked_softmax_values(module: GPT2Attention, w: torch.Tensor, v: torch.Tensor, inputs: KernelInputs):
    """Scores (B, nh, T, S) -> causal + padding masks, softmax, dropout, head mask, @ v; the eager kernels' tail."""
    if not module.is_cross_attention:
        t, s = w.size(-2), w.size(-1)
        causal = module.bias[:, :, s - t : s, :s]  # (1, 1, T, S)
        w = torch.where(causal, w, torch.full([], torch.finfo(w.dtype).min, dtype=w.dtype, device=w.device))
    if inputs.mask is not None:
        w = w + inputs.mask
    w = F.softmax(w, dim=-1).type(v.dtype)
    w = module.attn_dropout(w)
    if inputs.head_mask is not None:
        w = w * inputs.head_mask
    out = torch.matmul(w, v)  # (B, nh, T, hs)
    return out.transpose(1, 2), w  # (B, T, nh, hs)


def upcast_reordered_attention(module: GPT2Attention, q, k, v, inputs: KernelInputs):
    """The `reorder_and_upcast_attn` variant: scores in fp32 via baddbmm with the scale folded in (Mistral/Megatron)."""
    b, nh, t, hs = q.size()
    s = k.size(-2)
    w = torch.empty(b * nh, t, s, dtype=torch.float32, device=q.device)
    with torch.autocast(q.device.type, enabled=False):
        qf, kf = q.reshape(-1, t, hs).float(), k.transpose(-1, -2).reshape(-1, hs, s).float()
        w = torch.baddbmm(w, qf, kf, beta=0, alpha=inputs.scale).reshape(b, nh, t, s)  # (B, nh, T, S)
    return _masked_softmax_values(module, w, v, inputs)


def sdpa_attention(module: GPT2Attention, q, k, v, inputs: KernelInputs):
    """PyTorch's scaled_dot_product_attention with a boolean mask, or its causal flag when no mask is needed."""
    out = F.scaled_dot_product_attention(
        q,
        k,
        v,
        attn_mask=inputs.mask,
        dropout_p=attention_dropout_p(module),
        is_causal=inputs.mask is None and inputs.is_causal,
        scale=inputs.scale,
    )  # (B, nh, T, hs)
    return out.transpose(1, 2), None


def flash_attention_available() -> bool:
    """Whether the flash-attn package is importable."""
    return importlib.util.find_spec("flash_attn") is not None


def flash_attention(module: GPT2Attention, q, k, v, inputs: KernelInputs):
    """FlashAttention-2 (flash-attn package, CUDA, fp16/bf16); padded batches go through the varlen kernel."""
    if not flash_attention_available():
        raise FlashAttentionUnavailableError(
            "attn_implementation='flash_attention_2' needs the flash-attn package (pip install flash-attn) "
            "and a CUDA GPU: use attn_implementation='sdpa' here"
        )
    if q.device.type != "cuda" or q.dtype not in (torch.float16, torch.bfloat16):
        raise FlashAttentionUnavailableError(
            f"flash_attention_2 runs on CUDA in float16/bfloat16, got device {q.device} and dtype {q.dtype}: "
            "move the model with .to('cuda', torch.float16) or use attn_implementation='sdpa'"
        )
    from flash_attn import flash_attn_func, flash_attn_varlen_func

    causal = not module.is_cross_attention
    dropout_p = attention_dropout_p(module)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, T|S, nh, hs)
    if inputs.mask is None:
        out = flash_attn_func(q, k, v, dropout_p=dropout_p, softmax_scale=inputs.scale, causal=causal)
        return out, None  # (B, T, nh, hs)
    b, t = q.shape[:2]
    key_mask = inputs.mask.bool()  # (B, S)
    query_mask = key_mask[:, -t:]  # (B, T): left padding keeps the newest tokens on the right
    k_idx = key_mask.flatten().nonzero().flatten()
    q_idx = query_mask.flatten().nonzero().flatten()
    k_lens, q_lens = key_mask.sum(-1, dtype=torch.int32), query_mask.sum(-1, dtype=torch.int32)
    cu_k = F.pad(k_lens.cumsum(0, dtype=torch.int32), (1, 0))
    cu_q = F.pad(q_lens.cumsum(0, dtype=torch.int32), (1, 0))
    out_unpadded = flash_attn_varlen_func(
        q.flatten(0, 1)[q_idx],
        k.flatten(0, 1)[k_idx],
        v.flatten(0, 1)[k_idx],
        cu_seqlens_q=cu_q,
        cu_seqlens_k=cu_k,
        max_seqlen_q=int(q_lens.max()),
        max_seqlen_k=int(k_lens.max()),
        dropout_p=dropout_p,
        softmax_scale=inputs.scale,
        causal=causal,
    )  # (sum T_b, nh, hs)
    out = q.new_zeros(b * t, *q.shape[2:])
    out[q_idx] = out_unpadded
    return out.view(b, t, *q.shape[2:]), None


Kernel = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]
ATTENTION_KERNELS: dict[str, Kernel] = {
    "eager": eager_attention,
    "sdpa": sdpa_attention,
    "flash_attention_2": flash_attention,
}


def register_kernel(name: str, kernel: Kernel) -> None:
    """Make `kernel` selectable by name in GPT2Attention.forward (the exporter registers its traceable one)."""
    ATTENTION_KERNELS[name] = kernel


class GPT2Attention(nn.Module):
    """Causal self-attention (or cross-attention with `is_cross_attention`), Hugging Face's parameter names."""

    def __init__(self, config: GPT2Config, is_cross_attention: bool = False, layer_idx: int | None = None):
        super().__init__()
        n = config.n_positions
        self.register_buffer(
            "bias", torch.tril(torch.ones((n, n), dtype=torch.bool)).view(1, 1, n, n), persistent=False
        )
        self.register_buffer("masked_bias", torch.tensor(-1e4), persistent=False)
        self.embed_dim = config.n_embd
        self.num_heads = config.n_head
        self.head_dim = self.embed_dim // self.num_heads
        self.split_size = self.embed_dim
        self.scale_attn_weights = config.scale_attn_weights
        self.scale_attn_by_inverse_layer_idx = config.scale_attn_by_inverse_layer_idx
        self.reorder_and_upcast_attn = config.reorder_and_upcast_attn
        self.is_cross_attention = is_cross_attention
        self.layer_idx = layer_idx
        if is_cross_attention:
            self.c_attn = Conv1D(2 * self.embed_dim, self.embed_dim)
            self.q_attn = Conv1D(self.embed_dim, self.embed_dim)
        else:
            self.c_attn = Conv1D(3 * self.embed_dim, self.embed_dim)
        self.c_proj = Conv1D(self.embed_dim, self.embed_dim)
        self.attn_dropout = nn.Dropout(config.attn_pdrop)
        self.resid_dropout = nn.Dropout(config.resid_pdrop)
        self.pruned_heads: set[int] = set()

    @property
    def scale(self) -> float:
        """The softmax scale every kernel applies to q k^T."""
        scale = 1.0
        if self.scale_attn_weights:
            scale /= float(self.head_dim) ** 0.5
        if self.scale_attn_by_inverse_layer_idx:
            scale /= float(self.layer_idx + 1)
        return scale

    def prune_heads(self, heads: set[int] | list[int]) -> None:
        """Remove heads for good: their rows of c_attn and columns of c_proj go away."""
        heads, index = heads_to_keep(set(heads), self.num_heads, self.head_dim, self.pruned_heads)
        if not heads:
            return
        parts = 2 if self.is_cross_attention else 3
        index_attn = torch.cat([index + i * self.split_size for i in range(parts)])
        self.c_attn = prune_conv1d(self.c_attn, index_attn, dim=1)
        if self.is_cross_attention:
            self.q_attn = prune_conv1d(self.q_attn, index, dim=1)
        self.c_proj = prune_conv1d(self.c_proj, index, dim=0)
        self.split_size = (self.split_size // self.num_heads) * (self.num_heads - len(heads))
        self.num_heads -= len(heads)
        self.pruned_heads |= heads

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(*x.shape[:-1], -1, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)

    def forward(
        self,
        hidden_states: torch.Tensor,  # (B, T, C)
        layer_past: tuple[torch.Tensor, ...] | None,
        inputs: KernelInputs,
        implementation: str,
        encoder_hidden_states: torch.Tensor | None = None,
        use_cache: bool = False,
    ) -> AttentionOutput:
        if self.is_cross_attention:
            query = self._split_heads(self.q_attn(hidden_states))  # (B, nh, T, hs)
            if layer_past is not None:
                key, value = layer_past  # encoder keys computed on the first step are reused
            else:
                key, value = self.c_attn(encoder_hidden_states).split(self.split_size, dim=2)
                key, value = self._split_heads(key), self._split_heads(value)  # (B, nh, S_enc, hs)
        else:
            query, key, value = self.c_attn(hidden_states).split(self.split_size, dim=2)
            query, key, value = self._split_heads(query), self._split_heads(key), self._split_heads(value)
            if layer_past is not None:
                key = torch.cat((layer_past[0], key), dim=-2)  # (B, nh, S, hs)
                value = torch.cat((layer_past[1], value), dim=-2)
        present = (key, value) if use_cache else None

        if implementation == "eager" and self.reorder_and_upcast_attn:
            kernel = upcast_reordered_attention
        else:
            kernel = ATTENTION_KERNELS[implementation]
        out, weights = kernel(self, query, key, value, inputs)  # (B, T, nh, hs)
        out = out.reshape(*out.shape[:-2], -1).contiguous()  # (B, T, C')
        out = self.resid_dropout(self.c_proj(out))  # (B, T, C)
        return AttentionOutput(hidden_states=out, present=present, weights=weights)
