"""GPT-2 configuration: every field of Hugging Face's `GPT2Config`, read from and written to config.json.

References: transformers 4.57 `configuration_gpt2.py` and `configuration_utils.PretrainedConfig`
(the common fields GPT-2 checkpoints carry: labels, token ids, tying, problem type).
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

CONFIG_NAME = "config.json"
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2")
PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")

# Hugging Face's generic names for GPT-2's fields (`attribute_map` in GPT2Config).
ATTRIBUTE_MAP = {
    "hidden_size": "n_embd",
    "max_position_embeddings": "n_positions",
    "num_attention_heads": "n_head",
    "num_hidden_layers": "n_layer",
}


@dataclass
class GPT2Config:
    """The hyper-parameters of a GPT-2 model, with Hugging Face's names and defaults."""

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None
    activation_function: str = "gelu_new"
    resid_pdrop: float = 0.1
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    summary_type: str = "cls_index"
    summary_use_proj: bool = True
    summary_activation: str | None = None
    summary_proj_to_labels: bool = True
    summary_first_dropout: float = 0.1
    summary_last_dropout: float = 0.0
    scale_attn_weights: bool = True
    use_cache: bool = True
    bos_token_id: int | None = 50256
    eos_token_id: int | list[int] | None = 50256
    pad_token_id: int | None = None
    scale_attn_by_inverse_layer_idx: bool = False
    reorder_and_upcast_attn: bool = False
    add_cross_attention: bool = False
    tie_word_embeddings: bool = True
    num_labels: int = 2
    id2label: dict[int, str] | None = None
    problem_type: str | None = None
    classifier_dropout: float | None = None
    pruned_heads: dict[int, list[int]] = field(default_factory=dict)
    output_attentions: bool = False
    output_hidden_states: bool = False
    architectures: list[str] | None = None
    # Which attention kernel runs; not serialised, as in Hugging Face (chosen at load time).
    attn_implementation: str = "sdpa"
    # Fields this project does not interpret (generation defaults, tokenizer class, ...), kept for round-trips.
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.id2label is None:
            self.id2label = {i: f"LABEL_{i}" for i in range(self.num_labels)}
        else:
            self.id2label = {int(k): v for k, v in self.id2label.items()}
            self.num_labels = len(self.id2label)
        self.pruned_heads = {int(k): sorted(set(v)) for k, v in self.pruned_heads.items()}
        self.validate()

    # Hugging Face's generic attribute names, so code written against either config works.
    @property
    def hidden_size(self) -> int:
        """Alias of n_embd."""
        return self.n_embd

    @property
    def max_position_embeddings(self) -> int:
        """Alias of n_positions."""
        return self.n_positions

    @property
    def num_attention_heads(self) -> int:
        """Alias of n_head."""
        return self.n_head

    @property
    def num_hidden_layers(self) -> int:
        """Alias of n_layer."""
        return self.n_layer

    @property
    def head_dim(self) -> int:
        """Size of one attention head."""
        return self.n_embd // self.n_head

    @property
    def label2id(self) -> dict[str, int]:
        """Inverse of id2label."""
        return {label: i for i, label in self.labels().items()}

    def labels(self) -> dict[int, str]:
        """id2label, regenerated when num_labels was changed after construction."""
        if self.id2label is None or len(self.id2label) != self.num_labels:
            return {i: f"LABEL_{i}" for i in range(self.num_labels)}
        return self.id2label

    def validate(self) -> None:
        """Raise ValueError naming the field, its value and the fix when the shape cannot be built."""
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"n_head={self.n_head} does not divide n_embd={self.n_embd}: "
                f"choose n_head among the divisors of {self.n_embd} (each head gets n_embd / n_head features)"
            )
        if self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ValueError(
                f"attn_implementation {self.attn_implementation!r} is unknown: "
                f"use one of {', '.join(ATTN_IMPLEMENTATIONS)}"
            )
        if self.problem_type not in (None, *PROBLEM_TYPES):
            raise ValueError(
                f"problem_type {self.problem_type!r} is unknown: use one of {', '.join(PROBLEM_TYPES)}, or None to "
                "infer it from num_labels and the labels' dtype"
            )
        if self.summary_type not in ("last", "first", "mean", "cls_index", "attn"):
            raise ValueError(
                f"summary_type {self.summary_type!r} is unknown: use 'last', 'first', 'mean' or 'cls_index'"
            )

    # ---- serialisation -------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: dict[str, Any], **overrides: Any) -> GPT2Config:
        """Build a config from a config.json dict (Hugging Face 4.x or 5.x layout); unknown keys go to `extra`."""
        return cls(**{**copy.deepcopy(data), **overrides})

    def to_dict(self) -> dict[str, Any]:
        """The config.json contents, in Hugging Face's layout so transformers can read it back."""
        data = asdict(self)
        extra = data.pop("extra")
        data.pop("attn_implementation")
        data.pop("num_labels")
        id2label = self.labels()
        data["id2label"] = {str(k): v for k, v in id2label.items()}
        data["label2id"] = {v: k for k, v in id2label.items()}
        data["pruned_heads"] = {str(k): v for k, v in self.pruned_heads.items()}
        data["model_type"] = "gpt2"
        return {**extra, **data}

    @classmethod
    def from_json_file(cls, path: str | os.PathLike, **overrides: Any) -> GPT2Config:
        """Read a config.json file."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise FileNotFoundError(f"no config.json at {path}: point to a Hugging Face GPT-2 folder") from e
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path} is not valid JSON ({e}): re-save the checkpoint's config") from e
        model_type = data.get("model_type", "gpt2")
        if model_type != "gpt2":
            raise ValueError(f"{path} describes model_type {model_type!r}, not 'gpt2': this project loads GPT-2 only")
        return cls.from_dict(data, **overrides)

    def save(self, folder: str | os.PathLike) -> Path:
        """Write config.json into folder and return its path."""
        path = Path(folder) / CONFIG_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return path

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> GPT2Config:
        """One of the published GPT-2 shapes (`PRESETS`), with optional field overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}: use one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name].fields, **overrides})


