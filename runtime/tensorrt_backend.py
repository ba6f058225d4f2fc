"""TensorRT backend: an engine folder behind the same Model API as ONNX Runtime (generate, stream, forward).

`runtime.load(ENGINE_FOLDER)` reaches `load_engine` through runtime/model.py. Modelled on the TensorRT samples'
common_runtime.py and TensorRT-LLM's runtime: device memory through cuda-python with every CUDA call in one
checker (`CudaRuntime.call`), tensors bound by name, the expected names checked at load, shape errors that
quote the profile's [min, opt, max]. tensorrt and cuda-python are optional: imported only here, lazily,
with an error naming what is missing and how to install it; nothing here imports torch.

Per generation call, a TensorRTDecoder preallocates its device buffers (`BufferPlan`): the three int64
token inputs, and per KV tensor two ping-pong buffers of B x nh x max_length x hs, bound as past (the
current one, viewed (B, nh, P, hs)) and present (the other, viewed (B, nh, P + T, hs)) and swapped after
each step, as runtime/kv_cache.py does for ONNX Runtime. A zero-volume tensor (the empty past of the first
step) is bound to a small real buffer, never a null pointer. The first step (past 0) runs in the context
profile, later one-token steps in the generation profile (`choose_profile`). Beam search reorders cache
rows with device-to-device copies into the spare buffers. The logits buffer is sized at the prompt step
(B x T x V) and reused by every later step; only each row's last position crosses to the host.

One IExecutionContext serves every decoder of a loaded model: steps from several threads take turns on it
under a lock (`ExecutionSlot`), each binding its own buffers, so Model stays thread-safe. No CUDA graph:
with the growing cache the decode step's shapes and addresses change every step, so a captured graph would
have to be re-captured each time; that pays off only with an in-place cache of fixed shape.

Shape legend: B batch, T new tokens, P past length, nh heads, hs head size, V vocabulary.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .engine_manifest import (
    EngineManifest,
    EngineManifestError,
    ProfileShapeError,
    ProfileSpec,
    check_compatible,
    check_shape,
    choose_profile,
)
from .manifest import PAST_PREFIX, PRESENT_PREFIX, IOContract, Manifest, TensorSpec

TENSORRT_HINT = "pip install tensorrt-cu12 on a machine with an NVIDIA GPU; see README"
CUDA_PYTHON_HINT = "pip install cuda-python on a machine with an NVIDIA GPU; see README"
MIN_TENSORRT_MAJOR = 10
NUMPY_TYPES = {"int64": np.int64, "float32": np.float32, "float16": np.float16}
TOKEN_INPUTS = ("input_ids", "attention_mask", "position_ids")
EMPTY_BYTES = 256  # the real buffer bound to zero-volume tensors
GENERATING_HEADS = ("lm",)


class TensorRTUnavailableError(RuntimeError):
    """TensorRT, cuda-python or a CUDA GPU is missing; the message names which and how to get it."""


class CudaError(RuntimeError):
    """A CUDA runtime call failed; the message names the call and the CUDA error."""


# ---- optional imports ------------------------------------------------------------------------------------


def import_tensorrt(purpose: str) -> Any:
    """The tensorrt module (10.x or newer), or TensorRTUnavailableError ending with `purpose`."""
    try:
        import tensorrt
    except ModuleNotFoundError as e:
        if e.name not in (None, "tensorrt"):
            raise TensorRTUnavailableError(f"TensorRT is installed but cannot be imported ({e}): {purpose}") from e
        raise TensorRTUnavailableError(f"TensorRT is not installed ({TENSORRT_HINT}): {purpose}") from e
    except (ImportError, OSError) as e:  # a wheel without its libnvinfer, or a broken install
        raise TensorRTUnavailableError(
            f"TensorRT is installed but cannot be imported ({type(e).__name__}: {e}; {TENSORRT_HINT}): {purpose}"
        ) from e
    version = str(getattr(tensorrt, "__version__", "0"))
    major = int(version.split(".")[0]) if version.split(".")[0].isdigit() else 0
    if major < MIN_TENSORRT_MAJOR:
        raise TensorRTUnavailableError(
            f"TensorRT {version} is too old: engines need TensorRT {MIN_TENSORRT_MAJOR} or newer "
            f"(pip install -U tensorrt-cu12): {purpose}"
        )
    return tensorrt


def import_cudart(purpose: str) -> Any:
    """cuda-python's runtime module (`cuda.bindings.runtime`, or `cuda.cudart` before cuda-python 12.6)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError as e:
            raise TensorRTUnavailableError(f"cuda-python is not installed ({CUDA_PYTHON_HINT}): {purpose}") from e
    return cudart


