"""The GPU backends of the benchmark as a specification, without a GPU: which exist, why each is skipped, what
the machine section says, how CUDA time is taken, how the engine is cached, and the ratios to the GPU baseline.

nvidia-smi, torch's CUDA state, ONNX Runtime's providers and TensorRT are replaced by fakes, so every test runs
the same on CPU-only and GPU machines.
"""

from __future__ import annotations

import importlib.util
import json
from types import SimpleNamespace

import numpy as np
import onnxruntime
import pytest
import torch

from benchmarks import BACKENDS, BenchConfig, analysis, artifacts, backends, gpu, measure, report, run, worker
from benchmarks.backends import BackendUnavailableError, load_backend, unavailable_reason
from benchmarks.config import BASELINE, GPU_BASELINE
from gpt2_export.export import ExportOptions

GPU_BACKENDS = ("hf-eager-cuda", "hf-sdpa-cuda", "ort-fused-cuda", "ort-fused-cuda-fp16", "ort-fused-tensorrt",
                "tensorrt")
H100_ROW = "NVIDIA H100 80GB HBM3, 9.0, 81559, 550.54.15\n"
BANNER = "| NVIDIA-SMI 550.54.15    Driver Version: 550.54.15    CUDA Version: 12.4 |\n"


# ---- fakes -------------------------------------------------------------------------------------------------


@pytest.fixture
def no_gpu(monkeypatch, tmp_path):
    """A machine without nvidia-smi, GPU device files, CUDA in torch, GPU providers or TensorRT."""
    monkeypatch.setattr(gpu, "run_nvidia_smi", lambda args: (None, "nvidia-smi is not installed"))
    monkeypatch.setattr(gpu, "DEVICE_FILES", (str(tmp_path / "nvidia[0-9]*"),))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    _hide_modules(monkeypatch, {"tensorrt", "cuda"})
    gpu.nvidia_devices.cache_clear()
    yield
    gpu.nvidia_devices.cache_clear()


@pytest.fixture
def h100(monkeypatch):
    """A machine with one H100, CUDA torch, onnxruntime-gpu and TensorRT (as far as the cheap checks can tell)."""
    monkeypatch.setattr(gpu, "run_nvidia_smi", lambda args: (H100_ROW if args else BANNER, ""))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    providers = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: providers)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: SimpleNamespace(name=name) if name in ("tensorrt", "cuda") else real(name, *a))
    gpu.nvidia_devices.cache_clear()
    yield
    gpu.nvidia_devices.cache_clear()


