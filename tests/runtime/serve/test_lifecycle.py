"""The server as a process: torch-free start, SIGTERM drains in-flight streams and exits 0, clear start failures."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from .deps import httpx  # first: skips this module without the serve extra
from .helpers import REPO, TIMEOUT, ServerProcess, joined
from .helpers_net import free_port

LAUNCHER = """
import sys
from runtime.serve.config import ServeConfig
from runtime.serve.server import serve
from tests.runtime.serve.helpers import slow_batcher

config = ServeConfig(folder=sys.argv[1], port=int(sys.argv[2]), drain_timeout=30)
sys.exit(serve(config, log_level="warning", batcher_factory=slow_batcher(float(sys.argv[3]))))
"""


def _stream_in_thread(url: str, body: dict, results: dict, key: int, started: threading.Event) -> None:
    try:
        with httpx.stream("POST", f"{url}/v1/completions", json={**body, "stream": True}, timeout=TIMEOUT) as r:
            lines = []
            for line in r.iter_lines():
                if line.startswith("data: "):
                    lines.append(line[6:])
                    started.set()
        results[key] = lines
    except Exception as e:  # reported by the test
        results[key] = e


def test_sigterm_stops_taking_requests_finishes_the_ones_in_flight_then_exits_0(serve_exports, tmp_path):
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER)
    port = free_port()
    command = [sys.executable, str(launcher), str(serve_exports["lm-shared"]), str(port), "0.03"]
    server = ServerProcess(serve_exports["lm-shared"], port, command=command, env={"PYTHONPATH": str(REPO)})
    try:
        server.wait_healthy()
        body = {"prompt": [1, 2, 3], "max_tokens": 40, "temperature": 0, "ignore_eos": True, "return_token_ids": True}
        results: dict = {}
        started = [threading.Event() for _ in range(3)]
        threads = [threading.Thread(target=_stream_in_thread, args=(server.url, body, results, i, started[i]))
                   for i in range(3)]
        for thread in threads:
            thread.start()
        for event in started:
            assert event.wait(10)
        sent = time.monotonic()
        server.process.send_signal(15)
        time.sleep(0.05)
        try:  # refused at once: 503 while the socket is still open, then no connection at all
            late = httpx.post(f"{server.url}/v1/completions", json={"prompt": [1], "max_tokens": 2}, timeout=5)
            assert late.status_code == 503, late.text
            assert "shutting down" in late.json()["error"]["message"]
        except httpx.TransportError:
            pass
        for thread in threads:
            thread.join(30)
        code = server.process.wait(30)
        assert code == 0, server.output()
        for i in range(3):
            lines = results[i]
            assert not isinstance(lines, Exception), lines
            assert lines[-1] == "[DONE]"
            tokens = joined([json.loads(x) for x in lines[:-1]])[0]
            assert len(tokens["token_ids"]) == 40 and tokens["finish_reason"] == "length"
        assert time.monotonic() - sent > 0.5  # the streams really were mid-flight (40 steps of 30 ms)
    finally:
        server.kill()


@pytest.fixture
def blocked_torch(tmp_path):
    """A PYTHONPATH entry whose `torch` and `models` packages fail to import, and a cwd outside the repo."""
    for name in ("torch", "models"):
        package = tmp_path / "blockers" / name
        package.mkdir(parents=True)
        (package / "__init__.py").write_text(f"raise ImportError('the service imported {name}')\n")
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    return {"PYTHONPATH": f"{tmp_path / 'blockers'}:{REPO}"}, cwd


def test_python_m_runtime_serve_runs_without_torch(serve_exports, blocked_torch):
    env, cwd = blocked_torch
    server = ServerProcess(serve_exports["lm-shared"], free_port(), "--max-batch", "2", env=env, cwd=cwd)
    try:
        server.wait_healthy()
        response = httpx.post(f"{server.url}/v1/completions", timeout=TIMEOUT,
                              json={"prompt": "the cat", "max_tokens": 4, "temperature": 0})
        assert response.status_code == 200, response.text
        assert server.stop() == 0, server.output()
    finally:
        server.kill()
    check = subprocess.run(
        [sys.executable, "-c", textwrap.dedent("""
            import sys
            import runtime.serve.server, runtime.serve.cli, runtime.serve.app
            bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'models'))
            assert not bad, bad
        """)], cwd=cwd, env={**__import__("os").environ, **env}, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr


def test_a_folder_that_is_not_an_export_fails_before_listening(tmp_path, serve_exports):
    run = subprocess.run([sys.executable, "-m", "runtime.serve", str(tmp_path), "--port", str(free_port())],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "has no export.json" in run.stderr
    seq_cls = tmp_path / "seq-cls"
    import shutil

    shutil.copytree(serve_exports["lm-shared"], seq_cls)
    manifest = json.loads((seq_cls / "export.json").read_text())
    (seq_cls / "export.json").write_text(json.dumps({**manifest, "head": "seq-cls"}))
    run = subprocess.run([sys.executable, "-m", "runtime.serve", str(seq_cls), "--port", str(free_port())],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "needs an lm export" in run.stderr


def test_a_model_that_fails_to_load_stops_the_server_with_status_1(tmp_path, serve_exports):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(serve_exports["lm-shared"], broken)
    (broken / "model.onnx").write_bytes(b"not an onnx model")
    server = ServerProcess(broken, free_port())
    try:
        assert server.process.wait(60) == 1
        assert "onnxruntime cannot load" in server.output()
    finally:
        server.kill()


def test_replicas_without_ray_is_a_clear_error(serve_exports):
    run = subprocess.run([sys.executable, "-m", "runtime.serve", str(serve_exports["lm-shared"]), "--replicas", "2"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "--replicas needs --ray" in run.stderr


def _get_health(connection: http.client.HTTPConnection) -> int | str:
    """The status of one GET /health on a kept-alive connection, or how the connection failed."""
    try:
        connection.request("GET", "/health")
        response = connection.getresponse()
        response.read()
        return response.status
    except (http.client.RemoteDisconnected, ConnectionError) as e:
        return type(e).__name__


def test_an_idle_keep_alive_connection_outlives_uvicorns_5_s_default_and_closes_at_the_set_timeout(serve_exports):
    # A server that closes a connection as the client reuses it fails that request ("connection reset"): the
    # load test hit it with uvicorn's 5 s default, so ours is 75 s, and --keep-alive-timeout sets it.
    default = ServerProcess(serve_exports["lm-shared"], free_port(), "--max-batch", "1")
    short = ServerProcess(serve_exports["lm-shared"], free_port(), "--max-batch", "1", "--keep-alive-timeout", "0.5")
    try:
        default.wait_healthy(), short.wait_healthy()
        kept = http.client.HTTPConnection("127.0.0.1", default.port, timeout=10)
        closed = http.client.HTTPConnection("127.0.0.1", short.port, timeout=10)
        try:
            assert _get_health(kept) == _get_health(closed) == 200
            time.sleep(6)
            assert _get_health(kept) == 200  # the same socket, reused
            assert _get_health(closed) in ("RemoteDisconnected", "ConnectionResetError", "BrokenPipeError")
        finally:
            kept.close(), closed.close()
        assert default.stop() == 0 and short.stop() == 0
    finally:
        default.kill(), short.kill()


def test_a_provider_this_onnxruntime_lacks_fails_before_listening(serve_exports):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime offers CUDA: the refusal needs a CPU-only build")
    port = free_port()
    run = subprocess.run([sys.executable, "-m", "runtime.serve", str(serve_exports["lm-shared"]), "--port", str(port),
                          "--provider", "cuda"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and run.stderr.startswith("Error: provider 'cuda' needs CUDAExecutionProvider")
    assert "serving" not in run.stderr  # nothing listened