def open_cuda(purpose: str) -> CudaRuntime:
    """A CudaRuntime on a visible GPU, or TensorRTUnavailableError naming what is missing."""
    cuda = CudaRuntime(import_cudart(purpose))
    try:
        count = cuda.call("cudaGetDeviceCount")
    except CudaError as e:
        raise TensorRTUnavailableError(f"no CUDA GPU is visible ({e}): {purpose}") from e
    if not count:
        raise TensorRTUnavailableError(f"no CUDA GPU is visible (cudaGetDeviceCount returned 0): {purpose}")
    return cuda


# ---- CUDA ------------------------------------------------------------------------------------------------


class Cuda(Protocol):
    """The device operations the decoder needs (CudaRuntime on a GPU; a host fake in the tests)."""

    def malloc(self, nbytes: int) -> int: ...
    def free(self, ptr: int) -> None: ...
    def create_stream(self) -> int: ...
    def destroy_stream(self, stream: int) -> None: ...
    def synchronize(self, stream: int) -> None: ...
    def copy_to_device(self, dst: int, host: np.ndarray, stream: int) -> None: ...
    def copy_rows_to_host(self, host: np.ndarray, src: int, src_pitch: int, stream: int) -> None: ...
    def copy_to_host(self, host: np.ndarray, src: int, stream: int) -> None: ...
    def copy_on_device(self, dst: int, src: int, nbytes: int, stream: int) -> None: ...


class CudaRuntime:
    """cuda-python's runtime API with one checker: every call goes through `call`, which raises CudaError."""

    def __init__(self, cudart: Any):
        self.cudart = cudart

    def call(self, name: str, *args: Any) -> Any:
        """cudart.<name>(*args): its value(s) on success, CudaError with the error's name otherwise."""
        result = getattr(self.cudart, name)(*args)
        err, values = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
        if int(getattr(err, "value", err)) != 0:  # cudaError_t: an enum whose value 0 is cudaSuccess
            try:
                error_name = self.cudart.cudaGetErrorName(err)[1]
                error_name = error_name.decode() if isinstance(error_name, bytes) else str(error_name)
            except Exception:  # the error name is a courtesy; the code is enough
                error_name = f"error {int(getattr(err, 'value', err))}"
            raise CudaError(f"{name} failed with {error_name}")
        if not values:
            return None
        return values[0] if len(values) == 1 else values

    def _kind(self, kind: str) -> Any:
        return getattr(self.cudart.cudaMemcpyKind, f"cudaMemcpy{kind}")

    def malloc(self, nbytes: int) -> int:
        return int(self.call("cudaMalloc", max(int(nbytes), 1)))

    def free(self, ptr: int) -> None:
        self.call("cudaFree", ptr)

    def create_stream(self) -> int:
        return int(self.call("cudaStreamCreate"))

    def destroy_stream(self, stream: int) -> None:
        self.call("cudaStreamDestroy", stream)

    def synchronize(self, stream: int) -> None:
        self.call("cudaStreamSynchronize", stream)

    def copy_to_device(self, dst: int, host: np.ndarray, stream: int) -> None:
        self.call("cudaMemcpyAsync", dst, host.ctypes.data, host.nbytes, self._kind("HostToDevice"), stream)

    def copy_to_host(self, host: np.ndarray, src: int, stream: int) -> None:
        self.call("cudaMemcpyAsync", host.ctypes.data, src, host.nbytes, self._kind("DeviceToHost"), stream)

    def copy_rows_to_host(self, host: np.ndarray, src: int, src_pitch: int, stream: int) -> None:
        """host (R, W) <- R rows of W elements, `src_pitch` bytes apart on the device (one cudaMemcpy2DAsync)."""
        width = host.shape[-1] * host.itemsize
        self.call("cudaMemcpy2DAsync", host.ctypes.data, width, src, src_pitch, width, host.shape[0],
                  self._kind("DeviceToHost"), stream)

    def copy_on_device(self, dst: int, src: int, nbytes: int, stream: int) -> None:
        self.call("cudaMemcpyAsync", dst, src, nbytes, self._kind("DeviceToDevice"), stream)

    def device_properties(self) -> tuple[str, tuple[int, int]]:
        """(name, (major, minor)) of the current device."""
        props = self.call("cudaGetDeviceProperties", self.call("cudaGetDevice"))
        name = props.name
        name = name.split(b"\0", 1)[0].decode() if isinstance(name, bytes) else str(name)
        return name, (int(props.major), int(props.minor))


