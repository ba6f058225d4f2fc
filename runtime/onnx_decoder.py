"""ONNX Runtime backend: the Decoders of exported LM graphs (IOBinding, preallocated logits, the KV cache).

One OnnxDecoder serves one generation call (per-call state), so a loaded model can decode from
several threads at once: onnxruntime's InferenceSession.run is thread-safe.
Shape legend: B batch, T new tokens, S cache + new tokens, V vocabulary.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from .kv_cache import NUMPY_TYPES, KVCache, SharedKVCache
from .manifest import CACHE_KINDS, Manifest, cache_names


class _LogitsBuffer:
    """One flat host array for a decoder's logits output: it grows for the prompt, and decode steps reuse it."""

    def __init__(self, dtype: np.dtype):
        self.dtype = dtype
        self._array = np.empty(0, dtype=dtype)

    def bind(self, binding: ort.IOBinding, b: int, t: int, v: int) -> np.ndarray:
        """Bind the first b * t * v elements as the (B, T, V) logits output and return that view."""
        if self._array.size < b * t * v:
            self._array = np.empty(b * t * v, dtype=self.dtype)
        logits = self._array[: b * t * v].reshape(b, t, v)
        binding.bind_output("logits", "cpu", 0, self.dtype, logits.shape, logits.ctypes.data)
        return logits


class OnnxDecoder:
    """Feeds (B, T) tokens to the graph, keeps the cache, returns the last position's logits as float32."""

    def __init__(self, session: ort.InferenceSession, manifest: Manifest, device: str, batch: int, max_length: int,
                 last_only: bool = False):
        self.session = session
        shape = manifest.shape
        heads = list(shape.num_heads_per_layer) or [shape.n_head] * shape.n_layer
        names = cache_names(shape.n_layer)
        tensor_heads = [heads[i] for i in range(shape.n_layer) for _ in CACHE_KINDS]
        float_type = "float16" if manifest.dtype == "fp16" else "float32"
        self.logits_dtype = NUMPY_TYPES[float_type]
        self.cache = KVCache(names, tensor_heads, shape.head_dim, batch, max_length, float_type, device)
        self.vocab_size = shape.vocab_size
        self.batch = batch
        self._logits = _LogitsBuffer(self.logits_dtype)
        self.last_only = last_only

    def step(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray) -> np.ndarray:
        """Run one forward pass; returns (B, V) float32 logits of the last position."""
        b, t = input_ids.shape
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", np.ascontiguousarray(input_ids, dtype=np.int64))
        binding.bind_cpu_input("attention_mask", np.ascontiguousarray(attention_mask, dtype=np.int64))
        binding.bind_cpu_input("position_ids", np.ascontiguousarray(position_ids, dtype=np.int64))
        self.cache.bind(binding, t)
        kept = 1 if self.last_only else t  # sessions may fix logits_to_keep to 1 (runtime.model.load)
        logits = self._logits.bind(binding, b, kept, self.vocab_size)  # (B, T or 1, V)
        self.session.run_with_iobinding(binding)
        self.cache.advance(t)
        return logits[:, -1].astype(np.float32)  # (B, V)

    def reorder(self, beam_idx: np.ndarray) -> None:
        """Beam search: row i of the cache becomes old row beam_idx[i]."""
        self.cache.reorder(beam_idx)


