"""The models every backend loads, built once per checkpoint and reused: one weights folder, its exports.

All backends read the SAME weights: a local checkpoint folder, or (no --model) the README's offline
default, GPT-2-small-shaped with random weights (seed 0), saved once as a transformers-format folder.
From that folder come our export variants (`gpt2_export.export.export`) and Optimum's own export
(`ORTModelForCausalLM.from_pretrained(..., export=True)`, in a worker process), and, on a GPU with TensorRT,
an engine folder built from the plain fp16 export (`gpt2_export.engine.build_engine`, in a worker process).
Everything lives under `<output>/cache/<checkpoint key>/`; fingerprints of the checkpoint's files and of the
exporter's source invalidate stale exports and engines; an engine is also rebuilt for another TensorRT
version or GPU, another export, or a run that needs a larger batch or longer sequences than it serves.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpt2_export.progress import Reporter, stage

from .backends import ENGINE_BACKENDS, EXPORT_VARIANTS

DEFAULT_KEY = "default-gpt2-random-seed0"
ENGINE_VARIANT = ENGINE_BACKENDS["tensorrt"]
MIN_ENGINE_BATCH = 8  # build-engine's default: one engine serves quick and full runs alike


class ArtifactError(ValueError):
    """The checkpoint cannot be benchmarked as given; the message names the fix."""


@dataclass
class Artifacts:
    """Where the run's weights and exports are, and what they are."""

    checkpoint: Path
    source: str
    random_weights: bool
    config: dict[str, Any]
    root: Path  # the cache folder of this checkpoint
    exports: dict[str, Path] = field(default_factory=dict)
    export_errors: dict[str, str] = field(default_factory=dict)
    optimum: Path | None = None
    optimum_error: str | None = None
    engine: Path | None = None  # the TensorRT engine folder
    engine_problem: dict[str, str] | None = None  # {"status": "skipped" or "failed", "reason": ...}

    def for_worker(self) -> dict[str, Any]:
        """The JSON a worker needs to load any backend."""
        return {
            "checkpoint": str(self.checkpoint),
            "exports": {name: str(path) for name, path in self.exports.items()},
            "optimum": str(self.optimum) if self.optimum else None,
            "optimum_error": self.optimum_error,
            "engine": str(self.engine) if self.engine else None,
            "engine_error": (self.engine_problem or {}).get("reason"),
        }


def fingerprint(folder: Path) -> str:
    """Names, sizes and modification times of the checkpoint's files (cheap; catches a replaced checkpoint)."""
    entries = sorted((p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in folder.iterdir() if p.is_file())
    return hashlib.sha1(json.dumps(entries).encode()).hexdigest()


def cache_root(model: str | Path | None, output: Path) -> Path:
    """<output>/cache/<key>: one folder per checkpoint."""
    if model is None:
        return output / "cache" / DEFAULT_KEY
    resolved = Path(model).resolve()
    return output / "cache" / f"{resolved.name}-{hashlib.sha1(str(resolved).encode()).hexdigest()[:8]}"


def default_checkpoint(folder: Path, report: Reporter) -> Path:
    """Save the offline default (random GPT-2 small, seed 0) once as a transformers-format folder."""
    if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
        return folder
    from gpt2_export.checkpoints import load_reference

    with stage("save the offline default model (random weights) as a checkpoint folder", report):
        ref = load_reference(None)
        if folder.exists():
            shutil.rmtree(folder)
        ref.model.save_pretrained(folder)
    return folder


def resolve_checkpoint(model: str | Path | None, root: Path, report: Reporter) -> tuple[Path, str, bool]:
    """(folder, description, random weights?) of the checkpoint, building the default when model is None."""
    if model is None:
        folder = default_checkpoint(root / "checkpoint", report)
        return folder, "gpt2-shaped model with RANDOM weights (seed 0; no --model given)", True
    folder = Path(model)
    if not folder.is_dir() or not (folder / "config.json").is_file():
        raise ArtifactError(
            f"--model {model} is not a local checkpoint folder with a config.json: the benchmark never downloads; "
            "pass a Hugging Face-format GPT-2 folder, or leave --model out for the random-weight default"
        )
    return folder.resolve(), f"checkpoint folder {folder.resolve()}", False


def exporter_fingerprint() -> str:
    """A hash of the exporter's source (gpt2_export/*.py, runtime/manifest.py): exports of older code are stale."""
    import gpt2_export
    import runtime.manifest

    files = sorted(Path(gpt2_export.__file__).parent.glob("*.py")) + [Path(runtime.manifest.__file__)]
    return hashlib.sha1(b"".join(path.read_bytes() for path in files)).hexdigest()


def _check_fingerprint(root: Path, checkpoint: Path, report: Reporter) -> None:
    """Drop cached exports made from another version of the checkpoint or of the exporter."""
    marker = root / "fingerprint.json"
    current = {"checkpoint": fingerprint(checkpoint), "exporter": exporter_fingerprint()}
    previous = json.loads(marker.read_text()) if marker.is_file() else current
    if previous.get("checkpoint") != current["checkpoint"]:
        report(f"the checkpoint changed since {root} was built: rebuilding every export")
        shutil.rmtree(root / "optimum", ignore_errors=True)
    if previous != current:
        if previous.get("checkpoint") == current["checkpoint"]:
            report("the exporter's code changed since the cached exports were built: exporting again")
        shutil.rmtree(root / "exports", ignore_errors=True)
        shutil.rmtree(root / "engines", ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"source": str(checkpoint), **current}))


