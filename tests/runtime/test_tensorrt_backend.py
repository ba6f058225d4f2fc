"""The TensorRT backend: engine.json checks, profile choice, device buffers and the decoder, then real hardware.

Without TensorRT or a GPU (CI, these machines) everything but the last section runs: the decoder's control flow
(profile per phase, shapes, addresses, ping-pong swaps, beam reorders, logits read-back) runs against
`FakeCuda` (device memory on the host, every copy bounds-checked) and `FakeTensorRT`, whose "engine" executes
the builder's rewritten ONNX graph with onnxruntime at the bound addresses, checking every shape against the
engine's profiles as TensorRT would. transformers 4.57 is the oracle for tokens. The hardware section runs the
same parity checks on a real engine and skips, with its reason, where TensorRT or a GPU is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import transformers

import runtime
from gpt2_export.contract import io_contract
from gpt2_export.export import ExportOptions, export
from runtime import tensorrt_backend
from runtime.engine_manifest import (
    ENGINE_FILE,
    EngineCompatibilityError,
    EngineManifest,
    EngineManifestError,
    ProfileShapeError,
    ProfileSpec,
    ShapeRange,
    check_compatible,
    check_shape,
    choose_profile,
)
from runtime.manifest import Manifest
from runtime.tensorrt_backend import (
    BufferPlan,
    CudaError,
    CudaRuntime,
    TensorRTUnavailableError,
    import_tensorrt,
)

# ---- fakes -------------------------------------------------------------------------------------------------


class FakeCuda:
    """Device memory on the host: every allocation a byte array at a fake address, every access bounds-checked."""

    def __init__(self):
        self.blocks: dict[int, np.ndarray] = {}
        self.next_address = 0x1000
        self.mallocs = self.frees = 0

    def malloc(self, nbytes: int) -> int:
        address = self.next_address
        self.blocks[address] = np.zeros(max(int(nbytes), 1), dtype=np.uint8)
        self.next_address += (max(int(nbytes), 1) // 256 + 2) * 256  # a gap, so overruns are caught
        self.mallocs += 1
        return address

    def free(self, ptr: int) -> None:
        del self.blocks[ptr]
        self.frees += 1

    def view(self, ptr: int, nbytes: int) -> np.ndarray:
        for base, block in self.blocks.items():
            if base <= ptr < base + block.size:
                assert ptr + nbytes <= base + block.size, f"{nbytes} bytes at {ptr:#x} overrun the allocation"
                return block[ptr - base : ptr - base + nbytes]
        raise AssertionError(f"address {ptr:#x} is not allocated")

    def create_stream(self) -> int:
        return 7

    def destroy_stream(self, stream: int) -> None:
        pass

    def synchronize(self, stream: int) -> None:
        assert stream == 7

    def copy_to_device(self, dst: int, host: np.ndarray, stream: int) -> None:
        self.view(dst, host.nbytes)[:] = np.ascontiguousarray(host).reshape(-1).view(np.uint8)

    def copy_to_host(self, host: np.ndarray, src: int, stream: int) -> None:
        host.reshape(-1).view(np.uint8)[:] = self.view(src, host.nbytes)

    def copy_rows_to_host(self, host: np.ndarray, src: int, src_pitch: int, stream: int) -> None:
        width = host.shape[-1] * host.itemsize
        for r in range(host.shape[0]):
            host[r].view(np.uint8)[:] = self.view(src + r * src_pitch, width)

    def copy_on_device(self, dst: int, src: int, nbytes: int, stream: int) -> None:
        self.view(dst, nbytes)[:] = self.view(src, nbytes).copy()

    def device_properties(self) -> tuple[str, tuple[int, int]]:
        return "Fake GPU", (9, 0)


ORT_TYPES = {"tensor(int64)": np.dtype(np.int64), "tensor(float)": np.dtype(np.float32),
             "tensor(float16)": np.dtype(np.float16)}


def _onnx_dims(value_info) -> tuple[int, ...]:
    return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in value_info.type.tensor_type.shape.dim)


class FakeEngine:
    """A "serialized engine": the profiles TensorRT was given, then the ONNX graph it parsed, run by onnxruntime."""

    def __init__(self, blob: bytes, cuda: FakeCuda):
        size = int.from_bytes(blob[:4], "little")
        self.profiles = json.loads(blob[4 : 4 + size])
        self.session = ort.InferenceSession(blob[4 + size :], providers=["CPUExecutionProvider"])
        self.inputs = {i.name: ORT_TYPES[i.type] for i in self.session.get_inputs()}
        self.outputs = {o.name: ORT_TYPES[o.type] for o in self.session.get_outputs()}
        self.names = [*self.inputs, *self.outputs]
        self.cuda = cuda
        self.num_io_tensors = len(self.names)
        self.num_optimization_profiles = len(self.profiles)

    @staticmethod
    def serialize(profiles: list[dict], onnx_bytes: bytes) -> bytes:
        header = json.dumps(profiles).encode()
        return len(header).to_bytes(4, "little") + header + onnx_bytes

    def get_tensor_name(self, i: int) -> str:
        return self.names[i]

    def get_tensor_mode(self, name: str) -> str:
        return "INPUT" if name in self.inputs else "OUTPUT"

    def get_tensor_dtype(self, name: str) -> np.dtype:
        return self.inputs.get(name, self.outputs.get(name))

    def get_tensor_profile_shape(self, name: str, index: int) -> list[tuple[int, ...]]:
        return [tuple(s) for s in self.profiles[index][name]]

    def create_execution_context(self) -> FakeContext:
        return FakeContext(self)


class FakeContext:
    """An IExecutionContext that runs the graph at the bound addresses, rejecting what TensorRT would reject."""

    def __init__(self, engine: FakeEngine):
        self.engine, self.cuda = engine, engine.cuda
        self.profile = 0
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.switches: list[int] = []
        self.runs: list[tuple[int, dict[str, tuple[int, ...]]]] = []

    def set_optimization_profile_async(self, index: int, stream: int) -> bool:
        assert stream == 7 and 0 <= index < len(self.engine.profiles)
        self.profile, self.shapes = index, {}  # switching invalidates the input shapes, as in TensorRT
        self.switches.append(index)
        return True

    def set_input_shape(self, name: str, shape) -> bool:
        low, _, high = self.engine.profiles[self.profile][name]
        shape = tuple(shape)
        if len(shape) != len(low) or not all(a <= d <= b for a, d, b in zip(low, shape, high, strict=True)):
            return False
        self.shapes[name] = shape
        return True

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        assert ptr, f"null pointer bound to {name}"
        self.cuda.view(ptr, 0)  # a real allocation, even for an empty tensor
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream: int) -> bool:
        assert set(self.shapes) == set(self.engine.inputs), "every input shape must be set after a profile switch"
        feeds = {}
        for name, dtype in self.engine.inputs.items():
            shape = self.shapes[name]
            nbytes = int(np.prod(shape)) * dtype.itemsize
            feeds[name] = self.cuda.view(self.addresses[name], nbytes).view(dtype).reshape(shape).copy()
        results = self.engine.session.run(None, feeds)
        for name, value in zip(self.engine.outputs, results, strict=True):
            self.cuda.view(self.addresses[name], value.nbytes)[:] = np.ascontiguousarray(value).reshape(-1).view(
                np.uint8)
        self.runs.append((self.profile, dict(self.shapes)))
        return True


class _Recorder:
    def __init__(self, **fields):
        self.__dict__.update(fields)


class FakeTensorRT:
    """The slice of the tensorrt module that gpt2_export.engine and runtime.tensorrt_backend use."""

    def __init__(self, cuda: FakeCuda, version: str = "10.9.0.34"):
        self.__version__ = version
        self.cuda = cuda
        major = int(version.split(".")[0])
        self.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level=2: None})
        self.TensorIOMode = SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
        self.NetworkDefinitionCreationFlag = SimpleNamespace(STRONGLY_TYPED=5) if major < 11 else SimpleNamespace()
        self.BuilderFlag = SimpleNamespace(TF32="TF32", **({"FP16": "FP16"} if major < 11 else {}))
        self.builds: list[_Recorder] = []
        self.deserialized = 0

    def nptype(self, dtype):
        return dtype

    def Builder(self, logger):  # noqa: N802 - TensorRT's name
        trt = self

        class Network(_Recorder):
            def get_input(self, i):
                return self.inputs[i]

            def get_output(self, i):
                return self.outputs[i]

        class Parser:
            def __init__(self, network):
                self.network, self.num_errors = network, 0

            def parse(self, data: bytes, path: str) -> bool:
                graph = onnx.load_from_string(data).graph
                assert all(n.domain in ("", "ai.onnx") for n in graph.node)
                info = lambda v: SimpleNamespace(name=v.name, shape=_onnx_dims(v), dtype=v.type.tensor_type.elem_type)  # noqa: E731
                self.network.inputs = [info(v) for v in graph.input]
                self.network.outputs = [info(v) for v in graph.output]
                self.network.num_inputs, self.network.num_outputs = len(graph.input), len(graph.output)
                self.network.onnx, self.network.path = data, path
                return True

        class Profile(_Recorder):
            def set_shape(self, name, low, opt, high):
                self.shapes[name] = [tuple(low), tuple(opt), tuple(high)]

        class Cache(_Recorder):
            def serialize(self):
                return self.data + b"timings;"

        class Config(_Recorder):
            def set_flag(self, flag):
                self.flags.add(flag)

            def clear_flag(self, flag):
                self.cleared.add(flag)

            def add_optimization_profile(self, profile):
                self.profiles.append(profile)
                return len(self.profiles) - 1

            def create_timing_cache(self, data):
                return Cache(data=bytes(data))

            def set_timing_cache(self, cache, ignore_mismatch):
                self.cache = cache
                return not cache.data.startswith(b"other-gpu")

            def get_timing_cache(self):
                return self.cache

        class Builder:
            def create_network(self, flags):
                return Network(flags=flags)

            def create_builder_config(self):
                config = Config(flags=set(), cleared=set(), profiles=[], cache=None)
                trt.builds.append(config)
                return config

            def create_optimization_profile(self):
                return Profile(shapes={})

            def build_serialized_network(self, network, config):
                config.network = network
                return FakeEngine.serialize([p.shapes for p in config.profiles], network.onnx)

        self.OnnxParser = lambda network, logger: Parser(network)
        return Builder()

    def Runtime(self, logger):  # noqa: N802 - TensorRT's name
        trt = self

        class Runtime:
            def deserialize_cuda_engine(self, blob):
                trt.deserialized += 1
                return FakeEngine(blob, trt.cuda)

        return Runtime()


def install_fake_tensorrt(monkeypatch, trt: FakeTensorRT) -> None:
    """Route the builder's and the runtime's optional imports to the fakes."""
    import gpt2_export.engine as engine

    for module in (engine, tensorrt_backend):
        monkeypatch.setattr(module, "import_tensorrt", lambda purpose: trt)
        monkeypatch.setattr(module, "open_cuda", lambda purpose: trt.cuda)


# ---- fixtures ----------------------------------------------------------------------------------------------


def _hf_generate(hf, ids, mask, **options):
    with torch.no_grad():
        out = hf.generate(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), pad_token_id=316, **options)
    return out.numpy()


def _batch():
    ids = np.array([[5, 17, 42, 99, 7, 250], [316, 316, 316, 80, 81, 82], [316, 12, 13, 14, 15, 16]])
    mask = np.array([[1, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1], [0, 1, 1, 1, 1, 1]])
    return ids, mask


@pytest.fixture(scope="module")
def hf_lm(hf_checkpoints):
    return transformers.GPT2LMHeadModel.from_pretrained(hf_checkpoints["lm"]).eval()


@pytest.fixture(scope="module")
def plain_exports(hf_checkpoints, tmp_path_factory) -> dict[str, Path]:
    """Plain (TensorRT-parsable) exports of the tiny LM: fp32 and fp16."""
    root = tmp_path_factory.mktemp("plain-exports")
    return {
        dtype: export(hf_checkpoints["lm"], root / dtype, ExportOptions(variant="plain", dtype=dtype)).folder
        for dtype in ("fp32", "fp16")
    }


@pytest.fixture
def fake_trt(monkeypatch) -> FakeTensorRT:
    trt = FakeTensorRT(FakeCuda())
    install_fake_tensorrt(monkeypatch, trt)
    return trt


@pytest.fixture
def fake_engine(fake_trt, plain_exports, tmp_path) -> Path:
    """An engine folder built by build_engine through FakeTensorRT from the fp32 plain export."""
    from gpt2_export.engine import EngineOptions, build_engine

    return build_engine(plain_exports["fp32"], tmp_path / "engine", EngineOptions(max_batch=12)).folder


# ---- engine.json and compatibility ---------------------------------------------------------------------------


def _manifest(**overrides) -> EngineManifest:
    ids = ShapeRange((1, 1), (1, 16), (4, 64))
    past = ShapeRange((1, 4, 0, 8), (1, 4, 0, 8), (4, 4, 0, 8))
    context = ProfileSpec("context", 0, {"input_ids": ids, "past_key_values.0.key": past})
    gen = ProfileSpec("generation", 1, {
        "input_ids": ShapeRange((1, 1), (1, 1), (4, 1)),
        "past_key_values.0.key": ShapeRange((1, 4, 1, 8), (1, 4, 32, 8), (4, 4, 63, 8)),
    })
    fields = dict(tensorrt_version="10.9.0.34", gpu_name="NVIDIA H100 80GB HBM3", compute_capability=(9, 0),
                  profiles=[context, gen], options={"max_batch": 4, "max_sequence": 64, "opt_batch": 1},
                  export={"folder": "/exports/gpt2-plain-fp16", "head": "lm", "dtype": "fp16"})
    return EngineManifest(**{**fields, **overrides})


def test_engine_manifest_round_trips(tmp_path):
    manifest = _manifest()
    manifest.save(tmp_path)
    loaded = EngineManifest.load(tmp_path)
    assert loaded == manifest
    assert json.loads((tmp_path / "engine.json").read_text())["profiles"][1]["shapes"]["input_ids"] == {
        "min": [1, 1], "opt": [1, 1], "max": [4, 1]}


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(format_version=99), "format_version 99, this runtime reads version 1"),
    (lambda d: d.update(format="other"), "is not a gpt2-export engine manifest"),
    (lambda d: d.pop("profiles"), "lacks or mangles field 'profiles'"),
    (lambda d: d.clear(), r"is not a gpt2-export engine manifest \(format None\)"),
])
def test_bad_engine_manifests_say_how_to_rebuild(tmp_path, edit, message):
    data = _manifest().to_dict()
    edit(data)
    (tmp_path / "engine.json").write_text(json.dumps(data))
    with pytest.raises(EngineManifestError, match=message):
        EngineManifest.load(tmp_path)
    with pytest.raises(EngineManifestError, match="has no engine.json"):
        EngineManifest.load(tmp_path / "missing")


def test_same_tensorrt_and_gpu_is_compatible():
    assert check_compatible(_manifest(), "10.9.0.34", "NVIDIA H100 80GB HBM3", (9, 0)) == []


def test_another_tensorrt_version_is_refused_with_the_rebuild_command():
    with pytest.raises(EngineCompatibilityError) as e:
        check_compatible(_manifest(), "10.13.0.35", "NVIDIA H100 80GB HBM3", (9, 0), "engines/gpt2")
    message = str(e.value)
    assert "built with TensorRT 10.9.0.34 but this is TensorRT 10.13.0.35" in message
    assert ("gpt2-export build-engine /exports/gpt2-plain-fp16 --output engines/gpt2 --overwrite --max-batch 4 "
            "--max-sequence 64 --opt-batch 1") in message


def test_another_gpu_architecture_is_refused_naming_both_gpus():
    with pytest.raises(EngineCompatibilityError, match=(
        r"built for NVIDIA H100 80GB HBM3 \(compute capability 9.0\) but this GPU is NVIDIA A100-SXM4-40GB "
        r"\(compute capability 8.0\)")):
        check_compatible(_manifest(), "10.9.0.34", "NVIDIA A100-SXM4-40GB", (8, 0))


def test_both_mismatches_are_reported_at_once():
    with pytest.raises(EngineCompatibilityError, match="TensorRT 11.0.0.1; and it was built for"):
        check_compatible(_manifest(), "11.0.0.1", "NVIDIA L4", (8, 9))


def test_another_gpu_of_the_same_architecture_is_a_note():
    notes = check_compatible(_manifest(), "10.9.0.34", "NVIDIA H100 PCIe", (9, 0))
    assert len(notes) == 1 and "timed on the other GPU" in notes[0]


# ---- profiles: shapes and phase selection ------------------------------------------------------------------


def test_a_shape_outside_the_profile_quotes_min_opt_max():
    context = _manifest().profile("context")
    check_shape(context, "input_ids", (4, 64))
    with pytest.raises(ProfileShapeError, match=(
        r"input_ids of shape \(5, 10\) is outside the engine's context profile "
        r"\(min \(1, 1\), opt \(1, 16\), max \(4, 64\)\): rebuild the engine with larger --max-batch")):
        check_shape(context, "input_ids", (5, 10))


def test_phase_selection():
    profiles = _manifest().profiles
    assert choose_profile(profiles, past_length=0, new_tokens=7).name == "context"
    assert choose_profile(profiles, past_length=5, new_tokens=1).name == "generation"
    with pytest.raises(ProfileShapeError, match="past length 5 and 3 new tokens"):
        choose_profile(profiles, past_length=5, new_tokens=3)  # chunked prefill: no profile
    with pytest.raises(ProfileShapeError, match="generation: batch 1..4, past 1..63, new tokens 1..1"):
        choose_profile(profiles, past_length=64, new_tokens=1)  # beyond --max-sequence


# ---- buffer plan -------------------------------------------------------------------------------------------


def test_buffer_plan_of_gpt2_small_in_fp16():
    io = io_contract("lm", 12, [12] * 12, 64, 768, 50257, 2, float_type="float16")
    plan = BufferPlan.for_call(io, batch=8, max_length=1024)
    assert plan.kv_heads == (12,) * 24 and plan.head_dim == 64 and plan.vocab == 50257
    assert plan.kv_bytes(0) == 8 * 12 * 1024 * 64 * 2  # one of the two ping-pong buffers of one tensor: 12.6 MB
    assert plan.token_bytes == 8 * 1024 * 8
    assert plan.logits_bytes(1) == 8 * 50257 * 2  # a decode step's logits
    sizes = plan.to_dict(prompt_length=100)
    assert sizes["kv_cache_bytes"] == 2 * 24 * plan.kv_bytes(0)  # 604 MB for 8 rows of 1024 positions
    assert sizes["total_bytes"] == sizes["kv_cache_bytes"] + 3 * plan.token_bytes + plan.logits_bytes(100)


# ---- the decoder against fakes -------------------------------------------------------------------------------


def test_greedy_through_the_engine_path_equals_transformers(fake_engine, fake_trt, hf_lm):
    model = runtime.load(fake_engine)
    assert model.backend.name == "tensorrt:10.9.0.34" and fake_trt.deserialized == 1
    ids, mask = _batch()
    ours = model.generate(ids, mask, max_new_tokens=10)
    np.testing.assert_array_equal(ours, _hf_generate(hf_lm, ids, mask, max_new_tokens=10, do_sample=False))


@pytest.mark.parametrize("beams, returns", [(3, 1), (4, 2)])
def test_beam_search_through_the_engine_path_equals_transformers(fake_engine, hf_lm, beams, returns):
    model = runtime.load(fake_engine)
    ids, mask = _batch()
    options = dict(max_new_tokens=8, num_beams=beams, num_return_sequences=returns)
    np.testing.assert_array_equal(model.generate(ids, mask, **options), _hf_generate(hf_lm, ids, mask, **options))


def test_stream_and_text_api_work_on_an_engine_folder(fake_engine):
    model = runtime.load(fake_engine)
    pieces = list(model.stream("the cat sat", max_new_tokens=8))
    assert "".join(pieces) == model.generate_text("the cat sat", max_new_tokens=8)


def test_each_phase_runs_in_its_profile_with_preallocated_buffers(fake_engine, fake_trt):
    model = runtime.load(fake_engine)
    context = model.backend.slot.context
    decoder = model.backend.decoder(batch=2, max_length=9)
    allocated = fake_trt.cuda.mallocs
    ids = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    decoder.step(ids, np.ones((2, 4), np.int64), np.tile(np.arange(4), (2, 1)))
    after_prompt = fake_trt.cuda.mallocs
    assert after_prompt == allocated + 1  # the prompt-sized logits buffer, once
    for p in range(4, 8):
        decoder.step(np.array([[9], [10]]), np.ones((2, p + 1), np.int64), np.full((2, 1), p))
    assert fake_trt.cuda.mallocs == after_prompt  # decode steps allocate nothing
    assert context.switches == [0, 1]  # context profile for the prompt, generation after, switched once
    profile, shapes = context.runs[0]
    assert profile == 0 and shapes["past_key_values.0.key"] == (2, 4, 0, 8) and shapes["input_ids"] == (2, 4)
    profile, shapes = context.runs[-1]
    assert profile == 1 and shapes["past_key_values.1.value"] == (2, 4, 7, 8) and shapes["attention_mask"] == (2, 8)
    # The empty past of the prompt step is a real buffer (FakeContext rejects null or unallocated addresses),
    # and the past of each step is the buffer the previous step wrote its present into (ping-pong).
    assert decoder.current[0] != decoder.other[0]


def test_decoder_matches_onnxruntime_step_by_step_with_a_beam_reorder(fake_engine, plain_exports):
    model = runtime.load(fake_engine)
    reference = runtime.load(plain_exports["fp32"])
    ours, theirs = model.backend.decoder(3, 8), reference.backend.decoder(3, 8)
    ids, mask = _batch()
    ids, mask = ids[:, 2:], mask[:, 2:]
    positions = np.where(mask == 0, 1, np.cumsum(mask, -1) - 1)
    np.testing.assert_allclose(ours.step(ids, mask, positions), theirs.step(ids, mask, positions), atol=1e-5)
    for beam_idx in (np.array([2, 2, 0]), np.array([1, 0, 1])):
        ours.reorder(beam_idx)
        theirs.reorder(beam_idx)
        full = np.ones((3, ours.length + 1), np.int64)
        full[:, : mask.shape[1]] = mask
        token, pos = np.array([[3], [4], [5]]), full.sum(-1, keepdims=True) - 1
        np.testing.assert_allclose(ours.step(token, full, pos), theirs.step(token, full, pos), atol=1e-5)
        mask = full


def test_forward_runs_the_engine_once_with_an_empty_past(fake_engine, plain_exports):
    feeds = {"input_ids": np.array([[5, 6, 7]]), "attention_mask": np.ones((1, 3), np.int64),
             "position_ids": np.array([[0, 1, 2]])}
    ours = runtime.load(fake_engine).forward(feeds)
    theirs = runtime.load(plain_exports["fp32"]).forward(feeds)
    np.testing.assert_allclose(ours["logits"], theirs["logits"], atol=1e-5)
    assert ours["present.1.key"].shape == (1, 4, 3, 8)


def test_a_call_beyond_the_profiles_quotes_them(fake_engine):
    model = runtime.load(fake_engine)
    ids, mask = _batch()
    with pytest.raises(ProfileShapeError, match=(
        r"a call of 15 rows \(prompts x beams\) up to 11 positions .* does not fit this engine: attention_mask of "
        r"shape \(15, 11\) is outside the engine's context profile \(min \(1, 1\), opt \(1, 64\), max \(12, 64\)\)")):
        model.generate(ids, mask, max_new_tokens=5, num_beams=5)


def test_an_engine_from_another_gpu_is_refused_before_deserializing(fake_engine, fake_trt):
    data = json.loads((fake_engine / "engine.json").read_text())
    data["compute_capability"], data["gpu_name"] = [8, 0], "NVIDIA A100-SXM4-80GB"
    (fake_engine / "engine.json").write_text(json.dumps(data))
    with pytest.raises(EngineCompatibilityError, match="built for NVIDIA A100-SXM4-80GB .* this GPU is Fake GPU"):
        runtime.load(fake_engine)
    assert fake_trt.deserialized == 0


def test_an_engine_that_disagrees_with_its_manifest_is_refused(fake_engine):
    data = json.loads((fake_engine / "engine.json").read_text())
    data["profiles"][1]["shapes"]["input_ids"]["max"] = [99, 1]
    (fake_engine / "engine.json").write_text(json.dumps(data))
    with pytest.raises(EngineManifestError, match="input_ids in profile generation is min .* in the engine but"):
        runtime.load(fake_engine)


def test_device_buffers_are_freed_with_the_decoder(fake_engine, fake_trt):
    model = runtime.load(fake_engine)
    frees = fake_trt.cuda.frees
    decoder = model.backend.decoder(batch=1, max_length=4)
    owned = len(decoder._allocations)
    del decoder
    assert fake_trt.cuda.frees == frees + owned


# ---- missing TensorRT, cuda-python or GPU --------------------------------------------------------------------


def test_loading_an_engine_without_tensorrt_says_what_is_missing(fake_engine, monkeypatch):
    monkeypatch.setattr(tensorrt_backend, "import_tensorrt", import_tensorrt)  # the real import again
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # absent, even where it is installed
    with pytest.raises(TensorRTUnavailableError) as e:
        runtime.load(fake_engine)
    assert str(e.value) == (
        "TensorRT is not installed (pip install tensorrt-cu12 on a machine with an NVIDIA GPU; see README): "
        f"cannot load the engine folder {fake_engine}"
    )


def test_missing_cuda_python_and_missing_gpu_are_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "cuda", None)
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    with pytest.raises(TensorRTUnavailableError, match=r"^cuda-python is not installed \(pip install cuda-python"):
        tensorrt_backend.open_cuda("cannot load")
    no_gpu = _fake_cudart(cudaGetDeviceCount=lambda: (_Err(100), 0))
    monkeypatch.setattr(tensorrt_backend, "import_cudart", lambda purpose: no_gpu)
    with pytest.raises(TensorRTUnavailableError, match=(
        r"^no CUDA GPU is visible \(cudaGetDeviceCount failed with cudaErrorNoDevice\): cannot load$")):
        tensorrt_backend.open_cuda("cannot load")


def test_too_old_tensorrt_is_refused(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", SimpleNamespace(__version__="8.6.1"))
    with pytest.raises(TensorRTUnavailableError, match="TensorRT 8.6.1 is too old: engines need TensorRT 10"):
        import_tensorrt("cannot build an engine")


class _Err(int):
    """A cudaError_t stand-in: an int with the enum's truthiness."""


