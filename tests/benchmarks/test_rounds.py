"""The interleaved rounds of `gpt2-export bench` as a specification: positions, floors, best / median, targets.

Fake raw rounds (numbers chosen by hand) pin the arithmetic and the report's rows; one quick run on the tiny
checkpoint (tests/benchmarks/test_bench.py's module fixture is not shared, so this file makes its own, with
only the backends the rounds need) proves the whole path: processes, interleaving, peers skipped with the
reason or measured, results.json, the markdown tables and the context plot. Speed is never asserted.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from benchmarks import BenchConfig, run_benchmark
from benchmarks.analysis import decode_weight_bytes
from benchmarks.report import markdown
from benchmarks.round_analysis import evaluate_round_targets, kv_bytes, summarize_rounds
from benchmarks.round_worker import Floor
from benchmarks.rounds import RoundsError, sweep_positions
from benchmarks.run import rerender

CONFIG = {"n_layer": 2, "n_embd": 8, "n_head": 2, "vocab_size": 50, "n_positions": 1024}
HAS_CT2 = importlib.util.find_spec("ctranslate2") is not None


def test_the_sweep_reaches_the_end_of_the_context_and_holds_the_target_prompts():
    assert sweep_positions(1024, 8) == [32, 128, 256, 384, 512, 640, 768, 896, 900, 1016]
    assert sweep_positions(128, 2) == [16, 32, 48, 64, 80, 96, 112, 126]  # 900 does not fit: left out
    assert sweep_positions(1024, 8, (900, 32, 32)) == [32, 900]
    with pytest.raises(RoundsError, match=r"--positions \[1020\] out of range: each must be 1\.\.1016"):
        sweep_positions(1024, 8, (32, 1020))
    with pytest.raises(RoundsError, match="--round-steps 64 leaves no room in n_positions 64"):
        sweep_positions(64, 64)


def test_kv_bytes_are_keys_and_values_of_every_layer_up_to_the_step():
    assert kv_bytes(CONFIG, 0) == 2 * 2 * 1 * 8 * 4
    gpt2 = {"n_layer": 12, "n_embd": 768}
    assert kv_bytes(gpt2, 899) == 2 * 12 * 900 * 768 * 4  # 66 MB at prompt 900: 13% of GPT-2 small's weights


def test_a_floor_round_keeps_its_fastest_gemm_step_of_either_library(monkeypatch):
    import benchmarks.machine

    floor = Floor({"model_config": CONFIG, "batch": 8, "seed": 0, "threads": 1, "bandwidth_mib": 1})
    numpy_times = iter([9.0, 0.004, 0.002, 0.003, 0.005, 0.006])  # warm-up, then 5 timed steps
    ort_times = iter([9.0, 0.007, 0.003, 0.0025, 0.009, 0.004])
    monkeypatch.setattr(floor.gemm, "step", lambda: next(numpy_times))
    monkeypatch.setattr(floor.gemm, "step_ort", lambda: next(ort_times))
    monkeypatch.setattr(benchmarks.machine, "read_bandwidth", lambda *a, **k: {"gbs": 12.5})
    assert floor.round({}) == {"bandwidth_gbs": 12.5, "gemm_s": 0.002,  # a floor: noise only adds time
                               "gemm_by_library_s": {"numpy": 0.002, "onnxruntime": 0.0025}}
    assert [w.shape for w in floor.gemm.weights[:4]] == [(8, 24), (8, 8), (8, 32), (32, 8)]
    assert len(floor.gemm.weights) == 4 * 2 + 1 and floor.gemm.weights[-1].shape == (8, 50)  # + the LM head


def test_both_gemm_floors_compute_the_steps_products():
    floor = Floor({"model_config": CONFIG, "batch": 3, "seed": 0, "threads": 1, "bandwidth_mib": 1})
    gemm = floor.gemm
    outputs = gemm.session.run(None, gemm.feeds)
    assert len(outputs) == len(gemm.weights)
    for weight, out in zip(gemm.weights, outputs, strict=True):
        np.testing.assert_allclose(out, gemm.inputs[weight.shape[0]] @ weight, rtol=1e-4, atol=1e-4)  # (B, N)
    assert gemm.step() > 0 and gemm.step_ort() > 0


def _raw() -> dict:
    """Two rounds: the floor at 10 and 20 GB/s; ours, llama.cpp F32 / Q4_0, one skipped peer, one failed."""
    def ours(ms32, ms900, batch):  # per round: the timed steps (seconds) at each position, and at batch B
        return {"status": "ok", "family": "ours", "samples": {
            "positions": {"32": [[m / 1e3] * 3 for m in ms32], "900": [[m / 1e3] * 3 for m in ms900]},
            "batch": [[b / 1e3, b / 1e3 + 1.0] for b in batch]}}  # median of two steps: b + 0.5 s
    return {
        "rounds": 2, "steps": 3, "positions": [32, 900], "batch": 8, "batch_prompt": 32, "threads": 2,
        "floor": {"bandwidth_gbs": [10.0, 20.0], "gemm_s": [0.004, 0.002],
                  "gemm_by_library_s": {"numpy": [0.004, 0.003], "onnxruntime": [0.005, 0.002]}},
        "order": [["floor", "ort-fused", "llama-cpp-f32"], ["floor", "llama-cpp-f32", "ort-fused"]],
        "participants": {
            "ort-fused": ours([1.0, 3.0], [2.0, 4.0], [1.0, 2.0]),
            "ort-int4": {**ours([0.1, 0.2], [0.3, 0.4], []), "samples": {
                "positions": {"32": [[1e-4], [2e-4]], "900": [[3e-4], [4e-4]]}, "batch": []}},
            "llama-cpp-f32": {"status": "ok", "family": "llama.cpp", "info": {"type_k": "f16"}, "samples": {
                "positions": {"32": [[2e-3], [4e-3]], "900": [[1e-3], [5e-3]]}, "batch": []}},
            "llama-cpp-q8_0": {"status": "skipped", "family": "llama.cpp", "reason": "no llama.cpp build given"},
            "ct2-int8": {"status": "failed", "family": "ctranslate2", "reason": "converter failed"},
        },
    }


def test_rounds_summary_is_best_and_median_against_floors_of_the_same_rounds():
    s = summarize_rounds(_raw(), CONFIG)
    weights = decode_weight_bytes(CONFIG)
    floor32 = s["floor_ms"]["32"]
    assert floor32["bytes"] == weights + kv_bytes(CONFIG, 32)
    assert floor32["best"] == pytest.approx(floor32["bytes"] / 20e9 * 1e3)  # the faster round's bandwidth
    assert s["bandwidth_gbs"] == {"best": 20.0, "median": 15.0, "n": 2}  # best: the highest, which sets that floor
    assert floor32["median"] == pytest.approx(np.median([floor32["bytes"] / 10e9, floor32["bytes"] / 20e9]) * 1e3)
    assert s["compute_floor_ms"] == {"best": 2.0, "median": 3.0, "n": 2}
    assert s["compute_floor_by_library_ms"]["numpy"] == {"best": 3.0, "median": 3.5, "n": 2}
    fused = s["participants"]["ort-fused"]
    assert fused["decode_ms"]["32"] == {"best": 1.0, "median": 2.0, "n": 2}
    assert fused["vs_floor"]["900"] == pytest.approx(2.0 / s["floor_ms"]["900"]["best"])
    assert fused["batch_ms"]["best"] == pytest.approx(501.0)  # round 1: median of 1 ms and 1.001 s
    assert fused["batch_vs_compute_floor"] == pytest.approx(501.0 / 2.0)
    assert s["participants"]["ort-int4"]["batch_ms"] is None
    assert s["participants"]["llama-cpp-f32"]["decode_ms"]["900"] == {"best": 1.0, "median": 3.0, "n": 2}
    assert s["participants"]["llama-cpp-q8_0"] == {"status": "skipped", "reason": "no llama.cpp build given",
                                                   "family": "llama.cpp",
                                                   "label": "llama.cpp llama-bench, GGUF Q8_0 (KV cache f16)"}


def test_paired_ratios_divide_each_round_by_the_floor_sampled_right_before_it():
    raw = _raw()
    # ort-fused ran at 40 GB/s in round 1 and 10 GB/s in round 2; the rounds' own floor samples were 10 and 20.
    raw["participants"]["ort-fused"]["samples"]["bandwidth_gbs"] = [40.0, 10.0]
    s = summarize_rounds(raw, CONFIG)
    floor_s = s["floor_ms"]["32"]["bytes"] / 1e9  # seconds at 1 GB/s
    paired = s["participants"]["ort-fused"]["vs_paired_floor"]["32"]
    ratios = [1.0e-3 / (floor_s / 40.0), 3.0e-3 / (floor_s / 10.0)]
    assert paired["best"] == pytest.approx(min(ratios)) and paired["median"] == pytest.approx(np.median(ratios))
    assert s["participants"]["llama-cpp-f32"]["vs_paired_floor"]["32"] is None  # saved before paired samples
    fp32 = {t["name"]: t for t in evaluate_round_targets(s)}["fp32 decode at prompt 32 / fp32 weights + KV floor"]
    assert fp32["detail"].endswith(f"paired best {paired['best']:.2f}x (median {paired['median']:.2f}x)")


def test_round_targets_are_the_issues_limits_met_or_not_with_their_numbers():
    s = summarize_rounds(_raw(), CONFIG)
    targets = {t["name"]: t for t in evaluate_round_targets(s)}
    assert len(targets) == 12
    fp32 = targets["fp32 decode at prompt 32 / fp32 weights + KV floor"]
    assert fp32["backend"] == "ort-fused" and fp32["limit"] == 1.05 and fp32["source"] == "issue 13"
    assert fp32["value"] == pytest.approx(1.0 / s["floor_ms"]["32"]["best"])
    assert fp32["met"] is (fp32["value"] <= 1.05)
    ours_median = s["participants"]["ort-fused"]["decode_ms"]["32"]["median"]
    assert f"median / median {ours_median / s['floor_ms']['32']['median']:.2f}x" in fp32["detail"]
    assert targets["fp32 decode at prompt 900 / fp32 weights + KV floor"]["limit"] == 1.10
    int4 = targets["int4 decode at prompt 900 / fp32 weights + KV floor"]
    assert int4["limit"] == 0.30 and int4["value"] == pytest.approx(0.3 / s["floor_ms"]["900"]["best"])
    assert targets["int4 decode at prompt 32 / fp32 weights + KV floor"]["limit"] == 0.18
    int8 = targets["int8 decode at prompt 32 / fp32 weights + KV floor"]
    assert int8["met"] is None and int8["value"] is None and int8["detail"] == "not measured"
    batch = targets["fp32 decode step at batch 8 / compute floor"]
    assert batch["value"] == pytest.approx(250.5) and batch["met"] is False and batch["limit"] == 1.5
    f32 = targets["F32: ours / llama.cpp at prompt 32"]  # 1 ms against 2 ms: faster, met
    assert f32["value"] == pytest.approx(0.5) and f32["met"] is True and f32["comparison"] == "<"
    f32_900 = targets["F32: ours / llama.cpp at prompt 900"]  # 2 ms against 1 ms: slower, not met
    assert f32_900["value"] == pytest.approx(2.0) and f32_900["met"] is False
    q8 = targets["Q8_0: ours / llama.cpp at prompt 32"]  # neither side measured
    assert q8["met"] is None
    q4 = targets["Q4_0: ours / llama.cpp at prompt 32"]  # ours measured, the peer not selected
    assert q4["met"] is None and q4["detail"] == "llama-cpp-q4_0 not selected"


def test_quantized_targets_take_the_faster_of_the_growing_and_the_in_place_cache_export():
    raw = _raw()
    raw["participants"]["llama-cpp-q4_0"] = {**raw["participants"]["llama-cpp-f32"]}
    raw["participants"]["ort-int4-shared"] = {**raw["participants"]["ort-int4"], "samples": {
        "positions": {"32": [[2e-4], [3e-4]], "900": [[1e-4], [2e-4]]}, "batch": []}}  # slower at 32, faster at 900
    targets = {t["name"]: t for t in evaluate_round_targets(summarize_rounds(raw, CONFIG))}
    assert targets["int4 decode at prompt 32 / fp32 weights + KV floor"]["backend"] == "ort-int4"
    assert targets["int4 decode at prompt 900 / fp32 weights + KV floor"]["backend"] == "ort-int4-shared"
    q4_900 = targets["Q4_0: ours / llama.cpp at prompt 900"]  # 0.1 ms (in-place) against llama.cpp's 1 ms
    assert q4_900["backend"] == "ort-int4-shared" and q4_900["value"] == pytest.approx(0.1)


def test_a_skipped_peer_row_names_the_reason():
    raw = _raw()
    raw["participants"]["ort-int8"] = {**raw["participants"]["ort-int4"]}
    s = summarize_rounds(raw, CONFIG)
    row = {t["name"]: t for t in evaluate_round_targets(s)}["Q8_0: ours / llama.cpp at prompt 32"]
    assert row["met"] is None and row["detail"] == "llama-cpp-q8_0 skipped: no llama.cpp build given"


def test_rounds_markdown_has_the_floor_row_each_participant_and_the_targets():
    raw = _raw()
    data = {"rounds": {"raw": raw, "summary": summarize_rounds(raw, CONFIG)}}
    data["round_targets"] = evaluate_round_targets(data["rounds"]["summary"])
    from benchmarks.report import rounds_lines

    text = "\n".join(rounds_lines(data))
    assert "WARNING: 2 round(s), fewer than the 5" in text
    assert "(best (median): numpy 3.00 (3.50) ms, onnxruntime 2.00 (3.50) ms)" in text
    assert "| participant | family | P=32 | P=900 | B=8 step | / floor P=32 | / floor P=900 |" in text
    floor_bytes = decode_weight_bytes(CONFIG) + kv_bytes(CONFIG, 32)
    best, worst = floor_bytes / 20e9 * 1e3, floor_bytes / 10e9 * 1e3  # sub-0.1 ms: 3 significant digits
    assert f"| **floor** (fp32 weights + KV) | - | {best:.3g} ({(best + worst) / 2:.3g}) |" in text
    assert "| 2.00 (3.00) | 1.00x | 1.00x | 1.00x |" in text
    assert "| `ort-fused` | ours | 1.00 (2.00) | 2.00 (3.00) | 501.00 (501.50) |" in text
    assert "| `llama-cpp-f32` | llama.cpp | 2.00 (3.00) | 1.00 (3.00) | - |" in text
    assert "- `llama-cpp-q8_0` (skipped): no llama.cpp build given" in text
    assert "- `ct2-int8` (failed): converter failed" in text
    assert "- `ort-fused`: our runtime, fused graph, growing cache (fp32; the default export)\n" in text
    assert "- `llama-cpp-f32`: llama.cpp llama-bench, GGUF F32 (KV cache f16); llama-bench says {'type_k': " in text
    assert "## Targets of issue 13 (from the rounds)" in text
    assert "| F32: ours / llama.cpp at prompt 900 | issue 13 | `ort-fused` | 2.000 x | < 1 x | **not met** |" in text
    assert rounds_lines({"rounds": {"error": "floor worker failed"}})[2] == "- The rounds failed: floor worker failed"
    assert rounds_lines({"rounds": None}) == []


@pytest.fixture(scope="module")
def rounds_run(hf_checkpoints, tmp_path_factory):
    """A quick run with 2 rounds: our fp32 / int8 backends, CTranslate2 when installed, llama.cpp not given."""
    config = BenchConfig(model=hf_checkpoints["lm"], output=tmp_path_factory.mktemp("rounds"), quick=True,
                         backends=("ort-fused", "ort-int8"), rounds=2, llama_cpp=tmp_path_factory.mktemp("no-llama"),
                         positions=(4, 32))
    return run_benchmark(config)


def test_a_run_interleaves_the_rounds_and_reports_peers_or_their_reasons(rounds_run):
    data = json.loads(rounds_run.files["json"].read_text())
    raw, summary = data["rounds"]["raw"], data["rounds"]["summary"]
    assert raw["positions"] == [4, 32] and summary["positions"] == ["4", "32"] and raw["steps"] == 2
    live = ["ort-fused", "ort-int8"] + (["ct2-float32", "ct2-int8"] if HAS_CT2 else [])
    assert raw["order"] == [["floor", *live], ["floor", *live[1:], live[0]]]  # each round starts one later
    assert len(raw["floor"]["bandwidth_gbs"]) == len(raw["floor"]["gemm_s"]) == 2
    assert {lib: len(v) for lib, v in raw["floor"]["gemm_by_library_s"].items()} == {"numpy": 2, "onnxruntime": 2}
    for name in live:
        entry = raw["participants"][name]
        assert entry["status"] == "ok", entry.get("reason")
        assert {p: len(runs) for p, runs in entry["samples"]["positions"].items()} == {"4": 2, "32": 2}
        assert all(len(steps) == 2 for runs in entry["samples"]["positions"].values() for steps in runs)
        assert len(entry["samples"]["batch"]) == 2 and summary["participants"][name]["batch_ms"]["n"] == 2
    for name in ("llama-cpp-f32", "llama-cpp-q8_0", "llama-cpp-q4_0"):
        assert raw["participants"][name]["status"] == "skipped"
        assert "lacks llama-bench, llama-quantize" in raw["participants"][name]["reason"]
        assert f"- `{name}` (skipped): " in rounds_run.markdown
    if not HAS_CT2:
        assert "ctranslate2 is not installed" in raw["participants"]["ct2-int8"]["reason"]
    assert len(data["round_targets"]) == 12
    assert "## Targets of issue 13 (from the rounds)" in rounds_run.markdown
    assert (rounds_run.output / "decode_latency_vs_context.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert data["files"]["plot_context"] == "decode_latency_vs_context.png"
    assert "- `ort-int8`: our runtime, fused graph, int8 weights" in rounds_run.markdown
    if HAS_CT2:
        assert "- `ct2-int8`: CTranslate2 Generator, int8 weights (int8_float32)" in rounds_run.markdown


def test_a_saved_run_renders_its_rounds_again(rounds_run):
    before = json.loads(rounds_run.files["json"].read_text())
    again = rerender(rounds_run.output)
    assert again.data["rounds"]["summary"]["participants"].keys() == before["rounds"]["summary"]["participants"].keys()
    for new, old in zip(again.data["round_targets"], before["round_targets"], strict=True):
        assert (new["name"], new["met"]) == (old["name"], old["met"])
        assert new["value"] == (None if old["value"] is None else pytest.approx(old["value"], rel=1e-3))
    assert markdown(again.data).count("## Targets of issue 13") == 1


def test_no_rounds_means_no_rounds_section(hf_checkpoints, tmp_path):
    result = run_benchmark(BenchConfig(model=hf_checkpoints["lm"], output=tmp_path, quick=True,
                                       backends=("ort-fused",), rounds=0))
    assert result.data["rounds"] is None and result.data["round_targets"] == []
    assert "interleaved rounds" not in result.markdown


def test_each_batch_1_decode_targets_backend_is_profiled_after_the_rounds(rounds_run):
    data = json.loads(rounds_run.files["json"].read_text())
    profiles = data["step_profiles"]
    # positions 4 and 32: the prompt-32 targets (fp32, int8, F32 / Q8_0 vs llama.cpp) name two backends
    assert [(p["backend"], p["position"]) for p in profiles] == [("ort-fused", 32), ("ort-int8", 32)]
    for profile in profiles:
        assert "error" not in profile, profile.get("error")
        assert profile["steps"] == 2 and profile["step_bytes"] > 0
        weight_op = {"ort-fused": "MatMul", "ort-int8": "MatMulNBits"}[profile["backend"]]
        assert weight_op in {o["op"] for o in profile["ops"] if o["bytes"]}
    assert "## Where the decode step's time goes (ONNX Runtime's profile, after the rounds)" in rounds_run.markdown
    assert "### `ort-int8` at prompt 32" in rounds_run.markdown
    again = rerender(rounds_run.output)
    assert again.data["step_profiles"] == data["step_profiles"]
