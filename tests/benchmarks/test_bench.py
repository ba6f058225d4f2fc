"""The benchmark suite as a specification: what a run writes and how it computes ratios. Speed is never asserted.

One quick run on the tiny transformers-written checkpoint (module fixture) feeds most tests; its backends
cover each kind: transformers (the baseline), our runtime fp32 and int8 (so the agreement check runs),
Optimum when installed, and GPU backends (an ONNX Runtime provider, torch CUDA, TensorRT) that are skipped
with their reason where there is no GPU (tests/benchmarks/test_gpu_backends.py covers them with fakes).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from click.testing import CliRunner

from benchmarks import BACKENDS, BASELINE, BenchConfig, BenchConfigError, run_benchmark
from benchmarks.analysis import decode_weight_bytes
from benchmarks.backends import is_gpu_backend
from benchmarks.config import parse_backends, parse_ints
from benchmarks.measure import summarize
from benchmarks.report import markdown
from benchmarks.run import analyse, rerender
from gpt2_export.cli import main

COMMITTED = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "results.json"
SELECTED = ("hf-sdpa", "optimum-ort", "ort-fused", "ort-int8", "hf-sdpa-cuda", "ort-fused-cuda", "tensorrt")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def bench_output(tmp_path_factory):
    """The output folder of the run below (the CLI test reuses its cached exports)."""
    return tmp_path_factory.mktemp("bench")


@pytest.fixture(scope="module")
def bench(hf_checkpoints, bench_output):
    """One --quick run with two repeats on the tiny lm checkpoint."""
    config = BenchConfig(model=hf_checkpoints["lm"], output=bench_output, quick=True, backends=SELECTED, repeats=2)
    return run_benchmark(config)


def test_results_json_records_config_machine_model_raw_and_summaries(bench):
    data = json.loads(bench.files["json"].read_text())
    assert data["schema"] == "gpt2-export-bench/1" and data["baseline"] == BASELINE
    assert data["config"]["quick"] is True and data["config"]["repeats"] == 2
    machine = data["machine"]
    assert machine["cpu"] and machine["usable_cores"] >= 1 and machine["bandwidth"]["gbs"] > 0
    assert {"torch", "transformers", "onnxruntime", "onnx", "numpy", "gpt2-export"} <= set(machine["versions"])
    assert data["model"]["random_weights"] is False and data["model"]["n_layer"] == 2
    assert list(data["backends"]) == [name for name in BACKENDS if name in SELECTED]
    for name, backend in data["backends"].items():
        assert backend["status"] in ("ok", "skipped", "failed") and backend["label"]
        if backend["status"] != "ok":
            assert backend["reason"], name
            continue
        raw, summary = backend["raw"], data["summaries"][name]
        assert set(raw["prefill_s"]) == set(summary["prefill_ms"]) == {"4", "8"}
        assert all(len(samples) == 2 for samples in raw["prefill_s"].values())  # repeats, warm-up dropped
        assert len(raw["decode"]["runs_s"]) == 2 and len(raw["decode"]["runs_s"][0]) == 4  # repeats x new tokens
        assert summary["decode_ms_by_position"]["positions"] == [4, 5, 6, 7]
        assert set(summary["generate"]) == {"1", "2"} and raw["peak_rss_mb"] > 0
        # batch B = 2 (quick's largest batch), the decode prompt's length: repeats, and repeats x new tokens
        assert raw["prefill_batch"]["batch"] == raw["decode_batch"]["batch"] == data["config"]["decode_batch"] == 2
        assert raw["prefill_batch"]["prompt_length"] == 4 and len(raw["prefill_batch"]["seconds"]) == 2
        assert len(raw["decode_batch"]["runs_s"]) == 2 and len(raw["decode_batch"]["runs_s"][0]) == 4
        batch = summary["batch_latency"]
        assert batch["batch"] == 2 and batch["prefill_ms"]["n"] == 2 and batch["decode_ms"]["n"] == 8
        assert batch["decode_tokens_per_s"] == pytest.approx(2e3 / batch["decode_ms"]["p50"], rel=1e-4)  # JSON rounds
        assert all(entry["tokens_per_s"] > 0 for entry in summary["generate"].values())
    for name in ("hf-sdpa", "ort-fused", "ort-int8"):
        assert data["backends"][name]["status"] == "ok", data["backends"][name]["reason"]


def test_backends_that_cannot_run_here_are_skipped_with_the_reason(bench):
    saved = json.loads(bench.files["json"].read_text())["backends"]
    for name, missing in (("ort-fused-cuda", "CUDAExecutionProvider"), ("hf-sdpa-cuda", "CUDA"),
                          ("tensorrt", "TensorRT")):
        backend = bench.data["backends"][name]
        if backend["status"] == "skipped":
            assert missing in backend["reason"] and saved[name]["reason"] == backend["reason"], name
            assert f"`{name}` (skipped): {backend['reason']}" in bench.markdown
    optimum = bench.data["backends"]["optimum-ort"]
    assert optimum["status"] == "ok" or "optimum" in optimum["reason"].lower()


def test_percentiles_are_ordered(bench):
    for name, summary in bench.data["summaries"].items():
        for stats in [*summary["prefill_ms"].values(), summary["decode_ms"]]:
            assert stats["min"] <= stats["p50"] <= stats["p90"] <= stats["p99"] <= stats["max"], name
            assert stats["p50"] == pytest.approx(stats["median"])


def test_ratios_are_to_transformers_and_optimum_in_the_same_run(bench):
    summaries, ratios = bench.data["summaries"], bench.data["ratios"]
    base = summaries[BASELINE]
    for name, summary in summaries.items():
        r = ratios["to_baseline"][name]
        assert r["decode_p50"] == pytest.approx(summary["decode_ms"]["p50"] / base["decode_ms"]["p50"])
        for length, stats in summary["prefill_ms"].items():
            assert r["prefill"][length] == pytest.approx(stats["median"] / base["prefill_ms"][length]["median"])
        for batch, entry in summary["generate"].items():
            expected = entry["tokens_per_s"] / base["generate"][batch]["tokens_per_s"]
            assert r["tokens_per_s"][batch] == pytest.approx(expected)
        floor = bench.data["memory_floor"]["floor_ms"]
        if is_gpu_backend(name):  # the floor is the CPU's memory floor
            assert "decode_p50_vs_floor" not in r
        else:
            assert r["decode_p50_vs_floor"] == pytest.approx(summary["decode_ms"]["p50"] / floor)
    assert ratios["to_baseline"][BASELINE]["decode_p50"] == pytest.approx(1.0)
    if "optimum-ort" in summaries:
        opt = summaries["optimum-ort"]["decode_ms"]["p50"]
        assert ratios["to_optimum"]["ort-fused"]["decode_p50"] == pytest.approx(
            summaries["ort-fused"]["decode_ms"]["p50"] / opt)


def test_markdown_has_a_row_per_backend_ratios_targets_and_agreement(bench):
    text = bench.files["markdown"].read_text()
    assert text == bench.markdown
    for name, backend in bench.data["backends"].items():
        if backend["status"] == "ok":
            for heading in ("## Results", "## Ratios in the same run"):
                rows = [line for line in _section(text, heading) if line.startswith(f"| `{name}` |")]
                assert len(rows) == 1, (heading, name)
        else:
            assert f"- `{name}` ({backend['status']}): " in text
    for name in bench.data["summaries"]:
        rows = [line for line in _section(text, "## Prefill and per-token decode at batch 1 and batch 2")
                if line.startswith(f"| `{name}` |")]
        assert len(rows) == 1, name
    for heading in ("## Results", "## Ratios in the same run", "## Targets", "## int8 / int4 greedy agreement"):
        assert heading in text
    assert "Memory floor" in text and "GB/s" in text and "QUICK MODE" in text


def _section(text: str, heading: str) -> list[str]:
    """The lines of a markdown section, up to the next heading."""
    after = text.split(heading, 1)[1].splitlines()[1:]
    return after[: next((i for i, line in enumerate(after) if line.startswith("## ")), len(after))]


def test_targets_report_value_limit_and_status(bench):
    targets = bench.data["targets"]
    names = [t["name"] for t in targets]
    assert "fp32 decode / memory floor" in names and "int8 decode / memory floor" in names
    for target in targets:
        assert target["met"] in (True, False, None) and target["limit"] > 0
        assert (target["value"] is None) == (target["met"] is None)
        assert target["comparison"] in ("<=", ">=")
    agreement = bench.data["agreement"]["variants"]["ort-int8"]
    assert 0.0 <= agreement["teacher_forced"] <= 1.0 and 0.0 <= agreement["free_running"] <= 1.0


def test_plots_are_png_files(bench):
    for kind in ("plot_prefill", "plot_decode", "plot_throughput"):
        data = bench.files[kind].read_bytes()
        assert data[:8] == PNG_SIGNATURE, kind
        width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
        assert width > 200 and height > 200
        assert bench.data["files"][kind] == bench.files[kind].name


def test_a_saved_run_renders_again_from_its_json(bench):
    again = rerender(bench.output)
    assert list(again.data["summaries"]) == list(bench.data["summaries"])
    for name, ratio in bench.data["ratios"]["to_baseline"].items():
        assert again.data["ratios"]["to_baseline"][name]["decode_p50"] == pytest.approx(ratio["decode_p50"], rel=1e-4)
    assert [t["met"] for t in again.data["targets"]] == [t["met"] for t in bench.data["targets"]]
    for name, summary in bench.data["summaries"].items():
        p50 = summary["batch_latency"]["decode_ms"]["p50"]
        assert again.data["summaries"][name]["batch_latency"]["decode_ms"]["p50"] == pytest.approx(p50, rel=1e-4)


def test_a_saved_run_from_before_batch_b_latency_still_renders(tmp_path):
    # The committed run, made old: results.json files written before batch-B latency lack these keys.
    saved = json.loads(COMMITTED.read_text())
    saved["config"].pop("decode_batch", None)
    for backend in saved["backends"].values():
        for key in ("prefill_batch", "decode_batch"):
            (backend.get("raw") or {}).pop(key, None)
    (tmp_path / "results.json").write_text(json.dumps(saved))
    again = rerender(tmp_path)
    assert list(again.data["summaries"]) == list(saved["summaries"])
    for name, summary in saved["summaries"].items():
        assert again.data["summaries"][name]["batch_latency"] is None
        assert again.data["summaries"][name]["decode_ms"]["p50"] == pytest.approx(summary["decode_ms"]["p50"], rel=1e-4)
        assert any(line.startswith(f"| `{name}` |") for line in _section(again.markdown, "## Results")), name
    assert "per-token decode at batch" not in again.markdown and "also at batch" not in again.markdown
    assert (tmp_path / "results.md").read_text() == again.markdown


def _fake_raw(decode_ms: float, batch_step_ms: float, prefill_ms: float, batch_prefill_ms: float) -> dict:
    """A backend's raw result on quick shapes (prompts 4, 8; batches 1, 8; decode prompt 4) with batch 8 timed."""
    generate = {str(b): {"batch": b, "new_tokens": 2, "prompt_length": 4, "seconds": [0.1],
                         "tokens_row0": [1, 2], "discarded_noisy_calls": 0} for b in (1, 8)}
    return {"status": "ok", "prefill_s": {"4": [prefill_ms / 1e3] * 2, "8": [prefill_ms / 1e3] * 2},
            "decode": {"batch": 1, "prompt_length": 4, "positions": [4, 5], "runs_s": [[decode_ms / 1e3] * 2],
                       "discarded_noisy_runs": 0},
            "prefill_batch": {"batch": 8, "prompt_length": 4, "seconds": [batch_prefill_ms / 1e3] * 2,
                              "discarded_noisy_runs": 1},
            "decode_batch": {"batch": 8, "prompt_length": 4, "positions": [4, 5],
                             "runs_s": [[batch_step_ms / 1e3, 3 * batch_step_ms / 1e3]], "discarded_noisy_runs": 0},
            "generate": generate, "peak_rss_mb": 100.0, "load_s": 1.0, "bandwidth_gbs_before": 20.0}


