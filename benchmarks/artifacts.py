"""The models every backend loads, built once per checkpoint and reused: one weights folder, its exports.

All backends read the SAME weights: a local checkpoint folder, or (no --model) the README's offline
default, GPT-2-small-shaped with random weights (seed 0), saved once as a transformers-format folder.
From that folder come our export variants (`gpt2_export.export.export`) and Optimum's own export
(`ORTModelForCausalLM.from_pretrained(..., export=True)`, in a worker process). Everything lives under
`<output>/cache/<checkpoint key>/`; fingerprints of the checkpoint's files and of the exporter's source
invalidate stale exports.
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

from .backends import EXPORT_VARIANTS

DEFAULT_KEY = "default-gpt2-random-seed0"


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

    def for_worker(self) -> dict[str, Any]:
        """The JSON a worker needs to load any backend."""
        return {
            "checkpoint": str(self.checkpoint),
            "exports": {name: str(path) for name, path in self.exports.items()},
            "optimum": str(self.optimum) if self.optimum else None,
            "optimum_error": self.optimum_error,
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
