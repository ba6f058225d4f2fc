"""Matching checkpoint tensors to a model's parameters, as transformers 4.57's `_load_pretrained_model` does.

The base-model prefix (`transformer.`) is added or stripped, legacy LayerNorm names (`gamma` / `beta`) are renamed,
the tied `lm_head.weight` is never copied over `wte`, and what does not fit is recorded, to be reported in one
CheckpointMismatchError listing every missing, unexpected and mis-shaped name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .checkpoint_errors import CheckpointMismatchError
from .config import GPT2Config

# Top-level modules of the task heads; anything else in a checkpoint belongs to the transformer itself.
HEAD_MODULES = ("lm_head", "multiple_choice_head", "score", "classifier", "qa_outputs")


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
        if key.startswith(self.prefix) or is_head_key(key):
            return key
        return self.prefix + key  # a bare GPT2Model checkpoint loaded into a head

    def load(self, key: str, tensor: torch.Tensor) -> None:
        """Copy one checkpoint tensor into its parameter, or file it as ignored, unexpected or mis-shaped."""
        name = self.target(key)
        base_name = name if self.is_base else name.removeprefix(self.prefix)
        if not is_head_key(name):
            self.file_shapes[base_name] = tuple(tensor.shape)
        if name in self.buffers:
            return  # legacy causal-mask buffers (attn.bias, attn.masked_bias) of old checkpoints
        if name not in self.params or name in self.loaded:
            (self.other_heads if is_head_key(name) else self.unexpected).append(self.file_name(key))
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
        return [k for k in absent if not is_head_key(k)], [k for k in absent if is_head_key(k)]

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


def is_head_key(name: str) -> bool:
    """Whether a weight belongs to a task head (lm_head, score, ...) rather than the transformer."""
    return name.split(".", 1)[0] in HEAD_MODULES


def mismatch_error(folder: Path, matcher: WeightMatcher, missing: list[str]) -> CheckpointMismatchError:
    """One error naming every weight that did not fit, with the config fields the shapes imply."""
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