def _free_quietly(cuda: Cuda, pointers: list[int]) -> None:
    """Finalizer: release device buffers; at interpreter exit the CUDA context may already be gone."""
    for ptr in pointers:
        with contextlib.suppress(Exception):  # nothing useful to do with a failed free during teardown
            cuda.free(ptr)
    pointers.clear()


# ---- buffers ---------------------------------------------------------------------------------------------


def _itemsize(dtype: str) -> int:
    return np.dtype(NUMPY_TYPES[dtype]).itemsize


@dataclass(frozen=True)
class BufferPlan:
    """The device buffers of one generation call of `batch` rows and up to `max_length` positions, in bytes."""

    batch: int
    max_length: int
    kv_heads: tuple[int, ...]  # heads of each KV tensor, in past_key_values order
    head_dim: int
    kv_itemsize: int
    vocab: int  # last axis of the main output (logits)
    logits_itemsize: int

    @classmethod
    def for_call(cls, io: IOContract, batch: int, max_length: int) -> BufferPlan:
        pasts = [s for s in io.inputs if s.name.startswith(PAST_PREFIX)]
        main = io.outputs[0]
        return cls(
            batch=batch,
            max_length=max_length,
            kv_heads=tuple(int(s.shape[1]) for s in pasts),
            head_dim=int(pasts[0].shape[3]),
            kv_itemsize=_itemsize(pasts[0].dtype),
            vocab=int(main.shape[-1]),
            logits_itemsize=_itemsize(main.dtype),
        )

    def kv_bytes(self, i: int) -> int:
        """One of the two ping-pong buffers of KV tensor i: B x nh x max_length x hs elements."""
        return self.batch * self.kv_heads[i] * self.max_length * self.head_dim * self.kv_itemsize

    @property
    def token_bytes(self) -> int:
        """Each int64 token input (input_ids, attention_mask, position_ids): B x max_length."""
        return self.batch * self.max_length * 8

    def logits_bytes(self, tokens: int) -> int:
        """The logits of a step with `tokens` new tokens: B x T x V (the prompt step is the largest)."""
        return self.batch * tokens * self.vocab * self.logits_itemsize

    def total_bytes(self, prompt_length: int) -> int:
        kv = 2 * sum(self.kv_bytes(i) for i in range(len(self.kv_heads)))
        return kv + len(TOKEN_INPUTS) * self.token_bytes + self.logits_bytes(prompt_length)

    def to_dict(self, prompt_length: int) -> dict[str, int]:
        return {
            "batch": self.batch,
            "max_length": self.max_length,
            "kv_cache_bytes": 2 * sum(self.kv_bytes(i) for i in range(len(self.kv_heads))),
            "token_input_bytes": len(TOKEN_INPUTS) * self.token_bytes,
            "prompt_logits_bytes": self.logits_bytes(prompt_length),
            "total_bytes": self.total_bytes(prompt_length),
        }


