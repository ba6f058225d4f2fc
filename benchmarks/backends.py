"""The backends side by side, behind one small protocol: time a prefill, time each decode step, generate.

- transformers GPT2LMHeadModel (eager, SDPA; on the CPU in fp32, on CUDA in fp16) and our PyTorch reference
  (`models`): forward with `logits_to_keep=1` and the cache, as their generate() calls it; end to end through
  generate(). On CUDA the clock waits for the GPU on both sides (`measure.timed`): torch returns before its
  kernels finish.
- Optimum's ORTModelForCausalLM on its own export of the same checkpoint (torch tensors in and out,
  ONNX Runtime inside); end to end through transformers' generate().
- Our runtime on each export folder (plain, fused, fused in-place cache, int8, int4, and the fused graph
  on ONNX Runtime's CUDA / TensorRT providers), and on a TensorRT engine folder built from the plain fp16
  export: per-step timing on the runtime's own decoder, end to end through `runtime.Model.generate`. Its
  steps return host logits, so they finish on the GPU before the clock stops (the copy of the last
  position's logits, B x V, is timed too; torch's logits stay on the device).
Each backend does its own timing around the one call it measures, so setup (building inputs, allocating
a decoder) is never timed. Every generate() asks for exactly max_new_tokens (min_new_tokens too), so
random weights that hit eos early still do the same work on every backend. Shape legend: B batch, T tokens.
"""

from __future__ import annotations

import importlib.util
from functools import partial
from typing import Any, Protocol

import numpy as np

from . import gpu
from .measure import now_ns, seconds_since, timed

# Export folder variant -> gpt2_export.export.ExportOptions fields.
EXPORT_VARIANTS: dict[str, dict[str, str]] = {
    "fused": {},
    "plain": {"variant": "plain"},
    "shared": {"kv_cache": "shared"},
    "int8": {"weights": "int8"},
    "int4": {"weights": "int4"},
    "int8-shared": {"weights": "int8", "kv_cache": "shared"},
    "int4-shared": {"weights": "int4", "kv_cache": "shared"},
    "fused-fp16": {"dtype": "fp16"},
    "plain-fp16": {"variant": "plain", "dtype": "fp16"},
}
# Our runtime's backends: export variant and ONNX Runtime provider.
RUNTIME_BACKENDS: dict[str, tuple[str, str]] = {
    "ort-plain": ("plain", "cpu"),
    "ort-fused": ("fused", "cpu"),
    "ort-fused-shared": ("shared", "cpu"),
    "ort-int8": ("int8", "cpu"),
    "ort-int4": ("int4", "cpu"),
    "ort-int8-shared": ("int8-shared", "cpu"),
    "ort-int4-shared": ("int4-shared", "cpu"),
    "ort-fused-cuda": ("fused", "cuda"),
    "ort-fused-cuda-fp16": ("fused-fp16", "cuda"),
    "ort-fused-tensorrt": ("fused", "tensorrt"),
}
# transformers' GPT2LMHeadModel: attention implementation and torch device. fp16 on CUDA, the GPU-typical dtype
# and that of the ort-fused-cuda-fp16 export and the TensorRT engine it is compared with.
TRANSFORMERS_BACKENDS: dict[str, tuple[str, str]] = {
    "hf-eager": ("eager", "cpu"),
    "hf-sdpa": ("sdpa", "cpu"),
    "hf-eager-cuda": ("eager", "cuda"),
    "hf-sdpa-cuda": ("sdpa", "cuda"),
}
# Our runtime on a TensorRT engine folder: the export variant it is built from (TensorRT parses standard ONNX
# only, so the plain graph; fp16, what TensorRT is run in on GPUs).
ENGINE_BACKENDS = {"tensorrt": "plain-fp16"}
PROVIDER_NAMES = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
LABELS = {
    "hf-eager": "transformers GPT2LMHeadModel, eager attention (torch)",
    "hf-sdpa": "transformers GPT2LMHeadModel, SDPA attention (torch; transformers' default)",
    "hf-eager-cuda": "transformers GPT2LMHeadModel, eager attention, fp16 on torch CUDA",
    "hf-sdpa-cuda": "transformers GPT2LMHeadModel, SDPA attention, fp16 on torch CUDA (the GPU baseline)",
    "optimum-ort": "Optimum ORTModelForCausalLM (its own ONNX export, ONNX Runtime CPU)",
    "reference": "our PyTorch reference (models/, SDPA)",
    "ort-plain": "our runtime, plain traced graph (fp32)",
    "ort-fused": "our runtime, fused graph, growing cache (fp32; the default export)",
    "ort-fused-shared": "our runtime, fused graph, in-place cache (fp32, GroupQueryAttention)",
    "ort-int8": "our runtime, fused graph, int8 weights (MatMulNBits, 8-bit blocks of 128)",
    "ort-int4": "our runtime, fused graph, int4 weights (MatMulNBits, 4-bit blocks of 128, LM head 8-bit)",
    "ort-int8-shared": "our runtime, fused graph, in-place cache (GroupQueryAttention), int8 weights",
    "ort-int4-shared": "our runtime, fused graph, in-place cache (GroupQueryAttention), int4 weights",
    "ort-fused-cuda": "our runtime, fused graph on ONNX Runtime CUDA (fp32)",
    "ort-fused-cuda-fp16": "our runtime, fused graph on ONNX Runtime CUDA (fp16)",
    "ort-fused-tensorrt": "our runtime, fused graph on ONNX Runtime's TensorRT provider (fp32)",
    "tensorrt": "our runtime on a TensorRT engine built from the plain fp16 export (fp16)",
}
TORCH_BACKENDS = ("hf-eager", "hf-sdpa", "hf-eager-cuda", "hf-sdpa-cuda", "reference", "optimum-ort")
# Modules a backend imports; for some, the name to give and how to install it (default: pip install <module>).
NEEDS = {
    **{name: ("torch", "transformers") for name in TRANSFORMERS_BACKENDS},
    "reference": ("torch",),
    "optimum-ort": ("optimum.onnxruntime",),
    "tensorrt": ("tensorrt", "cuda"),
}
INSTALL = {
    "optimum.onnxruntime": ("optimum.onnxruntime", "pip install optimum-onnx==0.1.0"),
    "tensorrt": ("TensorRT", 'pip install -e ".[tensorrt]" on a machine with an NVIDIA GPU'),
    "cuda": ("cuda-python", "pip install cuda-python"),
}