def _hide_modules(monkeypatch, hidden: set[str]) -> None:
    """importlib.util.find_spec reports `hidden` modules as not installed."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in hidden else real(name, *a))


# ---- which backends exist ----------------------------------------------------------------------------------


def test_the_gpu_backends_are_listed_labelled_and_classified():
    assert set(GPU_BACKENDS) <= set(BACKENDS) and GPU_BASELINE in GPU_BACKENDS and BASELINE in BACKENDS
    assert list(BACKENDS)[-len(GPU_BACKENDS):] == list(GPU_BACKENDS)  # tables list the CPU ones first
    assert {name for name in BACKENDS if backends.is_gpu_backend(name)} == set(GPU_BACKENDS)
    assert set(backends.LABELS) == set(BACKENDS)
    for name in ("hf-eager-cuda", "hf-sdpa-cuda", "ort-fused-cuda-fp16", "tensorrt"):
        assert "fp16" in backends.LABELS[name], name  # the dtype is stated where it is not the CPU's fp32
    assert "fp32" in backends.LABELS["ort-fused-cuda"]
    assert backends.export_variant("tensorrt") == "plain-fp16" and backends.export_variant("hf-sdpa-cuda") is None
    assert backends.export_variant("ort-fused-cuda-fp16") == "fused-fp16"


def test_every_export_variant_is_a_valid_export():
    for variant, fields in backends.EXPORT_VARIANTS.items():
        options = ExportOptions(**fields)
        assert options.dtype == ("fp16" if variant.endswith("fp16") else "fp32"), variant
    assert ExportOptions(**backends.EXPORT_VARIANTS["plain-fp16"]).variant == "plain"


def test_the_run_exports_what_the_gpu_backends_need():
    assert run._variants(["tensorrt"]) == ["plain-fp16"]
    assert run._variants(["ort-fused-cuda-fp16", "hf-sdpa-cuda"]) == ["fused-fp16"]
    assert run._variants(["hf-eager-cuda"]) == []


# ---- why they are skipped ----------------------------------------------------------------------------------


def test_without_a_gpu_every_gpu_backend_names_what_is_missing(no_gpu):
    for name in GPU_BACKENDS:
        assert "no NVIDIA GPU is visible (nvidia-smi is not installed" in unavailable_reason(name), name
    for name in ("hf-eager-cuda", "hf-sdpa-cuda"):
        assert "has no CUDA (a CPU-only build)" in unavailable_reason(name)
    assert "offers no CUDAExecutionProvider" in unavailable_reason("ort-fused-cuda-fp16")
    assert "offers no TensorrtExecutionProvider" in unavailable_reason("ort-fused-tensorrt")
    reason = unavailable_reason("tensorrt")
    assert reason.startswith("TensorRT is not installed") and "cuda-python is not installed" in reason
    for name in ("hf-sdpa", "ort-fused"):
        assert unavailable_reason(name) is None  # the CPU backends do not care


def test_a_cuda_build_of_torch_without_a_device_says_so(no_gpu, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    assert f"torch {torch.__version__} (CUDA 12.4) sees no CUDA device" in unavailable_reason("hf-sdpa-cuda")


def test_with_a_gpu_the_cheap_checks_let_every_gpu_backend_try(h100):
    for name in GPU_BACKENDS:
        assert unavailable_reason(name) is None, name


def test_a_gpu_without_nvidia_smi_is_found_by_its_device_file(no_gpu, monkeypatch, tmp_path):
    (tmp_path / "nvidia0").touch()
    assert gpu.missing_gpu() is None


def test_loading_a_gpu_backend_here_raises_unavailable_and_the_worker_reports_it_skipped(no_gpu):
    artifacts_ = {"checkpoint": "unused", "exports": {}, "optimum": None, "engine": None}
    for name in GPU_BACKENDS:
        with pytest.raises(BackendUnavailableError, match="no NVIDIA GPU is visible"):
            load_backend(name, artifacts_, threads=1)
    result = worker.run_backend({"backend": "tensorrt", "artifacts": artifacts_, "plan": {"threads": 1}})
    assert result["status"] == "skipped" and "TensorRT is not installed" in result["reason"]


def test_the_torch_cuda_check_runs_again_in_the_worker(h100, monkeypatch):
    """nvidia-smi sees a GPU but torch cannot use it (e.g. CUDA_VISIBLE_DEVICES hides it): skipped, not failed."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BackendUnavailableError, match="sees no CUDA device"):
        backends._transformers_backend("unused", "sdpa", "cuda", threads=1)


def test_the_runtime_backend_skips_only_what_is_missing_and_fails_on_real_errors(monkeypatch):
    import runtime
    from runtime.providers import ProviderUnavailableError
    from runtime.tensorrt_backend import TensorRTUnavailableError

    for error, expected in ((TensorRTUnavailableError("no CUDA GPU is visible"), BackendUnavailableError),
                            (ProviderUnavailableError("no CUDAExecutionProvider"), BackendUnavailableError),
                            (RuntimeError("TensorRT could not deserialize the engine"), RuntimeError)):
        monkeypatch.setattr(runtime, "load", _raising(error))
        with pytest.raises(expected, match=str(error)) as raised:
            backends.RuntimeBackend("ENGINE", "cuda", threads=1)
        assert (raised.type is BackendUnavailableError) == (expected is BackendUnavailableError)


def _raising(error: Exception):
    """A stand-in for runtime.load that raises `error`."""

    def load(*args, **kwargs):
        raise error

    return load


# ---- the machine section -----------------------------------------------------------------------------------


def test_the_machine_section_says_no_gpu_without_error(no_gpu):
    info = gpu.describe()
    assert info["present"] is False and info["devices"] == [] and "no NVIDIA GPU is visible" in info["reason"]
    assert info["torch"]["cuda"] is None and info["torch"]["available"] is False
    assert info["onnxruntime"]["providers"] == ["CPUExecutionProvider"] and info["onnxruntime"]["version"]
    line = report.gpu_line(info)
    assert line.startswith("no GPU: no NVIDIA GPU is visible") and "CUDA none, no CUDA device" in line
    assert "providers: CPUExecutionProvider" in line


