"""Naive model parallelism: blocks spread over devices by a device map, as transformers' `parallelize`.

Reference: transformers 4.57 `utils/model_parallel_utils.py` (`get_device_map`, `assert_device_map`).
Keys may be CUDA indices (0, 1, ...) or device strings ("cpu", "cuda:1"); embeddings and heads live on
the first device, ln_f on the last.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def _device(key: Any) -> torch.device:
    return torch.device(f"cuda:{key}") if isinstance(key, int) else torch.device(key)


def even_device_map(n_layer: int) -> dict[int, list[int]]:
    """Blocks split evenly over every visible CUDA device."""
    count = torch.cuda.device_count()
    if count == 0:
        raise ValueError(
            "parallelize() without a device_map spreads blocks over CUDA devices, and this machine has none: "
            "pass a device_map such as {'cpu': list(range(n_layer))}"
        )
    per = math.ceil(n_layer / count)
    layers = list(range(n_layer))
    return {i: layers[i * per : (i + 1) * per] for i in range(count) if layers[i * per : (i + 1) * per]}


def check_device_map(device_map: dict[Any, list[int]], n_layer: int) -> list[torch.device]:
    """Every block exactly once, every device present; returns the devices in map order."""
    blocks = [b for layers in device_map.values() for b in layers]
    duplicated = sorted({b for b in blocks if blocks.count(b) > 1})
    missing = sorted(set(range(n_layer)) - set(blocks))
    extra = sorted(set(blocks) - set(range(n_layer)))
    problems = []
    if duplicated:
        problems.append(f"blocks {duplicated} appear on several devices")
    if missing:
        problems.append(f"blocks {missing} are on no device")
    if extra:
        problems.append(f"blocks {extra} do not exist (the model has blocks 0..{n_layer - 1})")
    if problems:
        raise ValueError("invalid device_map: " + "; ".join(problems))
    devices = [_device(key) for key in device_map]
    unknown = [str(d) for d in devices if d.type not in ("cpu", "cuda")]
    if unknown:
        raise ValueError(f"device_map names {', '.join(unknown)}: use CUDA indices or 'cpu'")
    count = torch.cuda.device_count()
    absent = [str(d) for d in devices if d.type == "cuda" and (d.index or 0) >= count]
    if absent:
        raise ValueError(
            f"device_map names {', '.join(absent)}, but this machine has {count} CUDA device(s): "
            "map the blocks onto devices that exist"
        )
    return devices


def apply_device_map(model: nn.Module, device_map: dict[Any, list[int]], devices: list[torch.device]) -> None:
    """Move blocks to their devices, everything else to the first device and ln_f to the last."""
    base = model.base_model
    first, last = devices[0], devices[-1]
    model.to(first)
    for device, layers in zip(devices, device_map.values(), strict=True):
        for block in layers:
            base.h[block].to(device)
    base.ln_f.to(last)