def test_batch_b_summary_ratio_and_table_from_fake_results():
    machine = {"cpu": "Test CPU", "cpu_flags": [], "usable_cores": 2, "memory_gb": 8.0, "versions": {},
               "bandwidth": {"gbs": 20.0, "method": "fake", "sum_1_thread_gbs": 10.0}}
    model = {"source": "fake", "random_weights": True, "n_layer": 2, "n_embd": 64, "vocab_size": 100,
             "n_positions": 64, "config": {"n_layer": 2, "n_embd": 64, "vocab_size": 100}}
    config = BenchConfig(quick=True, batch_sizes=(1, 8)).to_dict()
    assert config["decode_batch"] == 8
    results = {"hf-sdpa": {"backend": "hf-sdpa", **_fake_raw(40.0, 80.0, 100.0, 600.0)},
               "ort-fused": {"backend": "ort-fused", **_fake_raw(16.0, 20.0, 50.0, 200.0)}}
    data = analyse(config, machine, model, results, None, created="2026-01-01T00:00:00+00:00")
    batch = data["summaries"]["ort-fused"]["batch_latency"]
    assert batch["batch"] == 8 and batch["prompt_length"] == 4 and batch["prefill_ms"]["median"] == pytest.approx(200.0)
    assert batch["decode_ms"]["p50"] == pytest.approx(40.0)  # steps of 20 and 60 ms
    assert batch["decode_ms"]["p99"] == pytest.approx(59.6)
    assert batch["decode_tokens_per_s"] == pytest.approx(200.0)  # 8 tokens per 40 ms step
    assert data["ratios"]["to_baseline"]["ort-fused"]["decode_p50_batch"] == pytest.approx(0.25)  # 40 / 160 ms
    text = markdown(data)
    table = _section(text, "## Prefill and per-token decode at batch 1 and batch 8")
    assert ("| backend | prefill 4 B=1 | prefill 4 B=8 | decode p50 B=1 | decode p50 B=8 | p90 | p99 "
            "| decode tok/s B=8 | decode B=8 / hf-sdpa |") in table
    assert "| `ort-fused` | 50.0 | 200.0 | 16.00 | 40.00 | 56.00 | 59.60 | 200.0 | 0.25x |" in table
    assert "| `hf-sdpa` | 100.0 | 600.0 | 40.00 | 160.00 | 224.00 | 238.40 | 50.0 | 1.00x |" in table
    assert "prefill and decode also at batch 8" in text
    assert "1 noisy prefill / decode run(s) / generate() call(s) measured again" in text


