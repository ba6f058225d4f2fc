"""The KV cache of one generation call: preallocated ping-pong buffers bound to ONNX Runtime by pointer.

Layout: for every layer and for keys and values, two buffers (A and B) of capacity
batch x heads x max_length x head_dim elements. A step with past length P and T new tokens binds the
past as the first B*nh*P*hs elements of the current buffer, viewed (B, nh, P, hs), and the present
output as the first B*nh*(P+T)*hs elements of the other, viewed (B, nh, P+T, hs); after the step the
two swap. Nothing is allocated per step and Python never touches the cache's contents; the plain
graph's own concat (past + new) is the only copy. On CUDA the buffers are device OrtValues, so the
cache never crosses to the host; beam search reorders rows with a one-node Gather graph on the device.
Shape legend: B batch, nh heads, P past length, T new tokens, hs head size.
"""

from __future__ import annotations

from importlib import resources

import numpy as np
import onnxruntime as ort

NUMPY_TYPES = {"float32": np.float32, "float16": np.float16}


class _Buffer:
    """One flat buffer on the host (numpy) or a device (OrtValue), addressed by pointer."""

    def __init__(self, elements: int, dtype: np.dtype, device: str):
        self.device, self.dtype = device, dtype
        if device == "cpu":
            self.array = np.empty(max(elements, 1), dtype=dtype)
            self.ptr = self.array.ctypes.data
        else:
            self.value = ort.OrtValue.ortvalue_from_shape_and_type([max(elements, 1)], dtype, device, 0)
            self.ptr = self.value.data_ptr()

    def view(self, shape: tuple[int, ...]) -> np.ndarray:
        """Host buffers only: the first prod(shape) elements as an array of `shape`."""
        return self.array[: int(np.prod(shape))].reshape(shape)


class KVCache:
    """Past keys/values for every layer, with room for `max_length` positions of `batch` rows."""

    def __init__(self, names: list[tuple[str, str]], heads: list[int], head_dim: int, batch: int, max_length: int,
                 dtype: str, device: str):
        self.names = names  # (past input name, present output name) per tensor, layer-major
        self.heads = heads  # heads of the tensor's layer
        self.head_dim, self.batch, self.max_length = head_dim, batch, max_length
        self.dtype, self.device = NUMPY_TYPES[dtype], device
        self.length = 0
        self._current = [_Buffer(batch * h * max_length * head_dim, self.dtype, device) for h in heads]
        self._other = [_Buffer(batch * h * max_length * head_dim, self.dtype, device) for h in heads]
        self._gather: ort.InferenceSession | None = None

    def _shape(self, i: int, length: int) -> tuple[int, int, int, int]:
        return (self.batch, self.heads[i], length, self.head_dim)

    def bind(self, binding: ort.IOBinding, new_tokens: int) -> None:
        """Bind every past input to the current buffers and every present output to the other ones."""
        if self.length + new_tokens > self.max_length:
            raise ValueError(
                f"the cache holds {self.max_length} positions; {self.length} + {new_tokens} new do not fit"
            )
        for i, (past, present) in enumerate(self.names):
            binding.bind_input(past, self.device, 0, self.dtype, self._shape(i, self.length), self._current[i].ptr)
            binding.bind_output(present, self.device, 0, self.dtype, self._shape(i, self.length + new_tokens),
                                self._other[i].ptr)

    def advance(self, new_tokens: int) -> None:
        """The presents just written become the past."""
        self._current, self._other = self._other, self._current
        self.length += new_tokens

    def reorder(self, beam_idx: np.ndarray) -> None:
        """Row r of the cache becomes old row beam_idx[r] (beam search), gathered into the spare buffers."""
        beam_idx = np.ascontiguousarray(beam_idx, dtype=np.int64)
        for i in range(len(self.names)):
            shape = self._shape(i, self.length)
            if self.device == "cpu":
                np.take(self._current[i].view(shape), beam_idx, axis=0, out=self._other[i].view(shape))
            else:
                self._device_gather(self._current[i], self._other[i], shape, beam_idx)
        self._current, self._other = self._other, self._current

    def _device_gather(self, source: _Buffer, target: _Buffer, shape: tuple[int, ...], beam_idx: np.ndarray) -> None:
        if self._gather is None:
            name = "float16" if self.dtype == np.float16 else "float32"
            graph = (resources.files("runtime") / "assets" / f"gather_rows_{name}.onnx").read_bytes()
            provider = "CUDAExecutionProvider"
            self._gather = ort.InferenceSession(graph, providers=[provider, "CPUExecutionProvider"])
        binding = self._gather.io_binding()
        binding.bind_input("data", self.device, 0, self.dtype, shape, source.ptr)
        binding.bind_cpu_input("indices", beam_idx)
        binding.bind_output("gathered", self.device, 0, self.dtype, shape, target.ptr)
        self._gather.run_with_iobinding(binding)

    def host_copy(self) -> list[np.ndarray]:
        """The past of every tensor as host arrays (tests and debugging)."""
        if self.device != "cpu":
            raise NotImplementedError("host_copy reads host buffers only")
        return [self._current[i].view(self._shape(i, self.length)).copy() for i in range(len(self.names))]
