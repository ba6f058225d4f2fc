"""build-engine: options, profiles, the attention rewrite, the engine folder, and the errors without TensorRT.

The TensorRT calls themselves run against tests/runtime/test_tensorrt_backend.py's FakeTensorRT (it records
the network flags, builder flags, profiles and timing cache it is given); the real build is exercised by that
file's hardware tests, which skip without TensorRT and a GPU.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from gpt2_export.engine import (
    EngineBuildError,
    EngineOptions,
    build_engine,
    check_export,
    prepare_graph,
    prescale_queries,
    profiles,
)
from gpt2_export.engine_cli import build_engine_command
from gpt2_export.export import ExportOptions, export
from runtime.engine_manifest import EngineManifest
from runtime.manifest import Manifest
from runtime.tensorrt_backend import TensorRTUnavailableError
from tests.runtime.test_tensorrt_backend import FakeCuda, FakeTensorRT, install_fake_tensorrt


@pytest.fixture(scope="module")
def plain(hf_checkpoints, tmp_path_factory) -> dict[str, Path]:
    """Plain exports of the tiny LM (fp32, fp16, fp32 with external weights) and the default fused one."""
    root = tmp_path_factory.mktemp("engine-exports")
    lm = hf_checkpoints["lm"]
    return {
        "fp32": export(lm, root / "fp32", ExportOptions(variant="plain")).folder,
        "fp16": export(lm, root / "fp16", ExportOptions(variant="plain", dtype="fp16")).folder,
        "external": export(lm, root / "external", ExportOptions(variant="plain", external_data=True,
                                                                 validate=False)).folder,
        "fused": export(lm, root / "fused", ExportOptions(validate=False)).folder,
    }


# ---- options and profiles ------------------------------------------------------------------------------------


@pytest.mark.parametrize("options, message", [
    (dict(max_batch=0), "max_batch must be a positive integer, got 0"),
    (dict(max_batch=4, opt_batch=8), "opt_batch 8 exceeds max_batch 4: .* use --opt-batch 4 or less"),
    (dict(max_sequence=1), "max_sequence must be an integer >= 2"),
])
def test_bad_options_name_the_value_and_the_fix(options, message):
    with pytest.raises(EngineBuildError, match=message):
        EngineOptions(**options)


def test_max_sequence_defaults_to_and_is_capped_by_n_positions(plain):
    manifest = Manifest.load(plain["fp32"])  # the tiny model: n_positions 64
    assert EngineOptions().sequence_limit(manifest) == 64
    assert EngineOptions(max_sequence=32).sequence_limit(manifest) == 32
    with pytest.raises(EngineBuildError, match="max_sequence 100 exceeds the model's n_positions 64: .* 64 or less"):
        EngineOptions(max_sequence=100).sequence_limit(manifest)


def test_profiles_cover_the_prompt_and_one_token_steps(plain):
    manifest = Manifest.load(plain["fp16"])
    context, generation = profiles(EngineOptions(max_batch=8, opt_batch=2, max_sequence=48), manifest)
    assert (context.name, context.index, generation.name, generation.index) == ("context", 0, "generation", 1)
    assert set(context.shapes) == set(manifest.io.input_names())  # every input, every past
    shapes = {name: (r.min, r.opt, r.max) for name, r in context.shapes.items()}
    assert shapes["input_ids"] == ((1, 1), (2, 48), (8, 48))  # opt prompt min(48, 128)
    assert shapes["attention_mask"] == ((1, 1), (2, 48), (8, 48))
    assert shapes["past_key_values.1.value"] == ((1, 4, 0, 8), (2, 4, 0, 8), (8, 4, 0, 8))  # past 0
    shapes = {name: (r.min, r.opt, r.max) for name, r in generation.shapes.items()}
    assert shapes["input_ids"] == ((1, 1), (2, 1), (8, 1))
    assert shapes["position_ids"] == ((1, 1), (2, 1), (8, 1))
    assert shapes["attention_mask"] == ((1, 2), (2, 25), (8, 48))  # past + 1
    assert shapes["past_key_values.0.key"] == ((1, 4, 1, 8), (2, 4, 24, 8), (8, 4, 47, 8))  # past 1..max-1


def test_the_fused_export_is_refused_naming_the_plain_export_command(plain):
    with pytest.raises(EngineBuildError, match=(
        r"holds the fused graph .* TensorRT's ONNX parser cannot read: export the plain graph with "
        r"`gpt2-export export --plain --dtype fp16 --output DIR`")):
        check_export(Manifest.load(plain["fused"]), plain["fused"])


def test_double_heads_is_refused(exports):
    with pytest.raises(EngineBuildError, match="engines cover the lm, base, seq-cls heads"):
        check_export(Manifest.load(exports["double-heads"]), exports["double-heads"])


# ---- the attention rewrite -------------------------------------------------------------------------------------


def _random_feeds(manifest: Manifest, past: int, new: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    dtype = np.float16 if manifest.dtype == "fp16" else np.float32
    mask = np.ones((2, past + new), np.int64)
    mask[1, :2] = 0  # a left-padded row
    feeds = {"input_ids": rng.integers(0, 317, (2, new)), "attention_mask": mask,
             "position_ids": np.tile(np.arange(past, past + new), (2, 1))}
    for name in manifest.io.input_names()[3:]:
        feeds[name] = rng.standard_normal((2, 4, past, 8)).astype(dtype)
    return feeds


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


@pytest.mark.parametrize("dtype, atol", [("fp32", 1e-5), ("fp16", 2e-2)])  # fp16: the export tolerance
def test_prescaling_q_keeps_every_output(plain, dtype, atol):
    folder = plain[dtype]
    manifest = Manifest.load(folder)
    rewritten, attention = prepare_graph(folder / "model.onnx", manifest)
    assert attention["prescaled_layers"] == attention["layers"] == 2
    original = ort.InferenceSession(str(folder / "model.onnx"))
    prescaled = ort.InferenceSession(rewritten)
    for past, new in ((0, 6), (5, 1)):  # the two profiles: prompt on an empty past, one token on a past
        feeds = _random_feeds(manifest, past, new)
        for name, a, b in zip(manifest.io.output_names(), original.run(None, feeds), prescaled.run(None, feeds),
                              strict=True):
            np.testing.assert_allclose(b.astype(np.float32), a.astype(np.float32), atol=atol, rtol=atol,
                                       err_msg=f"{name}, past {past}")


def test_the_rewrite_puts_the_scale_on_q_before_the_first_matmul(plain):
    model = onnx.load(str(plain["fp16"] / "model.onnx"))
    divs_before = _ops(model).count("Div")
    assert prescale_queries(model) == ["/h.0/attn/MatMul", "/h.1/attn/MatMul"]
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    for name in ("/h.0/attn/MatMul", "/h.1/attn/MatMul"):
        matmul = next(n for n in graph.node if n.name == name)
        scale = producer[matmul.input[0]]
        assert scale.op_type == "Mul"  # Q * 1/sqrt(hs) feeds the first MatMul
        value = next(i for i in graph.initializer if i.name == scale.input[1])
        assert value.data_type == onnx.TensorProto.FLOAT16
        np.testing.assert_allclose(onnx.numpy_helper.to_array(value), 1 / np.sqrt(8), rtol=1e-3)
        consumer = next(n for n in graph.node if matmul.output[0] in n.input)
        assert consumer.op_type == "Add"  # the scores go straight to the mask and the softmax
    assert _ops(model).count("Div") == divs_before - 2
    assert "Pow" not in [n.op_type for n in graph.node if n.name.startswith("/h.0/attn/")]  # dead scale chain gone
    onnx.checker.check_model(model)


def test_the_rewrite_leaves_external_weights_where_they_are(plain, tmp_path):
    folder = plain["external"]
    rewritten, _ = prepare_graph(folder / "model.onnx", Manifest.load(folder))
    model = onnx.load_from_string(rewritten)
    external = [i for i in model.graph.initializer if i.data_location == onnx.TensorProto.EXTERNAL]
    assert external and all(e.external_data[0].value == "model.onnx.data" for e in external)
    assert len(rewritten) < (folder / "model.onnx.data").stat().st_size  # weights not inlined
    # TensorRT resolves them against the export's path; so does onnxruntime from a file beside the data.
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    (copy / "rewritten.onnx").write_bytes(rewritten)
    feeds = _random_feeds(Manifest.load(folder), 3, 1)
    a = ort.InferenceSession(str(copy / "model.onnx")).run(["logits"], feeds)[0]
    b = ort.InferenceSession(str(copy / "rewritten.onnx")).run(["logits"], feeds)[0]
    np.testing.assert_allclose(b, a, atol=1e-5)


def test_a_graph_with_microsoft_ops_is_refused_even_if_its_manifest_says_plain(plain):
    manifest = Manifest.load(plain["fused"])
    with pytest.raises(EngineBuildError, match="uses operators of com.microsoft, which TensorRT's ONNX parser"):
        prepare_graph(plain["fused"] / "model.onnx", manifest)


# ---- without TensorRT ---------------------------------------------------------------------------------------------


def test_building_without_tensorrt_says_what_is_missing(plain, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # absent, even where it is installed
    with pytest.raises(TensorRTUnavailableError) as e:
        build_engine(plain["fp16"], tmp_path / "engine")
    assert str(e.value) == (
        "TensorRT is not installed (pip install tensorrt-cu12 on a machine with an NVIDIA GPU; see README): "
        "cannot build an engine"
    )
    assert not (tmp_path / "engine").exists()  # nothing written


def test_the_command_fails_with_one_line_without_tensorrt(plain, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    result = CliRunner().invoke(build_engine_command, [str(plain["fp16"]), "--output", str(tmp_path / "e")])
    assert result.exit_code == 1
    assert result.output == (
        "Error: TensorRT is not installed (pip install tensorrt-cu12 on a machine with an NVIDIA GPU; see README): "
        "cannot build an engine\n"
    )


def test_the_command_refuses_a_fused_export_before_looking_for_tensorrt(plain, tmp_path):
    result = CliRunner().invoke(build_engine_command, [str(plain["fused"]), "--output", str(tmp_path / "e")])
    assert result.exit_code == 1 and "export the plain graph with `gpt2-export export --plain" in result.output


def test_the_command_has_help():
    result = CliRunner().invoke(build_engine_command, ["--help"])
    assert result.exit_code == 0
    for option in ("--output", "--max-batch", "--max-sequence", "--opt-batch", "--timing-cache", "--overwrite"):
        assert option in result.output


# ---- the build, through FakeTensorRT -------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["10.9.0.34", "11.0.0.8"])
def test_precision_comes_from_the_graph_on_tensorrt_10_and_11(plain, tmp_path, monkeypatch, version):
    trt = FakeTensorRT(FakeCuda(), version=version)
    install_fake_tensorrt(monkeypatch, trt)
    result = build_engine(plain["fp16"], tmp_path / "engine", EngineOptions(max_batch=4))
    config = trt.builds[0]
    assert config.network.flags == (1 << 5 if version.startswith("10") else 0)  # strongly typed; 11: always
    assert config.flags == set()  # no precision flags (TensorRT 11 has none)
    assert config.cleared == set()  # fp16 export: TF32 untouched
    assert [sorted(p.shapes) for p in config.profiles] == [sorted(Manifest.load(plain["fp16"]).io.input_names())] * 2
    assert config.network.path == str(plain["fp16"] / "model.onnx")  # external weights resolve next to it
    assert result.manifest.tensorrt_version == version


def test_an_fp32_export_builds_an_fp32_engine_without_tf32(plain, tmp_path, monkeypatch):
    trt = FakeTensorRT(FakeCuda())
    install_fake_tensorrt(monkeypatch, trt)
    result = build_engine(plain["fp32"], tmp_path / "engine")
    assert trt.builds[0].cleared == {"TF32"}
    assert result.manifest.builder["precision"] == "strongly typed: fp32 from the export, TF32 off"


def test_the_engine_folder_describes_itself(plain, tmp_path, monkeypatch):
    trt = FakeTensorRT(FakeCuda())
    install_fake_tensorrt(monkeypatch, trt)
    lines: list[str] = []
    folder = build_engine(plain["fp16"], tmp_path / "engine", EngineOptions(max_batch=4), lines.append).folder
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json", "engine.json", "export.json", "merges.txt", "model.engine", "timing.cache", "vocab.json"]
    data = json.loads((folder / "engine.json").read_text())
    assert data["format"] == "gpt2-export-engine" and data["tensorrt_version"] == "10.9.0.34"
    assert data["gpu_name"] == "Fake GPU" and data["compute_capability"] == [9, 0]
    assert data["options"] == {"max_batch": 4, "max_sequence": 64, "opt_batch": 1}
    assert data["export"]["dtype"] == "fp16" and data["export"]["folder"] == str(plain["fp16"].resolve())
    assert data["profiles"][0]["shapes"]["input_ids"] == {"min": [1, 1], "opt": [1, 64], "max": [4, 64]}
    assert data["attention"]["prescaled_layers"] == 2
    assert data["device_memory"]["kv_cache_bytes"] == 2 * 4 * (4 * 4 * 64 * 8 * 2)  # 2 buffers x 4 tensors
    assert Manifest.load(folder) == Manifest.load(plain["fp16"])
    assert EngineManifest.load(folder).profile("generation").past_lengths() == (1, 63)
    log = "\n".join(lines)  # every I/O name, shape and dtype, and both profiles
    assert "input  past_key_values.1.value: (-1, 4, -1, 8)" in log and "output logits: (-1, -1, 317)" in log
    assert "profile 1 generation: batch 1..4, past 1..63, new tokens 1..1" in log


def test_the_timing_cache_is_saved_and_reused(plain, tmp_path, monkeypatch):
    trt = FakeTensorRT(FakeCuda())
    install_fake_tensorrt(monkeypatch, trt)
    first = build_engine(plain["fp16"], tmp_path / "engine")
    assert first.manifest.builder["timing_cache"]["reused"] is False
    assert (tmp_path / "engine" / "timing.cache").read_bytes() == b"timings;"
    second = build_engine(plain["fp16"], tmp_path / "engine", EngineOptions(overwrite=True))
    assert second.manifest.builder["timing_cache"]["reused"] is True  # kept across --overwrite
    assert trt.builds[1].cache.data == b"timings;"
    assert (tmp_path / "engine" / "timing.cache").read_bytes() == b"timings;timings;"
    shared = tmp_path / "shared.cache"
    shared.write_bytes(b"other-gpu;")
    third = build_engine(plain["fp16"], tmp_path / "other", EngineOptions(timing_cache=shared))
    assert third.manifest.builder["timing_cache"]["reused"] is False  # rejected by TensorRT: started afresh
    assert shared.read_bytes() == b"timings;"


def test_an_existing_engine_folder_is_kept_without_overwrite(plain, tmp_path, monkeypatch):
    install_fake_tensorrt(monkeypatch, FakeTensorRT(FakeCuda()))
    build_engine(plain["fp16"], tmp_path / "engine")
    with pytest.raises(EngineBuildError, match="already exists and is not empty: pass --overwrite"):
        build_engine(plain["fp16"], tmp_path / "engine")


def test_the_command_builds_and_reports(plain, tmp_path, monkeypatch):
    install_fake_tensorrt(monkeypatch, FakeTensorRT(FakeCuda()))
    result = CliRunner().invoke(build_engine_command, [
        str(plain["fp16"]), "--output", str(tmp_path / "e"), "--max-batch", "4", "--max-sequence", "32"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == (
        f"built {tmp_path / 'e'}: TensorRT 10.9.0.34 on Fake GPU (compute capability 9.0), fp16, batch <= 4, "
        "sequence <= 32"
    )
    assert "[build the engine] done" in result.output  # progress on stderr, per stage