def test_cli_bench_quick_prints_the_table(hf_checkpoints, bench_output, bench):
    args = ["bench", "--quick", "--model", str(hf_checkpoints["lm"]), "--output", str(bench_output),
            "--backends", "hf-sdpa,ort-fused", "--prompt-lengths", "4,6", "--decode-batch", "3"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "# gpt2-export benchmark" in result.stdout and "| `ort-fused` |" in result.stdout
    assert "| backend | prefill 4 | prefill 6 |" in result.stdout
    assert "[backend ort-fused]" in result.stderr  # progress per backend and stage on stderr
    config = json.loads((bench_output / "results.json").read_text())["config"]
    assert config["prompt_lengths"] == [4, 6] and config["decode_batch"] == 3


def test_cli_rejects_a_missing_checkpoint_without_downloading(tmp_path):
    result = CliRunner().invoke(main, ["bench", "--quick", "--model", str(tmp_path / "nope"), "--output",
                                       str(tmp_path / "out")])
    assert result.exit_code != 0 and "not a local checkpoint folder" in result.output


def test_config_validation_names_the_value_and_the_fix():
    with pytest.raises(BenchConfigError, match="unknown backend.*choose from"):
        BenchConfig(backends=("tensorflow",))
    with pytest.raises(BenchConfigError, match="prompt_lengths"):
        BenchConfig(prompt_lengths=(0, 8))
    with pytest.raises(BenchConfigError, match="comma-separated"):
        parse_ints("8,x", "--prompt-lengths")
    assert parse_ints("8, 32", "--prompt-lengths") == (8, 32) and parse_backends(None) == BACKENDS
    full, quick = BenchConfig(), BenchConfig(quick=True, repeats=3)
    assert full.prompt_lengths == (8, 32, 128, 512) and full.batch_sizes == (1, 4, 8) and full.new_tokens == 128
    assert quick.repeats == 3 and quick.new_tokens < full.new_tokens
    assert full.decode_batch == 8 and quick.decode_batch == 2  # the largest generate() batch
    assert BenchConfig(batch_sizes=(4, 1)).decode_batch == 4 and BenchConfig(decode_batch=3).decode_batch == 3
    assert BenchConfig(quick=True, decode_batch=16).largest_batch() == 16  # what a TensorRT engine must serve
    for bad in (0, -1, 2.0):
        with pytest.raises(BenchConfigError, match="decode_batch"):
            BenchConfig(decode_batch=bad)
    assert full.profile_steps == 16 and quick.profile_steps == 2 and BenchConfig(profile_steps=0).profile_steps == 0
    with pytest.raises(BenchConfigError, match=r"profile_steps=-1 must be an integer >= 0"):
        BenchConfig(profile_steps=-1)


def test_a_sequence_longer_than_n_positions_is_refused(hf_checkpoints, tmp_path):
    config = BenchConfig(model=hf_checkpoints["lm"], output=tmp_path, quick=True, prompt_lengths=(100,))
    with pytest.raises(ValueError, match="n_positions 64"):
        run_benchmark(config)


def test_percentiles_use_numpy_linear_interpolation():
    stats = summarize([float(i) for i in range(1, 101)], scale=2.0)
    assert stats["p50"] == pytest.approx(101.0) and stats["p90"] == pytest.approx(180.2)
    assert stats["p99"] == pytest.approx(198.02) and stats["n"] == 100


def test_memory_floor_counts_gpt2_small_decode_weights_once():
    gpt2_small = {"n_layer": 12, "n_embd": 768, "vocab_size": 50257, "n_inner": None}
    assert decode_weight_bytes(gpt2_small) / 1e6 == pytest.approx(494.6, abs=0.1)  # blocks + tied head, ~495 MB
