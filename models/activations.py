"""Activation functions by the names Hugging Face configs use (`activation_function`).

Reference: transformers 4.57 `activations.py` (ACT2CLS). The formulas are copied term for term so
numbers match to the last bit, e.g. `gelu_new` is the tanh approximation written with `pow(x, 3)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F


def gelu_new(x: torch.Tensor) -> torch.Tensor:
    """GELU, tanh approximation as in the original GPT-2 (`gelu_new`)."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def gelu_python(x: torch.Tensor) -> torch.Tensor:
    """Exact GELU written with erf."""
    return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def gelu_fast(x: torch.Tensor) -> torch.Tensor:
    """GELU, tanh approximation with folded constants."""
    return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


def gelu_accurate(x: torch.Tensor) -> torch.Tensor:
    """GELU as in the original BERT repository."""
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """Sigmoid approximation of GELU."""
    return x * torch.sigmoid(1.702 * x)


def gelu_10(x: torch.Tensor) -> torch.Tensor:
    """Exact GELU clipped to [-10, 10] (for quantisation-friendly models)."""
    return torch.clip(F.gelu(x), -10, 10)


def laplace(x: torch.Tensor, mu: float = 0.707107, sigma: float = 0.282095) -> torch.Tensor:
    """Laplace activation (MEGA)."""
    x = (x - mu).div(sigma * math.sqrt(2.0))
    return 0.5 * (1.0 + torch.erf(x))


def relu2(x: torch.Tensor) -> torch.Tensor:
    """Squared ReLU (Primer)."""
    return torch.square(F.relu(x))


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_10": gelu_10,
    "gelu_fast": gelu_fast,
    "gelu_new": gelu_new,
    "gelu_python": gelu_python,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_python_tanh": gelu_new,
    "gelu_accurate": gelu_accurate,
    "laplace": laplace,
    "leaky_relu": F.leaky_relu,
    "linear": lambda x: x,
    "mish": F.mish,
    "quick_gelu": quick_gelu,
    "relu": F.relu,
    "relu2": relu2,
    "relu6": F.relu6,
    "sigmoid": torch.sigmoid,
    "silu": F.silu,
    "swish": F.silu,
    "tanh": torch.tanh,
}


# Activations with a learned parameter: name -> its initial value (transformers builds nn.PReLU() for "prelu").
LEARNED_ACTIVATIONS: dict[str, float] = {"prelu": 0.25}


class Activation(nn.Module):
    """An activation looked up by its Hugging Face name."""

    def __init__(self, name: str):
        super().__init__()
        if name not in ACTIVATIONS and name not in LEARNED_ACTIVATIONS:
            names = sorted([*ACTIVATIONS, *LEARNED_ACTIVATIONS])
            raise ValueError(f"activation_function {name!r} is unknown: use one of {', '.join(names)}")
        self.name = name
        self.fn = ACTIVATIONS.get(name)
        if name in LEARNED_ACTIVATIONS:
            # nn.PReLU's slope, under the state-dict name transformers gives it (`mlp.act.weight`).
            self.weight = nn.Parameter(torch.full((1,), LEARNED_ACTIVATIONS[name]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fn is None:
            return F.prelu(x, self.weight)
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.name