def test_the_machine_section_records_the_gpu_driver_cuda_and_builds(h100, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 90100)
    monkeypatch.setattr(gpu, "installed", lambda names: ("tensorrt", "10.7.0") if "tensorrt" in names else None)
    info = gpu.describe()
    assert info["present"] is True and "reason" not in info
    assert info["devices"] == [{"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "memory_mib": 81559,
                                "driver_version": "550.54.15"}]
    assert info["driver_version"] == "550.54.15" and info["cuda_driver_version"] == "12.4"
    assert info["torch"] == {"installed": True, "version": torch.__version__, "cuda": "12.4", "available": True,
                             "device_count": 1, "cudnn": 90100}
    assert "CUDAExecutionProvider" in info["onnxruntime"]["providers"] and info["tensorrt"] == "10.7.0"
    line = report.gpu_line(info)
    for text in ("NVIDIA H100 80GB HBM3 (compute capability 9.0, 81,559 MiB)", "driver 550.54.15",
                 "CUDA 12.4 (driver)", "(CUDA 12.4, sees the GPU)", "TensorRT 10.7.0"):
        assert text in line, text


def test_nvidia_smi_rows_parse_with_missing_fields():
    rows = gpu.parse_devices("Tesla T4, 7.5, 15360, 535.1\nOld GPU, [N/A], [N/A], 470.2\n")
    assert rows[0] == {"name": "Tesla T4", "compute_capability": "7.5", "memory_mib": 15360, "driver_version": "535.1"}
    assert rows[1]["compute_capability"] is None and rows[1]["memory_mib"] is None
    assert gpu.parse_cuda_version(BANNER) == "12.4" and gpu.parse_cuda_version("no banner") is None


# ---- CUDA timing -------------------------------------------------------------------------------------------


@pytest.fixture
def clock(monkeypatch):
    """Events of the clock, the GPU synchronization and the forward, in order."""
    events: list[str] = []
    monkeypatch.setattr(measure, "now_ns", lambda: events.append("start") or 0)
    monkeypatch.setattr(measure, "seconds_since", lambda start: events.append("stop") or 1.0)
    return events


def test_timed_synchronizes_before_the_clock_starts_and_before_it_stops(clock):
    result, seconds = measure.timed(lambda: clock.append("call") or 7, lambda: clock.append("sync"))
    assert (result, seconds) == (7, 1.0) and clock == ["sync", "start", "call", "sync", "stop"]
    clock.clear()
    measure.timed(lambda: clock.append("call"))
    assert clock == ["start", "call", "stop"]


class FakeLM:
    """A transformers-style forward that records each call and returns (B, 1, V) logits."""

    def __init__(self, events: list[str]):
        self.events = events

    def __call__(self, input_ids, **kwargs):
        self.events.append("forward")
        return SimpleNamespace(logits=torch.zeros(input_ids.shape[0], 1, 11), past_key_values="cache")


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_torch_backends_synchronize_around_each_timed_forward_on_cuda(clock, monkeypatch, device):
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: clock.append("sync"))
    backend = backends.TorchStyleBackend(FakeLM(clock), 11, True, None, device)
    monkeypatch.setattr(backend, "_tensor", torch.from_numpy)  # no CUDA here to copy to
    ids = np.zeros((1, 3), dtype=np.int64)
    timed_forward = ["sync", "start", "forward", "sync", "stop"] if device == "cuda" else ["start", "forward", "stop"]
    assert backend.prefill(ids, np.ones_like(ids)) == 1.0
    assert clock == timed_forward
    clock.clear()
    assert backend.decode_steps(ids, np.ones_like(ids), steps=2) == [1.0, 1.0]
    assert clock == ["forward"] + timed_forward * 2  # the prompt's forward is not timed


# ---- the engine, built once and cached ---------------------------------------------------------------------


def _engine_folder(tmp_path):
    """An engine folder and its export folder as build-engine leaves them."""
    export, engine = tmp_path / "export", tmp_path / "engine"
    export.mkdir()
    engine.mkdir()
    (export / "export.json").write_text('{"dtype": "fp16"}')
    (engine / "export.json").write_text('{"dtype": "fp16"}')
    (engine / "model.engine").write_bytes(b"engine")
    data = {"tensorrt_version": "10.7.0", "gpu_name": "NVIDIA H100 80GB HBM3",
            "options": {"max_batch": 8, "max_sequence": 1024, "opt_batch": 1}}
    (engine / "engine.json").write_text(json.dumps(data))
    return engine, export