def _fake_cudart(**calls):
    names = {0: b"cudaSuccess", 2: b"cudaErrorMemoryAllocation", 100: b"cudaErrorNoDevice"}
    return SimpleNamespace(cudaGetErrorName=lambda err: (_Err(0), names[int(err)]), **calls)


def test_every_cuda_call_goes_through_one_checker_that_names_the_error():
    cudart = _fake_cudart(
        cudaMalloc=lambda n: (_Err(2), 0) if n > 1 << 40 else (_Err(0), 0xABC),
        cudaStreamSynchronize=lambda s: (_Err(0),),
        cudaGetDevice=lambda: (_Err(0), 0),
        cudaGetDeviceProperties=lambda d: (_Err(0), SimpleNamespace(name=b"NVIDIA H100 80GB HBM3\0\0", major=9,
                                                                   minor=0)),
    )
    cuda = CudaRuntime(cudart)
    assert cuda.malloc(1024) == 0xABC and cuda.malloc(0) == 0xABC
    assert cuda.synchronize(7) is None
    assert cuda.device_properties() == ("NVIDIA H100 80GB HBM3", (9, 0))
    with pytest.raises(CudaError, match="^cudaMalloc failed with cudaErrorMemoryAllocation$"):
        cuda.malloc(1 << 41)


