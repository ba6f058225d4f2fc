"""Saving Hugging Face GPT-2 folders as transformers 4.57's `save_pretrained` does.

config.json (with `architectures` and `dtype`), then the weights: the tied `lm_head.weight` dropped from
safetensors, `model-00001-of-0000N.safetensors` shards above max_shard_size with a `model.safetensors.index.json`,
`{"format": "pt"}` metadata; weights of an earlier save in the folder are removed so they cannot shadow these.
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from .checkpoint_files import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_INDEX_NAME, WEIGHTS_NAME
from .config import GPT2Config

DEFAULT_MAX_SHARD_SIZE = "5GB"  # transformers' default
_SIZE_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_SHARD_FILE = re.compile(r"(model|pytorch_model)-\d{5}-of-\d{5}\.(safetensors|bin)")


def _shard_limit(max_shard_size: int | str | None) -> int:
    """Bytes per shard from an int or a string such as '10MB' (decimal units, as huggingface_hub parses)."""
    value = DEFAULT_MAX_SHARD_SIZE if max_shard_size is None else max_shard_size
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(KB|MB|GB|TB)\s*", value.upper())
        if match is None:
            raise ValueError(
                f"max_shard_size {max_shard_size!r} is not a size: pass bytes (an int) or a string such as "
                "'500MB' or '5GB' (units KB, MB, GB, TB)"
            )
        value = int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"max_shard_size must be a positive size, got {max_shard_size!r}: pass e.g. '5GB'")
    return value


def _saved_config(model: nn.Module) -> GPT2Config:
    config = copy.deepcopy(model.config)
    config.architectures = [type(model).__name__]
    config.extra.pop("torch_dtype", None)  # superseded by "dtype", which transformers 4.57 writes
    config.extra["dtype"] = str(model.dtype).removeprefix("torch.")
    return config


def save_pretrained(
    model: nn.Module,
    folder: str | os.PathLike,
    *,
    max_shard_size: int | str | None = None,
    safe_serialization: bool = True,
) -> Path:
    """Write config.json and the weights as transformers does; returns the folder."""
    from huggingface_hub import split_torch_state_dict_into_shards

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} is a file: save_pretrained writes a folder; pass a directory path")
    limit = _shard_limit(max_shard_size)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    lm_head = getattr(model, "lm_head", None)
    if safe_serialization and lm_head is not None and lm_head.weight is model.base_model.wte.weight:
        del state["lm_head.weight"]  # safetensors refuses shared tensors; transformers re-ties on load
    weights_name = SAFE_WEIGHTS_NAME if safe_serialization else WEIGHTS_NAME
    pattern = weights_name.replace(".safetensors", "{suffix}.safetensors").replace(".bin", "{suffix}.bin")
    split = split_torch_state_dict_into_shards(state, filename_pattern=pattern, max_shard_size=limit)
    _remove_stale_weights(folder, keep=set(split.filename_to_tensors))
    for filename, names in split.filename_to_tensors.items():
        shard = {name: state[name].to("cpu").contiguous() for name in names}
        if safe_serialization:
            save_file(shard, str(folder / filename), metadata={"format": "pt"})
        else:
            torch.save(shard, folder / filename)
    if split.is_sharded:
        index = {
            "metadata": {"total_parameters": model.num_parameters(), **split.metadata},
            "weight_map": split.tensor_to_filename,
        }
        index_name = SAFE_WEIGHTS_INDEX_NAME if safe_serialization else WEIGHTS_INDEX_NAME
        (folder / index_name).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    _saved_config(model).save(folder)
    return folder


def _remove_stale_weights(folder: Path, keep: set[str]) -> None:
    # Weights of an earlier save would shadow the new ones (the loader prefers model.safetensors over shards).
    names = {SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME}
    for path in folder.iterdir():
        ours = path.name in names or _SHARD_FILE.fullmatch(path.name)
        if ours and path.is_file() and path.name not in keep:
            path.unlink()