def build_export(checkpoint: Path, variant: str, folder: Path, report: Reporter) -> Path:
    """Our export of `variant` (validated), reused when a complete one is already there."""
    manifest = folder / "export.json"
    if manifest.is_file() and json.loads(manifest.read_text()).get("validation", {}).get("passed", False):
        return folder
    from gpt2_export.export import ExportOptions, export

    with stage(f"export {variant}", report), _quiet_logging():
        export(checkpoint, folder, ExportOptions(overwrite=True, **EXPORT_VARIANTS[variant]))
    return folder


@contextmanager
def _quiet_logging() -> Iterator[None]:
    """onnxruntime's quantizers log every node at INFO (their loggers set their own level): keep errors only."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def resolve(model: str | Path | None, output: Path, report: Reporter) -> Artifacts:
    """The checkpoint folder (the default one built once) and its config.json; no exports yet."""
    root = cache_root(model, output)
    checkpoint, source, random_weights = resolve_checkpoint(model, root, report)
    _check_fingerprint(root, checkpoint, report)
    config = json.loads((checkpoint / "config.json").read_text())
    return Artifacts(checkpoint, source, random_weights, config, root=root)


def build_exports(artifacts: Artifacts, variants: list[str], report: Reporter) -> None:
    """Every export `variants` names, into the cache; a failed one is recorded (its backends fail, not the run)."""
    for variant in variants:
        try:
            artifacts.exports[variant] = build_export(artifacts.checkpoint, variant,
                                                      artifacts.root / "exports" / variant, report)
        except Exception as e:  # the exporter's own errors and whatever a quantizer raises
            artifacts.export_errors[variant] = f"the {variant} export failed: {type(e).__name__}: {e}"
            report(f"  {artifacts.export_errors[variant]}")


def export_optimum(checkpoint: str, folder: str) -> str:
    """Worker job: Optimum's export of the checkpoint (ORTModelForCausalLM, export=True), saved to `folder`."""
    target = Path(folder)
    if (target / "model.onnx").is_file() and (target / "config.json").is_file():
        return folder
    import transformers
    from optimum.onnxruntime import ORTModelForCausalLM

    transformers.logging.set_verbosity_error()
    model = ORTModelForCausalLM.from_pretrained(checkpoint, export=True, use_cache=True)
    if target.exists():
        shutil.rmtree(target)
    model.save_pretrained(target)
    return folder


def engine_folder(root: Path) -> Path:
    """Where the TensorRT engine of a checkpoint's cache goes."""
    return root / "engines" / "tensorrt"


def stale_engine_reason(folder: Path, export_folder: Path, tensorrt_version: str, gpu_name: str, max_batch: int,
                        max_sequence: int) -> str | None:
    """Why the engine in `folder` cannot serve this run (it is rebuilt), or None to reuse it."""
    manifest = folder / "engine.json"
    if not manifest.is_file() or not (folder / "model.engine").is_file():
        return "no engine built yet"
    data = json.loads(manifest.read_text(encoding="utf-8"))
    options = data.get("options", {})
    if data.get("tensorrt_version") != tensorrt_version:
        return f"it was built with TensorRT {data.get('tensorrt_version')}, this is TensorRT {tensorrt_version}"
    if data.get("gpu_name") != gpu_name:
        return f"it was built on {data.get('gpu_name')}, this GPU is {gpu_name}"
    if options.get("max_batch", 0) < max_batch or options.get("max_sequence", 0) < max_sequence:
        return (f"it serves batch <= {options.get('max_batch')} and sequence <= {options.get('max_sequence')}, "
                f"this run needs {max_batch} and {max_sequence}")
    copied, source = folder / "export.json", export_folder / "export.json"
    if not copied.is_file() or copied.read_bytes() != source.read_bytes():
        return f"it was built from another export than {export_folder}"
    return None


def build_tensorrt_engine(export_folder: str, folder: str, max_batch: int, max_sequence: int,
                          report: Reporter) -> dict[str, Any]:
    """Worker job: the engine folder of the plain fp16 export, built on this GPU or reused when it still fits.

    Raises runtime.tensorrt_backend.TensorRTUnavailableError when TensorRT, cuda-python or the GPU is missing.
    """
    from gpt2_export.engine import EngineOptions, build_engine
    from runtime.tensorrt_backend import import_tensorrt, open_cuda

    purpose = "cannot build the benchmark's TensorRT engine"
    trt = import_tensorrt(purpose)
    gpu_name, _ = open_cuda(purpose).device_properties()
    stale = stale_engine_reason(Path(folder), Path(export_folder), trt.__version__, gpu_name, max_batch, max_sequence)
    if stale is None:
        report(f"reusing the engine in {folder}")
        return {"folder": folder, "reused": True}
    report(f"building the engine: {stale}")
    options = EngineOptions(max_batch=max(max_batch, MIN_ENGINE_BATCH), overwrite=True)  # sequence: n_positions
    build_engine(export_folder, folder, options, report)
    return {"folder": folder, "reused": False, "rebuilt_because": stale}