def test_a_cached_engine_is_reused_only_when_it_fits_this_gpu_tensorrt_export_and_run(tmp_path):
    engine, export = _engine_folder(tmp_path)
    here = ("10.7.0", "NVIDIA H100 80GB HBM3")
    assert artifacts.stale_engine_reason(engine, export, *here, max_batch=8, max_sequence=160) is None
    assert "TensorRT 10.6.0" in artifacts.stale_engine_reason(engine, export, "10.6.0", here[1], 8, 160)
    assert "this GPU is NVIDIA L4" in artifacts.stale_engine_reason(engine, export, here[0], "NVIDIA L4", 8, 160)
    assert "this run needs 16 and 160" in artifacts.stale_engine_reason(engine, export, *here, 16, 160)
    assert "this run needs 8 and 2048" in artifacts.stale_engine_reason(engine, export, *here, 8, 2048)
    (export / "export.json").write_text('{"dtype": "fp16", "re-exported": true}')
    assert "another export" in artifacts.stale_engine_reason(engine, export, *here, 8, 160)
    (engine / "model.engine").unlink()
    assert artifacts.stale_engine_reason(engine, export, *here, 8, 160) == "no engine built yet"


def test_the_engine_job_reports_tensorrt_missing_as_unavailable(monkeypatch, tmp_path):
    from runtime import tensorrt_backend

    def missing(purpose):
        raise tensorrt_backend.TensorRTUnavailableError(f"TensorRT is not installed (hint): {purpose}")

    monkeypatch.setattr(tensorrt_backend, "import_tensorrt", missing)
    spec = {"export": str(tmp_path), "folder": str(tmp_path / "engine"), "max_batch": 8, "max_sequence": 64}
    result = worker.run_engine_build(spec)
    assert result["folder"] is None and result["unavailable"].startswith("TensorRT is not installed")


@pytest.mark.parametrize("outcome, status, engine", [
    ({"unavailable": "no CUDA GPU is visible"}, "skipped", None),
    (measure.WorkerError("tensorrt-engine worker failed (exit code 1)"), "failed", None),
    ({"folder": "ENGINE", "reused": True}, None, "ENGINE"),
])
def test_the_engine_outcome_decides_the_tensorrt_backend_status(monkeypatch, tmp_path, outcome, status, engine):
    def fake_worker(spec, *args):
        assert spec["job"] == "tensorrt-engine" and spec["export"].endswith("plain-fp16")
        assert spec["max_batch"] == 2 and spec["max_sequence"] == BenchConfig(quick=True).longest_sequence()
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    monkeypatch.setattr(run, "run_worker", fake_worker)
    arts = artifacts.Artifacts(tmp_path, "test", False, {}, root=tmp_path,
                               exports={"plain-fp16": tmp_path / "plain-fp16"})
    run._build_engine(arts, BenchConfig(quick=True, output=tmp_path), tmp_path, lambda message: None)
    problem = run._artifact_problem("tensorrt", arts)
    assert (problem or {}).get("status") == status and arts.for_worker()["engine"] == engine
    if problem:
        assert arts.for_worker()["engine_error"] == problem["reason"]
    assert run._artifact_problem("ort-fused-cuda", arts) is None


def test_a_failed_plain_fp16_export_fails_the_tensorrt_backend_without_a_build(monkeypatch, tmp_path):
    monkeypatch.setattr(run, "run_worker", lambda *args: pytest.fail("no engine build without its export"))
    arts = artifacts.Artifacts(tmp_path, "test", False, {}, root=tmp_path,
                               export_errors={"plain-fp16": "the plain-fp16 export failed: boom"})
    run._build_engine(arts, BenchConfig(quick=True, output=tmp_path), tmp_path, lambda message: None)
    expected = {"status": "failed", "reason": "the plain-fp16 export failed: boom"}
    assert run._artifact_problem("tensorrt", arts) == expected


# ---- ratios to the GPU baseline ----------------------------------------------------------------------------


def _raw(decode_ms: float, prefill_ms: float, seconds_b8: float) -> dict:
    """A backend's raw result: quick shapes (prompts 4, 8; batches 1, 2) plus batch 8, constant times."""
    generate = {str(b): {"batch": b, "new_tokens": 4, "prompt_length": 4, "seconds": [s] * 2,
                         "tokens_row0": [1, 2, 3, 4], "discarded_noisy_calls": 0}
                for b, s in ((1, 0.1), (2, 0.1), (8, seconds_b8))}
    return {"status": "ok", "prefill_s": {"4": [prefill_ms / 1e3] * 2, "8": [prefill_ms / 1e3] * 2},
            "decode": {"prompt_length": 4, "positions": [4, 5], "runs_s": [[decode_ms / 1e3] * 2],
                       "discarded_noisy_runs": 0},
            "generate": generate, "peak_rss_mb": 100.0, "load_s": 1.0, "bandwidth_gbs_before": 20.0}


