"""Checkpoint files: which weight files a folder holds, reading their tensors, and the JSON beside them.

The order and names are transformers 4.57's (`model.safetensors`, then `pytorch_model.bin`, each single or sharded
with an index), then an OpenAI TensorFlow checkpoint (models/tf_checkpoint.py reads those). Every unreadable file
is a CheckpointReadError naming it and the fix.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from .checkpoint_errors import CheckpointReadError
from .hub import CheckpointNotFoundError
from .tf_checkpoint import find_tf_checkpoint

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
WEIGHTS_NAME = "pytorch_model.bin"
WEIGHTS_INDEX_NAME = "pytorch_model.bin.index.json"
HPARAMS_NAME = "hparams.json"
# hparams.json key -> GPT2Config field.
HPARAMS = {
    "n_vocab": "vocab_size",
    "n_ctx": "n_positions",
    "n_embd": "n_embd",
    "n_head": "n_head",
    "n_layer": "n_layer",
}


@dataclass(frozen=True)
class WeightFiles:
    """Where a folder keeps its weights: the format and the files in load order (a TF checkpoint's prefix)."""

    kind: str  # "safetensors", "bin" or "tf"
    files: tuple[Path, ...]


def find_weights(folder: Path) -> WeightFiles:
    """The weights in folder, in transformers' order: safetensors, then .bin, then a TF checkpoint."""
    if (folder / SAFE_WEIGHTS_NAME).is_file():
        return WeightFiles("safetensors", (folder / SAFE_WEIGHTS_NAME,))
    if (folder / SAFE_WEIGHTS_INDEX_NAME).is_file():
        return WeightFiles("safetensors", _shards(folder / SAFE_WEIGHTS_INDEX_NAME))
    if (folder / WEIGHTS_NAME).is_file():
        return WeightFiles("bin", (folder / WEIGHTS_NAME,))
    if (folder / WEIGHTS_INDEX_NAME).is_file():
        return WeightFiles("bin", _shards(folder / WEIGHTS_INDEX_NAME))
    prefix = find_tf_checkpoint(folder)
    if prefix is not None:
        return WeightFiles("tf", (prefix,))
    present = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
    raise CheckpointNotFoundError(
        f"no weights in {folder} (it holds: {present}): expected {SAFE_WEIGHTS_NAME}, "
        f"{SAFE_WEIGHTS_INDEX_NAME}, {WEIGHTS_NAME}, {WEIGHTS_INDEX_NAME}, or an OpenAI TensorFlow "
        "checkpoint (hparams.json + model.ckpt.index); point to the folder save_pretrained wrote"
    )


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from path, or CheckpointReadError naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointReadError(f"{path} is not valid JSON ({e}): restore or re-save the file") from e
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise CheckpointReadError(f"{path} holds a JSON {kind}, not an object: restore or re-save it")
    return data


def _shards(index_path: Path) -> tuple[Path, ...]:
    weight_map = read_json(index_path).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointReadError(
            f"{index_path} has no weight_map (tensor name -> shard file): "
            "re-save the checkpoint with save_pretrained"
        )
    files = tuple(index_path.parent / name for name in dict.fromkeys(weight_map.values()))
    missing = [p.name for p in files if not p.is_file()]
    if missing:
        raise CheckpointNotFoundError(
            f"{index_path} lists shards that are not in {index_path.parent}: {', '.join(missing)}; "
            "copy every shard next to the index (or download the checkpoint again)"
        )
    return files


def _short(error: Exception) -> str:
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {first[:200]}" if first else type(error).__name__


def _safetensors_items(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    fix = "the file is damaged or not safetensors; download or save it again"
    try:
        handle = safe_open(str(path), framework="pt")
        keys = list(handle.keys())
    except (SafetensorError, OSError) as e:
        raise CheckpointReadError(f"cannot read {path} ({_short(e)}): {fix}") from e
    for key in keys:
        try:
            tensor = handle.get_tensor(key)
        except (SafetensorError, OSError) as e:
            raise CheckpointReadError(f"cannot read tensor {key!r} of {path} ({_short(e)}): {fix}") from e
        yield key, tensor


def _bin_items(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    try:
        # mmap keeps a multi-GB file on disk until each tensor is copied; it needs torch's zip format.
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as e:  # torch.load raises whatever its unpickler meets (EOFError, RuntimeError, ...)
        raise CheckpointReadError(
            f"cannot read {path} ({_short(e)}): the file is damaged, or holds more than tensors, which "
            "weights_only loading refuses on purpose; save a plain state dict (model.state_dict()) instead"
        ) from e
    if not isinstance(state, dict):
        kind = type(state).__name__
        raise CheckpointReadError(f"{path} holds a {kind}, not a state dict: save model.state_dict()")
    others = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if others:
        raise CheckpointReadError(
            f"{path} holds non-tensor entries {others[:5]}: save only model.state_dict() "
            "(not an optimizer, nor a dict wrapping it)"
        )
    yield from state.items()


def weight_items(weights: WeightFiles, path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs of one safetensors or .bin weight file, each read error a CheckpointReadError."""
    return _safetensors_items(path) if weights.kind == "safetensors" else _bin_items(path)


def config_from_hparams(path: Path) -> dict[str, int]:
    """The GPT2Config fields of an OpenAI hparams.json: vocab_size, n_positions, n_embd, n_head, n_layer."""
    data = read_json(path)
    missing = [key for key in HPARAMS if key not in data]
    if missing:
        raise CheckpointReadError(
            f"{path} lacks {', '.join(missing)}: an OpenAI hparams.json has {', '.join(HPARAMS)}; "
            "restore the file"
        )
    return {field: data[key] for key, field in HPARAMS.items()}
