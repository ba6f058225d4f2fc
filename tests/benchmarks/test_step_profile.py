"""benchmarks.step_profile as a specification: a decode step's time split by op type, beside the bytes each must read.

The arithmetic is checked on hand-made traces; real profiles (the tiny checkpoint's fused, in-place and int4 exports)
must account for the graph's own weight bytes and the KV cache, and their parts must add up to the step. No speed
is asserted.
"""

from __future__ import annotations

import pytest

from benchmarks import step_profile
from benchmarks.round_analysis import kv_bytes, profile_requests
from benchmarks.step_profile import ProfileError, node_weight_bytes, profile_export, summarize, trace_runs
from gpt2_export.export import ExportOptions, export
from runtime.manifest import Manifest


def _run(ts: int, dur: int) -> dict:
    return {"cat": "Session", "name": "model_run", "ts": ts, "dur": dur}


def _kernel(name: str, op: str, ts: int, dur: int) -> dict:
    return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur, "args": {"op_name": op}}


TRACE = [
    _run(0, 5000),  # the prompt's run: not a decode step
    _kernel("mm0", "MatMul", 10, 4000),
    _run(10_000, 1000),
    _kernel("mm0", "MatMul", 10_010, 400), _kernel("mm1", "MatMul", 10_420, 200),
    _kernel("attn", "MultiHeadAttention", 10_700, 100),
    {"cat": "Node", "name": "mm0_fence_before", "ts": 10_005, "dur": 50, "args": {"op_name": "MatMul"}},
    _run(20_000, 1200),
    _kernel("mm0", "MatMul", 20_010, 600), _kernel("mm1", "MatMul", 20_620, 200),
    _kernel("attn", "MultiHeadAttention", 20_900, 100), _kernel("ln", "SkipLayerNormalization", 21_000, 100),
]


def test_the_last_runs_are_the_decode_steps_with_only_their_kernels():
    runs = trace_runs(TRACE, 2)
    assert [r["us"] for r in runs] == [1000, 1200]
    assert runs[0]["kernels"] == [("mm0", "MatMul", 400), ("mm1", "MatMul", 200), ("attn", "MultiHeadAttention", 100)]
    assert len(runs[1]["kernels"]) == 4
    with pytest.raises(ProfileError, match="3 session runs, fewer than the 4 decode steps"):
        trace_runs(TRACE, 4)


def test_a_summary_splits_the_step_and_sets_each_op_against_its_bytes():
    weights = {"mm0": 2_000_000, "mm1": 1_000_000, "attn": 0, "ln": 0}
    # 10 GB/s: 1 MB takes 0.1 ms
    s = summarize(trace_runs(TRACE, 2), [1.5e-3, 1.6e-3], weights, kv_bytes=500_000, bandwidth_gbs=10.0)
    assert s["step_ms"] == pytest.approx(1.55) and s["run_ms"] == pytest.approx(1.1)
    assert s["python_ms"] == pytest.approx(0.45)  # median of 1.5 - 1.0 and 1.6 - 1.2
    assert s["kernels_ms"] == pytest.approx((0.7 + 1.0) / 2)
    assert s["between_kernels_ms"] == pytest.approx((0.3 + 0.2) / 2)
    ops = {o["op"]: o for o in s["ops"]}
    assert [o["op"] for o in s["ops"]] == ["MatMul", "MultiHeadAttention", "SkipLayerNormalization"]  # most time first
    assert ops["MatMul"]["nodes"] == 2 and ops["MatMul"]["ms"] == pytest.approx(0.7)  # median of 0.6 and 0.8
    assert ops["MatMul"]["bytes"] == 3_000_000 and ops["MatMul"]["vs_read_floor"] == pytest.approx(0.7 / 0.3)
    assert ops["MultiHeadAttention"]["bytes"] == 500_000  # the KV cache
    assert ops["MultiHeadAttention"]["vs_read_floor"] == pytest.approx(0.1 / 0.05)
    # an op missing from a step counts 0 there: median of 0 and 0.1
    assert ops["SkipLayerNormalization"]["ms"] == pytest.approx(0.05) and ops["SkipLayerNormalization"]["bytes"] == 0
    assert s["step_bytes"] == 3_500_000 and s["read_floor_ms"] == pytest.approx(0.35)
    assert s["streaming_ms"] == pytest.approx(0.8) and s["other_kernels_ms"] == pytest.approx(0.05)