class BackendUnavailableError(RuntimeError):
    """The backend cannot run on this machine (a package or provider is missing); it is skipped, not failed."""


class Backend(Protocol):
    """What the suite needs from a backend; every time is in seconds."""

    vocab_size: int

    def prefill(self, ids: np.ndarray, mask: np.ndarray) -> float:
        """Seconds for one forward over the prompt (B, T) with an empty cache."""
        ...

    def decode_steps(self, ids: np.ndarray, mask: np.ndarray, steps: int) -> list[float]:
        """Prefill (untimed), then `steps` greedy one-token steps; the seconds of each step."""
        ...

    def generate(self, ids: np.ndarray, mask: np.ndarray, max_new_tokens: int) -> np.ndarray:
        """Greedy generation of exactly max_new_tokens tokens; the new tokens (B, max_new_tokens)."""
        ...


def positions(mask: np.ndarray) -> np.ndarray:
    """Position ids that skip left padding (transformers' rule): cumsum(mask) - 1, 1 on pads."""
    return np.where(mask == 0, 1, np.cumsum(mask, -1) - 1).astype(np.int64)


def export_variant(name: str) -> str | None:
    """The export folder variant backend `name` runs, directly or through its engine (None: the checkpoint)."""
    if name in RUNTIME_BACKENDS:
        return RUNTIME_BACKENDS[name][0]
    return ENGINE_BACKENDS.get(name)


def is_gpu_backend(name: str) -> bool:
    """Whether `name` runs on a GPU (CUDA torch, ONNX Runtime's GPU providers, TensorRT)."""
    return (TRANSFORMERS_BACKENDS.get(name, ("", ""))[1] == "cuda" or name in ENGINE_BACKENDS
            or RUNTIME_BACKENDS.get(name, ("", ""))[1] in PROVIDER_NAMES)


def _missing_module(module: str) -> str | None:
    """'<package> is not installed (how to install it)', or None when it is."""
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent package is missing
        found = False
    package, hint = INSTALL.get(module, (module, f"pip install {module}"))
    return None if found else f"{package} is not installed ({hint})"


def torch_cuda_problem() -> str | None:
    """Why torch cannot run on a CUDA GPU here, or None when it can (opens no CUDA context)."""
    import torch

    if torch.cuda.is_available():
        return None
    if torch.version.cuda is None:
        return f"torch {torch.__version__} has no CUDA (a CPU-only build): install a CUDA build of torch"
    return f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device"