# ---- execution -------------------------------------------------------------------------------------------


def _require(ok: Any, what: str) -> None:
    """TensorRT's Python API reports failure as False; turn it into an error."""
    if ok is False:
        raise RuntimeError(f"TensorRT {what} failed (TensorRT's log above says why)")


def _volume(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64))


class ExecutionSlot:
    """One IExecutionContext, its CUDA stream, its active profile, and the lock every step takes."""

    def __init__(self, context: Any, cuda: Cuda):
        self.context, self.cuda = context, cuda
        self.stream = cuda.create_stream()
        self.empty = cuda.malloc(EMPTY_BYTES)  # bound to zero-volume tensors: never a null pointer
        self.profile: int | None = None
        self.lock = threading.Lock()
        self._finalizer = weakref.finalize(self, ExecutionSlot._release, cuda, self.stream, [self.empty])

    @staticmethod
    def _release(cuda: Cuda, stream: int, pointers: list[int]) -> None:
        _free_quietly(cuda, pointers)
        with contextlib.suppress(Exception):
            cuda.destroy_stream(stream)

    @contextmanager
    def use(self, profile: ProfileSpec) -> Iterator[ExecutionSlot]:
        """Hold the context with `profile` active (switched only when another one was)."""
        with self.lock:
            if self.profile != profile.index:
                ok = self.context.set_optimization_profile_async(profile.index, self.stream)
                _require(ok, f"set_optimization_profile_async({profile.index}) for the {profile.name} profile")
                self.profile = profile.index
            yield self

    def bind_input(self, name: str, shape: tuple[int, ...], ptr: int) -> None:
        _require(self.context.set_input_shape(name, shape), f"set_input_shape({name}, {shape})")
        self.bind_output(name, shape, ptr)

    def bind_output(self, name: str, shape: tuple[int, ...], ptr: int) -> None:
        address = ptr if _volume(shape) > 0 else self.empty
        _require(self.context.set_tensor_address(name, address), f"set_tensor_address({name})")

    def execute(self) -> None:
        _require(self.context.execute_async_v3(self.stream), "execute_async_v3")


def resolve_shape(spec: TensorSpec, dims: dict[str, int]) -> tuple[int, ...]:
    """A contract shape with its symbolic axes replaced by this step's sizes."""
    try:
        return tuple(d if isinstance(d, int) else dims[d] for d in spec.shape)
    except KeyError as e:
        raise ValueError(f"{spec.name} has an axis {e} that no input determines") from e


def step_dims(io: IOContract, batch: int, new_tokens: int, past: int) -> dict[str, int]:
    """The symbolic axes of the contract for one step, read off the contract's own names."""
    specs = {s.name: s for s in io.inputs}
    ids, mask = specs["input_ids"], specs["attention_mask"]
    past_spec = next(s for s in io.inputs if s.name.startswith(PAST_PREFIX))
    return {ids.shape[0]: batch, ids.shape[-1]: new_tokens, past_spec.shape[2]: past, mask.shape[-1]: past + new_tokens}