class SharedCacheDecoder:
    """The Decoder of a fused graph with an in-place cache (kv_cache "shared", GroupQueryAttention).

    It takes the same left-padded, transformers-style steps as OnnxDecoder and moves each row's real
    tokens to the front (the graph's ragged layout), so the decoding loop cannot tell the two apart.
    The cache's buffers never move between steps, so they are bound once (again after a beam reorder) on
    one IOBinding that lives as long as the decoder; a step binds only the three id inputs and the logits.
    """

    def __init__(self, session: ort.InferenceSession, manifest: Manifest, device: str, batch: int, max_length: int):
        self.session = session
        shape = manifest.shape
        names = cache_names(shape.n_layer)
        heads = [shape.n_head] * len(names)
        float_type = "float16" if manifest.dtype == "fp16" else "float32"
        self.logits_dtype = NUMPY_TYPES[float_type]
        self.cache = SharedKVCache(names, heads, shape.head_dim, batch, max_length, float_type, device)
        self.vocab_size = shape.vocab_size
        self._binding = session.io_binding()
        self._cache_bound = False  # the cache's buffers are bound on self._binding
        self._logits = _LogitsBuffer(self.logits_dtype)

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray) -> np.ndarray:
        """Logits (B, T, V) laid out like the inputs (left-padded); pad positions hold zeros."""
        b, t = input_ids.shape
        real = attention_mask[:, -t:].astype(bool)  # (B, T) the new tokens that are not padding
        dense = bool(real.all())  # every decode step, and unpadded prompts: the layouts already agree
        if self.cache.lengths.any() and not dense:
            raise ValueError("after the first step every new token must be real (attention_mask ones)")
        if dense:
            counts = np.full(b, t, dtype=np.int64)
            ids = np.ascontiguousarray(input_ids, dtype=np.int64)
            positions = np.ascontiguousarray(position_ids, dtype=np.int64)
        else:
            counts = real.sum(-1)  # (B,)
            ids = np.zeros((b, int(counts.max())), dtype=np.int64)
            positions = np.zeros_like(ids)
            for row in range(b):
                ids[row, : counts[row]] = input_ids[row, real[row]]
                positions[row, : counts[row]] = position_ids[row, real[row]]
        width = ids.shape[1]
        lengths = self.cache.lengths + counts
        mask = (np.arange(int(lengths.max()))[None, :] < lengths[:, None]).astype(np.int64)  # (B, total)
        binding = self._binding
        binding.bind_cpu_input("input_ids", ids)
        binding.bind_cpu_input("attention_mask", mask)
        binding.bind_cpu_input("position_ids", positions)
        if self._cache_bound:
            self.cache.check_room(counts)
        else:
            self.cache.bind(binding, counts)  # checks the room too
            self._cache_bound = True
        ragged = self._logits.bind(binding, b, width, self.vocab_size)  # (B, width, V)
        self.session.run_with_iobinding(binding)
        self.cache.advance(counts)
        if dense:
            return ragged.astype(np.float32)  # a copy: the buffer is the next step's output
        logits = np.zeros((b, t, self.vocab_size), dtype=np.float32)
        for row in range(b):
            logits[row, real[row]] = ragged[row, : counts[row]]
        return logits

    def step(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray) -> np.ndarray:
        """Run one forward pass; returns (B, V) float32 logits of the last position."""
        return self.forward(input_ids, attention_mask, position_ids)[:, -1]

    def reorder(self, beam_idx: np.ndarray) -> None:
        """Beam search: row i of the cache becomes old row beam_idx[i]."""
        self.cache.reorder(beam_idx)
        self._cache_bound = False  # the rows now live in the other buffers


class OnnxRuntimeBackend:
    """An export folder's graph on one ONNX Runtime session: decoders for generation, raw calls for other heads."""

    def __init__(self, session: ort.InferenceSession, manifest: Manifest, provider: str, device: str,
                 last_only: bool = False):
        self.session, self.manifest, self.provider, self.device = session, manifest, provider, device
        self.name = f"onnxruntime:{provider}"
        self.last_only = last_only  # the session computes logits for the last position only

    def decoder(self, batch: int, max_length: int) -> OnnxDecoder | SharedCacheDecoder:
        """A fresh per-call decoder with room for max_length positions of batch rows."""
        if self.manifest.kv_cache == "shared":
            return SharedCacheDecoder(self.session, self.manifest, self.device, batch, max_length)
        return OnnxDecoder(self.session, self.manifest, self.device, batch, max_length, self.last_only)

    def end_profiling(self) -> Path:
        """Stop ONNX Runtime's profiler and write its trace (Chrome trace JSON); its path."""
        if not self.session.get_session_options().enable_profiling:
            raise RuntimeError("this model was loaded without profiling: load it with runtime.load(folder, "
                               "profile='PREFIX') to record every node's time")
        return Path(self.session.end_profiling())

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One plain call of the graph; every input must be given."""
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(None, feeds), strict=True))
