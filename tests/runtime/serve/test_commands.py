"""`gpt2-export serve` / `bench-serve` as click commands, and a bench-serve smoke run on the tiny export."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from benchmarks.cli import bench_serve_command
from benchmarks.serve_load import ServeBenchConfig, run_serve_bench
from gpt2_export.serve_cli import serve_command
from runtime.serve.cli import main as runtime_serve_main

from .deps import httpx  # noqa: F401 (skips this module without the serve extra)


def test_every_command_has_help():
    for command in (serve_command, bench_serve_command, runtime_serve_main):
        result = CliRunner().invoke(command, ["--help"])
        assert result.exit_code == 0 and "Usage:" in result.output
    serve_help = CliRunner().invoke(serve_command, ["--help"]).output
    for option in ("--host", "--port", "--max-batch", "--max-queue", "--api-key", "--ray", "--replicas"):
        assert option in serve_help
    assert "GPT2_EXPORT_API_KEY" in serve_help and "127.0.0.1" in serve_help


def test_bad_options_are_one_line_errors(tmp_path):
    result = CliRunner().invoke(serve_command, [str(tmp_path)])
    assert result.exit_code == 1 and "has no export.json" in result.output
    result = CliRunner().invoke(bench_serve_command, [str(tmp_path), "--concurrency", "1,x"])
    assert result.exit_code == 2 and "comma-separated list of integers" in result.output


def test_bench_serve_runs_both_servers_and_writes_its_report(serve_exports, tmp_path):
    config = ServeBenchConfig(folder=serve_exports["lm-shared"], output=tmp_path, concurrency=(1, 2), max_batch=2,
                              requests_per_client=1, min_requests=2, max_tokens=4, prompt_tokens=4, quiet_wait_s=0,
                              retries=0)
    result = run_serve_bench(config, report=lambda line: None)
    data = json.loads(result.files["json"].read_text())
    assert set(data["servers"]) == {"batched", "baseline"}
    for server in data["servers"].values():
        assert server["exit_status"] == 0  # SIGTERM after the run: a clean drain
        assert [level["clients"] for level in server["levels"]] == [1, 2]
        for level in server["levels"]:
            assert level["errors"] == 0 and level["tokens"] == 4 * level["requests"]
            assert level["ttft_p50_ms"] > 0 and level["itl_p99_ms"] is not None
    assert data["targets"]["errors"]["met"]
    assert "| --max-batch 2 | 1 |" in result.markdown and "| --max-batch 1 (baseline) | 2 |" in result.markdown
    assert result.files["markdown"].read_text() == result.markdown
    assert result.files.get("png") is None or result.files["png"].stat().st_size > 10_000


def test_bench_serve_ray_replicas_must_not_be_negative(tmp_path):
    with pytest.raises(ValueError, match="ray_replicas=-1 must be >= 0"):
        ServeBenchConfig(folder=tmp_path, ray_replicas=-1)


def test_bench_serve_gives_each_ray_replica_its_share_of_the_cores(tmp_path, monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    specs = ServeBenchConfig(folder=tmp_path, max_batch=4, ray_replicas=2).servers()
    assert [(s.name, s.max_batch, s.threads, s.ray_replicas) for s in specs] == [
        ("batched", 4, None, 0), ("baseline", 1, None, 0), ("ray", 4, 4, 2)]
    assert specs[2].arguments() == ["--max-batch", "4", "--threads", "4", "--ray", "--replicas", "2"]