class TensorRTDecoder:
    """The runtime.decoding.Decoder of an engine: one generation call's buffers, steps and beam reorders."""

    def __init__(self, slot: ExecutionSlot, cuda: Cuda, plan: BufferPlan, profiles: list[ProfileSpec],
                 io: IOContract):
        self.slot, self.cuda, self.plan, self.profiles, self.io = slot, cuda, plan, profiles, io
        self.kv_names = [
            (s.name, PRESENT_PREFIX + s.name[len(PAST_PREFIX):])
            for s in io.inputs if s.name.startswith(PAST_PREFIX)
        ]
        self.logits_name = io.outputs[0].name
        self.logits_dtype = NUMPY_TYPES[io.outputs[0].dtype]
        self.length = 0
        self._allocations: list[int] = []
        self._finalizer = weakref.finalize(self, _free_quietly, cuda, self._allocations)
        self.tokens = {name: self._malloc(plan.token_bytes) for name in TOKEN_INPUTS}
        self.current = [self._malloc(plan.kv_bytes(i)) for i in range(len(self.kv_names))]
        self.other = [self._malloc(plan.kv_bytes(i)) for i in range(len(self.kv_names))]
        self.logits, self.logits_capacity = 0, 0

    def _malloc(self, nbytes: int) -> int:
        ptr = self.cuda.malloc(nbytes)
        self._allocations.append(ptr)
        return ptr

    def _ensure_logits(self, nbytes: int) -> None:
        """Grow the logits buffer (once, at the prompt step); decode steps reuse it."""
        if nbytes <= self.logits_capacity:
            return
        if self.logits:
            self.cuda.free(self.logits)
            self._allocations.remove(self.logits)
        self.logits, self.logits_capacity = self._malloc(nbytes), nbytes

    def step(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray) -> np.ndarray:
        """Run one forward pass on the device; returns (B, V) float32 logits of the last position."""
        b, t = input_ids.shape
        p = self.length
        if b != self.plan.batch:
            raise ValueError(f"this decoder holds {self.plan.batch} rows, the step has {b}")
        if p + t > self.plan.max_length:
            raise ValueError(f"the cache holds {self.plan.max_length} positions; {p} + {t} new do not fit")
        if attention_mask.shape != (b, p + t):
            raise ValueError(f"attention_mask has shape {attention_mask.shape}, expected {(b, p + t)}")
        profile = choose_profile(self.profiles, p, t)
        dims = step_dims(self.io, b, t, p)
        shapes = {spec.name: resolve_shape(spec, dims) for spec in (*self.io.inputs, *self.io.outputs)}
        for spec in self.io.inputs:
            check_shape(profile, spec.name, shapes[spec.name])
        host = {
            "input_ids": np.ascontiguousarray(input_ids, dtype=np.int64),
            "attention_mask": np.ascontiguousarray(attention_mask, dtype=np.int64),
            "position_ids": np.ascontiguousarray(position_ids, dtype=np.int64),
        }
        row_bytes = self.plan.vocab * self.plan.logits_itemsize
        self._ensure_logits(self.plan.logits_bytes(t))
        out = np.empty((b, self.plan.vocab), dtype=self.logits_dtype)  # (B, V)
        stream = self.slot.stream
        with self.slot.use(profile) as slot:
            for name in TOKEN_INPUTS:
                self.cuda.copy_to_device(self.tokens[name], host[name], stream)
                slot.bind_input(name, shapes[name], self.tokens[name])
            for i, (past, present) in enumerate(self.kv_names):
                slot.bind_input(past, shapes[past], self.current[i])  # (B, nh, P, hs)
                slot.bind_output(present, shapes[present], self.other[i])  # (B, nh, P + T, hs)
            slot.bind_output(self.logits_name, shapes[self.logits_name], self.logits)  # (B, T, V)
            slot.execute()
            # Row b's last position starts (b * T + T - 1) * V elements in: B rows, T * V elements apart.
            self.cuda.copy_rows_to_host(out, self.logits + (t - 1) * row_bytes, t * row_bytes, stream)
            self.cuda.synchronize(stream)
        self.current, self.other = self.other, self.current
        self.length += t
        return out.astype(np.float32)

    def reorder(self, beam_idx: np.ndarray) -> None:
        """Beam search: row r of the cache becomes old row beam_idx[r], copied on the device into the spare buffers."""
        beam_idx = np.asarray(beam_idx, dtype=np.int64)
        if beam_idx.shape != (self.plan.batch,) or beam_idx.min() < 0 or beam_idx.max() >= self.plan.batch:
            raise ValueError(f"beam_idx must hold {self.plan.batch} row indices in [0, {self.plan.batch})")
        stream = self.slot.stream
        with self.slot.lock:
            for i in range(len(self.kv_names)):
                row = self.plan.kv_heads[i] * self.length * self.plan.head_dim * self.plan.kv_itemsize
                for r, source in enumerate(beam_idx.tolist()):
                    self.cuda.copy_on_device(self.other[i] + r * row, self.current[i] + source * row, row, stream)
        self.current, self.other = self.other, self.current