_generated_init = GPT2Config.__init__


def _init_accepting_transformers_kwargs(self: GPT2Config, **kwargs: Any) -> None:
    """GPT2Config(**kwargs) as transformers takes it: generic aliases, label2id, unknown keys kept in `extra`."""
    for alias, name in ATTRIBUTE_MAP.items():
        if alias in kwargs:
            kwargs.setdefault(name, kwargs.pop(alias))
    if "_attn_implementation" in kwargs:
        kwargs.setdefault("attn_implementation", kwargs.pop("_attn_implementation"))
    if kwargs.get("attn_implementation", "") is None:
        kwargs.pop("attn_implementation")
    kwargs.pop("label2id", None)  # derived from id2label
    known = {f.name for f in fields(GPT2Config)}
    extra = dict(kwargs.pop("extra", None) or {})
    extra.update({k: kwargs.pop(k) for k in list(kwargs) if k not in known})
    _generated_init(self, **kwargs, extra=extra)


GPT2Config.__init__ = _init_accepting_transformers_kwargs


@dataclass(frozen=True)
class Preset:
    """A published GPT-2 shape and its parameter count (tied LM head counted once)."""

    fields: dict[str, Any]
    parameters: int


PRESETS: dict[str, Preset] = {
    "gpt2": Preset({"n_embd": 768, "n_layer": 12, "n_head": 12}, 124_439_808),
    "gpt2-medium": Preset({"n_embd": 1024, "n_layer": 24, "n_head": 16}, 354_823_168),
    "gpt2-large": Preset({"n_embd": 1280, "n_layer": 36, "n_head": 20}, 774_030_080),
    "gpt2-xl": Preset({"n_embd": 1600, "n_layer": 48, "n_head": 25}, 1_557_611_200),
    "distilgpt2": Preset({"n_embd": 768, "n_layer": 6, "n_head": 12}, 81_912_576),
}
