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


_GATHER_SESSIONS: dict[str, ort.InferenceSession] = {}


def _device_gather(source: _Buffer, target: _Buffer, shape: tuple[int, ...], beam_idx: np.ndarray) -> None:
    """target[r] = source[beam_idx[r]] on the device, with the one-node Gather graph of runtime/assets."""
    name = "float16" if source.dtype == np.float16 else "float32"
    if name not in _GATHER_SESSIONS:
        graph = (resources.files("runtime") / "assets" / f"gather_rows_{name}.onnx").read_bytes()
        _GATHER_SESSIONS[name] = ort.InferenceSession(graph, providers=["CUDAExecutionProvider"])
    session = _GATHER_SESSIONS[name]
    binding = session.io_binding()
    binding.bind_input("data", source.device, 0, source.dtype, shape, source.ptr)
    binding.bind_cpu_input("indices", beam_idx)
    binding.bind_output("gathered", target.device, 0, target.dtype, shape, target.ptr)
    session.run_with_iobinding(binding)


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
                _device_gather(self._current[i], self._other[i], shape, beam_idx)
        self._current, self._other = self._other, self._current

    def host_copy(self) -> list[np.ndarray]:
        """The past of every tensor as host arrays (tests and debugging)."""
        if self.device != "cpu":
            raise NotImplementedError("host_copy reads host buffers only")
        return [self._current[i].view(self._shape(i, self.length)).copy() for i in range(len(self.names))]


class SharedKVCache:
    """In-place cache for fused graphs whose attention writes new keys/values into the past buffer itself.

    Layout: one buffer per tensor of shape (B, nh, max_length, hs), bound as both past_key_values.* and
    present.*; row b's tokens occupy positions [0, lengths[b]) (ragged, right-aligned: no left padding).
    A decode step therefore copies nothing; beam search gathers rows into a spare buffer and swaps.
    """

    def __init__(self, names: list[tuple[str, str]], heads: list[int], head_dim: int, batch: int, max_length: int,
                 dtype: str, device: str):
        self.names, self.heads = names, heads
        self.head_dim, self.batch, self.max_length = head_dim, batch, max_length
        self.dtype, self.device = NUMPY_TYPES[dtype], device
        self.lengths = np.zeros(batch, dtype=np.int64)  # tokens held per row
        self._buffers = [_Buffer(batch * h * max_length * head_dim, self.dtype, device) for h in heads]
        self._spare: list[_Buffer] | None = None

    def _shape(self, i: int, rows: int | None = None) -> tuple[int, int, int, int]:
        return (self.batch if rows is None else rows, self.heads[i], self.max_length, self.head_dim)

    def bind(self, binding: ort.IOBinding, new_tokens: np.ndarray, rows: int | None = None,
             first_row: int = 0) -> None:
        """Bind each tensor's buffer as both its past input and its present output: `rows` rows from `first_row`.

        Rows are the outermost axis, so any run of rows is one contiguous (rows, nh, max_length, hs) block.
        """
        rows = self.batch - first_row if rows is None else rows
        self.check_room(new_tokens, rows, first_row)
        for i, (past, present) in enumerate(self.names):
            shape = self._shape(i, rows)
            ptr = self._buffers[i].ptr + first_row * self._row_bytes(i)
            binding.bind_input(past, self.device, 0, self.dtype, shape, ptr)
            binding.bind_output(present, self.device, 0, self.dtype, shape, ptr)

    def check_room(self, new_tokens: np.ndarray, rows: int | None = None, first_row: int = 0) -> None:
        """Raise if `new_tokens` more positions do not fit rows [first_row, first_row + rows)."""
        rows = self.batch - first_row if rows is None else rows
        if not 0 <= first_row < first_row + rows <= self.batch:
            raise ValueError(f"rows [{first_row}, {first_row + rows}) are outside this cache's {self.batch} rows")
        held = self.lengths[first_row:first_row + rows] + new_tokens
        if int(held.max()) > self.max_length:
            raise ValueError(f"the cache holds {self.max_length} positions per row; the next step would exceed it")

    def _row_bytes(self, i: int) -> int:
        return self.heads[i] * self.max_length * self.head_dim * np.dtype(self.dtype).itemsize

    def touch(self) -> None:
        """Write every page of the host buffers now, so no later step pays for first-touch page faults."""
        if self.device == "cpu":
            for buffer in self._buffers:
                buffer.array.fill(0)

    def advance(self, new_tokens: np.ndarray) -> None:
        """Row b now holds new_tokens[b] more positions."""
        self.lengths = self.lengths + new_tokens

    def reorder(self, beam_idx: np.ndarray) -> None:
        """Row r becomes old row beam_idx[r], lengths included."""
        beam_idx = np.ascontiguousarray(beam_idx, dtype=np.int64)
        if self._spare is None:
            self._spare = [_Buffer(self.batch * h * self.max_length * self.head_dim, self.dtype, self.device)
                           for h in self.heads]
        for i in range(len(self.names)):
            shape = self._shape(i)
            if self.device == "cpu":
                np.take(self._buffers[i].view(shape), beam_idx, axis=0, out=self._spare[i].view(shape))
            else:
                _device_gather(self._buffers[i], self._spare[i], shape, beam_idx)
        self._buffers, self._spare = self._spare, self._buffers
        self.lengths = self.lengths[beam_idx]
