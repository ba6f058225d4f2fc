"""ONNX Runtime sessions: execution providers by short name, thread settings, and the I/O contract check.

A provider that is asked for must be the one that runs: ONNX Runtime silently falls back to the CPU
when CUDA or TensorRT cannot start, so the session's active providers are checked after creation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from .manifest import IOContract

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
DEVICE_OF = {"cpu": "cpu", "cuda": "cuda", "tensorrt": "cuda"}
ORT_TYPES = {"int64": "tensor(int64)", "float32": "tensor(float)", "float16": "tensor(float16)"}


class ProviderUnavailableError(RuntimeError):
    """The requested execution provider is not available in this onnxruntime build or on this machine."""


class GraphMismatchError(ValueError):
    """model.onnx does not have the inputs/outputs its export.json promises."""


def check_provider(provider: str) -> list[str]:
    """ONNX Runtime's provider list for a short name, or a clear error listing what is available."""
    if provider not in PROVIDERS:
        raise ValueError(f"unknown provider {provider!r}: use one of {', '.join(PROVIDERS)}")
    available = ort.get_available_providers()
    wanted = PROVIDERS[provider][0]
    if wanted not in available:
        hint = "install onnxruntime-gpu on a machine with an NVIDIA GPU" if provider != "cpu" else ""
        raise ProviderUnavailableError(
            f"provider {provider!r} needs {wanted}, which this onnxruntime {ort.__version__} does not offer "
            f"(available: {', '.join(available)}){': ' + hint if hint else ''}"
        )
    return PROVIDERS[provider]


def create_session(model_path: Path, provider: str, threads: int | None,
                   fixed_inputs: dict[str, np.ndarray] | None = None,
                   profile_prefix: str | None = None) -> ort.InferenceSession:
    """An InferenceSession on `provider`; raises if ONNX Runtime fell back to another provider.

    fixed_inputs set optional graph inputs (initializers) once for the session's life; profile_prefix turns on
    ONNX Runtime's profiler (every node's time, a Chrome trace written by `session.end_profiling()`).
    """
    providers = check_provider(provider)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    # ONNX Runtime borrows these buffers for the session's whole life: keep them referenced beside it.
    keep_alive = [(value, ort.OrtValue.ortvalue_from_numpy(value)) for value in (fixed_inputs or {}).values()]
    for name, (_, ort_value) in zip(fixed_inputs or {}, keep_alive, strict=True):
        options.add_initializer(name, ort_value)
    if threads is not None:
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise ValueError(f"threads must be an integer >= 1, got {threads!r}: or leave it unset to use every core")
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path} is missing: the export folder is incomplete, re-export it")
    try:
        session = ort.InferenceSession(str(model_path), options, providers=providers)
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... types
        raise GraphMismatchError(
            f"onnxruntime cannot load {model_path} ({type(e).__name__}: {str(e)[:300]}): the file is corrupt or "
            "not an ONNX model; re-export the checkpoint"
        ) from e
    session._fixed_inputs = keep_alive
    active = session.get_providers()[0]
    if active != providers[0]:
        raise ProviderUnavailableError(
            f"provider {provider!r} was requested but onnxruntime runs {active} (its {providers[0]} failed to "
            "start: check the CUDA / TensorRT libraries); refusing to fall back silently"
        )
    return session


def check_contract(session: ort.InferenceSession, contract: IOContract, model_path: Path) -> None:
    """Every name, element type and rank in export.json must be the graph's, in order."""
    problems = []
    for kind, specs, actual in (
        ("input", contract.inputs, session.get_inputs()),
        ("output", contract.outputs, session.get_outputs()),
    ):
        if [s.name for s in specs] != [a.name for a in actual]:
            problems.append(f"{kind} names {[a.name for a in actual][:6]}... differ from export.json's")
            continue
        for spec, arg in zip(specs, actual, strict=True):
            if ORT_TYPES.get(spec.dtype) != arg.type:
                problems.append(f"{kind} {spec.name} is {arg.type}, export.json says {spec.dtype}")
            if len(arg.shape) != len(spec.shape):
                problems.append(f"{kind} {spec.name} has rank {len(arg.shape)}, export.json says {len(spec.shape)}")
    if problems:
        raise GraphMismatchError(
            f"{model_path} does not match its export.json: " + "; ".join(problems) + ": re-export the folder"
        )
