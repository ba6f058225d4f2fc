"""export.json: the versioned manifest every export folder carries, read here without torch or the exporter.

It records what the graph is (head, variant, dtype, opset), its I/O contract (names, dtypes, symbolic
shapes; Optimum's names so other loaders read our files), the model's shape, the tool versions that
made it, and the validation report. Style after onnxruntime-genai's genai_config.json beside the model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .versioned_json import VersionedFormat

MANIFEST_NAME = "export.json"
FORMAT = "gpt2-export"
FORMAT_VERSION = 1
HEADS = ("base", "lm", "double-heads", "seq-cls")
CACHE_KINDS = ("key", "value")
PAST_PREFIX = "past_key_values."  # Optimum's cache input names: past_key_values.{layer}.{key|value}
PRESENT_PREFIX = "present."  # and the outputs that feed them next step: present.{layer}.{key|value}


def past_name(layer: int, kind: str) -> str:
    """The graph input holding layer's cached keys or values: past_key_values.{layer}.{kind}."""
    return f"{PAST_PREFIX}{layer}.{kind}"


def present_name(layer: int, kind: str) -> str:
    """The graph output holding layer's keys or values after this step: present.{layer}.{kind}."""
    return f"{PRESENT_PREFIX}{layer}.{kind}"


def cache_names(n_layer: int) -> list[tuple[str, str]]:
    """(past input, present output) name pairs, key then value per layer, in graph order."""
    return [(past_name(i, kind), present_name(i, kind)) for i in range(n_layer) for kind in CACHE_KINDS]


def past_names(n_layer: int) -> list[str]:
    """past_key_values.{i}.key / .value, in graph input order."""
    return [past for past, _ in cache_names(n_layer)]


def present_names(n_layer: int) -> list[str]:
    """present.{i}.key / .value, in graph output order."""
    return [present for _, present in cache_names(n_layer)]


class ManifestError(ValueError):
    """export.json is missing, unreadable, or from an incompatible format version."""


MANIFEST_FORMAT = VersionedFormat(
    MANIFEST_NAME, "manifest", FORMAT, FORMAT_VERSION, ManifestError,
    fix="re-export the checkpoint into a new folder",
    version_fix="re-export with the same gpt2-export version as the runtime",
    not_a_folder="pass the folder written by `gpt2-export export`",
    missing="it was not written by `gpt2-export export`",
)

@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, element type and shape (ints or symbolic axis names)."""

    name: str
    dtype: str  # "int64", "float32", "float16"
    shape: tuple[int | str, ...]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorSpec:
        return cls(data["name"], data["dtype"], tuple(data["shape"]))


@dataclass(frozen=True)
class IOContract:
    """The graph's inputs and outputs, in order."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": [asdict(t) for t in self.inputs], "outputs": [asdict(t) for t in self.outputs]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IOContract:
        return cls(
            tuple(TensorSpec.from_dict(t) for t in data["inputs"]),
            tuple(TensorSpec.from_dict(t) for t in data["outputs"]),
        )


@dataclass(frozen=True)
class ModelShape:
    """What the runtime needs to know about the model without reading config.json."""

    n_layer: int
    n_head: int
    head_dim: int
    n_embd: int
    vocab_size: int
    n_positions: int
    eos_token_id: int | list[int] | None
    bos_token_id: int | None
    pad_token_id: int | None
    num_labels: int
    id2label: dict[str, str] = field(default_factory=dict)
    num_heads_per_layer: tuple[int, ...] = ()
    problem_type: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelShape:
        data = dict(data)
        data["num_heads_per_layer"] = tuple(data.get("num_heads_per_layer", ()))
        return cls(**data)


@dataclass
class Manifest:
    """The contents of export.json."""

    head: str
    variant: str  # "plain" (traced, the reference) or "fused" (fused attention, written node by node)
    dtype: str  # "fp32" or "fp16": activations, KV cache and float weights
    opset: int
    model_file: str
    io: IOContract
    shape: ModelShape
    tokenizer_files: list[str]
    tools: dict[str, str]
    source: str
    checkpoint: str | None = None  # the folder or hub id exported; None for the random-weight default
    kv_cache: str = "growing"  # "growing": present = past + new; "shared": one in-place buffer (fused only)
    weights: str = "float"  # "float" (as dtype), "int8" or "int4" (quantized MatMul weights)
    weight_block_size: int | None = None  # quantized weights: elements sharing one scale
    weight_recipe: dict[str, Any] | None = None  # quantized weights: gpt2_export.quantize's recipe, with its name
    optional_inputs: list[str] = field(default_factory=list)  # inputs with a default value, e.g. logits_to_keep
    validation: dict[str, Any] | None = None
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["io"] = self.io.to_dict()
        return {"format": data.pop("format"), "format_version": data.pop("format_version"), **data}

    def save(self, folder: str | Path) -> Path:
        """Write export.json into folder."""
        return MANIFEST_FORMAT.write(folder, self.to_dict())

    @classmethod
    def load(cls, folder: str | Path) -> Manifest:
        """Read export.json from an export folder, with errors that say how to get a good one."""
        path, data = MANIFEST_FORMAT.read(folder)
        try:
            return cls(
                head=data["head"],
                variant=data["variant"],
                dtype=data["dtype"],
                opset=int(data["opset"]),
                model_file=data["model_file"],
                io=IOContract.from_dict(data["io"]),
                shape=ModelShape.from_dict(data["shape"]),
                tokenizer_files=list(data.get("tokenizer_files", [])),
                tools=dict(data.get("tools", {})),
                source=data.get("source", ""),
                checkpoint=data.get("checkpoint"),
                kv_cache=data.get("kv_cache", "growing"),
                weights=data.get("weights", "float"),
                weight_block_size=data.get("weight_block_size"),
                weight_recipe=data.get("weight_recipe"),
                optional_inputs=list(data.get("optional_inputs", [])),
                validation=data.get("validation"),
            )
        except (KeyError, TypeError) as e:
            raise ManifestError(f"{path} lacks or mangles field {e}: re-export the checkpoint") from e
