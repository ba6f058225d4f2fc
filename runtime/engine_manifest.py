"""engine.json: what a TensorRT engine folder holds, and the checks made before and while running it.

Pure data and logic (no tensorrt, no CUDA), shared by the builder (`gpt2-export build-engine`) and the
runtime (`runtime.tensorrt_backend`), so all of it is tested on machines without a GPU.

An engine folder: model.engine (the serialized engine), engine.json (this manifest), export.json (the
export manifest it was built from), the tokenizer files, and timing.cache (TensorRT's tactic timings,
reused by the next build). A serialized engine only runs on the TensorRT version that built it and,
without hardware compatibility (not enabled here), on GPUs of the same compute capability: engine.json
records both and `check_compatible` compares them BEFORE the engine is deserialized.

One engine carries two optimization profiles, chosen per step by `choose_profile`:
- context (index 0): the prompt, past length 0, 1..max_sequence new tokens;
- generation (index 1): one new token on a past of 1..max_sequence - 1.
Shape legend: B batch, T new tokens, P past length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .manifest import PAST_PREFIX
from .versioned_json import VersionedFormat

ENGINE_MANIFEST = "engine.json"  # written by `gpt2-export build-engine` beside the serialized engine
ENGINE_FILE = "model.engine"
TIMING_CACHE = "timing.cache"
FORMAT = "gpt2-export-engine"
FORMAT_VERSION = 1
CONTEXT, GENERATION = "context", "generation"


class EngineManifestError(ValueError):
    """engine.json is missing, unreadable, or from another format version."""


class EngineCompatibilityError(RuntimeError):
    """The engine was built for another TensorRT version or GPU; the message says which and how to rebuild."""


REBUILD = "rebuild the folder with `gpt2-export build-engine EXPORT_FOLDER --output ENGINE_FOLDER`"
ENGINE_MANIFEST_FORMAT = VersionedFormat(
    ENGINE_MANIFEST, "engine manifest", FORMAT, FORMAT_VERSION, EngineManifestError, fix=REBUILD,
    missing="it is not an engine folder",
)


class ProfileShapeError(ValueError):
    """A shape lies outside the engine's optimization profiles; the message quotes their min / opt / max."""


Shape = tuple[int, ...]


@dataclass(frozen=True)
class ShapeRange:
    """One input's [min, opt, max] shapes in one profile."""

    min: Shape
    opt: Shape
    max: Shape

    def __post_init__(self) -> None:
        if not len(self.min) == len(self.opt) == len(self.max):
            raise EngineManifestError(f"shape range {self} mixes ranks")
        for low, mid, high in zip(self.min, self.opt, self.max, strict=True):
            if not 0 <= low <= mid <= high:
                raise EngineManifestError(f"shape range {self} is not ordered min <= opt <= max")

    def contains(self, shape: Sequence[int]) -> bool:
        return len(shape) == len(self.min) and all(
            low <= d <= high for low, d, high in zip(self.min, shape, self.max, strict=True)
        )

    def __str__(self) -> str:
        return f"min {self.min}, opt {self.opt}, max {self.max}"

    def to_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_dict(cls, data: dict[str, Sequence[int]]) -> ShapeRange:
        return cls(tuple(data["min"]), tuple(data["opt"]), tuple(data["max"]))


