"""Load Hugging Face GPT-2 folders (safetensors or pytorch_model.bin, single or sharded) and OpenAI's TensorFlow
checkpoints: the config, the dtype, then every tensor, with every mismatch between file and model in one error.

References: transformers 4.57 `modeling_utils.PreTrainedModel.from_pretrained` / `_load_pretrained_model`
(missing head weights newly initialised with a warning, `dtype="auto"`). Where transformers only warns about
missing or unexpected backbone weights, this module raises: a model with random transformer weights is never
what the caller wanted. The pieces live one concern to a module, importing downwards only:
checkpoint_errors <- tf_checkpoint <- checkpoint_files (which files, their tensors, their JSON) <- weight_matching
(names to parameters) <- loading; saving writes what loading reads.
"""

from __future__ import annotations

import difflib
import os
import warnings
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint_errors import CheckpointMismatchError, CheckpointReadError, UnsupportedModelError
from .checkpoint_files import (
    HPARAMS_NAME,
    WeightFiles,
    config_from_hparams,
    find_weights,
    read_json,
    weight_items,
)
from .config import ATTRIBUTE_MAP, CONFIG_NAME, GPT2Config
from .hub import CheckpointNotFoundError, resolve_checkpoint
from .tf_checkpoint import read_tf_checkpoint
from .weight_matching import WeightMatcher, mismatch_error

# The errors callers catch, importable from here as before the split.
__all__ = [
    "CheckpointMismatchError",
    "CheckpointNotFoundError",
    "CheckpointReadError",
    "UnsupportedModelError",
    "load_config",
    "load_pretrained",
    "resolve_dtype",
]

# ---- config and dtype --------------------------------------------------------------------------------


def _config_data(config: Any) -> dict[str, Any]:
    """A config.json-style dict from our GPT2Config or transformers' (anything with to_dict)."""
    if isinstance(config, GPT2Config):
        return {**config.to_dict(), "attn_implementation": config.attn_implementation}
    if hasattr(config, "to_dict"):
        # transformers' config.json holds only the fields that differ from the defaults; so does ours then.
        data = config.to_diff_dict() if hasattr(config, "to_diff_dict") else config.to_dict()
        _check_model_type(data, "the config= you passed")
        return data
    kind = type(config).__name__
    raise TypeError(f"config must be a models.GPT2Config (or transformers' GPT2Config), got {kind}")


def _check_model_type(data: dict[str, Any], source: str) -> None:
    model_type = data.get("model_type", "gpt2")  # very old GPT-2 configs have no model_type
    if model_type != "gpt2":
        raise UnsupportedModelError(
            f"{source} describes model_type {model_type!r}, not 'gpt2': this loader builds GPT-2 models "
            "only; point it to a GPT-2 checkpoint"
        )