class TensorRTBackend:
    """A deserialized engine on one GPU: decoders for generation, raw calls (`run`) for other heads."""

    def __init__(self, engine_manifest: EngineManifest, manifest: Manifest, slot: ExecutionSlot, cuda: Cuda,
                 keepalive: tuple = ()):
        self.engine_manifest, self.manifest, self.slot, self.cuda = engine_manifest, manifest, slot, cuda
        self.profiles = sorted(engine_manifest.profiles, key=lambda p: p.index)
        self._keepalive = keepalive  # the TensorRT runtime and engine outlive every context
        self.provider, self.device = "tensorrt-engine", "cuda"
        self.name = f"tensorrt:{engine_manifest.tensorrt_version}"

    def check_call(self, batch: int, max_length: int) -> None:
        """A call of `batch` rows up to `max_length` positions must fit both profiles; quote them if not."""
        context = self.profiles[0]
        try:
            check_shape(context, "attention_mask", (batch, max_length))
        except ProfileShapeError as e:
            raise ProfileShapeError(
                f"a call of {batch} rows (prompts x beams) up to {max_length} positions (prompt + max_new_tokens) "
                f"does not fit this engine: {e}"
            ) from e

    def decoder(self, batch: int, max_length: int) -> TensorRTDecoder:
        """A fresh per-call decoder with device buffers for max_length positions of batch rows."""
        if self.manifest.head not in GENERATING_HEADS:
            raise ValueError(f"the engine holds the {self.manifest.head!r} head; generation needs the lm head")
        self.check_call(batch, max_length)
        plan = BufferPlan.for_call(self.manifest.io, batch, max_length)
        return TensorRTDecoder(self.slot, self.cuda, plan, self.profiles, self.manifest.io)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One call of the engine with every input given (Model.forward fills an empty past); all outputs."""
        io = self.manifest.io
        missing = [s.name for s in io.inputs if s.name not in feeds]
        if missing:
            raise ValueError(f"missing inputs {missing}: the engine takes {io.input_names()}")
        arrays = {s.name: np.ascontiguousarray(feeds[s.name], dtype=NUMPY_TYPES[s.dtype]) for s in io.inputs}
        dims: dict[str, int] = {}
        for spec in io.inputs:
            shape = arrays[spec.name].shape
            if len(shape) != len(spec.shape):
                raise ValueError(f"{spec.name} has shape {shape}, expected rank {len(spec.shape)} {spec.shape}")
            for axis, size in zip(spec.shape, shape, strict=True):
                if isinstance(axis, str) and dims.setdefault(axis, size) != size:
                    raise ValueError(f"{spec.name} has {axis} = {size}, other inputs say {dims[axis]}")
        past_spec = next(s for s in io.inputs if s.name.startswith(PAST_PREFIX))
        profile = choose_profile(self.profiles, arrays[past_spec.name].shape[2], arrays["input_ids"].shape[-1])
        for name, array in arrays.items():
            check_shape(profile, name, array.shape)
        outputs = {s.name: np.empty(resolve_shape(s, dims), dtype=NUMPY_TYPES[s.dtype]) for s in io.outputs}
        pointers: list[int] = []
        try:
            device = {}
            for name, array in (*arrays.items(), *outputs.items()):
                device[name] = self.cuda.malloc(array.nbytes)
                pointers.append(device[name])
            stream = self.slot.stream
            with self.slot.use(profile) as slot:
                for name, array in arrays.items():
                    if array.size:
                        self.cuda.copy_to_device(device[name], array, stream)
                    slot.bind_input(name, array.shape, device[name])
                for name, array in outputs.items():
                    slot.bind_output(name, array.shape, device[name])
                slot.execute()
                for name, array in outputs.items():
                    if array.size:
                        self.cuda.copy_to_host(array, device[name], stream)
                self.cuda.synchronize(stream)
        finally:
            for ptr in pointers:
                self.cuda.free(ptr)
        return outputs


# ---- loading ---------------------------------------------------------------------------------------------


def check_engine_io(trt: Any, engine: Any, manifest: Manifest, engine_manifest: EngineManifest,
                    engine_path: Path) -> None:
    """The engine's tensors, dtypes and profiles must be the ones export.json and engine.json describe."""
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = {n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT}
    outputs = set(names) - inputs
    problems = []
    for kind, expected, actual in (("inputs", manifest.io.inputs, inputs), ("outputs", manifest.io.outputs, outputs)):
        wanted = {s.name for s in expected}
        if wanted != actual:
            problems.append(
                f"{kind} differ (missing {sorted(wanted - actual)[:4]}, unexpected {sorted(actual - wanted)[:4]})"
            )
            continue
        for spec in expected:
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(spec.name)))
            if dtype != np.dtype(NUMPY_TYPES[spec.dtype]):
                problems.append(f"{spec.name} is {dtype} in the engine, {spec.dtype} in export.json")
    if engine.num_optimization_profiles != len(engine_manifest.profiles):
        problems.append(
            f"the engine has {engine.num_optimization_profiles} optimization profiles, engine.json "
            f"{len(engine_manifest.profiles)}"
        )
    elif not problems:
        for profile in engine_manifest.profiles:
            for name, expected_range in profile.shapes.items():
                low, opt, high = (tuple(d) for d in engine.get_tensor_profile_shape(name, profile.index))
                if (low, opt, high) != (expected_range.min, expected_range.opt, expected_range.max):
                    problems.append(
                        f"{name} in profile {profile.name} is min {low}, opt {opt}, max {high} in the engine but "
                        f"{expected_range} in engine.json"
                    )
    if problems:
        raise EngineManifestError(
            f"{engine_path} does not match its engine.json / export.json: {'; '.join(problems)}: rebuild the "
            "engine folder with `gpt2-export build-engine`"
        )


