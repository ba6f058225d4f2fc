"""The backends side by side, behind one small protocol: time a prefill, time each decode step, generate.

- transformers GPT2LMHeadModel (eager, SDPA) and our PyTorch reference (`models`): forward with
  `logits_to_keep=1` and the cache, as their generate() calls it; end to end through generate().
- Optimum's ORTModelForCausalLM on its own export of the same checkpoint (torch tensors in and out,
  ONNX Runtime inside); end to end through transformers' generate().
- Our runtime on each export folder (plain, fused, fused in-place cache, int8, int4, and the fused graph
  on CUDA / TensorRT when present): per-step timing on the runtime's own decoder, end to end through
  `runtime.Model.generate`.
Each backend does its own timing around the one call it measures, so setup (building inputs, allocating
a decoder) is never timed. Every generate() asks for exactly max_new_tokens (min_new_tokens too), so
random weights that hit eos early still do the same work on every backend. Shape legend: B batch, T tokens.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Protocol

import numpy as np

from .measure import now_ns, seconds_since

# Export folder variant -> gpt2_export.export.ExportOptions fields.
EXPORT_VARIANTS: dict[str, dict[str, str]] = {
    "fused": {},
    "plain": {"variant": "plain"},
    "shared": {"kv_cache": "shared"},
    "int8": {"weights": "int8"},
    "int4": {"weights": "int4"},
}
# Our runtime's backends: export variant and ONNX Runtime provider.
RUNTIME_BACKENDS: dict[str, tuple[str, str]] = {
    "ort-plain": ("plain", "cpu"),
    "ort-fused": ("fused", "cpu"),
    "ort-fused-shared": ("shared", "cpu"),
    "ort-int8": ("int8", "cpu"),
    "ort-int4": ("int4", "cpu"),
    "ort-fused-cuda": ("fused", "cuda"),
    "ort-fused-tensorrt": ("fused", "tensorrt"),
}
PROVIDER_NAMES = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
LABELS = {
    "hf-eager": "transformers GPT2LMHeadModel, eager attention (torch)",
    "hf-sdpa": "transformers GPT2LMHeadModel, SDPA attention (torch; transformers' default)",
    "optimum-ort": "Optimum ORTModelForCausalLM (its own ONNX export, ONNX Runtime CPU)",
    "reference": "our PyTorch reference (models/, SDPA)",
    "ort-plain": "our runtime, plain traced graph (fp32)",
    "ort-fused": "our runtime, fused graph, growing cache (fp32; the default export)",
    "ort-fused-shared": "our runtime, fused graph, in-place cache (fp32, GroupQueryAttention)",
    "ort-int8": "our runtime, fused graph, int8 weights (dynamic quantization)",
    "ort-int4": "our runtime, fused graph, int4 weights (MatMulNBits, block 32)",
    "ort-fused-cuda": "our runtime, fused graph on ONNX Runtime CUDA",
    "ort-fused-tensorrt": "our runtime, fused graph on ONNX Runtime TensorRT",
}
TORCH_BACKENDS = ("hf-eager", "hf-sdpa", "reference", "optimum-ort")


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


def unavailable_reason(name: str) -> str | None:
    """Why `name` cannot run here (cheap checks, nothing heavy imported), or None when it can."""
    needs = {"hf-eager": "transformers", "hf-sdpa": "transformers", "reference": "torch",
             "optimum-ort": "optimum.onnxruntime"}
    if name in needs:
        module = needs[name]
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            hint = "pip install optimum-onnx==0.1.0" if name == "optimum-ort" else f"pip install {module}"
            return f"{module} is not installed ({hint})"
        return None
    provider = RUNTIME_BACKENDS[name][1]
    if provider in PROVIDER_NAMES:
        import onnxruntime as ort

        if PROVIDER_NAMES[provider] not in ort.get_available_providers():
            return (f"onnxruntime {ort.__version__} offers no {PROVIDER_NAMES[provider]} here (available: "
                    f"{', '.join(ort.get_available_providers())}); needs onnxruntime-gpu and an NVIDIA GPU")
    return None


class TorchStyleBackend:
    """A transformers-style causal LM (torch tensors, `past_key_values`, `.generate`)."""

    def __init__(self, model: Any, vocab_size: int, keeps_logits: bool, pad_token_id: int | None):
        import torch

        self.torch, self.model, self.vocab_size = torch, model, vocab_size
        self.keeps_logits = keeps_logits  # forward takes logits_to_keep (transformers, models); Optimum's doesn't
        self.pad_token_id = pad_token_id

    def _forward(self, ids, mask, position_ids, past):
        extra = {"logits_to_keep": 1} if self.keeps_logits else {}
        return self.model(input_ids=ids, attention_mask=mask, position_ids=position_ids, past_key_values=past,
                          use_cache=True, **extra)

    def prefill(self, ids: np.ndarray, mask: np.ndarray) -> float:
        torch = self.torch
        ids_t, mask_t, pos_t = (torch.from_numpy(a) for a in (ids, mask, positions(mask)))
        with torch.inference_mode():
            start = now_ns()
            self._forward(ids_t, mask_t, pos_t, None)
            return seconds_since(start)

    def decode_steps(self, ids: np.ndarray, mask: np.ndarray, steps: int) -> list[float]:
        torch = self.torch
        mask_t = torch.from_numpy(mask)
        times = []
        with torch.inference_mode():
            out = self._forward(torch.from_numpy(ids), mask_t, torch.from_numpy(positions(mask)), None)
            for _ in range(steps):
                token = out.logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
                mask_t = torch.cat([mask_t, torch.ones_like(mask_t[:, :1])], dim=-1)  # (B, S + 1)
                pos_t = mask_t.sum(-1, keepdim=True) - 1  # (B, 1)
                start = now_ns()
                out = self._forward(token, mask_t, pos_t, out.past_key_values)
                times.append(seconds_since(start))
        return times

    def generate(self, ids: np.ndarray, mask: np.ndarray, max_new_tokens: int) -> np.ndarray:
        torch = self.torch
        extra = {"pad_token_id": self.pad_token_id} if self.pad_token_id is not None else {}
        with torch.inference_mode():
            out = self.model.generate(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                                      max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                                      do_sample=False, **extra)
        return out[:, ids.shape[1]:].numpy()


class RuntimeBackend:
    """Our torch-free runtime on one export folder: its decoder per step, Model.generate end to end."""

    def __init__(self, folder: str, provider: str, threads: int):
        import runtime

        try:
            self.model = runtime.load(folder, provider=provider, threads=threads)
        except RuntimeError as e:  # providers.ProviderUnavailableError: no GPU / provider here
            if provider != "cpu":
                raise BackendUnavailableError(str(e)) from e
            raise
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


def _transformers_backend(checkpoint: str, attention: str, threads: int) -> TorchStyleBackend:
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(threads)
    model = transformers.GPT2LMHeadModel.from_pretrained(checkpoint, attn_implementation=attention).eval()
    config = model.config
    return TorchStyleBackend(model, config.vocab_size, True, _pad_id(config))


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
    """Build backend `name` from the run's artifacts (checkpoint folder, export folders, Optimum folder)."""
    reason = unavailable_reason(name)
    if reason is not None:
        raise BackendUnavailableError(reason)
    checkpoint = artifacts["checkpoint"]
    if name in ("hf-eager", "hf-sdpa"):
        return _transformers_backend(checkpoint, name.removeprefix("hf-"), threads)
    if name == "reference":
        return _reference_backend(checkpoint, threads)
    if name == "optimum-ort":
        if not artifacts.get("optimum"):
            raise BackendUnavailableError(artifacts.get("optimum_error") or "Optimum's export is missing")
        return _optimum_backend(artifacts["optimum"], threads)
    variant, provider = RUNTIME_BACKENDS[name]
    return RuntimeBackend(artifacts["exports"][variant], provider, threads)