def _analysed(results: dict[str, dict]) -> dict:
    """analyse() of fake results on a fake CPU-only machine."""
    machine = {"cpu": "Test CPU", "cpu_flags": [], "usable_cores": 2, "memory_gb": 8.0,
               "versions": {"numpy": np.__version__},
               "bandwidth": {"gbs": 20.0, "method": "fake", "sum_1_thread_gbs": 10.0}}
    model = {"source": "fake", "random_weights": True, "n_layer": 2, "n_embd": 64, "vocab_size": 100,
             "n_positions": 64, "config": {"n_layer": 2, "n_embd": 64, "vocab_size": 100}}
    config = BenchConfig(quick=True, batch_sizes=(1, 2, 8)).to_dict()
    named = {name: {"backend": name, **r} for name, r in results.items()}
    return run.analyse(config, machine, model, named, None, created="2026-01-01T00:00:00+00:00")


def test_gpu_backends_get_ratios_to_transformers_sdpa_on_cuda_and_cpu_ratios_stay_to_hf_sdpa(tmp_path):
    skipped = "ort-fused-cuda"
    data = _analysed({
        "hf-sdpa": _raw(40.0, 100.0, 2.0), "ort-fused": _raw(16.0, 50.0, 1.0),
        "hf-sdpa-cuda": _raw(8.0, 10.0, 0.4), "tensorrt": _raw(2.0, 4.0, 0.1),
        "ort-fused-cuda-fp16": _raw(4.0, 5.0, 0.2),
        skipped: {"status": "skipped", "reason": "onnxruntime offers no CUDAExecutionProvider here"},
    })
    to_gpu, to_cpu = data["ratios"]["to_gpu_baseline"], data["ratios"]["to_baseline"]
    assert data["gpu_baseline"] == GPU_BASELINE and set(to_gpu) == {"hf-sdpa-cuda", "tensorrt", "ort-fused-cuda-fp16"}
    assert to_gpu["hf-sdpa-cuda"]["decode_p50"] == pytest.approx(1.0)
    assert to_gpu["tensorrt"]["decode_p50"] == pytest.approx(0.25)  # 2 ms / 8 ms
    assert to_gpu["tensorrt"]["prefill"] == {"4": pytest.approx(0.4), "8": pytest.approx(0.4)}  # 4 ms / 10 ms
    assert to_gpu["tensorrt"]["tokens_per_s"]["8"] == pytest.approx(4.0)  # 0.4 s / 0.1 s per call
    assert to_gpu["ort-fused-cuda-fp16"]["decode_p50"] == pytest.approx(0.5)
    assert to_cpu["ort-fused"]["decode_p50"] == pytest.approx(0.4)  # 16 ms / 40 ms: the CPU baseline
    assert to_cpu["tensorrt"]["decode_p50"] == pytest.approx(0.05)  # GPU vs CPU transformers, kept for reference
    assert "decode_p50_vs_floor" in to_cpu["ort-fused"] and "decode_p50_vs_floor" not in to_cpu["tensorrt"]

    files, text = run.write_outputs(data, tmp_path)
    section = text.split(f"## GPU ratios to `{GPU_BASELINE}`", 1)[1].split("\n## ", 1)[0]
    assert "| backend | decode / hf-sdpa-cuda | prefill 4 / hf-sdpa-cuda |" in section
    assert "| `tensorrt` | 0.25x | 0.40x | 0.40x |" in section and "`ort-fused`" not in section
    assert "- GPU: not recorded" in text  # this fake machine has no GPU section
    saved = json.loads(files["json"].read_text())
    assert saved["backends"][skipped] == {"status": "skipped", "label": backends.LABELS[skipped],
                                          "reason": "onnxruntime offers no CUDAExecutionProvider here"}
    assert f"- `{skipped}` (skipped): onnxruntime offers no CUDAExecutionProvider here" in text


def test_without_the_gpu_baseline_the_report_says_so_and_without_gpu_backends_it_is_silent():
    data = _analysed({"hf-sdpa": _raw(40.0, 100.0, 2.0), "tensorrt": _raw(2.0, 4.0, 0.1)})
    assert data["ratios"]["to_gpu_baseline"] == {} and analysis.gpu_ratios(data["summaries"]) == {}
    assert f"- `{GPU_BASELINE}` did not run, so the GPU backends have no GPU baseline" in report.markdown(data)
    cpu_only = _analysed({"hf-sdpa": _raw(40.0, 100.0, 2.0), "ort-fused": _raw(16.0, 50.0, 1.0)})
    assert cpu_only["ratios"]["to_gpu_baseline"] == {} and "GPU ratios" not in report.markdown(cpu_only)