@pytest.fixture(scope="module")
def int4_shared(hf_checkpoints, tmp_path_factory):
    return export(hf_checkpoints["lm"], tmp_path_factory.mktemp("int4-shared"),
                  ExportOptions(weights="int4", kv_cache="shared")).folder


@pytest.mark.parametrize("variant", ["lm", "lm-shared", "int4-shared"])
def test_a_real_profile_reads_the_graphs_weights_and_the_cache_and_adds_up(variant, exports, int4_shared, tmp_path):
    folder = int4_shared if variant == "int4-shared" else exports[variant]
    profile = profile_export(folder, 12, 3, 1, tmp_path, bandwidth_mib=16)
    assert profile["position"] == 12 and profile["steps"] == 3
    ops = {o["op"]: o for o in profile["ops"]}
    weights, kinds = node_weight_bytes(folder / "model.onnx")
    weight_ops = {"MatMulNBits"} if variant == "int4-shared" else {"MatMul", "Gemm"}
    assert weight_ops <= ops.keys()
    attention = "GroupQueryAttention" if variant != "lm" else "MultiHeadAttention"
    manifest = Manifest.load(folder).shape
    shape = {"n_layer": manifest.n_layer, "n_embd": manifest.n_embd}
    assert ops[attention]["bytes"] == kv_bytes(shape, 12)
    graph_weights = sum(b for name, b in weights.items() if kinds[name] in weight_ops)
    assert graph_weights > 0 and sum(ops[op]["bytes"] for op in weight_ops) == graph_weights
    assert profile["step_bytes"] == graph_weights + kv_bytes(shape, 12)
    layer_norms = ops["SkipLayerNormalization"]
    assert layer_norms["bytes"] == 0 and layer_norms["nodes"] == 2 * manifest.n_layer + 1  # ln_1, ln_2 per block, ln_f
    assert 0 < profile["kernels_ms"] <= profile["run_ms"] < profile["step_ms"] and profile["python_ms"] > 0
    assert profile["unprofiled_step_ms"] > 0  # the same steps on the export loaded without the profiler
    assert not list(tmp_path.glob("trace-*"))  # the raw trace is not left behind
    text = "\n".join(step_profile.lines(profile, "x"))
    assert f"| {attention} | {manifest.n_layer} |" in text and "x its read floor" in text


def test_a_missing_export_or_a_position_past_the_context_is_refused(exports, tmp_path):
    with pytest.raises(ProfileError, match="model.onnx is missing: pass an export folder"):
        profile_export(tmp_path / "nothing", 4, 2, 1, tmp_path)
    with pytest.raises(ProfileError, match="passes n_positions"):
        profile_export(exports["lm"], 100_000, 2, 1, tmp_path)


def test_the_command_line_names_bad_arguments(capsys, tmp_path):
    assert step_profile.main(["--model", str(tmp_path), "--positions", "a,b"]) == 2
    assert "not a comma-separated list of integers" in capsys.readouterr().err
    assert step_profile.main(["--model", str(tmp_path), "--positions", "4"]) == 1
    assert "model.onnx is missing" in capsys.readouterr().err


def test_each_decode_targets_backend_is_profiled_once_at_its_prompt():
    targets = [{"backend": "ort-fused", "position": 32}, {"backend": "ort-int4", "position": 32},
               {"backend": "ort-fused", "position": 32}, {"backend": "ort-int4-shared", "position": 900},
               {"backend": None, "position": 900}, {"backend": "ort-fused"},  # batch target: no position
               {"backend": "hf-sdpa", "position": 32}]
    assert profile_requests(targets, ("ort-fused", "ort-int4", "ort-int4-shared")) == [
        ("ort-fused", 32), ("ort-int4", 32), ("ort-int4-shared", 900)]