def test_the_tensorrt_backend_never_imports_torch():
    script = textwrap.dedent("""
        import sys
        sys.modules["torch"] = None
        import runtime.tensorrt_backend, runtime.engine_manifest
        assert "models" not in sys.modules and "tensorrt" not in sys.modules
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert result.returncode == 0, result.stderr


# ---- real hardware: TensorRT on a CUDA GPU ------------------------------------------------------------------


def _hardware_missing() -> str | None:
    """Why the hardware tests cannot run here, or None."""
    try:
        import_tensorrt("")
    except TensorRTUnavailableError:
        return "TensorRT not installed"
    try:
        tensorrt_backend.open_cuda("")
    except TensorRTUnavailableError as e:
        return "cuda-python not installed" if "cuda-python" in str(e) else "no CUDA GPU"
    return None


HARDWARE_MISSING = _hardware_missing()
hardware = pytest.mark.skipif(HARDWARE_MISSING is not None, reason=HARDWARE_MISSING or "")


@pytest.fixture(scope="module")
def real_engines(plain_exports, tmp_path_factory) -> dict[str, Path]:
    from gpt2_export.engine import EngineOptions, build_engine

    root = tmp_path_factory.mktemp("engines")
    return {dtype: build_engine(folder, root / dtype, EngineOptions(max_batch=12)).folder
            for dtype, folder in plain_exports.items()}


@pytest.mark.gpu
@pytest.mark.slow
@hardware
def test_real_fp32_engine_greedy_and_beam_equal_transformers(real_engines, hf_lm):
    model = runtime.load(real_engines["fp32"])
    ids, mask = _batch()
    np.testing.assert_array_equal(model.generate(ids, mask, max_new_tokens=12),
                                  _hf_generate(hf_lm, ids, mask, max_new_tokens=12, do_sample=False))
    options = dict(max_new_tokens=8, num_beams=4, num_return_sequences=2)
    np.testing.assert_array_equal(model.generate(ids, mask, **options), _hf_generate(hf_lm, ids, mask, **options))


@pytest.mark.gpu
@pytest.mark.slow
@hardware
def test_real_fp16_engine_logits_within_fp16_tolerance_of_transformers(real_engines, hf_lm):
    model = runtime.load(real_engines["fp16"])
    ids, mask = _batch()
    positions = np.where(mask == 0, 1, np.cumsum(mask, -1) - 1)
    logits = model.backend.decoder(3, ids.shape[1] + 1).step(ids, mask, positions)
    with torch.no_grad():
        expected = hf_lm(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                         position_ids=torch.from_numpy(positions)).logits[:, -1].numpy()
    np.testing.assert_allclose(logits, expected, atol=2e-2, rtol=2e-2)  # validate.py's fp16 tolerance
    agree = (model.generate(ids, mask, max_new_tokens=6) == _hf_generate(hf_lm, ids, mask, max_new_tokens=6)).mean()
    assert agree > 0.8  # as the fp16 ONNX Runtime export: near-ties may flip in fp16


@pytest.mark.gpu
@pytest.mark.slow
@hardware
def test_polygraphy_compares_the_engine_with_onnxruntime(real_engines, plain_exports):
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner
    from polygraphy.comparator import Comparator, CompareFunc

    engine = EngineFromBytes((real_engines["fp16"] / ENGINE_FILE).read_bytes())
    rng = np.random.default_rng(0)
    past = 5  # the generation profile (index 1): one token on a non-empty past
    feed = {"input_ids": np.array([[7], [9]]), "attention_mask": np.ones((2, past + 1), np.int64),
            "position_ids": np.full((2, 1), past)}
    for name in Manifest.load(plain_exports["fp16"]).io.input_names()[3:]:
        feed[name] = rng.standard_normal((2, 4, past, 8)).astype(np.float16)
    runners = [TrtRunner(engine, optimization_profile=1),
               OnnxrtRunner(SessionFromOnnx(str(plain_exports["fp16"] / "model.onnx")))]
    results = Comparator.run(runners, data_loader=[feed])
    assert bool(Comparator.compare_accuracy(results, compare_func=CompareFunc.simple(atol=2e-2, rtol=2e-2)))


@pytest.mark.gpu
@pytest.mark.slow
@hardware
def test_build_engine_then_generate_command_gives_transformers_tokens(plain_exports, hf_lm, tmp_path):
    from click.testing import CliRunner

    from gpt2_export.cli import main
    from gpt2_export.engine_cli import build_engine_command

    engine = tmp_path / "engine"
    result = CliRunner().invoke(build_engine_command, [str(plain_exports["fp32"]), "--output", str(engine)])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["generate", str(engine), "--prompt", "the cat", "--max-new-tokens", "8"])
    assert result.exit_code == 0, result.output
    model = runtime.load(engine)
    ids = np.array([model.tokenizer.encode("the cat")])
    tokens = _hf_generate(hf_lm, ids, np.ones_like(ids), max_new_tokens=8, do_sample=False)[0, ids.shape[1]:].tolist()
    tokens = tokens[: tokens.index(316)] if 316 in tokens else tokens  # the command stops at eos
    assert result.output == "the cat" + model.tokenizer.decode(tokens) + "\n"
