"""The Decoder of an exported LM graph on ONNX Runtime: IOBinding, preallocated logits, the KV cache.

One OnnxDecoder serves one generation call (per-call state), so a loaded model can decode from
several threads at once: onnxruntime's InferenceSession.run is thread-safe.
Shape legend: B batch, T new tokens, S cache + new tokens, V vocabulary.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from .kv_cache import NUMPY_TYPES, KVCache
from .manifest import Manifest


class OnnxDecoder:
    """Feeds (B, T) tokens to the graph, keeps the cache, returns the last position's logits as float32."""

    def __init__(self, session: ort.InferenceSession, manifest: Manifest, device: str, batch: int, max_length: int):
        self.session = session
        shape = manifest.shape
        heads = list(shape.num_heads_per_layer) or [shape.n_head] * shape.n_layer
        names, tensor_heads = [], []
        for i in range(shape.n_layer):
            for kind in ("key", "value"):
                names.append((f"past_key_values.{i}.{kind}", f"present.{i}.{kind}"))
                tensor_heads.append(heads[i])
        float_type = "float16" if manifest.dtype == "fp16" else "float32"
        self.logits_dtype = NUMPY_TYPES[float_type]
        self.cache = KVCache(names, tensor_heads, shape.head_dim, batch, max_length, float_type, device)
        self.vocab_size = shape.vocab_size
        self.batch = batch
        self._logits = np.empty(0, dtype=self.logits_dtype)

    def step(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray) -> np.ndarray:
        """Run one forward pass; returns (B, V) float32 logits of the last position."""
        b, t = input_ids.shape
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", np.ascontiguousarray(input_ids, dtype=np.int64))
        binding.bind_cpu_input("attention_mask", np.ascontiguousarray(attention_mask, dtype=np.int64))
        binding.bind_cpu_input("position_ids", np.ascontiguousarray(position_ids, dtype=np.int64))
        self.cache.bind(binding, t)
        needed = b * t * self.vocab_size
        if self._logits.size < needed:  # grows once, for the prompt; decode steps reuse it
            self._logits = np.empty(needed, dtype=self.logits_dtype)
        logits = self._logits[:needed].reshape(b, t, self.vocab_size)  # (B, T, V)
        binding.bind_output("logits", "cpu", 0, self.logits_dtype, logits.shape, logits.ctypes.data)
        self.session.run_with_iobinding(binding)
        self.cache.advance(t)
        return logits[:, -1].astype(np.float32)  # (B, V)

    def reorder(self, beam_idx: np.ndarray) -> None:
        """Beam search: row i of the cache becomes old row beam_idx[i]."""
        self.cache.reorder(beam_idx)