def load_engine(folder: str | Path) -> tuple[Manifest, TensorRTBackend]:
    """Read an engine folder, check it can run here (before deserializing), and open it on the GPU."""
    folder = Path(folder)
    engine_manifest = EngineManifest.load(folder)
    manifest = Manifest.load(folder)  # the export.json copied in by build-engine
    engine_path = folder / engine_manifest.engine_file
    if not engine_path.is_file():
        raise FileNotFoundError(f"{engine_path} is missing: the engine folder is incomplete, rebuild it")
    purpose = f"cannot load the engine folder {folder}"
    trt = import_tensorrt(purpose)
    cuda = open_cuda(purpose)
    gpu_name, compute_capability = cuda.device_properties()
    for note in check_compatible(engine_manifest, trt.__version__, gpu_name, compute_capability, folder):
        warnings.warn(note, stacklevel=2)
    logger = trt.Logger(trt.Logger.WARNING)
    trt_runtime = trt.Runtime(logger)
    engine = trt_runtime.deserialize_cuda_engine(engine_path.read_bytes())
    if engine is None:
        raise RuntimeError(
            f"TensorRT could not deserialize {engine_path} (TensorRT's log above says why): rebuild the engine folder"
        )
    check_engine_io(trt, engine, manifest, engine_manifest, engine_path)
    context = engine.create_execution_context()
    if context is None:
        raise RuntimeError(
            f"TensorRT could not create an execution context for {engine_path} (out of GPU memory?): free the GPU "
            "or rebuild with a smaller --max-batch / --max-sequence"
        )
    slot = ExecutionSlot(context, cuda)
    return manifest, TensorRTBackend(engine_manifest, manifest, slot, cuda, keepalive=(logger, trt_runtime, engine))