def _check_override_names(overrides: dict[str, Any], data: dict[str, Any]) -> None:
    # A typo such as n_layers=3 would otherwise land silently in config.extra.
    allowed = {f.name for f in fields(GPT2Config)} - {"extra"} | set(ATTRIBUTE_MAP) | set(data)
    for name in overrides:
        if name not in allowed:
            close = difflib.get_close_matches(name, sorted(allowed), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            given = f"{name}={overrides[name]!r}"
            raise TypeError(f"from_pretrained got {given}, which is not a GPT2Config field{hint}")


def load_config(
    folder: Path,
    weights: WeightFiles,
    config: Any,
    attn_implementation: str | None,
    overrides: dict[str, Any],
) -> GPT2Config:
    """The model's config: the config= object, else folder/config.json, else a TF hparams.json."""
    if config is not None:
        data, source = _config_data(config), "the config= you passed"
    elif (folder / CONFIG_NAME).is_file():
        data, source = read_json(folder / CONFIG_NAME), str(folder / CONFIG_NAME)
        _check_model_type(data, source)
    elif weights.kind == "tf" and (folder / HPARAMS_NAME).is_file():
        data, source = config_from_hparams(folder / HPARAMS_NAME), str(folder / HPARAMS_NAME)
    else:
        hparams = " (or hparams.json beside a TensorFlow checkpoint)" if weights.kind == "tf" else ""
        raise CheckpointNotFoundError(
            f"no {CONFIG_NAME}{hparams} in {folder}: copy the checkpoint's config.json next to the weights, "
            "or pass config="
        )
    overrides = dict(overrides)
    if "num_labels" in overrides and "id2label" not in overrides:
        # Otherwise the saved id2label's length would silently win over the num_labels asked for.
        data = {k: v for k, v in data.items() if k not in ("id2label", "label2id")}
    if attn_implementation is not None:
        overrides["attn_implementation"] = attn_implementation
    _check_override_names(overrides, data)
    try:
        return GPT2Config.from_dict(data, **overrides)
    except (ValueError, TypeError) as e:
        with_overrides = f" with overrides {overrides}" if overrides else ""
        raise CheckpointReadError(f"{source}{with_overrides} is not a valid GPT-2 config: {e}") from e


def _as_dtype(value: Any, what: str) -> torch.dtype:
    dtype = getattr(torch, value, None) if isinstance(value, str) else value
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(
            f"{what} {value!r} is not a floating-point torch dtype: use torch.float32, torch.float16, "
            "torch.bfloat16, their names ('float16'), or 'auto'"
        )
    return dtype


def resolve_dtype(dtype: Any, config: GPT2Config, weights: WeightFiles) -> torch.dtype:
    """None: the default (float32); 'auto': the config's dtype, else the checkpoint's; else the one given."""
    if dtype is None:
        return torch.get_default_dtype()
    if dtype != "auto":
        return _as_dtype(dtype, "dtype")
    # transformers 4.57 writes "dtype", older versions "torch_dtype"; both land in config.extra.
    saved = config.extra.get("dtype") or config.extra.get("torch_dtype")
    if saved is not None:
        return _as_dtype(saved, "config.json's dtype")
    if weights.kind != "tf":
        for _, tensor in weight_items(weights, weights.files[0]):
            if tensor.is_floating_point():
                return tensor.dtype
    return torch.float32  # TensorFlow GPT-2 checkpoints are float32


# ---- matching checkpoint names to the model ------------------------------------------------------------


# ---- from_pretrained / save_pretrained ---------------------------------------------------------------------


def load_pretrained(
    cls: type,
    name_or_path: str | os.PathLike,
    *,
    config: Any = None,
    attn_implementation: str | None = None,
    dtype: Any = None,
    **config_overrides: Any,
) -> nn.Module:
    """Build cls from a Hugging Face folder, a cached hub id or an OpenAI TF checkpoint, in eval mode."""
    folder = resolve_checkpoint(name_or_path)
    weights = find_weights(folder)
    model_config = load_config(folder, weights, config, attn_implementation, config_overrides)
    torch_dtype = resolve_dtype(dtype, model_config, weights)
    tf_weights = None
    if weights.kind == "tf":  # read before building, so a missing TensorFlow fails fast
        tf_weights = read_tf_checkpoint(weights.files[0])
    model = cls(model_config)
    if torch_dtype != model.dtype:
        model.to(torch_dtype)
    matcher = WeightMatcher(model)
    ignored: list[str] = []
    if tf_weights is not None:
        matcher.origin, ignored = tf_weights.origin, tf_weights.ignored
        for key, tensor in tf_weights.tensors.items():
            matcher.load(key, tensor)
    else:
        for path in weights.files:
            for key, tensor in weight_items(weights, path):
                matcher.load(key, tensor)
    missing, new_heads = matcher.missing()
    if missing or matcher.unexpected or matcher.mismatched:
        raise mismatch_error(folder, matcher, missing)
    name = type(model).__name__
    if matcher.other_heads or ignored:
        unused = matcher.other_heads + ignored
        warnings.warn(
            f"Some weights of the checkpoint at {folder} were not used when initializing {name}: {unused} "
            "(expected when the checkpoint was saved from another head or with training state)",
            stacklevel=3,
        )
    if new_heads:
        warnings.warn(
            f"Some weights of {name} were not initialized from the checkpoint at {folder} and are newly "
            f"initialized: {new_heads}. You should probably TRAIN this model on a down-stream task to be "
            "able to use it for predictions and inference.",
            stacklevel=3,
        )
    model.tie_weights()
    # Callers that must not ship random weights (the exporter) read these.
    model.newly_initialized = list(new_heads)
    model.source_folder = folder
    return model.eval()


