"""The Ray Serve deployment: a local Ray with 2 replicas behind Ray's HTTP proxy answers the same OpenAI routes
with the same tokens. Skipped, with the reason, where the `ray` extra is not installed."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from .deps import httpx  # first: skips this module without the serve extra
from .helpers import TIMEOUT, alone, joined, stream
from .helpers_net import free_port

ray = pytest.importorskip("ray", reason="Ray is not installed (the optional extra: pip install -e '.[ray]')")
serve = pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install 'ray[serve]')")

PROMPTS = [[5, 17, 42, 99, 7, 250], [80, 81, 82], [12, 13, 14, 15, 16, 17, 18, 19], [3], [200, 100, 50, 25]]


@pytest.mark.slow
def test_two_ray_serve_replicas_answer_concurrent_requests_with_the_serial_tokens(serve_exports, reference_model):
    from runtime.serve import ServeConfig, ray_app

    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        ray_app.start(ServeConfig(serve_exports["lm-shared"], port=port, max_batch=4), replicas=2, num_cpus=1)
        url = f"http://127.0.0.1:{port}"
        status = serve.status().applications[ray_app.APP_NAME]
        assert status.deployments["completions"].replica_states.get("RUNNING") == 2
        assert httpx.get(f"{url}/health", timeout=TIMEOUT).json()["status"] == "ok"
        assert httpx.get(f"{url}/v1/models", timeout=TIMEOUT).json()["data"][0]["id"] == "lm-shared"
        jobs = [(PROMPTS[i % len(PROMPTS)], 5 + i % 7, i % 2 == 1) for i in range(16)]

        def run(job):
            prompt, max_tokens, streamed = job
            body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "return_token_ids": True}
            if streamed:
                return joined(stream(url, body))[0]["token_ids"]
            response = httpx.post(f"{url}/v1/completions", json=body, timeout=TIMEOUT)
            assert response.status_code == 200, response.text
            return response.json()["choices"][0]["token_ids"]

        with ThreadPoolExecutor(8) as pool:
            served = list(pool.map(run, jobs))
        for (prompt, max_tokens, _), tokens in zip(jobs, served, strict=True):
            assert tokens == alone(reference_model, prompt, max_tokens)
        bad = httpx.post(f"{url}/v1/completions", json={"prompt": [1] * 70}, timeout=TIMEOUT)
        assert bad.status_code == 400 and "n_positions 64" in bad.json()["error"]["message"]
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.mark.slow
def test_bench_serve_measures_ray_replicas_beside_the_single_process_servers(serve_exports, tmp_path):
    import json

    from benchmarks.serve_load import ServeBenchConfig, run_serve_bench

    config = ServeBenchConfig(folder=serve_exports["lm-shared"], output=tmp_path, concurrency=(1, 2), max_batch=2,
                              requests_per_client=1, min_requests=2, max_tokens=4, prompt_tokens=4, quiet_wait_s=0,
                              retries=0, ray_replicas=2)
    result = run_serve_bench(config, report=lambda line: None)
    data = json.loads(result.files["json"].read_text())
    assert list(data["servers"]) == ["batched", "baseline", "ray"]
    ray_server = data["servers"]["ray"]
    assert ray_server["ray_replicas"] == 2 and ray_server["exit_status"] == 0, (tmp_path / "server-ray.log").read_text()
    for level in ray_server["levels"]:
        assert level["errors"] == 0 and level["tokens"] == 4 * level["requests"] and level["ttft_p50_ms"] > 0
    assert "| --ray --replicas 2, --max-batch 2 | 2 |" in result.markdown
