"""Load and save Hugging Face GPT-2 folders (safetensors or pytorch_model.bin, single or sharded) and OpenAI's
TensorFlow checkpoints, with every mismatch between file and model reported in one error.

References: transformers 4.57 `modeling_utils.PreTrainedModel.from_pretrained` / `_load_pretrained_model`
(prefix stripping and adding around `base_model_prefix`, non-persistent buffers ignored, missing head
weights newly initialised with a warning, `dtype="auto"`) and `save_pretrained` (tied `lm_head.weight` dropped
from safetensors, `model-00001-of-0000N.safetensors` shards with a `model.safetensors.index.json`,
`{"format": "pt"}` metadata). Where transformers only warns about missing or unexpected backbone weights,
this module raises: a model with random transformer weights is never what the caller wanted.
"""

from __future__ import annotations

import copy
import difflib
import json
import os
import re
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from .config import ATTRIBUTE_MAP, CONFIG_NAME, GPT2Config
from .hub import CheckpointNotFoundError, resolve_checkpoint

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
WEIGHTS_NAME = "pytorch_model.bin"
WEIGHTS_INDEX_NAME = "pytorch_model.bin.index.json"
DEFAULT_MAX_SHARD_SIZE = "5GB"  # transformers' default
_SIZE_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
# Top-level modules of the task heads; anything else in a checkpoint belongs to the transformer itself.
HEAD_MODULES = ("lm_head", "multiple_choice_head", "score", "classifier", "qa_outputs")
_SHARD_FILE = re.compile(r"(model|pytorch_model)-\d{5}-of-\d{5}\.(safetensors|bin)")

__all__ = [
    "CheckpointMismatchError",
    "CheckpointNotFoundError",
    "CheckpointReadError",
    "UnsupportedModelError",
    "load_pretrained",
    "save_pretrained",
]


class CheckpointReadError(ValueError):
    """A checkpoint file exists but is unusable: corrupt weights, invalid JSON, impossible config values."""


class UnsupportedModelError(ValueError):
    """The checkpoint's config describes a model other than GPT-2."""


class CheckpointMismatchError(ValueError):
    """Backbone weights that do not fit the model: every missing, unexpected and mis-shaped name at once."""

    def __init__(
        self,
        message: str,
        missing: list[str],
        unexpected: list[str],
        mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
    ):
        super().__init__(message)
        self.missing = missing
        self.unexpected = unexpected
        self.mismatched = mismatched  # (name, shape in the checkpoint, shape in the model)


@dataclass(frozen=True)
class WeightFiles:
    """Where a folder keeps its weights: the format and the files in load order (a TF checkpoint's prefix)."""

    kind: str  # "safetensors", "bin" or "tf"
    files: tuple[Path, ...]


# ---- finding and reading files -----------------------------------------------------------------------


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
    from .tf_checkpoint import find_tf_checkpoint

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


