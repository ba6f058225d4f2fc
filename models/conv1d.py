"""Conv1D: GPT-2's linear layer with the weight stored as (in_features, out_features).

Reference: transformers 4.57 `pytorch_utils.Conv1D` / `prune_conv1d_layer`. The transposed layout is
the original TensorFlow checkpoint's, and keeping it lets state dicts load without renaming.
"""

from __future__ import annotations

import torch
from torch import nn


class Conv1D(nn.Module):
    """y = x @ weight + bias, with weight of shape (nx, nf)."""

    def __init__(self, nf: int, nx: int):
        super().__init__()
        self.nf = nf
        self.nx = nx
        self.weight = nn.Parameter(torch.empty(nx, nf))
        self.bias = nn.Parameter(torch.zeros(nf))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size_out = x.size()[:-1] + (self.nf,)
        x = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)  # (N, nf)
        return x.view(size_out)

    def extra_repr(self) -> str:
        return f"nf={self.nf}, nx={self.nx}"


def prune_conv1d(layer: Conv1D, index: torch.LongTensor, dim: int = 1) -> Conv1D:
    """A new Conv1D keeping only `index` along `dim` (1: output features, 0: input features)."""
    index = index.to(layer.weight.device)
    weight = layer.weight.index_select(dim, index).detach().clone()
    bias = layer.bias.detach().clone() if dim == 0 else layer.bias[index].detach().clone()
    nx, nf = weight.shape
    pruned = Conv1D(nf, nx).to(device=layer.weight.device, dtype=layer.weight.dtype)
    with torch.no_grad():
        pruned.weight.copy_(weight.contiguous())
        pruned.bias.copy_(bias.contiguous())
    return pruned


def heads_to_keep(
    heads: set[int], n_head: int, head_dim: int, already_pruned: set[int]
) -> tuple[set[int], torch.LongTensor]:
    """The heads newly pruned and the feature indices that survive, accounting for heads pruned before."""
    mask = torch.ones(n_head, head_dim)
    heads = set(heads) - already_pruned
    for head in heads:
        # Heads pruned earlier are gone from the weights, so shift the index down past them.
        shifted = head - sum(1 for h in already_pruned if h < head)
        mask[shifted] = 0
    keep = mask.view(-1).eq(1)
    return heads, torch.arange(len(keep))[keep].long()