@dataclass(frozen=True)
class ProfileSpec:
    """One optimization profile: its name, its index in the engine, and a ShapeRange for every input."""

    name: str
    index: int
    shapes: dict[str, ShapeRange]

    def _axis(self, name: str, axis: int) -> tuple[int, int]:
        r = self.shapes[name]
        return r.min[axis], r.max[axis]

    @property
    def past_name(self) -> str:
        names = [n for n in self.shapes if n.startswith(PAST_PREFIX)]
        if not names:
            raise EngineManifestError(f"profile {self.name} has no {PAST_PREFIX}* input")
        return names[0]

    def past_lengths(self) -> tuple[int, int]:
        """(min, max) past length P this profile takes."""
        return self._axis(self.past_name, 2)

    def new_tokens(self) -> tuple[int, int]:
        """(min, max) new tokens T this profile takes."""
        return self._axis("input_ids", -1)

    def batches(self) -> tuple[int, int]:
        return self._axis("input_ids", 0)

    def covers(self, past_length: int, new_tokens: int) -> bool:
        (p_lo, p_hi), (t_lo, t_hi) = self.past_lengths(), self.new_tokens()
        return p_lo <= past_length <= p_hi and t_lo <= new_tokens <= t_hi

    def describe(self) -> str:
        (p_lo, p_hi), (t_lo, t_hi), (b_lo, b_hi) = self.past_lengths(), self.new_tokens(), self.batches()
        return f"{self.name}: batch {b_lo}..{b_hi}, past {p_lo}..{p_hi}, new tokens {t_lo}..{t_hi}"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "index": self.index, "shapes": {k: v.to_dict() for k, v in self.shapes.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProfileSpec:
        shapes = {k: ShapeRange.from_dict(v) for k, v in data["shapes"].items()}
        return cls(data["name"], int(data["index"]), shapes)


def check_shape(profile: ProfileSpec, name: str, shape: Sequence[int]) -> None:
    """Raise ProfileShapeError quoting the profile's min / opt / max when `shape` is outside it."""
    if name not in profile.shapes:
        raise ProfileShapeError(f"the engine has no input {name!r} (its inputs: {', '.join(profile.shapes)})")
    allowed = profile.shapes[name]
    if not allowed.contains(tuple(shape)):
        raise ProfileShapeError(
            f"{name} of shape {tuple(shape)} is outside the engine's {profile.name} profile "
            f"({allowed}): rebuild the engine with larger --max-batch / --max-sequence"
        )


def choose_profile(profiles: Sequence[ProfileSpec], past_length: int, new_tokens: int) -> ProfileSpec:
    """The profile for a step with `past_length` cached positions and `new_tokens` new ones (first match)."""
    for profile in profiles:
        if profile.covers(past_length, new_tokens):
            return profile
    offered = "; ".join(p.describe() for p in profiles)
    raise ProfileShapeError(
        f"no optimization profile takes a step with past length {past_length} and {new_tokens} new tokens "
        f"(profiles: {offered}): feed the whole prompt first, then one token per step, within --max-sequence"
    )


@dataclass
class EngineManifest:
    """The contents of engine.json."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: tuple[int, int]
    profiles: list[ProfileSpec]
    options: dict[str, int]  # max_batch, max_sequence, opt_batch
    export: dict[str, Any]  # summary of export.json: head, variant, dtype, opset, source, folder
    attention: dict[str, Any] = field(default_factory=dict)  # what the graph rewrite did
    builder: dict[str, Any] = field(default_factory=dict)  # tool versions, precision, timing cache, build time
    device_memory: dict[str, int] = field(default_factory=dict)  # BufferPlan of the largest call
    engine_file: str = ENGINE_FILE
    hardware_compatibility: str = "none"  # engines are tied to the building GPU's compute capability
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def profile(self, name: str) -> ProfileSpec:
        for p in self.profiles:
            if p.name == name:
                return p
        raise EngineManifestError(f"engine.json has no {name!r} profile (it has {[p.name for p in self.profiles]})")

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "format_version": self.format_version,
            "engine_file": self.engine_file,
            "tensorrt_version": self.tensorrt_version,
            "gpu_name": self.gpu_name,
            "compute_capability": list(self.compute_capability),
            "hardware_compatibility": self.hardware_compatibility,
            "options": dict(self.options),
            "profiles": [p.to_dict() for p in self.profiles],
            "export": dict(self.export),
            "attention": dict(self.attention),
            "builder": dict(self.builder),
            "device_memory": dict(self.device_memory),
        }

    def save(self, folder: str | Path) -> Path:
        """Write engine.json into folder."""
        return ENGINE_MANIFEST_FORMAT.write(folder, self.to_dict())

    @classmethod
    def load(cls, folder: str | Path) -> EngineManifest:
        """Read engine.json, with errors that say how to get a good one."""
        path, data = ENGINE_MANIFEST_FORMAT.read(folder)
        try:
            major, minor = data["compute_capability"]
            return cls(
                tensorrt_version=str(data["tensorrt_version"]),
                gpu_name=str(data["gpu_name"]),
                compute_capability=(int(major), int(minor)),
                profiles=[ProfileSpec.from_dict(p) for p in data["profiles"]],
                options={k: int(v) for k, v in data["options"].items()},
                export=dict(data["export"]),
                attention=dict(data.get("attention", {})),
                builder=dict(data.get("builder", {})),
                device_memory=dict(data.get("device_memory", {})),
                engine_file=data.get("engine_file", ENGINE_FILE),
                hardware_compatibility=data.get("hardware_compatibility", "none"),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise EngineManifestError(f"{path} lacks or mangles field {e}: {REBUILD}") from e


def rebuild_command(manifest: EngineManifest, folder: str | Path) -> str:
    """The build-engine command line that rebuilds `folder` on this machine, with its options."""
    options = manifest.options
    export_folder = manifest.export.get("folder") or "EXPORT_FOLDER"
    return (
        f"gpt2-export build-engine {export_folder} --output {folder} --overwrite "
        f"--max-batch {options.get('max_batch')} --max-sequence {options.get('max_sequence')} "
        f"--opt-batch {options.get('opt_batch')}"
    )


def check_compatible(manifest: EngineManifest, tensorrt_version: str, gpu_name: str,
                     compute_capability: tuple[int, int], folder: str | Path = "ENGINE_FOLDER") -> list[str]:
    """Raise EngineCompatibilityError when the engine cannot run here (every reason at once); else return notes.

    Engines are tied to the exact TensorRT version and, without hardware compatibility, to the compute
    capability they were built on. Another GPU model of the same compute capability runs the engine, with
    kernels timed on the other model: a note, not an error.
    """
    problems = []
    if manifest.tensorrt_version != tensorrt_version:
        problems.append(
            f"it was built with TensorRT {manifest.tensorrt_version} but this is TensorRT {tensorrt_version}"
        )
    built_cc, here_cc = tuple(manifest.compute_capability), tuple(compute_capability)
    if built_cc != here_cc and manifest.hardware_compatibility == "none":
        problems.append(
            f"it was built for {manifest.gpu_name} (compute capability {built_cc[0]}.{built_cc[1]}) but this GPU "
            f"is {gpu_name} (compute capability {here_cc[0]}.{here_cc[1]})"
        )
    if problems:
        raise EngineCompatibilityError(
            f"the engine in {folder} cannot run here: {'; and '.join(problems)}. A TensorRT engine runs only on "
            f"the TensorRT version and GPU architecture that built it: rebuild it on this machine with "
            f"`{rebuild_command(manifest, folder)}`"
        )
    if manifest.gpu_name != gpu_name:
        return [
            f"the engine in {folder} was built on {manifest.gpu_name} and runs here on {gpu_name} (same compute "
            f"capability {here_cc[0]}.{here_cc[1]}): it works, but its kernels were timed on the other GPU; "
            "rebuild here for the best speed"
        ]
    return []