def _file_items(weights: WeightFiles, path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    return _safetensors_items(path) if weights.kind == "safetensors" else _bin_items(path)


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
    elif weights.kind == "tf" and (folder / "hparams.json").is_file():
        from .tf_checkpoint import config_from_hparams

        data, source = config_from_hparams(folder / "hparams.json"), str(folder / "hparams.json")
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
        for _, tensor in _file_items(weights, weights.files[0]):
            if tensor.is_floating_point():
                return tensor.dtype
    return torch.float32  # TensorFlow GPT-2 checkpoints are float32


# ---- matching checkpoint names to the model ------------------------------------------------------------


def _fmt_shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


@dataclass
class WeightMatcher:
    """Copies checkpoint tensors into a model and records what did not fit, as transformers' loading does."""

    model: nn.Module
    origin: dict[str, str] = field(default_factory=dict)  # checkpoint name -> name in its source (TF)
    loaded: set[str] = field(default_factory=set)
    unexpected: list[str] = field(default_factory=list)
    other_heads: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    file_names: dict[str, str] = field(default_factory=dict)  # model name -> its name in the checkpoint
    file_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # base-model names, for hints

    def __post_init__(self) -> None:
        self.prefix = self.model.base_model_prefix + "."
        self.is_base = self.model.base_model is self.model
        self.params = self.model.state_dict(keep_vars=True)
        self.buffers = {name for name, _ in self.model.named_buffers()}
        lm_head = getattr(self.model, "lm_head", None)
        self.tied = lm_head is not None and lm_head.weight is self.model.base_model.wte.weight

    def target(self, key: str) -> str:
        """The model's name for a checkpoint key: legacy LayerNorm names fixed, prefix added or stripped."""
        if key.endswith(".gamma"):
            key = key[: -len("gamma")] + "weight"
        elif key.endswith(".beta"):
            key = key[: -len("beta")] + "bias"
        if self.is_base:
            return key.removeprefix(self.prefix)
        if key.startswith(self.prefix) or _is_head_key(key):
            return key
        return self.prefix + key  # a bare GPT2Model checkpoint loaded into a head

    def load(self, key: str, tensor: torch.Tensor) -> None:
        """Copy one checkpoint tensor into its parameter, or file it as ignored, unexpected or mis-shaped."""
        name = self.target(key)
        base_name = name if self.is_base else name.removeprefix(self.prefix)
        if not _is_head_key(name):
            self.file_shapes[base_name] = tuple(tensor.shape)
        if name in self.buffers:
            return  # legacy causal-mask buffers (attn.bias, attn.masked_bias) of old checkpoints
        if name not in self.params or name in self.loaded:
            (self.other_heads if _is_head_key(name) else self.unexpected).append(self.file_name(key))
            return
        param = self.params[name]
        if tuple(tensor.shape) != tuple(param.shape):
            self.mismatched.append((name, tuple(tensor.shape), tuple(param.shape)))
            self.file_names[name] = self.file_name(key)
            return
        self.loaded.add(name)
        if name == "lm_head.weight" and self.tied:
            return  # the tied head is wte; copying both would let the later one win
        with torch.no_grad():
            param.copy_(tensor)

    def file_name(self, key: str) -> str:
        """A checkpoint key as its file spells it (a TF checkpoint's variable name)."""
        return self.origin.get(key, key)

    def label(self, name: str) -> str:
        """A model weight in messages, with the checkpoint's name for it where that differs."""
        source = self.file_names.get(name, name)
        return f"{name} (checkpoint: {source})" if source != name else name

    def missing(self) -> tuple[list[str], list[str]]:
        """(backbone weights the checkpoint lacked, head weights left newly initialised)."""
        absent = [k for k in self.params if k not in self.loaded and k not in self.file_names]
        if self.tied:
            absent = [k for k in absent if k != "lm_head.weight"]  # transformers never stores it
        return [k for k in absent if not _is_head_key(k)], [k for k in absent if _is_head_key(k)]

    def hints(self, config: GPT2Config) -> str:
        """The config fields the checkpoint's shapes imply, where they differ from the model's config."""
        found: dict[str, int] = {}
        shapes = self.file_shapes
        if len(shapes.get("wte.weight", ())) == 2:
            found["vocab_size"], found["n_embd"] = shapes["wte.weight"]
        if len(shapes.get("wpe.weight", ())) == 2:
            found["n_positions"] = shapes["wpe.weight"][0]
        layers = [int(m.group(1)) for k in shapes if (m := re.match(r"h\.(\d+)\.", k))]
        if layers:
            found["n_layer"] = max(layers) + 1
        differ = [
            f"{k}={v} (config: {getattr(config, k)})" for k, v in found.items() if getattr(config, k) != v
        ]
        return "; the checkpoint's shapes say " + ", ".join(differ) if differ else ""


def _is_head_key(name: str) -> bool:
    return name.split(".", 1)[0] in HEAD_MODULES


def _mismatch_error(folder: Path, matcher: WeightMatcher, missing: list[str]) -> CheckpointMismatchError:
    model = matcher.model
    config: GPT2Config = model.config
    shape_fields = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head")
    shape = ", ".join(f"{k}={getattr(config, k)}" for k in shape_fields)
    lines = [f"the checkpoint at {folder} does not fit {type(model).__name__}({shape}):"]
    if missing:
        lines += [f"  missing from the checkpoint ({len(missing)}):", *(f"    {k}" for k in missing)]
    if matcher.unexpected:
        lines += [f"  unexpected in the checkpoint ({len(matcher.unexpected)}):"]
        lines += [f"    {k}" for k in matcher.unexpected]
    if matcher.mismatched:
        lines += [f"  mis-shaped ({len(matcher.mismatched)}):"]
        for k, a, b in matcher.mismatched:
            lines.append(f"    {matcher.label(k)}: checkpoint {_fmt_shape(a)} vs model {_fmt_shape(b)}")
    fix = "fix: make config.json (or the config= / overrides you passed) describe these weights"
    if any(".attn.c_" in k for k, _, _ in matcher.mismatched):
        fix += "; heads pruned before saving must be listed in config.json's pruned_heads"
    lines.append(fix + matcher.hints(config))
    message = "\n".join(lines)
    return CheckpointMismatchError(message, missing, list(matcher.unexpected), list(matcher.mismatched))


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
    from .pretrained import GPT2PreTrainedModel

    if cls is GPT2PreTrainedModel:
        raise TypeError(
            "from_pretrained needs a concrete class: call it on GPT2Model, GPT2LMHeadModel or another head "
            "(config.json's `architectures` names the one the checkpoint was saved from)"
        )
    folder = resolve_checkpoint(name_or_path)
    weights = find_weights(folder)
    model_config = load_config(folder, weights, config, attn_implementation, config_overrides)
    torch_dtype = resolve_dtype(dtype, model_config, weights)
    tf_weights = None
    if weights.kind == "tf":  # read before building, so a missing TensorFlow fails fast
        from .tf_checkpoint import read_tf_checkpoint

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
            for key, tensor in _file_items(weights, path):
                matcher.load(key, tensor)
    missing, new_heads = matcher.missing()
    if missing or matcher.unexpected or matcher.mismatched:
        raise _mismatch_error(folder, matcher, missing)
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