def _provider_problem(provider: str) -> str | None:
    """Why ONNX Runtime's `provider` is not offered here, or None."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if PROVIDER_NAMES[provider] in available:
        return None
    return (f"onnxruntime {ort.__version__} offers no {PROVIDER_NAMES[provider]} here (available: "
            f"{', '.join(available)}); needs onnxruntime-gpu and an NVIDIA GPU")


def unavailable_reason(name: str) -> str | None:
    """Why `name` cannot run here, every missing piece at once, or None when it may.

    Cheap: packages are looked up, not imported, except torch for the torch CUDA backends (whose check,
    like nvidia-smi's, opens no CUDA context). A GPU backend whose checks pass can still be refused by its
    worker (a provider that fails to start, an engine that does not build): it is skipped there instead.
    """
    problems = [p for module in NEEDS.get(name, ()) if (p := _missing_module(module))]
    if not problems and TRANSFORMERS_BACKENDS.get(name, ("", ""))[1] == "cuda":
        problems.append(torch_cuda_problem())
    if name in RUNTIME_BACKENDS and RUNTIME_BACKENDS[name][1] in PROVIDER_NAMES:
        problems.append(_provider_problem(RUNTIME_BACKENDS[name][1]))
    if is_gpu_backend(name):
        problems.append(gpu.missing_gpu())
    return "; ".join(p for p in problems if p) or None


class TorchStyleBackend:
    """A transformers-style causal LM (torch tensors, `past_key_values`, `.generate`) on the CPU or a CUDA GPU."""

    def __init__(self, model: Any, vocab_size: int, keeps_logits: bool, pad_token_id: int | None,
                 device: str = "cpu"):
        import torch

        self.torch, self.model, self.vocab_size = torch, model, vocab_size
        self.keeps_logits = keeps_logits  # forward takes logits_to_keep (transformers, models); Optimum's doesn't
        self.pad_token_id = pad_token_id
        self.device = torch.device(device)
        self.sync = torch.cuda.synchronize if self.device.type == "cuda" else None  # see measure.timed

    def _tensor(self, array: np.ndarray):
        return self.torch.from_numpy(array).to(self.device)

    def _forward(self, ids, mask, position_ids, past):
        extra = {"logits_to_keep": 1} if self.keeps_logits else {}
        return self.model(input_ids=ids, attention_mask=mask, position_ids=position_ids, past_key_values=past,
                          use_cache=True, **extra)

    def prefill(self, ids: np.ndarray, mask: np.ndarray) -> float:
        ids_t, mask_t, pos_t = (self._tensor(a) for a in (ids, mask, positions(mask)))
        with self.torch.inference_mode():
            _, seconds = timed(partial(self._forward, ids_t, mask_t, pos_t, None), self.sync)
        return seconds

    def decode_steps(self, ids: np.ndarray, mask: np.ndarray, steps: int) -> list[float]:
        torch = self.torch
        mask_t = self._tensor(mask)
        times = []
        with torch.inference_mode():
            out = self._forward(self._tensor(ids), mask_t, self._tensor(positions(mask)), None)
            for _ in range(steps):
                token = out.logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
                mask_t = torch.cat([mask_t, torch.ones_like(mask_t[:, :1])], dim=-1)  # (B, S + 1)
                pos_t = mask_t.sum(-1, keepdim=True) - 1  # (B, 1)
                out, seconds = timed(partial(self._forward, token, mask_t, pos_t, out.past_key_values), self.sync)
                times.append(seconds)
        return times

    def generate(self, ids: np.ndarray, mask: np.ndarray, max_new_tokens: int) -> np.ndarray:
        extra = {"pad_token_id": self.pad_token_id} if self.pad_token_id is not None else {}
        with self.torch.inference_mode():
            out = self.model.generate(self._tensor(ids), attention_mask=self._tensor(mask),
                                      max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                                      do_sample=False, **extra)
        return out[:, ids.shape[1]:].cpu().numpy()  # .cpu() waits for the GPU, inside the caller's clock


class RuntimeBackend:
    """Our torch-free runtime on one export or engine folder: its decoder per step, Model.generate end to end."""

    def __init__(self, folder: str, provider: str, threads: int, profile: str | None = None):
        import runtime
        from runtime.providers import ProviderUnavailableError
        from runtime.tensorrt_backend import TensorRTUnavailableError

        try:  # profile: ONNX Runtime's per-node profiler on (benchmarks.step_profile)
            self.model = runtime.load(folder, provider=provider, threads=threads, profile=profile)
        except (ProviderUnavailableError, TensorRTUnavailableError) as e:  # no GPU, provider, TensorRT here
            raise BackendUnavailableError(str(e)) from e
        self.vocab_size = self.model.manifest.shape.vocab_size

    def _decoder(self, batch: int, max_length: int):
        return self.model.backend.decoder(batch, max_length)

    def prefill(self, ids: np.ndarray, mask: np.ndarray) -> float:
        decoder = self._decoder(ids.shape[0], ids.shape[1])
        pos = positions(mask)
        start = now_ns()
        decoder.step(ids, mask, pos)
        return seconds_since(start)

    def decode_steps(self, ids: np.ndarray, mask: np.ndarray, steps: int) -> list[float]:
        decoder = self._decoder(ids.shape[0], ids.shape[1] + steps)
        logits = decoder.step(ids, mask, positions(mask))  # (B, V)
        times = []
        for _ in range(steps):
            token = logits.argmax(-1)[:, None].astype(np.int64)  # (B, 1)
            mask = np.concatenate([mask, np.ones_like(mask[:, :1])], axis=-1)  # (B, S + 1)
            pos = mask.sum(-1, keepdims=True) - 1  # (B, 1)
            start = now_ns()
            logits = decoder.step(token, mask, pos)
            times.append(seconds_since(start))
        return times

    def generate(self, ids: np.ndarray, mask: np.ndarray, max_new_tokens: int) -> np.ndarray:
        out = self.model.generate(ids, mask, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens)
        return out[:, ids.shape[1]:]


def _pad_id(config: Any) -> int | None:
    """transformers' pad fallback: the pad id, else the eos id (passed so generate() does not warn)."""
    return config.pad_token_id if config.pad_token_id is not None else config.eos_token_id


def _transformers_backend(checkpoint: str, attention: str, device: str, threads: int) -> TorchStyleBackend:
    import torch
    import transformers

    if device == "cuda" and (problem := torch_cuda_problem()):
        raise BackendUnavailableError(problem)
    transformers.logging.set_verbosity_error()
    torch.set_num_threads(threads)
    model = transformers.GPT2LMHeadModel.from_pretrained(checkpoint, attn_implementation=attention).eval()
    # Cast after loading rather than from_pretrained's dtype argument, whose name differs across transformers.
    model.to(device=device, dtype=torch.float16 if device == "cuda" else torch.float32)
    config = model.config
    return TorchStyleBackend(model, config.vocab_size, True, _pad_id(config), device)


def _reference_backend(checkpoint: str, threads: int) -> TorchStyleBackend:
    import torch

    import models

    torch.set_num_threads(threads)
    model = models.GPT2LMHeadModel.from_pretrained(checkpoint).eval()
    return TorchStyleBackend(model, model.config.vocab_size, True, None)


def _optimum_backend(folder: str, threads: int) -> TorchStyleBackend:
    import onnxruntime as ort
    import torch
    import transformers
    from optimum.onnxruntime import ORTModelForCausalLM

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(threads)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    model = ORTModelForCausalLM.from_pretrained(folder, session_options=options, provider="CPUExecutionProvider",
                                                use_cache=True)
    config = model.config
    return TorchStyleBackend(model, config.vocab_size, False, _pad_id(config))


def load_backend(name: str, artifacts: dict[str, Any], threads: int) -> Backend:
    """Build backend `name` from the run's artifacts (checkpoint, export folders, Optimum folder, engine folder)."""
    reason = unavailable_reason(name)
    if reason is not None:
        raise BackendUnavailableError(reason)
    checkpoint = artifacts["checkpoint"]
    if name in TRANSFORMERS_BACKENDS:
        return _transformers_backend(checkpoint, *TRANSFORMERS_BACKENDS[name], threads)
    if name == "reference":
        return _reference_backend(checkpoint, threads)
    if name == "optimum-ort":
        if not artifacts.get("optimum"):
            raise BackendUnavailableError(artifacts.get("optimum_error") or "Optimum's export is missing")
        return _optimum_backend(artifacts["optimum"], threads)
    if name in ENGINE_BACKENDS:
        if not artifacts.get("engine"):
            raise BackendUnavailableError(artifacts.get("engine_error") or "no TensorRT engine was built")
        return RuntimeBackend(artifacts["engine"], "cuda", threads)  # runtime.load ignores both for an engine
    variant, provider = RUNTIME_BACKENDS[name]
    return RuntimeBackend(artifacts["exports"][variant], provider, threads)
